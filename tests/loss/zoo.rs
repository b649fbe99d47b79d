//! The DPO-family losses of `DpoLoss` against f64 references written here: values and
//! gradients (central differences of the f64 reference) per loss type, f-divergence, soft
//! labels and ranked lists; finite values and gradients at `βΔ = ±1e4`; typed errors for
//! options that cannot apply.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_preference::logps::SequenceLogpsOutput;
use burn_preference::loss::FDivergence;
use burn_preference::prelude::*;

use crate::common::reference::{log_sigmoid, mean, sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, devices, floats, pair_columns, to_vec};

/// One f64 pairwise batch: policy `c, r`, reference `c0, r0`, lengths `lc, lr`.
#[derive(Clone)]
struct Pairs {
    c: Vec<f64>,
    r: Vec<f64>,
    c0: Vec<f64>,
    r0: Vec<f64>,
    lc: Vec<f64>,
    lr: Vec<f64>,
}

struct Knobs {
    beta: f64,
    eps: f64,
    tau: f64,
    fdiv: FDivergence,
    alpha: f64,
}

fn score(k: &Knobs, u: f64) -> f64 {
    match k.fdiv {
        FDivergence::ReverseKl => u,
        FDivergence::ForwardKl => 1.0 - (-u).exp(),
        FDivergence::JsDivergence => 2f64.ln() + log_sigmoid(u),
        FDivergence::AlphaDivergence => {
            (((k.alpha - 1.0) * u).min(80.0).exp() - 1.0) / (k.alpha - 1.0)
        }
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The per-prompt losses of one loss type, straight from TRL's formulas, in f64.
fn reference(t: DpoLossType, k: &Knobs, p: &Pairs) -> Vec<f64> {
    use DpoLossType as T;
    let (beta, eps) = (k.beta, k.eps);
    let n = p.c.len();
    let lc: Vec<f64> = (0..n).map(|i| p.c[i] - p.c0[i]).collect();
    let lr: Vec<f64> = (0..n).map(|i| p.r[i] - p.r0[i]).collect();
    let smoothed = |d: f64| -(1.0 - eps) * log_sigmoid(beta * d) - eps * log_sigmoid(-beta * d);
    if t == T::Aot {
        let a = sorted((0..n).map(|i| p.c[i] - p.r[i]).collect());
        let b = sorted((0..n).map(|i| p.c0[i] - p.r0[i]).collect());
        return (0..n).map(|i| smoothed(a[i] - b[i])).collect();
    }
    if t == T::AotUnpaired {
        let (a, b) = (sorted(lc.clone()), sorted(lr.clone()));
        return (0..n).map(|i| smoothed(a[i] - b[i])).collect();
    }
    (0..n)
        .map(|i| {
            let (sc, sr) = (score(k, lc[i]), score(k, lr[i]));
            let z = beta * (sc - sr);
            let (zc, zr) = (beta * lc[i], beta * lr[i]);
            let norm = sc / p.lc[i].max(1.0) - sr / p.lr[i].max(1.0);
            match t {
                T::Sigmoid => -log_sigmoid(z),
                T::Hinge => (1.0 - z).max(0.0),
                T::Ipo => (norm - 1.0 / (2.0 * beta)).powi(2),
                T::ExoPair => {
                    sigmoid(z) * (log_sigmoid(z) - (1.0 - eps).ln())
                        + sigmoid(-z) * (log_sigmoid(-z) - eps.ln())
                }
                T::NcaPair => -log_sigmoid(zc) - 0.5 * log_sigmoid(-zc) - 0.5 * log_sigmoid(-zr),
                T::Robust => {
                    (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1.0 - 2.0 * eps)
                }
                T::BcoPair => -log_sigmoid(zc) - log_sigmoid(-zr),
                T::SppoHard => (lc[i] - 0.5 / beta).powi(2) + (lr[i] + 0.5 / beta).powi(2),
                T::ApoZero => 1.0 - sigmoid(zc) + sigmoid(zr),
                T::ApoDown => sigmoid(zc) + 1.0 - sigmoid(zc - zr),
                T::Discopop => {
                    let m = sigmoid(z / k.tau);
                    (1.0 - m) * -log_sigmoid(z) + m * (-z).exp()
                }
                T::SigmoidNorm => -log_sigmoid(beta * norm),
                _ => unreachable!(),
            }
        })
        .collect()
}

/// Central differences of the mean loss with respect to every `c_i`, then every `r_i`.
fn numeric_grad(t: DpoLossType, k: &Knobs, p: &Pairs) -> Vec<f64> {
    let h = 1e-6;
    let mut out = Vec::new();
    for side in 0..2 {
        for i in 0..p.c.len() {
            let bump = |d: f64| {
                let mut q = p.clone();
                if side == 0 {
                    q.c[i] += d
                } else {
                    q.r[i] += d
                }
                mean(&reference(t, k, &q))
            };
            out.push((bump(h) - bump(-h)) / (2.0 * h));
        }
    }
    out
}

fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|x| *x as f32).collect()
}

/// Runs the loss on `device`; returns the per-prompt losses and d(mean loss)/d(c, r).
fn run(config: &DpoConfig, p: &Pairs, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let n = p.c.len();
    let c = floats(f32v(&p.c), [n], device).require_grad();
    let r = floats(f32v(&p.r), [n], device).require_grad();
    let lengths = Tensor::stack::<2>(
        vec![
            floats(f32v(&p.lc), [n], device),
            floats(f32v(&p.lr), [n], device),
        ],
        1,
    );
    let batch = PairedBatch::new(pair_columns(c.clone(), r.clone()))
        .unwrap()
        .with_reference(pair_columns(
            floats(f32v(&p.c0), [n], device),
            floats(f32v(&p.r0), [n], device),
        ))
        .unwrap()
        .with_lengths(lengths)
        .unwrap();
    let out = config.init().unwrap().forward(batch).unwrap();
    let grads = out.loss.backward();
    let mut grad = to_vec(c.grad(&grads).expect("d/dc"));
    grad.extend(to_vec(r.grad(&grads).expect("d/dr")));
    (to_vec(out.losses), grad)
}

fn sample() -> Pairs {
    Pairs {
        c: vec![-12.0, -30.5, -7.25, -18.0, -3.0],
        r: vec![-14.0, -29.0, -7.0, -25.5, -9.0],
        c0: vec![-13.0, -30.0, -8.0, -17.0, -4.5],
        r0: vec![-13.5, -29.5, -6.0, -24.0, -8.2],
        lc: vec![4.0, 11.0, 3.0, 7.0, 1.0],
        lr: vec![5.0, 10.0, 2.0, 9.0, 0.0],
    }
}

fn config(t: DpoLossType, k: &Knobs) -> DpoConfig {
    let eps = if t.reads_label_smoothing() {
        k.eps
    } else {
        0.0
    };
    DpoConfig::new()
        .with_loss_type(t)
        .with_beta(k.beta)
        .with_label_smoothing(eps)
        .with_discopop_tau(k.tau)
        .with_f_divergence_type(k.fdiv)
        .with_f_alpha_divergence_coef(k.alpha)
}

#[test]
fn every_loss_type_matches_an_f64_reference_with_gradients() {
    let p = sample();
    for (name, device) in autodiff_devices() {
        for t in DpoLossType::ALL {
            if t == DpoLossType::Sft {
                continue; // token-level: see `sft_wpo_and_ld_dpo_match_f64_references`
            }
            for (beta, eps, tau) in [(0.1, 0.1f64, 0.05), (0.7, 0.3, 0.4)] {
                let k = Knobs {
                    beta,
                    eps: if t == DpoLossType::Robust {
                        eps.min(0.2)
                    } else {
                        eps
                    },
                    tau,
                    fdiv: FDivergence::ReverseKl,
                    alpha: 0.5,
                };
                let k_eps = if t.reads_label_smoothing() {
                    k.eps
                } else {
                    0.0
                };
                let k = Knobs { eps: k_eps, ..k };
                let (losses, grad) = run(&config(t, &k), &p, &device);
                let what = format!("{t} β={beta} ε={} τ={tau}", k.eps);
                assert_close(name, &what, &losses, &reference(t, &k, &p), 1e-5, 1e-6);
                let g = numeric_grad(t, &k, &p);
                let scale = g.iter().fold(0f64, |m, x| m.max(x.abs()));
                assert_close(
                    name,
                    &format!("{what} grad"),
                    &grad,
                    &g,
                    1e-4,
                    1e-5 * scale + 1e-7,
                );
            }
        }
    }
}

#[test]
fn f_divergence_scores_match_an_f64_reference_with_gradients() {
    let p = sample();
    let small = Pairs {
        // Keep e^{−u} moderate so the forward-KL reference is well conditioned.
        c0: p.c.iter().map(|x| x + 0.7).collect(),
        r0: p.r.iter().map(|x| x - 0.4).collect(),
        ..p.clone()
    };
    for (name, device) in autodiff_devices() {
        for t in [
            DpoLossType::Sigmoid,
            DpoLossType::Hinge,
            DpoLossType::Ipo,
            DpoLossType::ExoPair,
            DpoLossType::Robust,
            DpoLossType::Discopop,
            DpoLossType::SigmoidNorm,
        ] {
            for (fdiv, alpha) in [
                (FDivergence::ForwardKl, 0.5),
                (FDivergence::JsDivergence, 0.5),
                (FDivergence::AlphaDivergence, 0.5),
                (FDivergence::AlphaDivergence, 0.3),
                (FDivergence::AlphaDivergence, 1.0),
            ] {
                let eps = if t.reads_label_smoothing() { 0.1 } else { 0.0 };
                let k = Knobs {
                    beta: 0.5,
                    eps,
                    tau: 0.05,
                    fdiv,
                    alpha,
                };
                let fdiv_ref = if (alpha - 1.0f64).abs() < 1e-6 {
                    Knobs {
                        fdiv: FDivergence::ReverseKl,
                        ..k
                    }
                } else {
                    k
                };
                let (losses, grad) = run(
                    &config(
                        t,
                        &Knobs {
                            fdiv,
                            alpha,
                            ..fdiv_ref
                        },
                    ),
                    &small,
                    &device,
                );
                let what = format!("{t} {fdiv} a={alpha}");
                assert_close(
                    name,
                    &what,
                    &losses,
                    &reference(t, &fdiv_ref, &small),
                    1e-5,
                    1e-6,
                );
                let g = numeric_grad(t, &fdiv_ref, &small);
                let scale = g.iter().fold(0f64, |m, x| m.max(x.abs()));
                assert_close(
                    name,
                    &format!("{what} grad"),
                    &grad,
                    &g,
                    1e-4,
                    1e-5 * scale + 1e-7,
                );
            }
        }
    }
}

#[test]
fn every_loss_type_is_finite_at_margins_of_1e4() {
    for (name, device) in autodiff_devices() {
        for t in DpoLossType::ALL {
            if t == DpoLossType::Sft {
                continue;
            }
            let fdivs: &[FDivergence] = if t.supports_f_divergence() {
                &FDivergence::ALL
            } else {
                &[FDivergence::ReverseKl]
            };
            for fdiv in fdivs {
                let eps = if t.reads_label_smoothing() { 0.1 } else { 0.0 };
                let k = Knobs {
                    beta: 1.0,
                    eps,
                    tau: 0.05,
                    fdiv: *fdiv,
                    alpha: 0.5,
                };
                // βΔ = +1e4, −1e4 and 0; each response's own log-ratio at ±1e4 too.
                let p = Pairs {
                    c: vec![1e4, -1e4, 0.0, 1e4],
                    r: vec![-0.0, 0.0, 0.0, 1e4],
                    c0: vec![0.0; 4],
                    r0: vec![0.0, 0.0, 0.0, -1e4 + 1e4],
                    lc: vec![1.0; 4],
                    lr: vec![1.0; 4],
                };
                let (losses, grad) = run(&config(t, &k), &p, &device);
                // A squared loss of an exponential score (e^80 at the cap, as TRL caps the
                // α-divergence) exceeds f32 — TRL's value is +∞ there too; never NaN.
                let exponential =
                    matches!(fdiv, FDivergence::ForwardKl | FDivergence::AlphaDivergence);
                let overflow_ok = t == DpoLossType::Ipo && exponential;
                assert!(
                    grad.iter().all(|x| x.is_finite())
                        && losses
                            .iter()
                            .all(|x| x.is_finite() || (overflow_ok && *x == f32::INFINITY)),
                    "[{name}] {t} {fdiv}: {losses:?} {grad:?}"
                );
            }
        }
        // Where TRL itself is finite, the values are the closed forms: discopop at z = ±1e4.
        let k = Knobs {
            beta: 1.0,
            eps: 0.0,
            tau: 0.05,
            fdiv: FDivergence::ReverseKl,
            alpha: 0.5,
        };
        let p = Pairs {
            c: vec![1e4, -1e4],
            r: vec![0.0, 0.0],
            c0: vec![0.0; 2],
            r0: vec![0.0; 2],
            lc: vec![1.0; 2],
            lr: vec![1.0; 2],
        };
        let (losses, _) = run(&config(DpoLossType::Discopop, &k), &p, &device);
        // z = 1e4: m = 1, e^{−z} = 0; z = −1e4: m = 0, softplus(1e4) = 1e4 (TRL: 0·∞ = NaN).
        assert_close(name, "discopop ±1e4", &losses, &[0.0, 1e4], 1e-6, 1e-6);
    }
}

#[test]
fn margin_losses_take_soft_labels_and_ranked_lists() {
    use DpoLossType as T;
    let k = Knobs {
        beta: 0.5,
        eps: 0.1,
        tau: 0.3,
        fdiv: FDivergence::ReverseKl,
        alpha: 0.5,
    };
    for (name, device) in devices() {
        // Soft labels: q·L(z) + (1 − q)·L(−z), and IPO's target (2q − 1)/(2β).
        let p = sample();
        let q = [1.0, 0.8, 0.5, 0.3, 0.0];
        for t in [
            T::Sigmoid,
            T::Hinge,
            T::Robust,
            T::ExoPair,
            T::Discopop,
            T::SigmoidNorm,
            T::Ipo,
        ] {
            let swapped = Pairs {
                c: p.r.clone(),
                r: p.c.clone(),
                c0: p.r0.clone(),
                r0: p.c0.clone(),
                lc: p.lr.clone(),
                lr: p.lc.clone(),
            };
            let (fwd, back) = (reference(t, &k, &p), reference(t, &k, &swapped));
            let expected: Vec<f64> = if t == T::Ipo {
                (0..5)
                    .map(|i| {
                        let h = (p.c[i] - p.c0[i]) / p.lc[i].max(1.0)
                            - (p.r[i] - p.r0[i]) / p.lr[i].max(1.0);
                        (h - (2.0 * q[i] - 1.0) / (2.0 * k.beta)).powi(2)
                    })
                    .collect()
            } else {
                (0..5)
                    .map(|i| q[i] * fwd[i] + (1.0 - q[i]) * back[i])
                    .collect()
            };
            let lengths = Tensor::stack::<2>(
                vec![
                    floats(f32v(&p.lc), [5], &device),
                    floats(f32v(&p.lr), [5], &device),
                ],
                1,
            );
            let batch = PairedBatch::new(pair_columns(
                floats(f32v(&p.c), [5], &device),
                floats(f32v(&p.r), [5], &device),
            ))
            .unwrap()
            .with_reference(pair_columns(
                floats(f32v(&p.c0), [5], &device),
                floats(f32v(&p.r0), [5], &device),
            ))
            .unwrap()
            .with_lengths(lengths)
            .unwrap()
            .with_soft_labels(floats(f32v(&q), [5], &device))
            .unwrap();
            let out = config(t, &k).init().unwrap().forward(batch).unwrap();
            assert_close(
                name,
                &format!("{t} soft labels"),
                &to_vec(out.losses),
                &expected,
                1e-5,
                1e-6,
            );
        }

        // Ranked lists: K = 3 with a tie; the mean over ordered pairs r_i > r_j.
        let policy = [-3.0, -5.0, -4.0, -6.0, -2.0, -2.5];
        let refs = [-3.5, -4.0, -4.5, -5.0, -2.5, -2.0];
        let scores = [2.0, 1.0, 1.0, 0.5, 3.0, 1.0];
        let lens = [2.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        for t in [
            T::Sigmoid,
            T::Hinge,
            T::Robust,
            T::ExoPair,
            T::Discopop,
            T::SigmoidNorm,
            T::Ipo,
        ] {
            let mut expected = Vec::new();
            for b in 0..2 {
                let (mut sum, mut count) = (0.0, 0.0);
                for i in 0..3 {
                    for j in 0..3 {
                        let (a, z) = (b * 3 + i, b * 3 + j);
                        if scores[a] > scores[z] {
                            let pair = Pairs {
                                c: vec![policy[a]],
                                r: vec![policy[z]],
                                c0: vec![refs[a]],
                                r0: vec![refs[z]],
                                lc: vec![lens[a]],
                                lr: vec![lens[z]],
                            };
                            sum += reference(t, &k, &pair)[0];
                            count += 1.0;
                        }
                    }
                }
                expected.push(sum / count);
            }
            let batch = PairedBatch::new(floats(f32v(&policy), [2, 3], &device))
                .unwrap()
                .with_scores(floats(f32v(&scores), [2, 3], &device))
                .unwrap()
                .with_reference(floats(f32v(&refs), [2, 3], &device))
                .unwrap()
                .with_lengths(floats(f32v(&lens), [2, 3], &device))
                .unwrap();
            let out = config(t, &k).init().unwrap().forward(batch).unwrap();
            assert_close(
                name,
                &format!("{t} ranked"),
                &to_vec(out.losses),
                &expected,
                1e-5,
                1e-6,
            );
        }
    }
}

#[test]
fn options_that_cannot_apply_are_typed_errors() {
    use DpoLossType as T;
    for (name, device) in devices() {
        let f = |v: Vec<f32>, n: usize| floats(v, [n], &device);
        let pairwise = || {
            PairedBatch::new(pair_columns(f(vec![-1.0, -2.0], 2), f(vec![-2.0, -1.0], 2)))
                .unwrap()
                .with_reference(pair_columns(f(vec![-1.5, -1.5], 2), f(vec![-1.5, -1.5], 2)))
                .unwrap()
        };
        let ranked = || {
            PairedBatch::new(floats(vec![-1.0, -2.0, -3.0], [1, 3], &device))
                .unwrap()
                .with_reference(floats(vec![-1.0; 3], [1, 3], &device))
                .unwrap()
        };
        for t in [
            T::NcaPair,
            T::BcoPair,
            T::SppoHard,
            T::Aot,
            T::AotUnpaired,
            T::ApoZero,
            T::ApoDown,
            T::Sft,
        ] {
            let loss = DpoConfig::new().with_loss_type(t).init().unwrap();
            let err = loss.forward(ranked()).unwrap_err();
            assert!(
                matches!(err, PreferenceError::Shape { arg: "policy", .. }),
                "[{name}] {t}: {err}"
            );
            if t != T::Sft {
                let soft = pairwise().with_soft_labels(f(vec![0.9, 0.7], 2)).unwrap();
                let err = loss.forward(soft).unwrap_err();
                assert!(
                    matches!(
                        err,
                        PreferenceError::InvalidValue {
                            arg: "soft_labels",
                            ..
                        }
                    ),
                    "[{name}] {t}: {err}"
                );
            }
        }
        // Inputs the batch lacks.
        let missing = |config: DpoConfig| match config.init().unwrap().forward(pairwise()) {
            Err(PreferenceError::MissingInput { loss, arg, why }) => (loss, arg, why),
            other => panic!("[{name}] expected MissingInput, got {other:?}"),
        };
        let (_, arg, why) = missing(DpoConfig::new().with_loss_type(T::Sft));
        assert!(
            arg.contains("token") && why.contains("return_token_logps"),
            "{arg}: {why}"
        );
        let (loss, _, why) = missing(DpoConfig::new().with_use_weighting(true));
        assert!(
            loss == "WPO" && why.contains("return_log_sum_sq_probs"),
            "{why}"
        );
        let (loss, _, why) = missing(DpoConfig::new().with_ld_alpha(Some(0.5)));
        assert!(
            loss == "LD-DPO" && why.contains("return_token_logps"),
            "{why}"
        );
        for t in [T::Ipo, T::SigmoidNorm] {
            let (loss, arg, _) = missing(DpoConfig::new().with_loss_type(t));
            assert_eq!((loss, arg), (t.as_str(), "lengths"));
        }
        let no_reference =
            PairedBatch::new(pair_columns(f(vec![-1.0], 1), f(vec![-2.0], 1))).unwrap();
        let err = DpoConfig::new()
            .init()
            .unwrap()
            .forward(no_reference.clone())
            .unwrap_err();
        assert!(
            matches!(
                err,
                PreferenceError::MissingInput {
                    arg: "reference",
                    ..
                }
            ),
            "{err}"
        );
        // Reference-free: ℓ is the policy's log-prob (one pair: the mean is the sum).
        let out = DpoConfig::new()
            .with_reference_free(true)
            .init()
            .unwrap()
            .forward(no_reference)
            .unwrap();
        assert_close(
            name,
            "reference-free",
            &to_vec(out.loss),
            &[softplus(-0.1)],
            1e-6,
            0.0,
        );
    }
}

/// Concatenated rows (2 pairs → 4 rows, chosen first) of per-token log-probs and validity.
const TOKENS: [[f64; 5]; 4] = [
    [-0.5, -1.25, -2.0, 0.0, 0.0],
    [-0.75, -0.25, 0.0, 0.0, 0.0],
    [-1.5, -0.5, -0.125, -3.0, 0.0],
    [-0.25, -2.5, -1.0, -0.5, -0.75],
];
const VALID: [[bool; 5]; 4] = [
    [true, true, true, false, false],
    [false, true, true, false, false],
    [true, true, true, true, false],
    [true, true, true, true, true],
];
const LSSP: [[f64; 5]; 4] = [
    [-0.9, -1.0, -1.5, 0.0, 0.0],
    [0.0, -0.6, -0.2, 0.0, 0.0],
    [-1.1, -0.7, -0.3, -2.0, 0.0],
    [-0.4, -1.9, -0.8, -0.6, -0.5],
];

fn output(tokens: Tensor<2>, lssp: bool, device: &Device) -> SequenceLogpsOutput {
    let flat = |m: &[[f64; 5]; 4]| -> Vec<f32> {
        (0..4)
            .flat_map(|r| (0..5).map(move |t| if VALID[r][t] { m[r][t] as f32 } else { 0.0 }))
            .collect()
    };
    let valid: Vec<bool> = VALID.iter().flatten().copied().collect();
    let counts: Vec<f32> = VALID
        .iter()
        .map(|r| r.iter().filter(|v| **v).count() as f32)
        .collect();
    let masked = tokens.mask_fill(
        Tensor::<2, Bool>::from_data(TensorData::new(valid.clone(), [4, 5]), device).bool_not(),
        0.0,
    );
    SequenceLogpsOutput {
        logps: masked.clone().sum_dim(1).reshape([4]),
        counts: floats(counts, [4], device),
        token_logps: Some(masked),
        valid: Tensor::from_data(TensorData::new(valid, [4, 5]), device),
        entropy: None,
        log_sum_sq_probs: lssp.then(|| floats(flat(&LSSP), [4, 5], device)),
        mean_logits: None,
        is_top1: None,
        reduction: LogpReduction::Sum,
    }
}

/// The two pairs of `output`'s four rows, chosen first.
fn paired(output: SequenceLogpsOutput) -> burn_preference::Result<PairedBatch> {
    PairedBatch::from_output(output, BatchLayout::ChosenFirst { pairs: 2 })
}

fn token_tensor(device: &Device) -> Tensor<2> {
    let values: Vec<f32> = TOKENS.iter().flatten().map(|x| *x as f32).collect();
    floats(values, [4, 5], device).require_grad()
}

fn valid_sum(r: usize, w: impl Fn(usize) -> f64) -> f64 {
    (0..5)
        .filter(|t| VALID[r][*t])
        .map(|t| w(t) * TOKENS[r][t])
        .sum()
}

#[test]
fn sft_wpo_and_ld_dpo_match_f64_references() {
    for (name, device) in autodiff_devices() {
        // sft: −(Σ chosen valid tokens) / (their count) = −(−3.75 − 0.25) / 5, expanded per pair.
        let tokens = token_tensor(&device);
        let batch = paired(output(tokens.clone(), false, &device)).unwrap();
        let out = DpoConfig::new()
            .with_loss_type(DpoLossType::Sft)
            .with_reference_free(true)
            .init()
            .unwrap()
            .forward(batch)
            .unwrap();
        let nll = -(valid_sum(0, |_| 1.0) + valid_sum(1, |_| 1.0)) / 5.0;
        assert_close(
            name,
            "sft",
            &to_vec(out.losses.clone()),
            &[nll, nll],
            1e-6,
            0.0,
        );
        let grads = out.loss.backward();
        let grad = to_vec(tokens.grad(&grads).unwrap());
        let expected: Vec<f64> = (0..4)
            .flat_map(|r| (0..5).map(move |t| if r < 2 && VALID[r][t] { -0.2 } else { 0.0 }))
            .collect();
        assert_close(name, "sft grad", &grad, &expected, 1e-6, 1e-9);

        // WPO: sigmoid × exp(mean(ℓ − log Σp²)) of chosen × that of rejected (reference-free).
        let tokens = token_tensor(&device);
        let batch = paired(output(tokens, true, &device)).unwrap();
        let out = DpoConfig::new()
            .with_use_weighting(true)
            .with_reference_free(true)
            .init()
            .unwrap()
            .forward(batch)
            .unwrap();
        let weight = |r: usize| {
            let n = VALID[r].iter().filter(|v| **v).count() as f64;
            ((0..5)
                .filter(|t| VALID[r][*t])
                .map(|t| TOKENS[r][t] - LSSP[r][t])
                .sum::<f64>()
                / n)
                .exp()
        };
        let expected: Vec<f64> = (0..2)
            .map(|b| {
                let h = valid_sum(b, |_| 1.0) - valid_sum(b + 2, |_| 1.0);
                softplus(-0.1 * h) * weight(b) * weight(b + 2)
            })
            .collect();
        assert_close(name, "WPO", &to_vec(out.losses), &expected, 1e-5, 0.0);
        let missing = paired(output(token_tensor(&device), false, &device)).unwrap();
        let err = DpoConfig::new()
            .with_use_weighting(true)
            .with_reference_free(true)
            .init()
            .unwrap()
            .forward(missing)
            .unwrap_err();
        assert!(
            matches!(
                err,
                PreferenceError::MissingInput {
                    loss: "WPO",
                    arg: "log_sum_sq_probs",
                    ..
                }
            ),
            "{err}"
        );

        // LD-DPO, α = 0.25: tokens past the pair's shorter length count a quarter, for the
        // policy and the reference (here a copy of the policy's tokens scaled by 1.5).
        let alpha = 0.25;
        let tokens = token_tensor(&device);
        let reference = output(
            token_tensor(&device).detach().mul_scalar(1.5),
            false,
            &device,
        );
        let batch = paired(output(tokens.clone(), false, &device))
            .unwrap()
            .with_reference_output(reference)
            .unwrap();
        let out = DpoConfig::new()
            .with_ld_alpha(Some(alpha))
            .init()
            .unwrap()
            .forward(batch)
            .unwrap();
        let ld = |r: usize| {
            let pair = r % 2;
            let shared = VALID[pair]
                .iter()
                .filter(|v| **v)
                .count()
                .min(VALID[pair + 2].iter().filter(|v| **v).count());
            let mut seen = 0;
            let mut w = [0.0; 5];
            for t in 0..5 {
                if VALID[r][t] {
                    seen += 1;
                    w[t] = if seen <= shared { 1.0 } else { alpha };
                }
            }
            valid_sum(r, |t| w[t])
        };
        // ℓ = ld(policy) − ld(1.5·policy) = −0.5·ld(policy).
        let expected: Vec<f64> = (0..2)
            .map(|b| softplus(-0.1 * (-0.5 * ld(b) + 0.5 * ld(b + 2))))
            .collect();
        assert_close(
            name,
            "LD-DPO",
            &to_vec(out.losses.clone()),
            &expected,
            1e-5,
            0.0,
        );
        let logged = out.metrics.log().unwrap();
        let logps_chosen = logged.iter().find(|(m, _)| *m == "logps/chosen").unwrap().1;
        assert_close(
            name,
            "LD logps/chosen",
            &[logps_chosen as f32],
            &[(ld(0) + ld(1)) / 2.0],
            1e-6,
            0.0,
        );
        assert!(
            logged
                .iter()
                .all(|(m, _)| !m.starts_with("logits/") && *m != "entropy"),
            "no token extras, no token metrics"
        );
        let grads = out.loss.backward();
        assert!(
            tokens.grad(&grads).is_some(),
            "[{name}] LD-DPO gradient reaches the tokens"
        );
    }
}
