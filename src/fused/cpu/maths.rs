//! The arithmetic of the kernels, on `f32` blocks: a branch-free `exp` and `tanh` (plain float
//! and integer ops, so that the loops over them vectorise), the reductions with [`LANES`]
//! independent accumulators, and the logits transform ([`Affine`]). `FMA` selects fused
//! multiply-adds, for the copies compiled with FMA.

use crate::fused::Transform;

/// Independent accumulators per reduction, so that the loops vectorise.
pub(super) const LANES: usize = 16;
/// Below this, `e^x` is 0 in `f32`; clamping `x` there keeps `e^x · x` at 0 where `x = −∞`.
const LOG_FLOOR: f32 = -200.0;

/// `a·b + c`, fused into one instruction in the copies compiled with FMA.
#[inline(always)]
pub(super) fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` in `f32` for `x ≤ 0` (every exponent here is `z − m` or `z − m − log s`), within
/// ~2 ulp; 0 below −87.3, where `e^x` leaves the normal range.
///
/// Cody–Waite reduction `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, Cephes' degree-6 polynomial for
/// `e^r`, and `2^n` written straight into the exponent bits. Rounding uses the `1.5·2^23` trick,
/// which needs no SSE4.1 `roundps`. Only selects and arithmetic, so loops over it vectorise;
/// restricting to `x ≤ 0` drops the overflow handling of a general `exp`.
#[inline(always)]
pub(crate) fn exp_nonpos<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.336_55;

    // NaN fails the comparison, so it propagates through `xc`.
    let xc = if x < LO { LO } else { x };
    let shifted = mul_add::<FMA>(xc, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add::<FMA>(n, -LN2_HI, xc);
    let r = mul_add::<FMA>(n, -LN2_LO, r);

    let mut p = 1.987_569_1e-4_f32;
    p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    p = mul_add::<FMA>(p, r, 8.333_452e-3);
    p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    p = mul_add::<FMA>(p, r, 1.666_666_5e-1);
    p = mul_add::<FMA>(p, r, 0.5);
    let er = mul_add::<FMA>(p, r * r, r + 1.0);

    // The low mantissa bits of `shifted` hold n ∈ [−126, 0] above 0x4B40_0000.
    let ni = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let y = er * f32::from_bits(((ni + 127) << 23) as u32);
    if x < LO { 0.0 } else { y }
}

#[inline(always)]
pub(super) fn max_slice(xs: &[f32]) -> f32 {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let mut acc = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `Σ e^{x − m}`.
#[inline(always)]
pub(super) fn sum_exp_shifted<const FMA: bool>(xs: &[f32], m: f32) -> f32 {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp_nonpos::<FMA>(c[i] - m);
        }
    }
    let tail: f32 = rest.iter().map(|&x| exp_nonpos::<FMA>(x - m)).sum();
    tail + acc.iter().sum::<f32>()
}

/// `Σ x`.
#[inline(always)]
pub(super) fn sum_slice(xs: &[f32]) -> f32 {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    rest.iter().sum::<f32>() + acc.iter().sum::<f32>()
}

#[inline(always)]
pub(super) fn floor_log(x: f32) -> f32 {
    if x < LOG_FLOOR { LOG_FLOOR } else { x }
}

/// `(Σ e^{x − m}, Σ e^{x − m}(x − m), Σ e^{2(x − m)})`, for the entropy and `log Σ p²`.
#[inline(always)]
pub(super) fn sum_exp_extra<const FMA: bool>(xs: &[f32], m: f32) -> (f32, f32, f32) {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let (mut s, mut w, mut q) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            let e = exp_nonpos::<FMA>(d);
            s[i] += e;
            w[i] = mul_add::<FMA>(e, floor_log(d), w[i]);
            q[i] = mul_add::<FMA>(e, e, q[i]);
        }
    }
    let (mut ts, mut tw, mut tq) = (0.0f32, 0.0f32, 0.0f32);
    for &x in rest {
        let d = x - m;
        let e = exp_nonpos::<FMA>(d);
        ts += e;
        tw += e * floor_log(d);
        tq += e * e;
    }
    (
        ts + s.iter().sum::<f32>(),
        tw + w.iter().sum::<f32>(),
        tq + q.iter().sum::<f32>(),
    )
}

/// `tanh x` in `f32` within a few ulp, branch-free so that loops over it vectorise: Cephes'
/// odd polynomial for `|x| < 0.625`, `(1 − e^{−2|x|}) / (1 + e^{−2|x|})` above (no cancellation
/// there), the sign copied back.
#[inline(always)]
pub(crate) fn tanh<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_nonpos::<FMA>(-2.0 * a);
    let large = (1.0 - e) / (1.0 + e);
    let z = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = mul_add::<FMA>(p, z, 2.063_909e-2);
    p = mul_add::<FMA>(p, z, -5.373_971_6e-2);
    p = mul_add::<FMA>(p, z, 1.333_144_2e-1);
    p = mul_add::<FMA>(p, z, -3.333_328e-1);
    let small = mul_add::<FMA>(p * z, a, a);
    let t = if a < 0.625 { small } else { large };
    t.copysign(x)
}

/// The transform's constants: `z' = tanh(pre·z)·post` with a softcap, `z' = (z·pre)·post`
/// without; `∂z'/∂z = chain·(1 − tanh²)` or `chain`.
#[derive(Clone, Copy)]
pub(super) struct Affine {
    softcap: bool,
    pre: f32,
    post: f32,
    chain: f32,
}

impl Affine {
    pub(super) fn new(t: &Transform) -> Self {
        match t.softcap {
            Some(cap) => Self {
                softcap: true,
                pre: t.scale / cap,
                post: cap * t.inv_temperature,
                chain: t.scale * t.inv_temperature,
            },
            None => Self {
                softcap: false,
                pre: t.scale,
                post: t.inv_temperature,
                chain: t.scale * t.inv_temperature,
            },
        }
    }

    /// `(z', ∂z'/∂z)`.
    #[inline(always)]
    pub(super) fn apply<const FMA: bool>(&self, z: f32) -> (f32, f32) {
        if self.softcap {
            let t = tanh::<FMA>(z * self.pre);
            (t * self.post, self.chain * (1.0 - t * t))
        } else {
            ((z * self.pre) * self.post, self.chain)
        }
    }
}

/// `dst = T(src)`; the branch on the softcap sits outside the loops.
#[inline(always)]
pub(super) fn transform_block<const FMA: bool>(src: &[f32], dst: &mut [f32], a: &Affine) {
    if a.softcap {
        for (d, &z) in dst.iter_mut().zip(src) {
            *d = tanh::<FMA>(z * a.pre) * a.post;
        }
    } else {
        for (d, &z) in dst.iter_mut().zip(src) {
            *d = (z * a.pre) * a.post;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_exp<const FMA: bool>() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = f64::from(exp_nonpos::<FMA>(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst} (fma {FMA})");
        assert_eq!(exp_nonpos::<FMA>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos::<FMA>(-100.0), 0.0);
        assert!(exp_nonpos::<FMA>(f32::NAN).is_nan());
        assert_eq!(exp_nonpos::<FMA>(0.0), 1.0);
    }

    #[test]
    fn exp_matches_std() {
        check_exp::<false>();
        check_exp::<true>(); // software `mul_add` where the CPU lacks FMA: slow but exact
    }

    fn check_tanh<const FMA: bool>() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x <= 12.0 {
            let got = f64::from(tanh::<FMA>(x));
            let want = f64::from(x).tanh();
            worst = worst.max(((got - want) / want.abs().max(1e-30)).abs());
            x += 0.000_71;
        }
        assert!(worst < 1e-6, "worst relative error {worst} (fma {FMA})");
        assert_eq!(tanh::<FMA>(f32::INFINITY), 1.0);
        assert_eq!(tanh::<FMA>(f32::NEG_INFINITY), -1.0);
        assert!(tanh::<FMA>(f32::NAN).is_nan());
        assert_eq!(tanh::<FMA>(0.0), 0.0);
    }

    #[test]
    fn tanh_matches_std() {
        check_tanh::<false>();
        check_tanh::<true>();
    }
}
