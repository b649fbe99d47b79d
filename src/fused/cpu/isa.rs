//! The instruction-set copies of the row loops: the same source compiled for x86-64's
//! baseline, with AVX2 + FMA and with AVX-512, and the run-time choice among them.

use std::sync::OnceLock;

use super::element::Elem;
use super::rows::{ForwardPart, RowsRef, backward_rows_generic, forward_rows_generic};
use crate::fused::{Spec, Transform};

/// The instruction set the CPU kernels run with, picked once per process from what the CPU
/// has (at most the level `BURN_PREFERENCE_CPU_ISA` names: `baseline`, `avx2` or `avx512`).
///
/// The kernels are the same source compiled three times: for x86-64's baseline (SSE2), with
/// AVX2 + FMA (8 lanes), and with AVX-512 (16 lanes). Other architectures run the baseline
/// copy, which the compiler vectorises for their own baseline (NEON on aarch64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuKernelIsa {
    /// The target's baseline instructions only.
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 F, BW, DQ and VL (with AVX2 and FMA).
    Avx512,
}

impl CpuKernelIsa {
    /// The best level this CPU supports, ignoring any cap.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Self::Avx512;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }

    fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "baseline" => Some(Self::Baseline),
            "avx2" => Some(Self::Avx2),
            "avx512" => Some(Self::Avx512),
            _ => None,
        }
    }
}

/// The instruction set the CPU kernels use in this process: [`CpuKernelIsa::detected`], capped
/// by the environment variable `BURN_PREFERENCE_CPU_ISA` when it is set (read once; a value
/// other than `baseline`, `avx2` or `avx512` is ignored). Benchmarks use the cap to compare
/// levels on one machine; `docs/performance.md` describes it for users.
pub fn cpu_kernel_isa() -> CpuKernelIsa {
    static ISA: OnceLock<CpuKernelIsa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = CpuKernelIsa::detected();
        std::env::var("BURN_PREFERENCE_CPU_ISA")
            .ok()
            .and_then(|name| CpuKernelIsa::parse(&name))
            .map_or(detected, |cap| cap.min(detected))
    })
}

/// One `#[target_feature]` copy of a row loop per instruction set, and the run-time choice
/// among them (the copies differ only in what the compiler may emit).
macro_rules! isa_dispatch {
    (
        fn $name:ident<E, $c1:ident, $c2:ident>($($arg:ident: $ty:ty),* $(,)?) => $generic:ident
    ) => {
        fn $name<E: Elem, const $c1: bool, const $c2: bool>(
            isa: CpuKernelIsa,
            $($arg: $ty),*
        ) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<E: Elem, const $c1: bool, const $c2: bool>($($arg: $ty),*) {
                    $generic::<E, true, $c1, $c2>($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512<E: Elem, const $c1: bool, const $c2: bool>($($arg: $ty),*) {
                    $generic::<E, true, $c1, $c2>($($arg),*)
                }
                // Capped by what this CPU has, so the features each copy enables are present.
                match isa.min(CpuKernelIsa::detected()) {
                    // SAFETY: AVX-512 F/BW/DQ/VL, AVX2 and FMA were detected at run time.
                    CpuKernelIsa::Avx512 => return unsafe { avx512::<E, $c1, $c2>($($arg),*) },
                    // SAFETY: AVX2 and FMA were detected at run time.
                    CpuKernelIsa::Avx2 => return unsafe { avx2::<E, $c1, $c2>($($arg),*) },
                    CpuKernelIsa::Baseline => {}
                }
            }
            let _ = isa;
            $generic::<E, false, $c1, $c2>($($arg),*)
        }
    };
}

isa_dispatch!(fn forward_rows_for<E, TR, EX>(
    part: ForwardPart<'_, E>,
    vocab: usize,
    spec: &Spec,
) => forward_rows_generic);
isa_dispatch!(fn backward_rows_for<E, TR, ENT>(
    logits: Option<&[E]>,
    vocab: usize,
    rows: (RowsRef<'_>, &Transform),
    out: &mut [E],
) => backward_rows_generic);

pub(super) fn forward_rows<E: Elem>(
    isa: CpuKernelIsa,
    part: ForwardPart<'_, E>,
    vocab: usize,
    spec: &Spec,
) {
    let tr = !spec.transform.is_identity();
    let ex = spec.extras.entropy || spec.extras.log_sum_sq;
    match (tr, ex) {
        (false, false) => forward_rows_for::<E, false, false>(isa, part, vocab, spec),
        (false, true) => forward_rows_for::<E, false, true>(isa, part, vocab, spec),
        (true, false) => forward_rows_for::<E, true, false>(isa, part, vocab, spec),
        (true, true) => forward_rows_for::<E, true, true>(isa, part, vocab, spec),
    }
}

pub(super) fn backward_rows<E: Elem>(
    isa: CpuKernelIsa,
    logits: Option<&[E]>,
    vocab: usize,
    rows: (RowsRef<'_>, &Transform),
    out: &mut [E],
) {
    let tr = !rows.1.is_identity();
    let ent = !rows.0.grad_entropy.is_empty();
    match (tr, ent) {
        (false, false) => backward_rows_for::<E, false, false>(isa, logits, vocab, rows, out),
        (false, true) => backward_rows_for::<E, false, true>(isa, logits, vocab, rows, out),
        (true, false) => backward_rows_for::<E, true, false>(isa, logits, vocab, rows, out),
        (true, true) => backward_rows_for::<E, true, true>(isa, logits, vocab, rows, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::Extras;
    use crate::fused::cpu::BLOCK;
    use crate::fused::cpu::rows::Rows;
    use crate::fused::cpu::threads::{backward, backward_in_place, forward};

    /// Each instruction-set copy of the kernels this CPU can run, called directly, against an
    /// f64 reference: log-prob, entropy, `log Σ p²`, mean and top-1 in the forward, the
    /// gradient of `Σ g·ℓ + g_H·H` in the backward, with a softcapped, scaled, tempered row.
    #[test]
    fn every_instruction_set_matches_an_f64_reference() {
        let (n, v) = (5, 3 * BLOCK + 37);
        let transform = Transform {
            scale: 1.3,
            softcap: Some(6.0),
            inv_temperature: 1.0 / 0.7,
        };
        let spec = Spec {
            transform,
            extras: Extras {
                entropy: true,
                log_sum_sq: true,
                mean: true,
                top1: true,
            },
        };
        let logits: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919 + 13) % 2003) as f32 / 150.0 - 6.5)
            .collect();
        // Row 1's target is its first maximum (top-1 = 1); row 3 is ignored.
        let argmax_1 = (0..v).fold(0, |best, c| {
            if logits[v + c] > logits[v + best] {
                c
            } else {
                best
            }
        });
        let targets = [
            7,
            argmax_1 as i64,
            (v - 1) as i64,
            -100,
            2 * BLOCK as i64 + 1,
        ];
        let (g, g_h) = ([1.0f32, -0.5, 0.25, 0.0, 2.0], 0.3f32);

        // f64 reference of T(z) = softcap · tanh(scale · z / softcap) / temperature.
        let (scale, cap, inv_t) = (1.3f64, 6.0f64, 1.0f64 / 0.7);
        let tz = |z: f32| cap * (scale * f64::from(z) / cap).tanh() * inv_t;
        let dtz = |z: f32| scale * inv_t * (1.0 - (scale * f64::from(z) / cap).tanh().powi(2));
        struct Want {
            out: [f64; 5],
            grad: Vec<f64>,
        }
        let want: Vec<Option<Want>> = (0..n)
            .map(|r| {
                let y = usize::try_from(targets[r]).ok()?;
                let zr: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|&z| tz(z)).collect();
                let m = zr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + zr.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
                let logp: Vec<f64> = zr.iter().map(|z| z - lse).collect();
                let h = -logp.iter().map(|l| l.exp() * l).sum::<f64>();
                let lss = logp.iter().map(|l| (2.0 * l).exp()).sum::<f64>().ln();
                let mean = zr.iter().sum::<f64>() / v as f64;
                let top1 = f64::from(u8::from(zr[y] >= m && zr[..y].iter().all(|&z| z < zr[y])));
                let grad = (0..v)
                    .map(|c| {
                        let p = logp[c].exp();
                        let onehot = f64::from(u8::from(c == y));
                        let dz =
                            f64::from(g[r]) * (onehot - p) - f64::from(g_h) * p * (logp[c] + h);
                        dz * dtz(logits[r * v + c])
                    })
                    .collect();
                Some(Want {
                    out: [logp[y], h, lss, mean, top1],
                    grad,
                })
            })
            .collect();

        let levels = [
            CpuKernelIsa::Baseline,
            CpuKernelIsa::Avx2,
            CpuKernelIsa::Avx512,
        ];
        let runnable: Vec<_> = levels
            .into_iter()
            .filter(|&l| l <= CpuKernelIsa::detected())
            .collect();
        for isa in runnable {
            let f = forward(isa, &logits, v, &targets, &spec);
            let k = spec.extras.columns();
            assert_eq!(k, 5);
            for (r, w) in want.iter().enumerate() {
                let got = &f.out[r * k..(r + 1) * k];
                let Some(w) = w else {
                    assert_eq!(got, &[0.0; 5], "{isa:?} ignored row {r}");
                    continue;
                };
                for (c, (&got, &want)) in got.iter().zip(&w.out).enumerate() {
                    let err = (f64::from(got) - want).abs() / want.abs().max(1.0);
                    assert!(err < 2e-5, "{isa:?} row {r} column {c}: {got} vs {want}");
                }
            }
            let rows = Rows {
                targets: targets.to_vec(),
                max: f.max.clone(),
                log_sum: f.log_sum.clone(),
                grad: g.to_vec(),
                grad_entropy: vec![g_h; n],
                entropy: f.out.iter().skip(1).step_by(k).copied().collect(),
            };
            let copied = backward(isa, &logits, v, &rows, &transform);
            let mut in_place = logits.clone();
            backward_in_place(isa, &mut in_place, v, &rows, &transform);
            assert_eq!(copied, in_place, "{isa:?}");
            for (r, w) in want.iter().enumerate() {
                let got = &copied[r * v..(r + 1) * v];
                let Some(w) = w else {
                    assert!(got.iter().all(|&d| d == 0.0), "{isa:?} ignored row {r}");
                    continue;
                };
                let worst = got
                    .iter()
                    .zip(&w.grad)
                    .map(|(&d, &want)| (f64::from(d) - want).abs())
                    .fold(0.0f64, f64::max);
                assert!(
                    worst < 1e-6,
                    "{isa:?} row {r}: worst gradient error {worst}"
                );
            }
        }
    }

    #[test]
    fn the_detected_instruction_set_is_what_the_cpu_has() {
        let detected = CpuKernelIsa::detected();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            assert_eq!(
                detected >= CpuKernelIsa::Avx512,
                has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vl")
                    && has!("avx2")
                    && has!("fma")
            );
            assert_eq!(detected >= CpuKernelIsa::Avx2, has!("avx2") && has!("fma"));
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(detected, CpuKernelIsa::Baseline);
        assert!(cpu_kernel_isa() <= detected);
        assert_eq!(CpuKernelIsa::parse(" AVX512 "), Some(CpuKernelIsa::Avx512));
        assert_eq!(CpuKernelIsa::parse("sse9"), None);
    }
}
