//! diffusers' `DDPMScheduler` (ancestral sampling of denoising diffusion probabilistic models).

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, round_half_even,
};
use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, linspace};
use crate::{Error, Result};

const CLASS: &str = "DDPMScheduler";

fn fixed_small() -> String {
    "fixed_small".into()
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
fn one() -> f64 {
    1.0
}
fn leading() -> TimestepSpacing {
    TimestepSpacing::Leading
}

/// `DDPMScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DDPMConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// `fixed_small`, `fixed_small_log`, `fixed_large` or `fixed_large_log`.
    #[serde(default = "fixed_small")]
    pub variance_type: String,
    /// Clip the predicted sample.
    #[serde(default = "t")]
    pub clip_sample: bool,
    /// What the model predicts.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// Dynamic thresholding (Imagen).
    #[serde(default)]
    pub thresholding: bool,
    /// Quantile for thresholding.
    #[serde(default = "ratio")]
    pub dynamic_thresholding_ratio: f64,
    /// Clip range.
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    /// Max threshold.
    #[serde(default = "one")]
    pub sample_max_value: f64,
    /// Spacing of the timesteps.
    #[serde(default = "leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// DDPM ancestral sampler.
#[derive(Debug, Clone)]
pub struct DDPMScheduler {
    config: DDPMConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    custom: bool,
    fallback: Option<TorchGenerator>,
}

impl DDPMScheduler {
    /// Builds the scheduler.
    pub fn new(config: DDPMConfig) -> Result<Self> {
        if !matches!(
            config.variance_type.as_str(),
            "fixed_small" | "fixed_small_log" | "fixed_large" | "fixed_large_log"
        ) {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: format!("variance_type `{}` is not supported", config.variance_type),
            });
        }
        if config.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "prediction_type must be epsilon, sample or v_prediction".into(),
            });
        }
        let (_, ac) = alphas_cumprod(&config.betas, CLASS)?;
        let n = config.betas.num_train_timesteps;
        Ok(Self {
            config,
            alphas_cumprod: ac,
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
            custom: false,
            fallback: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn previous_timestep(&self, t: i64, scheduled: bool) -> i64 {
        if scheduled {
            match self.timesteps.iter().position(|&x| x as i64 == t) {
                Some(i) if i + 1 < self.timesteps.len() => self.timesteps[i + 1] as i64,
                _ => -1,
            }
        } else {
            t - 1
        }
    }
}

impl<B: Backend> Scheduler<B> for DDPMScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        let train = self.config.betas.num_train_timesteps;
        if opts.sigmas.is_some() {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "sigmas",
            });
        }
        if opts.num_inference_steps.is_some() && opts.timesteps.is_some() {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "can only pass one of `num_inference_steps` or `timesteps`".into(),
            });
        }
        if let Some(ts) = &opts.timesteps {
            if ts.is_empty() {
                return Err(Error::ZeroSteps { class: CLASS });
            }
            if ts.windows(2).any(|w| w[1] >= w[0]) {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: "custom timesteps must be in descending order".into(),
                });
            }
            if ts[0] >= train as f64 {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: format!("timesteps must start before {train}"),
                });
            }
            self.timesteps = ts.iter().map(|t| t.trunc()).collect();
            self.custom = true;
            return Ok(());
        }
        let n = opts.num_inference_steps.unwrap_or(0);
        check_steps(n, train, CLASS)?;
        self.custom = false;
        self.timesteps = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .rev()
                .map(round_half_even)
                .collect(),
            TimestepSpacing::Leading => {
                let r = train / n;
                (0..n)
                    .rev()
                    .map(|i| (i * r + self.config.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                crate::discrete::spaced_timesteps(TimestepSpacing::Trailing, n, train, 0)
            }
        };
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_begin_index(&mut self, _begin_index: usize) {}

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
        let train = self.config.betas.num_train_timesteps as i64;
        let t = timestep as i64;
        if t < 0 || t >= train {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("timestep {timestep} is outside 0..{train}"),
            });
        }
        let prev_t = self.previous_timestep(t, true);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            1.0
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => {
                (sample.clone() - model_output.clone() * b_t.sqrt()) / a_t.sqrt()
            }
            PredictionType::Sample => model_output.clone(),
            _ => sample.clone() * a_t.sqrt() - model_output.clone() * b_t.sqrt(),
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
        let c0 = a_prev.sqrt() * cur_beta / b_t;
        let cs = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev = x0 * c0 + sample * cs;
        if t > 0 {
            let dims = prev.dims();
            let count = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut self.fallback, count)?;
            let z = Tensor::<B, 2>::from_data(
                TensorData::new(values, dims),
                (&prev.device(), DType::F32),
            )
            .cast(model_output.dtype());
            let variance = (b_prev / b_t * cur_beta).max(1e-20);
            let scale = match self.config.variance_type.as_str() {
                "fixed_small_log" => (0.5 * variance.ln()).exp(),
                "fixed_large" => cur_beta.sqrt(),
                "fixed_large_log" => cur_beta.ln().sqrt(),
                _ => variance.sqrt(),
            };
            prev = prev + z * scale;
        }
        Ok(prev)
    }
}
