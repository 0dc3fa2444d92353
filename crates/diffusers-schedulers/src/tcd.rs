//! diffusers' `TCDScheduler` (trajectory consistency distillation): LCM's schedule with a
//! strategic stochastic step controlled by `eta` (gamma).

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde_json::{Map, Value};

use crate::discrete::PredictionType;
use crate::lcm::{LCMConfig, LCMScheduler};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, index_for_timestep};
use crate::{Error, Result};

const CLASS: &str = "TCDScheduler";

/// `TCDScheduler`'s config: the same keys and defaults as `LCMScheduler`'s.
pub type TCDConfig = LCMConfig;

/// Trajectory consistency distillation sampler.
#[derive(Debug, Clone)]
pub struct TCDScheduler {
    inner: LCMScheduler,
    /// Stochasticity of each step (diffusers' `eta`, default 0.3).
    pub eta: f64,
}

impl TCDScheduler {
    /// Builds the scheduler.
    pub fn new(config: TCDConfig) -> Result<Self> {
        Ok(Self {
            inner: LCMScheduler::new(config)?,
            eta: 0.3,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }
}

impl<B: Backend> Scheduler<B> for TCDScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        Scheduler::<B>::config(&self.inner)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        Scheduler::<B>::set_timesteps(&mut self.inner, opts)
    }

    fn timesteps(&self) -> &[f64] {
        &self.inner.timesteps
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.inner.begin_index = Some(begin_index);
    }

    fn add_noise(
        &self,
        original: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        timestep: f64,
    ) -> Result<Tensor<B, 2>> {
        Scheduler::<B>::add_noise(&self.inner, original, noise, timestep)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("eta (gamma) {} must be in [0, 1]", self.eta),
            });
        }
        let s = &mut self.inner;
        let n = s.num_inference_steps.ok_or_else(|| Error::InvalidStep {
            class: CLASS,
            reason: "call set_timesteps before step".into(),
        })?;
        let i = match (s.step_index, s.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => {
                index_for_timestep(&s.timesteps, timestep).ok_or_else(|| Error::InvalidStep {
                    class: CLASS,
                    reason: format!("timestep {timestep} is not in the schedule"),
                })?
            }
        };
        let train = s.config.num_train_timesteps as i64;
        let t = timestep as i64;
        if t < 0 || t >= train {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("timestep {timestep} is outside 0..{train}"),
            });
        }
        let prev_t = s.timesteps.get(i + 1).map(|&x| x as i64).unwrap_or(0);
        let ts = ((1.0 - self.eta) as f32 * prev_t as f32).floor() as i64;
        let ac = &s.alphas_cumprod;
        let a_t = ac[t as usize];
        let b_t = 1.0 - a_t;
        let a_prev = if prev_t >= 0 {
            ac[prev_t as usize]
        } else {
            s.final_alpha_cumprod
        };
        let a_s = ac[ts.clamp(0, train - 1) as usize];
        let b_s = 1.0 - a_s;
        let (x0, eps) = match s.config.prediction_type {
            PredictionType::Sample => {
                let eps = (sample.clone() - model_output.clone() * a_t.sqrt()) / b_t.sqrt();
                (model_output, eps)
            }
            PredictionType::VPrediction => (
                sample.clone() * a_t.sqrt() - model_output.clone() * b_t.sqrt(),
                model_output * a_t.sqrt() + sample * b_t.sqrt(),
            ),
            _ => (
                (sample - model_output.clone() * b_t.sqrt()) / a_t.sqrt(),
                model_output,
            ),
        };
        let noised = x0 * a_s.sqrt() + eps * b_s.sqrt();
        let prev = if self.eta > 0.0 && i + 1 != n {
            let dims = noised.dims();
            let count = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut s.fallback, count)?;
            let z = Tensor::<B, 2>::from_data(
                TensorData::new(values, dims),
                (&noised.device(), DType::F32),
            )
            .cast(noised.dtype());
            noised * (a_prev / a_s).sqrt() + z * (1.0 - a_prev / a_s).sqrt()
        } else {
            noised
        };
        s.step_index = Some(i + 1);
        Ok(prev)
    }
}
