//! Branch-free f32 math shared by the CPU backend's host kernels (`host_*` modules): written
//! so loops over it vectorise inside a `pulp` dispatch (AVX-512 or AVX2, chosen at run time).

/// Lanes of the vectorised loops: one AVX-512 register (two AVX2 ones).
pub(crate) const LANES: usize = 16;

/// `exp(x)` without branches, so loops over it vectorise: Cephes' `expf` (range reduction by
/// `ln 2` in two parts, degree-6 polynomial, `2ⁿ` built in the exponent bits), with fused
/// multiply-adds: every caller runs inside a `pulp` dispatch whose instruction sets (AVX-512,
/// AVX2+FMA) have them (`mul_add` elsewhere is a libm call: correct, slow). Inputs are
/// clamped to [-87.3, 88.4]: below, the result is ~1e-38 instead of 0 (which no softmax sum or
/// `1 + exp` can tell apart); above, ~2.4e38 instead of infinity (`x / (1 + exp(-x))` still
/// rounds to 0).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.376_26);
    let t = x.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5); // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let p = (p * r).mul_add(r, r) + 1.0;
    let n_int = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let pow2n = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    p * pow2n
}

/// `erf(x)` without branches: Abramowitz and Stegun 7.1.26 (`1 - t·P(t)·exp(-x²)`,
/// `t = 1 / (1 + p|x|)`, absolute error <= 1.5e-7 in exact arithmetic; 4.4e-7 measured in f32
/// over [-6, 6], from `1 - t·P·exp` cancelling near |x| = 0.2), the same formula and constants
/// as PyTorch's vectorised CPU `erf` (`Vectorized<float>::erf`), with the sign restored.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_72;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    // In the order of PyTorch's AVX-512/AVX2 code: t = 1 / fma(p, |x|, 1), the polynomial by
    // fmas, then fma(-exp(-x²) · t, poly, 1).
    let t = 1.0 / P.mul_add(a, 1.0);
    let poly = A5
        .mul_add(t, A4)
        .mul_add(t, A3)
        .mul_add(t, A2)
        .mul_add(t, A1);
    let r = (-exp_f32(-(x * x)) * t).mul_add(poly, 1.0);
    r.copysign(x)
}

/// `Σ f(x)`: `LANES` f32 partial sums (so the loop vectorises) over blocks of `BLOCK` values,
/// each block's total added up in f64 (so a VAE's 262144-value groups lose no precision).
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const BLOCK: usize = 64 * LANES;
    let mut total = 0.0f64;
    for block in xs.chunks(BLOCK) {
        let mut lanes = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (acc, &x) in lanes.iter_mut().zip(chunk) {
                *acc += f(x);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
        total += (tail + lanes.iter().sum::<f32>()) as f64;
    }
    total
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn erf_is_within_the_approximations_bound() {
        let mut worst = 0.0f64;
        let mut x = -6.0f64;
        while x <= 6.0 {
            worst = worst.max((erf_f32(x as f32) as f64 - erf64(x)).abs());
            x += 1e-3;
        }
        assert!(worst < 5e-7, "worst absolute error {worst}");
        assert!(erf_f32(0.0).abs() < 2e-7);
        assert_eq!(erf_f32(-0.7), -erf_f32(0.7));
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction (|x| >= 3), in f64: the
    /// reference of the erf-based kernels' tests.
    pub(crate) fn erf64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let a = x.abs();
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / f;
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (a, b) = (exp_f32(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 0.000_7;
        }
        assert!(worst <= 2, "worst ulp distance {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37);
    }
}
