//! diffusers' `HeunDiscreteScheduler` (second order: two model calls per step).

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, BetaSchedule, PredictionType, TimestepSpacing, alphas_cumprod, check_steps,
    interp_index, spaced_timesteps,
};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions};
use crate::sigmas::{SigmaSchedule, converted_sigmas};
use crate::{Error, Result};

const CLASS: &str = "HeunDiscreteScheduler";

fn d1000() -> usize {
    1000
}
fn start() -> f64 {
    0.00085
}
fn end() -> f64 {
    0.012
}
fn linear() -> BetaSchedule {
    BetaSchedule::Linear
}
fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn one() -> f64 {
    1.0
}
fn linspace() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

/// `HeunDiscreteScheduler`'s config (its beta defaults are Stable Diffusion's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeunDiscreteConfig {
    /// Training timesteps.
    #[serde(default = "d1000")]
    pub num_train_timesteps: usize,
    /// First beta.
    #[serde(default = "start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "end")]
    pub beta_end: f64,
    /// Shape of the schedule (`exp` allowed).
    #[serde(default = "linear")]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas (alpha = beta = 0.6).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Clip the predicted sample.
    #[serde(default)]
    pub clip_sample: bool,
    /// Clip range.
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    /// Spacing of the timesteps.
    #[serde(default = "linspace")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// Heun's method over Karras-style sigmas.
#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler<B: Backend> {
    config: HeunDiscreteConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    prev_derivative: Option<Tensor<B, 2>>,
    dt: Option<f32>,
    first_sample: Option<Tensor<B, 2>>,
}

impl<B: Backend> HeunDiscreteScheduler<B> {
    /// Builds the scheduler.
    pub fn new(config: HeunDiscreteConfig) -> Result<Self> {
        crate::discrete::check_sigma_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
            CLASS,
        )?;
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
            rescale_betas_zero_snr: false,
        };
        let (_, ac) = alphas_cumprod(&betas, CLASS)?;
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let n = config.num_train_timesteps;
        let mut s = Self {
            config,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
            begin_index: None,
            prev_derivative: None,
            dt: None,
            first_sample: None,
        };
        // diffusers calls set_timesteps(num_train_timesteps) in the constructor.
        s.compute(Some(n), None)?;
        Ok(s)
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn compute(&mut self, n: Option<usize>, custom: Option<&Vec<f64>>) -> Result<()> {
        let cfg = &self.config;
        let train = cfg.num_train_timesteps;
        let mut ts: Vec<f64> = match custom {
            Some(t) => {
                if t.is_empty() {
                    return Err(Error::ZeroSteps { class: CLASS });
                }
                t.iter().map(|&v| v as f32 as f64).collect()
            }
            None => {
                let n = n.unwrap_or(0);
                check_steps(n, train, CLASS)?;
                spaced_timesteps(cfg.timestep_spacing, n, train, cfg.steps_offset)
                    .into_iter()
                    .map(|v| v as f32 as f64)
                    .collect()
            }
        };
        let n = ts.len();
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
        let mut sig: Vec<f64> = ts
            .iter()
            .map(|&t| interp_index(t, &self.train_sigmas))
            .collect();
        if let Some(kind) = SigmaSchedule::from_flags(
            cfg.use_karras_sigmas,
            cfg.use_exponential_sigmas,
            cfg.use_beta_sigmas,
        ) {
            let (s, t) = converted_sigmas(kind, &sig, n, (None, None), &log_sigmas, false);
            sig = s;
            ts = t;
        }
        sig.push(0.0);
        let sig: Vec<f32> = sig.into_iter().map(|v| v as f32).collect();
        let mut sigmas = vec![sig[0]];
        for &s in &sig[1..sig.len() - 1] {
            sigmas.extend([s, s]);
        }
        sigmas.push(sig[sig.len() - 1]);
        let mut timesteps = vec![ts[0] as f32 as f64];
        for &t in &ts[1..] {
            let t = t as f32 as f64;
            timesteps.extend([t, t]);
        }
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        self.prev_derivative = None;
        self.dt = None;
        self.first_sample = None;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
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

impl<B: Backend> Scheduler<B> for HeunDiscreteScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
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
        if opts.timesteps.is_some()
            && (self.config.use_karras_sigmas || self.config.use_exponential_sigmas)
        {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "cannot set `timesteps` with karras or exponential sigmas".into(),
            });
        }
        self.compute(opts.num_inference_steps, opts.timesteps.as_ref())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<Vec<f64>> {
        Some(self.sigmas.iter().map(|&s| s as f64).collect())
    }

    fn init_noise_sigma(&self) -> f64 {
        crate::discrete::sigma_init_noise(&self.sigmas, self.config.timestep_spacing)
    }

    fn order(&self) -> usize {
        2
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
        let model_output = model_output.cast(DType::F32);
        let sample = sample.cast(DType::F32);
        let first = self.dt.is_none();
        let (sigma, sigma_next) = if first {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        let sigma_input = if first { sigma } else { sigma_next };
        let x0 = crate::discrete::x0_at_sigma(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma_input,
        );
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            x0
        };
        let prev = if first {
            let derivative = (sample.clone() - x0) / sigma;
            let dt = sigma_next - sigma;
            self.prev_derivative = Some(derivative.clone());
            self.dt = Some(dt);
            self.first_sample = Some(sample.clone());
            sample + derivative * dt
        } else {
            let d2 = (sample.clone() - x0) / sigma_next;
            let derivative = match self.prev_derivative.take() {
                Some(d1) => (d1 + d2) / 2.0,
                None => d2,
            };
            let dt = self.dt.take().unwrap_or(0.0);
            let base = self.first_sample.take().unwrap_or(sample);
            base + derivative * dt
        };
        self.step_index = Some(i + 1);
        Ok(prev.cast(out_dtype))
    }
}
