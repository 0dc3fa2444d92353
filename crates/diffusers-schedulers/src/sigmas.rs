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
