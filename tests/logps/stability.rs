//! Numerical stability of the gatherer: positions that are not counted never leak NaN.

use burn_preference::logps::SequenceLogpsConfig;

use crate::common::{assert_close, autodiff_devices, floats, ints, to_vec};

/// NaN or all-−inf logits at an *ignored* position must get exactly 0 gradient on every
/// backend (a backward that multiplies a NaN softmax by −0 would give NaN).
#[test]
fn bad_logits_at_ignored_positions_get_zero_gradient() {
    let gatherer = SequenceLogpsConfig::new()
        .with_shift(false)
        .init()
        .expect("config");
    let v = 4;
    let mut values = vec![0.0f32; 3 * v];
    values[..v].fill(f32::NAN); // position 0: NaN, ignored
    values[v..2 * v].fill(f32::NEG_INFINITY); // position 1: all −inf, ignored
    values[2 * v..].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]); // position 2: valid, label 3
    for (name, device) in autodiff_devices() {
        let logits = floats(values.clone(), [1, 3, v], &device).require_grad();
        let labels = ints(vec![-100, -100, 3], [1, 3], &device);
        let out = gatherer
            .forward(logits.clone(), labels, None)
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let z: Vec<f64> = (1..=4).map(f64::from).collect();
        let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert_close(
            name,
            "logp",
            &to_vec(out.logps.clone()),
            &[4.0 - lse],
            1e-6,
            1e-6,
        );
        let grad = to_vec(logits.grad(&out.logps.sum().backward()).expect("gradient"));
        let mut expected = vec![0.0f64; 2 * v];
        expected.extend(z.iter().enumerate().map(|(i, x)| {
            let p = (x - lse).exp();
            if i == 3 { 1.0 - p } else { -p }
        }));
        assert_close(name, "gradient", &grad, &expected, 1e-5, 0.0);
        assert!(
            grad[..2 * v].iter().all(|g| *g == 0.0),
            "[{name}] ignored rows must get exactly 0, got {:?}",
            &grad[..2 * v]
        );
    }
}
