//! diffusers' `DDIMScheduler`.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, round_half_even,
};
use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions};
use crate::{Error, Result};

const CLASS: &str = "DDIMScheduler";

fn t() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn ratio() -> f64 {
    0.995
}
fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn leading() -> TimestepSpacing {
    TimestepSpacing::Leading
}

/// `DDIMScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DDIMConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Clip the predicted sample to `[-clip_sample_range, clip_sample_range]`.
    #[serde(default = "t")]
    pub clip_sample: bool,
    /// Use 1 as the final `alphas_cumprod` instead of the first.
    #[serde(default = "t")]
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// What the model predicts.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// Dynamic thresholding (Imagen).
    #[serde(default)]
    pub thresholding: bool,
    /// Quantile for dynamic thresholding.
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
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// Denoising diffusion implicit models (with `eta` for stochasticity).
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    config: DDIMConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    num_inference_steps: Option<usize>,
    /// `eta` of the next steps (0 is deterministic DDIM).
    pub eta: f64,
    fallback: Option<TorchGenerator>,
}

impl DDIMScheduler {
    /// Builds the scheduler.
    pub fn new(config: DDIMConfig) -> Result<Self> {
        if config.prediction_type == PredictionType::FlowPrediction {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "prediction_type must be epsilon, sample or v_prediction".into(),
            });
        }
        let (_, ac) = alphas_cumprod(&config.betas, CLASS)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { ac[0] };
        let n = config.betas.num_train_timesteps;
        Ok(Self {
            config,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
            num_inference_steps: None,
            eta: 0.0,
            fallback: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    /// `alphas_cumprod`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }
}

impl<B: Backend> Scheduler<B> for DDIMScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        if opts.timesteps.is_some() {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "timesteps",
            });
        }
        if opts.sigmas.is_some() {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "sigmas",
            });
        }
        let train = self.config.betas.num_train_timesteps;
        let n = opts.num_inference_steps.unwrap_or(0);
        check_steps(n, train, CLASS)?;
        self.timesteps = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => crate::scheduler::linspace(0.0, (train - 1) as f64, n)
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
        self.num_inference_steps = Some(n);
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
        let n = self.num_inference_steps.ok_or_else(|| Error::InvalidStep {
            class: CLASS,
            reason: "call set_timesteps before step".into(),
        })?;
        let train = self.config.betas.num_train_timesteps as i64;
        let t = timestep as i64;
        if t < 0 || t >= train {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("timestep {timestep} is outside 0..{train}"),
            });
        }
        let prev_t = t - train / n as i64;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let (x0, eps) = match self.config.prediction_type {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone() * sb) / sa,
                model_output,
            ),
            PredictionType::Sample => {
                let eps = (sample.clone() - model_output.clone() * sa) / sb;
                (model_output, eps)
            }
            _ => (
                sample.clone() * sa - model_output.clone() * sb,
                model_output * sa + sample.clone() * sb,
            ),
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
        let b_prev = 1.0 - a_prev;
        let variance = b_prev / b_t * (1.0 - a_t / a_prev);
        let std_dev_t = self.eta as f32 * variance.sqrt();
        let dir = eps * (1.0 - a_prev - std_dev_t * std_dev_t).sqrt();
        let mut prev = x0 * a_prev.sqrt() + dir;
        if self.eta > 0.0 {
            let dims = prev.dims();
            let count = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut self.fallback, count)?;
            let device = prev.device();
            let z = Tensor::<B, 2>::from_data(TensorData::new(values, dims), (&device, DType::F32))
                .cast(prev.dtype());
            prev = prev + z * std_dev_t;
        }
        Ok(prev)
    }
}
