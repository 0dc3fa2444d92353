//! What the DDPM family of schedulers share: beta schedules, `alphas_cumprod`, timestep
//! spacings, prediction types, numpy's `interp` and the sigma-to-timestep inversion.
//!
//! Arithmetic follows diffusers' torch (f32) and numpy (f64 unless the array is f32) code.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Linear in beta.
    Linear,
    /// Linear in sqrt(beta) (Stable Diffusion).
    ScaledLinear,
    /// Cosine schedule (`betas_for_alpha_bar`).
    SquaredcosCapV2,
    /// Exponential alpha-bar (`betas_for_alpha_bar(alpha_transform_type="exp")`, Heun only).
    Exp,
}

/// What the denoiser predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise.
    Epsilon,
    /// The velocity `alpha * eps - sigma * x0`.
    VPrediction,
    /// The clean sample.
    #[serde(alias = "original_sample")]
    Sample,
    /// A flow (`noise - x0`).
    FlowPrediction,
}

/// `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly spaced from the start, plus `steps_offset`.
    Leading,
    /// Evenly spaced from the end.
    Trailing,
    /// `linspace(0, N - 1, n)`.
    Linspace,
}

/// The beta keys every DDPM-family config has, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BetaConfig {
    /// Training timesteps.
    #[serde(default = "d1000")]
    pub num_train_timesteps: usize,
    /// First beta.
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    /// Shape of the schedule.
    #[serde(default = "d_linear")]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the schedule.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale to zero terminal SNR.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

fn d1000() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_linear() -> BetaSchedule {
    BetaSchedule::Linear
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU: symmetric from both ends.
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                s + step * i as f32
            } else {
                e - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// `torch.cumprod` of f32 values on the CPU (accumulated in f64, stored in f32).
pub fn cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` (cosine), in f64 then f32.
pub fn betas_for_alpha_bar(n: usize, max_beta: f64) -> Vec<f32> {
    betas_for_alpha_bar_with(n, max_beta, |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    })
}

fn betas_for_alpha_bar_with(n: usize, max_beta: f64, f: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - f(t2) / f(t1)).min(max_beta) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (f32 torch arithmetic).
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let ac = cumprod_f32(&alphas);
    let mut sqrt: Vec<f32> = ac.iter().map(|a| a.sqrt()).collect();
    let first = sqrt[0];
    let last = *sqrt.last().unwrap_or(&0.0);
    for v in sqrt.iter_mut() {
        *v -= last;
    }
    let scale = first / (first - last);
    for v in sqrt.iter_mut() {
        *v *= scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// Betas and `alphas_cumprod` (f32) for a config.
pub fn alphas_cumprod(cfg: &BetaConfig, class: &'static str) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = cfg.num_train_timesteps;
    if n == 0 {
        return Err(Error::InvalidConfig {
            class,
            reason: "`num_train_timesteps` must be at least 1".into(),
        });
    }
    let mut betas = match (&cfg.trained_betas, cfg.beta_schedule) {
        (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
        (None, BetaSchedule::Linear) => torch_linspace_f32(cfg.beta_start, cfg.beta_end, n),
        (None, BetaSchedule::ScaledLinear) => {
            torch_linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        (None, BetaSchedule::SquaredcosCapV2) => betas_for_alpha_bar(n, 0.999),
        (None, BetaSchedule::Exp) => betas_for_alpha_bar_with(n, 0.999, |t| (t * -12.0).exp()),
    };
    if cfg.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    Ok((betas, cumprod_f32(&alphas)))
}

/// Checks `num_inference_steps` against the training timesteps.
pub fn check_steps(n: usize, train: usize, class: &'static str) -> Result<()> {
    if n == 0 {
        return Err(Error::ZeroSteps { class });
    }
    if n > train {
        return Err(Error::TooManySteps {
            class,
            steps: n,
            train,
        });
    }
    Ok(())
}

/// numpy's round-half-to-even, as `np.round`.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Timesteps for a spacing, as the Euler-type schedulers compute them (float).
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    train: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let lin = crate::scheduler::linspace(0.0, (train - 1) as f64, n);
            lin.iter().rev().map(|&v| v as f32 as f64).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            let mut out = Vec::new();
            let mut v = train as f64;
            let mut k = 0usize;
            // np.arange(train, 0, -ratio): train - k * ratio while > 0
            while v > 0.0 {
                out.push(round_half_even(v) - 1.0);
                k += 1;
                v = train as f64 + k as f64 * -ratio;
            }
            out
        }
    }
}

/// numpy's `interp(x, arange(len(fp)), fp)` in f64.
pub fn interp_index(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    if n == 0 {
        return 0.0;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// diffusers' `_sigma_to_t`: the fractional timestep of a sigma by log-linear interpolation.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // low_idx: last index where log_sigma >= log_sigmas[i] (cumsum(...).argmax), clipped to n - 2.
    let count = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - l as f64 >= 0.0)
        .count();
    let mut low = if count == 0 {
        0
    } else {
        // argmax of the cumulative sum returns the first index reaching its maximum.
        let mut c = 0;
        let mut first_max = 0;
        for (i, &l) in log_sigmas.iter().enumerate() {
            if log_sigma - l as f64 >= 0.0 {
                c += 1;
                if c == count {
                    first_max = i;
                    break;
                }
            }
        }
        first_max
    };
    low = low.min(n.saturating_sub(2));
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[high] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// diffusers' `_threshold_sample` (dynamic thresholding, Imagen): per sample, `s` is the
/// `ratio` quantile of `|x|` clamped to `[1, max_value]`, and `x` becomes `clamp(x, -s, s) / s`.
pub fn threshold_sample<B: burn::prelude::Backend>(
    x: burn::tensor::Tensor<B, 2>,
    ratio: f64,
    max_value: f64,
) -> burn::tensor::Tensor<B, 2> {
    use burn::tensor::{DType, Tensor, TensorData};
    let dtype = x.dtype();
    let [b, n] = x.dims();
    let device = x.device();
    let values: Vec<f32> = x
        .clone()
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap_or_default();
    let mut s = Vec::with_capacity(b);
    for row in values.chunks(n.max(1)) {
        let mut a: Vec<f32> = row.iter().map(|v| v.abs()).collect();
        a.sort_by(f32::total_cmp);
        // torch.quantile, linear interpolation.
        let pos = ratio * (a.len().saturating_sub(1)) as f64;
        let lo = pos.floor() as usize;
        let hi = (pos.ceil() as usize).min(a.len().saturating_sub(1));
        let w = (pos - lo as f64) as f32;
        let q = if a.is_empty() {
            0.0
        } else {
            a[lo] + w * (a[hi] - a[lo])
        };
        s.push(q.clamp(1.0, max_value as f32));
    }
    let s = Tensor::<B, 2>::from_data(TensorData::new(s, [b, 1]), (&device, DType::F32));
    let x = x.cast(DType::F32);
    let clamped = x
        .clone()
        .max_pair(s.clone().neg().expand([b, n]))
        .min_pair(s.clone().expand([b, n]));
    (clamped / s).cast(dtype)
}

/// `init_noise_sigma` of the Karras-sigma schedulers: the largest sigma, or `sqrt(max^2 + 1)`
/// for `leading` spacing.
pub(crate) fn sigma_init_noise(sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(0f32, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// Rejects more than one of the karras/exponential/beta sigma schedules.
pub(crate) fn check_sigma_flags(
    karras: bool,
    exponential: bool,
    beta: bool,
    class: &'static str,
) -> Result<()> {
    if [karras, exponential, beta].iter().filter(|f| **f).count() > 1 {
        return Err(Error::ConflictingOptions {
            class,
            reason: "only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` can be used".into(),
        });
    }
    Ok(())
}

/// The denoised sample of the Karras-sigma schedulers (`pred_original_sample`) at `sigma`.
pub(crate) fn x0_at_sigma<B: burn::prelude::Backend>(
    prediction: PredictionType,
    model_output: burn::tensor::Tensor<B, 2>,
    sample: burn::tensor::Tensor<B, 2>,
    sigma: f32,
) -> burn::tensor::Tensor<B, 2> {
    match prediction {
        PredictionType::Sample => model_output,
        PredictionType::VPrediction => {
            model_output * (-sigma / (sigma * sigma + 1.0).sqrt()) + sample / (sigma * sigma + 1.0)
        }
        _ => sample - model_output * sigma,
    }
}
