//! diffusers' `KDPM2AncestralDiscreteScheduler` (DPM-Solver-2 with ancestral noise).

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde_json::{Map, Value};

use crate::discrete::sigma_to_t;
use crate::k_dpm_2_discrete::{KDPM2Config, base_schedule, lerp_half, repeat_inner, validate};
use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, noise_index};
use crate::{Error, Result};

const CLASS: &str = "KDPM2AncestralDiscreteScheduler";

/// DPM-Solver-2 with ancestral sampling.
#[derive(Debug, Clone)]
pub struct KDPM2AncestralDiscreteScheduler<B: Backend> {
    config: KDPM2Config,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    first_sample: Option<Tensor<B, 2>>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    fallback: Option<TorchGenerator>,
}

impl<B: Backend> KDPM2AncestralDiscreteScheduler<B> {
    /// Builds the scheduler.
    pub fn new(config: KDPM2Config) -> Result<Self> {
        let train_sigmas = validate(&config, CLASS)?;
        let n = config.num_train_timesteps;
        let mut s = Self {
            config,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_interpol: Vec::new(),
            sigmas_up: Vec::new(),
            sigmas_down: Vec::new(),
            first_sample: None,
            step_index: None,
            begin_index: None,
            fallback: None,
        };
        Scheduler::<B>::set_timesteps(&mut s, &TimestepOptions::steps(n))?;
        Ok(s)
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

impl<B: Backend> Scheduler<B> for KDPM2AncestralDiscreteScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        let base = base_schedule(&self.config, &self.train_sigmas, opts, CLASS)?;
        let s = &base.sigmas;
        let k = s.len();
        let mut next: Vec<f32> = (0..k).map(|i| s[(i + 1) % k]).collect();
        next[k - 1] = 0.0;
        let up: Vec<f32> = (0..k)
            .map(|i| (next[i] * next[i] * (s[i] * s[i] - next[i] * next[i]) / (s[i] * s[i])).sqrt())
            .collect();
        let mut down: Vec<f32> = (0..k)
            .map(|i| (next[i] * next[i] - up[i] * up[i]).sqrt())
            .collect();
        down[k - 1] = 0.0;
        let mut interpol: Vec<f32> = (0..k)
            .map(|i| lerp_half(s[i].ln(), down[i].ln()).exp())
            .collect();
        for v in interpol.iter_mut().skip(k.saturating_sub(2)) {
            *v = 0.0;
        }
        let t_interpol: Vec<f64> = interpol
            .iter()
            .map(|&x| sigma_to_t(x as f64, &base.log_sigmas))
            .collect();
        let mut timesteps = vec![base.timesteps[0]];
        for (ti, t) in t_interpol.iter().zip(base.timesteps.iter().skip(1)) {
            timesteps.push(*ti);
            timesteps.push(*t);
        }
        self.timesteps = timesteps.into_iter().map(|t| t as f32 as f64).collect();
        self.sigmas = repeat_inner(s);
        self.sigmas_interpol = repeat_inner(&interpol);
        self.sigmas_up = repeat_inner(&up);
        self.sigmas_down = repeat_inner(&down);
        self.first_sample = None;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
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
        let sigma = if self.first_sample.is_none() {
            self.sigmas[i]
        } else {
            self.sigmas_interpol[i - 1]
        };
        Ok(sample / (sigma * sigma + 1.0).sqrt())
    }

    fn add_noise(
        &self,
        original: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        timestep: f64,
    ) -> Result<Tensor<B, 2>> {
        let i = noise_index(
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
        if i + 1 >= self.sigmas.len() || (self.first_sample.is_some() && i == 0) {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("step {i} is outside the schedule"),
            });
        }
        let model_output = model_output.cast(DType::F32);
        let sample = sample.cast(DType::F32);
        let first = self.first_sample.is_none();
        let j = if first { i } else { i - 1 };
        let sigma = self.sigmas[j];
        let interpol = self.sigmas_interpol[j];
        let up = self.sigmas_up[j];
        let down = self.sigmas_down[if first { i.saturating_sub(1) } else { i - 1 }];
        let sigma_input = if first { sigma } else { interpol };
        let x0 = crate::discrete::x0_at_sigma(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma_input,
        );
        let prev = if first {
            let derivative = (sample.clone() - x0) / sigma;
            self.first_sample = Some(sample.clone());
            sample + derivative * (interpol - sigma)
        } else {
            let derivative = (sample.clone() - x0) / interpol;
            let base = self.first_sample.take().unwrap_or(sample);
            let prev = base + derivative * (down - sigma);
            let dims = prev.dims();
            let count = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut self.fallback, count)?;
            let z = Tensor::<B, 2>::from_data(
                TensorData::new(values, dims),
                (&prev.device(), DType::F32),
            );
            prev + z * up
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }
}
