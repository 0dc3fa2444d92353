//! diffusers' `FlowMatchEulerDiscreteScheduler` (Flux, SD3, Wan, HunyuanVideo).
//!
//! Host-side schedule arithmetic follows diffusers' numpy/torch code step by step, in the same
//! precision (numpy f64 for computed schedules, f32 for user-given sigmas, f32 torch tensors for
//! the final sigmas), so timesteps and sigmas match bit for bit.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::ConfigMeta;
use num_traits::Float;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, index_for_timestep, linspace};
use crate::sigmas::{exponential_sigmas, karras_sigmas};
use crate::{Error, Result};

const CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// How `mu` shifts the schedule when `use_dynamic_shifting` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1/t - 1))`.
    Exponential,
    /// `mu / (mu + (1/t - 1))`.
    Linear,
}

fn d1000() -> usize {
    1000
}
fn d_one() -> f64 {
    1.0
}
fn d_base_shift() -> Option<f64> {
    Some(0.5)
}
fn d_max_shift() -> Option<f64> {
    Some(1.15)
}
fn d256() -> usize {
    256
}
fn d4096() -> usize {
    4096
}
fn d_exp() -> TimeShiftType {
    TimeShiftType::Exponential
}

/// `FlowMatchEulerDiscreteScheduler`'s config, key for key with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowMatchEulerDiscreteConfig {
    /// Training timesteps.
    #[serde(default = "d1000")]
    pub num_train_timesteps: usize,
    /// Static shift of the schedule.
    #[serde(default = "d_one")]
    pub shift: f64,
    /// Resolution-dependent shifting with `mu`.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// Shift at `base_image_seq_len` (used by pipelines to compute `mu`).
    #[serde(default = "d_base_shift")]
    pub base_shift: Option<f64>,
    /// Shift at `max_image_seq_len`.
    #[serde(default = "d_max_shift")]
    pub max_shift: Option<f64>,
    /// Sequence length of `base_shift`.
    #[serde(default = "d256")]
    pub base_image_seq_len: usize,
    /// Sequence length of `max_shift`.
    #[serde(default = "d4096")]
    pub max_image_seq_len: usize,
    /// Use `1 - sigma` (Mochi).
    #[serde(default)]
    pub invert_sigmas: bool,
    /// Stretch the schedule to end at this value.
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas (alpha = beta = 0.6).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Kind of dynamic shift.
    #[serde(default = "d_exp")]
    pub time_shift_type: TimeShiftType,
    /// Re-noise at every step instead of an Euler step.
    #[serde(default)]
    pub stochastic_sampling: bool,
    /// `_class_name`, `_diffusers_version` and keys this scheduler does not use.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl diffusers_core::config::Config for FlowMatchEulerDiscreteConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }
}

/// Flow-matching Euler sampler.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigma_min: f64,
    sigma_max: f64,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    fallback_generator: Option<TorchGenerator>,
}

/// diffusers' `calculate_shift`: `mu` from the image sequence length, linear between
/// `(base_seq_len, base_shift)` and `(max_seq_len, max_shift)`.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

fn c<T: Float>(x: f64) -> T {
    T::from(x).unwrap_or_else(T::nan)
}

/// Steps 2-3 of diffusers' `set_timesteps`, in the array's precision (numpy weak scalars).
fn shift_and_stretch<T: Float>(
    sig: Vec<T>,
    cfg: &FlowMatchEulerDiscreteConfig,
    mu: Option<f64>,
) -> Vec<T> {
    let one = T::one();
    let mut s: Vec<T> = if cfg.use_dynamic_shifting {
        let mu = mu.unwrap_or_default();
        match cfg.time_shift_type {
            TimeShiftType::Exponential => {
                let e = c::<T>(mu.exp());
                sig.iter().map(|&t| e / (e + (one / t - one))).collect()
            }
            TimeShiftType::Linear => {
                let m = c::<T>(mu);
                sig.iter().map(|&t| m / (m + (one / t - one))).collect()
            }
        }
    } else {
        let shift = c::<T>(cfg.shift);
        let shift_m1 = c::<T>(cfg.shift - 1.0);
        sig.iter()
            .map(|&x| shift * x / (one + shift_m1 * x))
            .collect()
    };
    if let Some(st) = cfg.shift_terminal.filter(|v| *v != 0.0) {
        let one_minus: Vec<T> = s.iter().map(|&t| one - t).collect();
        let last = one_minus.last().copied().unwrap_or(one);
        let scale = last / c::<T>(1.0 - st);
        s = one_minus.iter().map(|&z| one - z / scale).collect();
    }
    s
}

impl FlowMatchEulerDiscreteScheduler {
    /// Builds the scheduler from its config.
    pub fn new(config: FlowMatchEulerDiscreteConfig) -> Result<Self> {
        crate::discrete::check_sigma_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
            CLASS,
        )?;
        if config.num_train_timesteps == 0 {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "`num_train_timesteps` must be at least 1".into(),
            });
        }
        let n = config.num_train_timesteps;
        // timesteps = linspace(1, N, N)[::-1] in f32; sigmas = timesteps / N (f32 torch ops).
        let mut sigmas: Vec<f32> = (1..=n).rev().map(|t| t as f32 / n as f32).collect();
        if !config.use_dynamic_shifting {
            let shift = config.shift as f32;
            let shift_m1 = (config.shift - 1.0) as f32;
            sigmas = sigmas
                .iter()
                .map(|&s| shift * s / (1.0 + shift_m1 * s))
                .collect();
        }
        let sigma_min = *sigmas.last().unwrap_or(&0.0) as f64;
        let sigma_max = *sigmas.first().unwrap_or(&1.0) as f64;
        let timesteps = sigmas.iter().map(|&s| (s * n as f32) as f64).collect();
        Ok(Self {
            config,
            timesteps,
            sigmas: sigmas.iter().map(|&s| s as f64).collect(),
            sigma_min,
            sigma_max,
            step_index: None,
            begin_index: None,
            fallback_generator: None,
        })
    }

    /// Builds the scheduler from `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    /// The typed config.
    pub fn typed_config(&self) -> &FlowMatchEulerDiscreteConfig {
        &self.config
    }

    /// The current step index (`None` before the first step).
    pub fn step_index(&self) -> Option<usize> {
        self.step_index
    }

    fn compute(&mut self, opts: &TimestepOptions) -> Result<()> {
        let cfg = &self.config;
        if cfg.use_dynamic_shifting && opts.mu.is_none() {
            return Err(Error::MissingMu { class: CLASS });
        }
        let (ts, sg) = (opts.timesteps.as_ref(), opts.sigmas.as_ref());
        if let (Some(t), Some(s)) = (ts, sg)
            && t.len() != s.len()
        {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "`sigmas` and `timesteps` should have the same length".into(),
            });
        }
        let n = match opts.num_inference_steps {
            Some(n) => {
                if sg.is_some_and(|s| s.len() != n) || ts.is_some_and(|t| t.len() != n) {
                    return Err(Error::ConflictingOptions {
                        class: CLASS,
                        reason: "`sigmas` and `timesteps` should have the same length as num_inference_steps".into(),
                    });
                }
                n
            }
            None => match (sg, ts) {
                (Some(s), _) => s.len(),
                (None, Some(t)) => t.len(),
                (None, None) => 0,
            },
        };
        if n == 0 {
            return Err(Error::ZeroSteps { class: CLASS });
        }
        if ts.is_some() && sg.is_none() {
            tracing::warn!(
                "`timesteps` were passed without `sigmas`: the timesteps are used as given, while the sigmas derived from them are shifted"
            );
        }
        let custom_ts: Option<Vec<f32>> = ts.map(|t| t.iter().map(|&v| v as f32).collect());
        let ntt = cfg.num_train_timesteps as f64;
        // Steps 1-3, in numpy's precision: f64 for computed schedules, f32 for given sigmas.
        let shifted: Vec<f64> = match sg {
            None => {
                let base: Vec<f64> = match &custom_ts {
                    Some(t) => t.iter().map(|&v| v as f64).collect(),
                    None => linspace(self.sigma_max * ntt, self.sigma_min * ntt, n),
                };
                // With float32 custom timesteps numpy divides in f32.
                if let Some(t) = &custom_ts {
                    let s: Vec<f32> = t.iter().map(|&v| v / ntt as f32).collect();
                    shift_and_stretch(s, cfg, opts.mu)
                        .into_iter()
                        .map(f64::from)
                        .collect()
                } else {
                    let s: Vec<f64> = base.iter().map(|&v| v / ntt).collect();
                    shift_and_stretch(s, cfg, opts.mu)
                }
            }
            Some(s) => {
                let s: Vec<f32> = s.iter().map(|&v| v as f32).collect();
                shift_and_stretch(s, cfg, opts.mu)
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
        };
        // Step 4: karras / exponential schedules (numpy f64).
        let shifted = if cfg.use_karras_sigmas {
            karras_sigmas(&shifted, n, None, None, 7.0)
        } else if cfg.use_beta_sigmas {
            crate::sigmas::beta_sigmas(&shifted, n, None, None)
        } else if cfg.use_exponential_sigmas {
            exponential_sigmas(&shifted, n, None, None)
        } else {
            shifted
        };
        // Step 5: float32 tensors.
        let mut sigmas: Vec<f32> = shifted.iter().map(|&v| v as f32).collect();
        let mut timesteps: Vec<f32> = match custom_ts {
            Some(t) => t,
            None => sigmas.iter().map(|&s| s * ntt as f32).collect(),
        };
        // Step 6: terminal value.
        if cfg.invert_sigmas {
            sigmas = sigmas.iter().map(|&s| 1.0 - s).collect();
            timesteps = sigmas.iter().map(|&s| s * ntt as f32).collect();
            sigmas.push(1.0);
        } else {
            sigmas.push(0.0);
        }
        self.timesteps = timesteps.into_iter().map(f64::from).collect();
        self.sigmas = sigmas.into_iter().map(f64::from).collect();
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn init_step_index(&mut self, timestep: f64) -> Result<usize> {
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        let i = match self.begin_index {
            Some(b) => b,
            None => {
                index_for_timestep(&self.timesteps, timestep).ok_or_else(|| Error::InvalidStep {
                    class: CLASS,
                    reason: format!(
                        "timestep {timestep} is not in the schedule (call set_timesteps first)"
                    ),
                })?
            }
        };
        self.step_index = Some(i);
        Ok(i)
    }

    /// Flow-matching forward process (img2img): `sigma * noise + (1 - sigma) * sample` at the
    /// sigma of `timestep` (or of the begin index, when set).
    pub fn scale_noise<B: Backend>(
        &self,
        sample: Tensor<B, 2>,
        timestep: f64,
        noise: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        let idx = match (self.begin_index, self.step_index) {
            (None, _) => index_for_timestep(&self.timesteps, timestep),
            (Some(_), Some(s)) => Some(s),
            (Some(b), None) => Some(b),
        }
        .ok_or_else(|| Error::InvalidStep {
            class: CLASS,
            reason: format!("timestep {timestep} is not in the schedule"),
        })?;
        let sigma = self.sigmas[idx] as f32;
        Ok(noise * sigma + sample * (1.0 - sigma))
    }
}

impl<B: Backend> Scheduler<B> for FlowMatchEulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        self.compute(opts)
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<Vec<f64>> {
        Some(self.sigmas.clone())
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
        self.scale_noise(original, timestep, noise)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let idx = self.init_step_index(timestep)?;
        if idx + 1 >= self.sigmas.len() {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!(
                    "step {idx} is past the end of a {}-step schedule",
                    self.timesteps.len()
                ),
            });
        }
        let out_dtype = model_output.dtype();
        let sample = sample.cast(DType::F32);
        let model_output = model_output.cast(DType::F32);
        let sigma = self.sigmas[idx] as f32;
        let sigma_next = self.sigmas[idx + 1] as f32;
        let prev = if self.config.stochastic_sampling {
            let x0 = sample.clone() - model_output * sigma;
            let dims = sample.dims();
            let n = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut self.fallback_generator, n)?;
            let noise = Tensor::<B, 2>::from_data(
                TensorData::new(values, dims),
                (&sample.device(), DType::F32),
            );
            x0 * (1.0 - sigma_next) + noise * sigma_next
        } else {
            let dt = sigma_next - sigma;
            sample + model_output * dt
        };
        self.step_index = Some(idx + 1);
        Ok(prev.cast(out_dtype))
    }
}
