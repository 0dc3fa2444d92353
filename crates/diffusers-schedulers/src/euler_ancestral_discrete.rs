//! diffusers' `EulerAncestralDiscreteScheduler`.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, interp_index,
    spaced_timesteps,
};
use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions};
use crate::{Error, Result};

const CLASS: &str = "EulerAncestralDiscreteScheduler";

fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn linspace() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

/// `EulerAncestralDiscreteScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EulerAncestralDiscreteConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// `epsilon` or `v_prediction`.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
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

/// Ancestral Euler sampler: an Euler step to `sigma_down`, then fresh noise of `sigma_up`.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    config: EulerAncestralDiscreteConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    fallback: Option<TorchGenerator>,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler.
    pub fn new(config: EulerAncestralDiscreteConfig) -> Result<Self> {
        if !matches!(
            config.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "prediction_type must be epsilon or v_prediction".into(),
            });
        }
        let (_, mut ac) = alphas_cumprod(&config.betas, CLASS)?;
        if config.betas.rescale_betas_zero_snr
            && let Some(last) = ac.last_mut()
        {
            *last = 2f32.powi(-24);
        }
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let mut sigmas: Vec<f32> = train_sigmas.iter().rev().copied().collect();
        sigmas.push(0.0);
        let n = config.betas.num_train_timesteps;
        Ok(Self {
            config,
            train_sigmas,
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
            sigmas,
            step_index: None,
            begin_index: None,
            fallback: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
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

impl<B: Backend> Scheduler<B> for EulerAncestralDiscreteScheduler {
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
        let ts: Vec<f64> = spaced_timesteps(
            self.config.timestep_spacing,
            n,
            train,
            self.config.steps_offset,
        )
        .into_iter()
        .map(|v| v as f32 as f64)
        .collect();
        let mut sig: Vec<f32> = ts
            .iter()
            .map(|&t| interp_index(t, &self.train_sigmas) as f32)
            .collect();
        sig.push(0.0);
        self.timesteps = ts;
        self.sigmas = sig;
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
        noise: Option<&mut dyn NoiseSource>,
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
        let (from, to) = (sigma, self.sigmas[i + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let derivative = (sample.clone() - x0) / sigma;
        let prev = sample + derivative * (down - sigma);
        let dims = prev.dims();
        let count = dims[0] * dims[1];
        let values = crate::scheduler::noise_values(noise, &mut self.fallback, count)?;
        let z =
            Tensor::<B, 2>::from_data(TensorData::new(values, dims), (&prev.device(), DType::F32));
        let prev = prev + z * up;
        self.step_index = Some(i + 1);
        Ok(prev.cast(out_dtype))
    }
}
