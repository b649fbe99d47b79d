//! The element types of the logits the kernels read: `f32` as it is, `f16` and `bf16` widened
//! one block at a time into an `f32` scratch buffer.

use burn::tensor::{bf16, f16};
use half::slice::HalfFloatSliceExt;

#[cfg(target_os = "linux")]
use super::buffers::advise_huge_pages;
use super::buffers::zeroed_f32;

/// An element type of the logits the kernels read. Every formula is written once, on `f32`
/// blocks: `f32` rows are those blocks already, half-precision rows are converted one block
/// (at most [`BLOCK`](super::BLOCK) values) at a time into a scratch buffer, so no `f32` copy of a row, let
/// alone of the `[N, V]` logits, ever exists.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Whether the rows are `f32` already (no scratch buffer needed).
    const NATIVE: bool;
    const ZERO: Self;

    fn to_f32(self) -> f32;

    /// `src` as `f32`: `src` itself when [`NATIVE`](Self::NATIVE), else converted into
    /// `buf[..src.len()]` (`buf` at least as long as `src`).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// Runs `f(source, work)`, after which `work` is stored as `dst`'s new contents. Native:
    /// `work` is `dst` itself and `source` is `src` (`None`: `dst` holds the inputs, in place).
    /// Otherwise `work` is `buf`, holding `src` (or `dst`'s own values) widened, `source` is
    /// `None`, and `work` is rounded into `dst` afterwards: one rounding per value.
    fn update(dst: &mut [Self], src: Option<&[Self]>, buf: &mut [f32], f: impl BlockOp);

    /// A zeroed buffer of `len` values (see [`zeroed_f32`]).
    fn zeroed(len: usize) -> Vec<Self>;
}

impl Elem for f32 {
    const NATIVE: bool = true;
    const ZERO: Self = 0.0;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn widen<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }

    #[inline(always)]
    fn update(dst: &mut [f32], src: Option<&[f32]>, _buf: &mut [f32], f: impl BlockOp) {
        f.run(src, dst)
    }

    fn zeroed(len: usize) -> Vec<f32> {
        zeroed_f32(len)
    }
}

/// `run(source, work)` on one `f32` block, for [`Elem::update`]: `work` is computed from
/// `source`, or from its own contents without one. A trait with an `#[inline(always)]` method
/// rather than a closure, so that the body is inlined into the AVX2 copies of the callers.
pub(crate) trait BlockOp {
    fn run(self, source: Option<&[f32]>, work: &mut [f32]);
}

/// `f16` and `bf16`: `half`'s slice conversions (F16C on x86-64 where the CPU has it).
macro_rules! half_elem {
    ($half:ty) => {
        impl Elem for $half {
            const NATIVE: bool = false;
            const ZERO: Self = <$half>::ZERO;

            #[inline(always)]
            fn to_f32(self) -> f32 {
                <$half>::to_f32(self)
            }

            #[inline(always)]
            fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
                let wide = &mut buf[..src.len()];
                src.convert_to_f32_slice(wide);
                wide
            }

            #[inline(always)]
            fn update(dst: &mut [Self], src: Option<&[Self]>, buf: &mut [f32], f: impl BlockOp) {
                let work = &mut buf[..dst.len()];
                src.unwrap_or(&*dst).convert_to_f32_slice(work);
                f.run(None, work);
                dst.convert_from_f32_slice(work);
            }

            fn zeroed(len: usize) -> Vec<Self> {
                // No calloc for these types: reserve, ask for huge pages, then zero.
                let mut out = Vec::with_capacity(len);
                #[cfg(target_os = "linux")]
                advise_huge_pages(
                    out.spare_capacity_mut().as_ptr() as usize,
                    len * std::mem::size_of::<Self>(),
                );
                out.resize(len, Self::ZERO);
                out
            }
        }
    };
}
half_elem!(f16);
half_elem!(bf16);

#[cfg(test)]
mod tests {
    use burn::tensor::{bf16, f16};

    use super::Elem;
    use crate::fused::cpu::BLOCK;
    use crate::fused::cpu::isa::cpu_kernel_isa;
    use crate::fused::cpu::rows::Rows;
    use crate::fused::cpu::threads::{backward, backward_in_place, forward};
    use crate::fused::{Extras, Spec, Transform};

    /// Half-precision rows widen to exactly the `f32` values the `f32` kernels would read, in
    /// the same order: outputs and stats bit-identical to the `f32` kernels on the widened
    /// values, and the gradient their `f32` gradient rounded once, in place or copying.
    fn check_half_rows<E: Elem + PartialEq + std::fmt::Debug>(
        narrow: impl Fn(f32) -> E,
        spec: &Spec,
    ) {
        // Several blocks per row, a tail, and enough logits for the multi-threaded split.
        let (n, v) = (40, 2 * BLOCK + 37);
        let raw: Vec<E> = (0..n * v)
            .map(|i| narrow(((i * 7919) % 1013) as f32 / 97.0 - 5.0))
            .collect();
        let wide: Vec<f32> = raw.iter().map(|&x| x.to_f32()).collect();
        let targets: Vec<i64> = (0..n as i64)
            .map(|i| if i % 7 == 3 { -1 } else { i * 613 % v as i64 })
            .collect();
        let (half, full) = (
            forward(cpu_kernel_isa(), &raw, v, &targets, spec),
            forward(cpu_kernel_isa(), &wide, v, &targets, spec),
        );
        assert_eq!(half.out, full.out);
        assert_eq!(half.max, full.max);
        assert_eq!(half.log_sum, full.log_sum);
        let entropy = spec.extras.column_of().entropy;
        let k = spec.extras.columns();
        let rows = Rows {
            targets: targets.clone(),
            max: full.max.clone(),
            log_sum: full.log_sum.clone(),
            grad: (0..n).map(|i| 1.0 - i as f32 / 17.0).collect(),
            grad_entropy: entropy.map_or(Vec::new(), |_| vec![0.4; n]),
            entropy: entropy.map_or(Vec::new(), |c| {
                full.out.iter().skip(c).step_by(k).copied().collect()
            }),
        };
        let expected: Vec<E> = backward(cpu_kernel_isa(), &wide, v, &rows, &spec.transform)
            .into_iter()
            .map(&narrow)
            .collect();
        assert_eq!(
            backward(cpu_kernel_isa(), &raw, v, &rows, &spec.transform),
            expected
        );
        let mut in_place = raw.clone();
        backward_in_place(cpu_kernel_isa(), &mut in_place, v, &rows, &spec.transform);
        assert_eq!(in_place, expected);
    }

    #[test]
    fn half_rows_read_as_their_widened_values() {
        let all = Extras {
            entropy: true,
            log_sum_sq: true,
            mean: true,
            top1: true,
        };
        let softcap = Transform {
            scale: 1.3,
            softcap: Some(4.0),
            inv_temperature: 1.0 / 0.7,
        };
        for spec in [
            Spec {
                transform: Transform::IDENTITY,
                extras: Extras::default(),
            },
            Spec {
                transform: Transform::IDENTITY,
                extras: all,
            },
            Spec {
                transform: softcap,
                extras: all,
            },
        ] {
            check_half_rows(f16::from_f32, &spec);
            check_half_rows(bf16::from_f32, &spec);
        }
    }
}
