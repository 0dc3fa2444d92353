//! diffusers' `EulerDiscreteScheduler`.

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, interp_index,
    sigma_to_t, spaced_timesteps,
};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions};
use crate::sigmas::{SigmaSchedule, converted_sigmas};
use crate::{Error, Result};

const CLASS: &str = "EulerDiscreteScheduler";

fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn linspace() -> TimestepSpacing {
    TimestepSpacing::Linspace
}
fn linear() -> String {
    "linear".into()
}
fn discrete() -> String {
    "discrete".into()
}
fn zero() -> String {
    "zero".into()
}

/// `EulerDiscreteScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EulerDiscreteConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// What the model predicts.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// `linear` (only this is supported; `log_linear` is a typed error).
    #[serde(default = "linear")]
    pub interpolation_type: String,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: Option<bool>,
    /// Beta sigmas (alpha = beta = 0.6).
    #[serde(default)]
    pub use_beta_sigmas: Option<bool>,
    /// Lower bound for karras/exponential sigmas.
    #[serde(default)]
    pub sigma_min: Option<f64>,
    /// Upper bound for karras/exponential sigmas.
    #[serde(default)]
    pub sigma_max: Option<f64>,
    /// Spacing of the timesteps.
    #[serde(default = "linspace")]
    pub timestep_spacing: TimestepSpacing,
    /// `discrete`, or `continuous` (`0.25 * log(sigma)` timesteps with v-prediction).
    #[serde(default = "discrete")]
    pub timestep_type: String,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// `zero` or `sigma_min`.
    #[serde(default = "zero")]
    pub final_sigmas_type: String,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// Euler sampler over Karras-style sigmas (Stable Diffusion's `EulerDiscreteScheduler`).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    config: EulerDiscreteConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler.
    pub fn new(config: EulerDiscreteConfig) -> Result<Self> {
        crate::discrete::check_sigma_flags(
            config.use_karras_sigmas.unwrap_or(false),
            config.use_exponential_sigmas.unwrap_or(false),
            config.use_beta_sigmas.unwrap_or(false),
            CLASS,
        )?;
        let unsupported = |what: &str| Error::InvalidConfig {
            class: CLASS,
            reason: format!("{what} is not supported yet"),
        };
        if config.interpolation_type != "linear" {
            return Err(unsupported("`interpolation_type` other than linear"));
        }
        if !matches!(config.timestep_type.as_str(), "discrete" | "continuous") {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "`timestep_type` must be discrete or continuous".into(),
            });
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "`final_sigmas_type` must be zero or sigma_min".into(),
            });
        }
        if matches!(config.prediction_type, PredictionType::FlowPrediction) {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "prediction_type must be epsilon, sample or v_prediction".into(),
            });
        }
        let (_, mut ac) = alphas_cumprod(&config.betas, CLASS)?;
        if config.betas.rescale_betas_zero_snr
            && let Some(last) = ac.last_mut()
        {
            *last = 2f32.powi(-24);
        }
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let n = config.betas.num_train_timesteps;
        let mut sigmas: Vec<f32> = train_sigmas.iter().rev().copied().collect();
        sigmas.push(0.0);
        let continuous_v = config.timestep_type == "continuous"
            && config.prediction_type == PredictionType::VPrediction;
        let timesteps = if continuous_v {
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| (0.25f32 * s.ln()) as f64)
                .collect()
        } else {
            (0..n).rev().map(|t| t as f64).collect()
        };
        Ok(Self {
            config,
            train_sigmas,
            timesteps,
            sigmas,
            step_index: None,
            begin_index: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn continuous_v(&self) -> bool {
        self.config.timestep_type == "continuous"
            && self.config.prediction_type == PredictionType::VPrediction
    }

    fn index(&mut self, timestep: f64) -> Result<usize> {
        crate::scheduler::resolve_step_index(
            &mut self.step_index,
            self.begin_index,
            &self.timesteps,
            timestep,
            CLASS,
        )
    }
}

impl<B: Backend> Scheduler<B> for EulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        let cfg = &self.config;
        let train = cfg.betas.num_train_timesteps;
        if opts.timesteps.is_some() && opts.sigmas.is_some() {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "only one of `timesteps` or `sigmas` should be set".into(),
            });
        }
        if opts.num_inference_steps.is_some() && (opts.timesteps.is_some() || opts.sigmas.is_some())
        {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "can only pass one of `num_inference_steps`, `timesteps` or `sigmas`"
                    .into(),
            });
        }
        let karras = cfg.use_karras_sigmas.unwrap_or(false);
        let exponential = cfg.use_exponential_sigmas.unwrap_or(false);
        if opts.timesteps.is_some() && (karras || exponential) {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "cannot set `timesteps` with karras or exponential sigmas".into(),
            });
        }
        if opts.timesteps.is_some() && self.continuous_v() {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "cannot set `timesteps` with continuous timesteps and v_prediction".into(),
            });
        }
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
        let (timesteps, sigmas): (Vec<f64>, Vec<f32>) = if let Some(s) = &opts.sigmas {
            if s.len() < 2 {
                return Err(Error::ZeroSteps { class: CLASS });
            }
            let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
            let ts = s32[..s32.len() - 1]
                .iter()
                .map(|&v| sigma_to_t(v as f64, &log_sigmas))
                .collect();
            (ts, s32)
        } else {
            let ts: Vec<f64> = match &opts.timesteps {
                Some(t) => {
                    if t.is_empty() {
                        return Err(Error::ZeroSteps { class: CLASS });
                    }
                    t.iter().map(|&v| v as f32 as f64).collect()
                }
                None => {
                    let n = opts.num_inference_steps.unwrap_or(0);
                    check_steps(n, train, CLASS)?;
                    spaced_timesteps(cfg.timestep_spacing, n, train, cfg.steps_offset)
                        .into_iter()
                        .map(|v| v as f32 as f64)
                        .collect()
                }
            };
            let n = ts.len();
            let mut sig: Vec<f64> = ts
                .iter()
                .map(|&t| interp_index(t, &self.train_sigmas))
                .collect();
            let mut ts = ts;
            if let Some(kind) =
                SigmaSchedule::from_flags(karras, exponential, cfg.use_beta_sigmas.unwrap_or(false))
            {
                let (s, t) = converted_sigmas(
                    kind,
                    &sig,
                    n,
                    (cfg.sigma_min, cfg.sigma_max),
                    &log_sigmas,
                    false,
                );
                sig = s;
                ts = t;
            }
            let last = if cfg.final_sigmas_type == "sigma_min" {
                self.train_sigmas[0] as f64
            } else {
                0.0
            };
            sig.push(last);
            (ts, sig.into_iter().map(|v| v as f32).collect())
        };
        self.timesteps = if self.continuous_v() {
            // `0.25 * log(sigma)` (EDM-style continuous timesteps for v-prediction models).
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| (0.25f32 * s.ln()) as f64)
                .collect()
        } else {
            timesteps.into_iter().map(|t| t as f32 as f64).collect()
        };
        self.sigmas = sigmas;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        crate::discrete::sigma_init_noise(&self.sigmas, self.config.timestep_spacing)
    }

    fn sigmas(&self) -> Option<Vec<f64>> {
        Some(self.sigmas.iter().map(|&s| s as f64).collect())
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    fn scale_model_input(&mut self, sample: Tensor<B, 2>, timestep: f64) -> Result<Tensor<B, 2>> {
        let i = self.index(timestep)?;
        let sigma = self.sigmas[i];
        Ok(sample / (sigma * sigma + 1.0).sqrt())
    }

    fn add_noise(
        &self,
        original: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        timestep: f64,
    ) -> Result<Tensor<B, 2>> {
        let i = crate::scheduler::noise_index(
            &self.timesteps,
            self.begin_index,
            self.step_index,
            timestep,
            CLASS,
        )?;
        Ok(original + noise * self.sigmas[i])
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        _noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let i = self.index(timestep)?;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("step {i} is past the end of the schedule"),
            });
        }
        let out_dtype = model_output.dtype();
        let sample = sample.cast(DType::F32);
        let model_output = model_output.cast(DType::F32);
        let sigma = self.sigmas[i];
        let x0 = crate::discrete::x0_at_sigma(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma,
        );
        let derivative = (sample.clone() - x0) / sigma;
        let dt = self.sigmas[i + 1] - sigma;
        let prev = sample + derivative * dt;
        self.step_index = Some(i + 1);
        Ok(prev.cast(out_dtype))
    }
}
