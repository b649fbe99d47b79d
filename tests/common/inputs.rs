//! Deterministic test inputs, the same on every run and every device.

/// A 64-bit linear congruential generator: uniform draws in `[0, 1)`.
pub struct Lcg {
    state: u64,
}

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(6_364_136_223_846_793_005) | 1,
        }
    }

    /// The next uniform draw in `[0, 1)`.
    pub fn next_uniform(&mut self) -> f64 {
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.state >> 33) as f64 / f64::from(1u32 << 31)
    }

    /// A sum of three uniforms, centred and scaled: cheap, roughly normal, and all tail values
    /// still finite (within `±3·scale`).
    pub fn next_normalish(&mut self, scale: f32) -> f32 {
        (self.next_uniform() + self.next_uniform() + self.next_uniform() - 1.5) as f32 * 2.0 * scale
    }
}

/// `n` deterministic pseudo-normal values ([`Lcg::next_normalish`]).
pub fn values(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Lcg::new(seed);
    (0..n).map(|_| rng.next_normalish(scale)).collect()
}
