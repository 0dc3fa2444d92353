//! diffusers' `LCMScheduler` (latent consistency models).

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{BetaConfig, BetaSchedule, PredictionType, alphas_cumprod};
use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, index_for_timestep};
use crate::{Error, Result};

const CLASS: &str = "LCMScheduler";

fn d1000() -> usize {
    1000
}
fn start() -> f64 {
    0.00085
}
fn end() -> f64 {
    0.012
}
fn scaled() -> BetaSchedule {
    BetaSchedule::ScaledLinear
}
fn d50() -> usize {
    50
}
fn one() -> f64 {
    1.0
}
fn t() -> bool {
    true
}
fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn ratio() -> f64 {
    0.995
}
fn leading() -> String {
    "leading".into()
}
fn ten() -> f64 {
    10.0
}

/// `LCMScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LCMConfig {
    /// Training timesteps.
    #[serde(default = "d1000")]
    pub num_train_timesteps: usize,
    /// First beta.
    #[serde(default = "start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "end")]
    pub beta_end: f64,
    /// Shape of the schedule.
    #[serde(default = "scaled")]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Steps of the distillation schedule.
    #[serde(default = "d50")]
    pub original_inference_steps: usize,
    /// Clip the predicted sample.
    #[serde(default)]
    pub clip_sample: bool,
    /// Clip range.
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    /// Use 1 as the final `alphas_cumprod`.
    #[serde(default = "t")]
    pub set_alpha_to_one: bool,
    /// Unused by LCM's schedule (kept for config round trips).
    #[serde(default)]
    pub steps_offset: usize,
    /// What the model predicts.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// Dynamic thresholding (Imagen).
    #[serde(default)]
    pub thresholding: bool,
    /// Quantile for thresholding.
    #[serde(default = "ratio")]
    pub dynamic_thresholding_ratio: f64,
    /// Max threshold.
    #[serde(default = "one")]
    pub sample_max_value: f64,
    /// Kept for config round trips.
    #[serde(default = "leading")]
    pub timestep_spacing: String,
    /// Scale of the timestep in the boundary condition.
    #[serde(default = "ten")]
    pub timestep_scaling: f64,
    /// Rescale to zero terminal SNR.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// Multistep latent-consistency sampler.
#[derive(Debug, Clone)]
pub struct LCMScheduler {
    pub(crate) config: LCMConfig,
    pub(crate) alphas_cumprod: Vec<f32>,
    pub(crate) final_alpha_cumprod: f32,
    pub(crate) timesteps: Vec<f64>,
    pub(crate) num_inference_steps: Option<usize>,
    pub(crate) step_index: Option<usize>,
    pub(crate) begin_index: Option<usize>,
    pub(crate) fallback: Option<TorchGenerator>,
}

impl LCMScheduler {
    /// Builds the scheduler.
    pub fn new(config: LCMConfig) -> Result<Self> {
        if config.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "prediction_type must be epsilon, sample or v_prediction".into(),
            });
        }
        let betas = BetaConfig {
            num_train_timesteps: config.num_train_timesteps,
            beta_start: config.beta_start,
            beta_end: config.beta_end,
            beta_schedule: config.beta_schedule,
            trained_betas: config.trained_betas.clone(),
            rescale_betas_zero_snr: config.rescale_betas_zero_snr,
        };
        let (_, ac) = alphas_cumprod(&betas, CLASS)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { ac[0] };
        let n = config.num_train_timesteps;
        Ok(Self {
            config,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
            num_inference_steps: None,
            step_index: None,
            begin_index: None,
            fallback: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }
}

impl<B: Backend> Scheduler<B> for LCMScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        let train = self.config.num_train_timesteps;
        let strength = opts.strength.unwrap_or(1.0);
        if opts.sigmas.is_some() {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "sigmas",
            });
        }
        if opts.num_inference_steps.is_some() == opts.timesteps.is_some() {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "pass exactly one of `num_inference_steps` or `timesteps`".into(),
            });
        }
        let original = self.config.original_inference_steps;
        if original == 0 || original > train {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: format!("`original_inference_steps` {original} must be in 1..={train}"),
            });
        }
        let k = train / original;
        let count = (original as f64 * strength) as usize;
        let origin: Vec<i64> = (1..=count).map(|i| (i * k) as i64 - 1).collect();
        let ts: Vec<i64> = if let Some(custom) = &opts.timesteps {
            if custom.is_empty() {
                return Err(Error::ZeroSteps { class: CLASS });
            }
            if custom.windows(2).any(|w| w[1] >= w[0]) {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: "custom timesteps must be in descending order".into(),
                });
            }
            if custom[0] >= train as f64 {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: format!("timesteps must start before {train}"),
                });
            }
            let n = custom.len();
            let init = ((n as f64 * strength) as usize).min(n);
            let start = n.saturating_sub(init);
            self.num_inference_steps = Some(n);
            custom[start..].iter().map(|&t| t as i64).collect()
        } else {
            let n = opts.num_inference_steps.unwrap_or(0);
            if n == 0 {
                return Err(Error::ZeroSteps { class: CLASS });
            }
            if n > train {
                return Err(Error::TooManySteps {
                    class: CLASS,
                    steps: n,
                    train,
                });
            }
            if origin.len() / n < 1 {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: format!(
                        "original_steps x strength ({original} x {strength}) is smaller than num_inference_steps {n}"
                    ),
                });
            }
            if n > original {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: format!(
                        "num_inference_steps {n} exceeds original_inference_steps {original}"
                    ),
                });
            }
            self.num_inference_steps = Some(n);
            let rev: Vec<i64> = origin.iter().rev().copied().collect();
            // np.linspace(0, len, num=n, endpoint=False), floored.
            let len = rev.len() as f64;
            let step = len / n as f64;
            (0..n)
                .map(|i| rev[(i as f64 * step).floor() as usize])
                .collect()
        };
        self.timesteps = ts.into_iter().map(|t| t as f64).collect();
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    fn add_noise(
        &self,
        original: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        timestep: f64,
    ) -> Result<Tensor<B, 2>> {
        crate::scheduler::add_noise_alphas(&self.alphas_cumprod, original, noise, timestep, CLASS)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let n = self.num_inference_steps.ok_or_else(|| Error::InvalidStep {
            class: CLASS,
            reason: "call set_timesteps before step".into(),
        })?;
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => {
                index_for_timestep(&self.timesteps, timestep).ok_or_else(|| Error::InvalidStep {
                    class: CLASS,
                    reason: format!("timestep {timestep} is not in the schedule"),
                })?
            }
        };
        let t = timestep as i64;
        let train = self.config.num_train_timesteps as i64;
        if t < 0 || t >= train {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("timestep {timestep} is outside 0..{train}"),
            });
        }
        let prev_t = self.timesteps.get(i + 1).map(|&x| x as i64).unwrap_or(t);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let scaled = t as f32 * self.config.timestep_scaling as f32;
        let c_skip = 0.25f32 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let x0 = match self.config.prediction_type {
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => sample.clone() * a_t.sqrt() - model_output * b_t.sqrt(),
            _ => (sample.clone() - model_output * b_t.sqrt()) / a_t.sqrt(),
        };
        let x0 = if self.config.thresholding {
            crate::discrete::threshold_sample(
                x0,
                self.config.dynamic_thresholding_ratio,
                self.config.sample_max_value,
            )
        } else if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            x0
        };
        let denoised = x0 * c_out + sample * c_skip;
        let prev = if i + 1 != n {
            let dims = denoised.dims();
            let count = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut self.fallback, count)?;
            let z = Tensor::<B, 2>::from_data(
                TensorData::new(values, dims),
                (&denoised.device(), DType::F32),
            )
            .cast(denoised.dtype());
            denoised * a_prev.sqrt() + z * b_prev.sqrt()
        } else {
            denoised
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }
}
