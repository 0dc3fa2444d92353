//! Sigma schedules shared by several schedulers (numpy f64 arithmetic, as diffusers).

use crate::scheduler::linspace;

/// Karras et al. (2022) schedule between the last and first of `in_sigmas` (or the given bounds).
pub fn karras_sigmas(
    in_sigmas: &[f64],
    n: usize,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    rho: f64,
) -> Vec<f64> {
    let smin = sigma_min.unwrap_or_else(|| in_sigmas.last().copied().unwrap_or(0.0));
    let smax = sigma_max.unwrap_or_else(|| in_sigmas.first().copied().unwrap_or(1.0));
    let min_inv = smin.powf(1.0 / rho);
    let max_inv = smax.powf(1.0 / rho);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Exponential schedule: `exp(linspace(ln(max), ln(min), n))`.
pub fn exponential_sigmas(
    in_sigmas: &[f64],
    n: usize,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
) -> Vec<f64> {
    let smin = sigma_min.unwrap_or_else(|| in_sigmas.last().copied().unwrap_or(0.0));
    let smax = sigma_max.unwrap_or_else(|| in_sigmas.first().copied().unwrap_or(1.0));
    linspace(smax.ln(), smin.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function `I_x(a, b)`.
pub fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// The beta distribution's quantile function (`scipy.stats.beta.ppf`), by bisection to full
/// double precision.
pub fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Beta schedule (Lee et al. 2024, "Beta Sampling is All You Need"), alpha = beta = 0.6:
/// `sigma_min + ppf(1 - linspace(0, 1, n)) * (sigma_max - sigma_min)`.
pub fn beta_sigmas(
    in_sigmas: &[f64],
    n: usize,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
) -> Vec<f64> {
    let smin = sigma_min.unwrap_or_else(|| in_sigmas.last().copied().unwrap_or(0.0));
    let smax = sigma_max.unwrap_or_else(|| in_sigmas.first().copied().unwrap_or(1.0));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|t| smin + beta_ppf(1.0 - t, 0.6, 0.6) * (smax - smin))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn beta_ppf_inverts_cdf() {
        for q in [0.01, 0.2, 0.5, 0.77, 0.999] {
            let x = super::beta_ppf(q, 0.6, 0.6);
            assert!((super::beta_cdf(x, 0.6, 0.6) - q).abs() < 1e-13, "{q}");
        }
        // Symmetric distribution: the median is 1/2.
        assert!((super::beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-14);
    }
}

/// Which schedule replaces the interpolated sigmas (`use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaSchedule {
    Karras,
    Exponential,
    Beta,
}

impl SigmaSchedule {
    /// The schedule the config flags select (karras first, as diffusers checks them).
    pub(crate) fn from_flags(karras: bool, exponential: bool, beta: bool) -> Option<Self> {
        if karras {
            Some(Self::Karras)
        } else if exponential {
            Some(Self::Exponential)
        } else if beta {
            Some(Self::Beta)
        } else {
            None
        }
    }
}

/// A karras/exponential/beta schedule over `in_sigmas`' range (or the given bounds), with each
/// sigma's timestep by `_sigma_to_t`, rounded for karras when `round_karras` (as the KDPM2,
/// DPM-Solver, DEIS and UniPC schedulers do).
pub(crate) fn converted_sigmas(
    kind: SigmaSchedule,
    in_sigmas: &[f64],
    n: usize,
    bounds: (Option<f64>, Option<f64>),
    log_sigmas: &[f32],
    round_karras: bool,
) -> (Vec<f64>, Vec<f64>) {
    let (lo, hi) = bounds;
    let sigmas = match kind {
        SigmaSchedule::Karras => karras_sigmas(in_sigmas, n, lo, hi, 7.0),
        SigmaSchedule::Exponential => exponential_sigmas(in_sigmas, n, lo, hi),
        SigmaSchedule::Beta => beta_sigmas(in_sigmas, n, lo, hi),
    };
    let round = round_karras && kind == SigmaSchedule::Karras;
    let ts = sigmas
        .iter()
        .map(|&s| crate::discrete::sigma_to_t(s, log_sigmas))
        .map(|t| {
            if round {
                crate::discrete::round_half_even(t)
            } else {
                t
            }
        })
        .collect();
    (sigmas, ts)
}

/// The flow sigmas of the DPM-Solver family: `shift * s / (1 + (shift - 1) * s)` over
/// `1 - linspace(1, 1/N, n + 1)`, reversed, without the last; timesteps `sigma * N`.
pub(crate) fn flow_sigmas(shift: f64, train: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut s: Vec<f64> = linspace(1.0, 1.0 / train as f64, n + 1)
        .iter()
        .map(|a| 1.0 - a)
        .map(|x| shift * x / (1.0 + (shift - 1.0) * x))
        .collect();
    s.reverse();
    s.truncate(n);
    let ts = s.iter().map(|&x| x * train as f64).collect();
    (s, ts)
}
