//! The [`Scheduler`] trait: what pipelines need from diffusers' `SchedulerMixin`.

use burn::prelude::*;
use serde_json::{Map, Value};

use crate::random::TorchGenerator;
use crate::{Error, Result};

/// Arguments of `set_timesteps`, as diffusers accepts them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimestepOptions {
    /// Number of denoising steps (may be omitted when `timesteps` or `sigmas` are given).
    pub num_inference_steps: Option<usize>,
    /// Custom timesteps.
    pub timesteps: Option<Vec<f64>>,
    /// Custom sigmas.
    pub sigmas: Option<Vec<f64>>,
    /// Resolution-dependent shift (flow matching with `use_dynamic_shifting`).
    pub mu: Option<f64>,
    /// img2img strength for schedulers whose schedule depends on it (LCM, TCD); other
    /// schedulers leave strength to the pipeline (`set_begin_index`).
    pub strength: Option<f64>,
}

impl TimestepOptions {
    /// `set_timesteps(num_inference_steps)`.
    pub fn steps(n: usize) -> Self {
        Self {
            num_inference_steps: Some(n),
            ..Self::default()
        }
    }
}

/// A source of standard-normal noise for stochastic schedulers.
///
/// A draw may fail (a recorded source that has run out, or that holds a tensor of another size
/// than the one asked for): the scheduler's `step` then returns the error instead of computing a
/// sample from made-up noise.
pub trait NoiseSource {
    /// `n` standard normal values (f32), as `randn_tensor(shape)` would give for `n` elements.
    fn noise(&mut self, n: usize) -> Result<Vec<f32>>;
}

impl NoiseSource for TorchGenerator {
    fn noise(&mut self, n: usize) -> Result<Vec<f32>> {
        Ok(self.randn(n))
    }
}

/// Noise recorded elsewhere (e.g. by the oracle), handed out in order.
///
/// Each draw takes the next recorded tensor, which must hold exactly the number of values asked
/// for; a draw past the last one, or of another size, is [`Error::Noise`].
///
/// ```
/// use diffusers_schedulers::{NoiseSource, RecordedNoise};
///
/// let mut noise = RecordedNoise(vec![vec![0.5, -1.0]].into());
/// assert_eq!(noise.noise(2)?, [0.5, -1.0]);
/// assert!(noise.noise(2).is_err()); // run out: an error, not zeros
/// # Ok::<(), diffusers_schedulers::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct RecordedNoise(pub std::collections::VecDeque<Vec<f32>>);

impl NoiseSource for RecordedNoise {
    fn noise(&mut self, n: usize) -> Result<Vec<f32>> {
        let v = self.0.pop_front().ok_or_else(|| Error::Noise {
            reason: format!(
                "a draw of {n} values was asked for, but the recorded noise has run out"
            ),
        })?;
        if v.len() != n {
            return Err(Error::Noise {
                reason: format!(
                    "a draw of {n} values was asked for, but the next recorded tensor holds {}",
                    v.len()
                ),
            });
        }
        Ok(v)
    }
}

/// A diffusion scheduler. Samples are handled as `[batch, features]`; [`step_nd`] and friends
/// reshape any latent rank to that and back.
///
/// A denoising loop, as in diffusers:
///
/// ```
/// use burn::tensor::Tensor;
/// use diffusers_core::backend::Cpu;
/// use diffusers_schedulers::{Scheduler, TimestepOptions, FlowMatchEulerDiscreteScheduler, step_nd};
///
/// let device = Default::default();
/// let mut scheduler = FlowMatchEulerDiscreteScheduler::from_json("{\"shift\": 3.0}")?;
/// Scheduler::<Cpu>::set_timesteps(&mut scheduler, &TimestepOptions::steps(4))?;
/// let mut latents = Tensor::<Cpu, 4>::ones([1, 4, 8, 8], &device);
/// for t in Scheduler::<Cpu>::timesteps(&scheduler).to_vec() {
///     let model_output = latents.clone() * 0.1; // a denoiser call goes here
///     latents = step_nd(&mut scheduler, model_output, t, latents, None)?;
/// }
/// assert_eq!(latents.dims(), [1, 4, 8, 8]);
/// # Ok::<(), diffusers_schedulers::Error>(())
/// ```
pub trait Scheduler<B: Backend> {
    /// The diffusers class name (`FlowMatchEulerDiscreteScheduler`, ...).
    fn class_name(&self) -> &'static str;
    /// The config as diffusers would save it (for `from_config` swapping).
    fn config(&self) -> Map<String, Value>;
    /// Computes the timesteps (and sigmas) for a run.
    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()>;
    /// The timesteps of the run (f32 values held as f64).
    fn timesteps(&self) -> &[f64];
    /// The sigmas of the run, with the terminal value appended, where the scheduler has sigmas.
    fn sigmas(&self) -> Option<Vec<f64>> {
        None
    }
    /// Standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Model evaluations per step (2 for Heun-type schedulers).
    fn order(&self) -> usize {
        1
    }
    /// Where the run starts (img2img); pipelines call this after `set_timesteps`.
    fn set_begin_index(&mut self, begin_index: usize);
    /// Scales the denoiser input for the current timestep (identity for most schedulers).
    fn scale_model_input(&mut self, sample: Tensor<B, 2>, _timestep: f64) -> Result<Tensor<B, 2>> {
        Ok(sample)
    }
    /// Noises clean samples to `timestep` (img2img, inpainting): diffusers' `add_noise`, or
    /// `scale_noise` for flow matching.
    fn add_noise(
        &self,
        original: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        timestep: f64,
    ) -> Result<Tensor<B, 2>> {
        let _ = (original, noise, timestep);
        Err(Error::InvalidStep {
            class: self.class_name(),
            reason: "add_noise is not available for this scheduler".into(),
        })
    }
    /// One denoising step: the sample at the previous timestep.
    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>>;
}

fn flatten<B: Backend, const D: usize>(x: Tensor<B, D>) -> ([usize; D], Tensor<B, 2>) {
    let dims = x.dims();
    let batch = dims[0];
    let rest: usize = dims[1..].iter().product();
    (dims, x.reshape([batch, rest]))
}

/// [`Scheduler::step`] for latents of any rank.
pub fn step_nd<B: Backend, S: Scheduler<B> + ?Sized, const D: usize>(
    scheduler: &mut S,
    model_output: Tensor<B, D>,
    timestep: f64,
    sample: Tensor<B, D>,
    noise: Option<&mut dyn NoiseSource>,
) -> Result<Tensor<B, D>> {
    let (dims, sample) = flatten(sample);
    let (mdims, model_output) = flatten(model_output);
    if dims != mdims {
        return Err(Error::InvalidStep {
            class: scheduler.class_name(),
            reason: format!("model output shape {mdims:?} differs from sample shape {dims:?}"),
        });
    }
    Ok(scheduler
        .step(model_output, timestep, sample, noise)?
        .reshape(dims))
}

/// [`Scheduler::scale_model_input`] for latents of any rank.
pub fn scale_model_input_nd<B: Backend, S: Scheduler<B> + ?Sized, const D: usize>(
    scheduler: &mut S,
    sample: Tensor<B, D>,
    timestep: f64,
) -> Result<Tensor<B, D>> {
    let (dims, sample) = flatten(sample);
    Ok(scheduler.scale_model_input(sample, timestep)?.reshape(dims))
}

/// The index of `timestep` in `schedule`, as diffusers' `index_for_timestep`: the second match
/// when there are several (so that img2img does not skip a step), the first otherwise.
pub fn index_for_timestep(schedule: &[f64], timestep: f64) -> Option<usize> {
    let hits: Vec<usize> = schedule
        .iter()
        .enumerate()
        .filter(|(_, t)| (**t as f32) == timestep as f32)
        .map(|(i, _)| i)
        .collect();
    match hits.len() {
        0 => None,
        1 => Some(hits[0]),
        _ => Some(hits[1]),
    }
}

/// numpy's `linspace(start, stop, num)` (endpoint included), bit for bit.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        (0..num).map(|i| (i as f64 / div) * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// The schedule index `add_noise` uses, as diffusers: the timestep's index before the run has a
/// begin index, the current step during inpainting, else the begin index.
pub fn noise_index(
    schedule: &[f64],
    begin_index: Option<usize>,
    step_index: Option<usize>,
    timestep: f64,
    class: &'static str,
) -> Result<usize> {
    match (begin_index, step_index) {
        (None, _) => index_for_timestep(schedule, timestep).ok_or_else(|| Error::InvalidStep {
            class,
            reason: format!("timestep {timestep} is not in the schedule"),
        }),
        (Some(_), Some(s)) => Ok(s),
        (Some(b), None) => Ok(b),
    }
}

/// `sqrt(alphas_cumprod[t]) * x + sqrt(1 - alphas_cumprod[t]) * noise` (DDPM-family `add_noise`).
pub fn add_noise_alphas<B: Backend>(
    alphas_cumprod: &[f32],
    original: Tensor<B, 2>,
    noise: Tensor<B, 2>,
    timestep: f64,
    class: &'static str,
) -> Result<Tensor<B, 2>> {
    let a = *alphas_cumprod
        .get(timestep as usize)
        .filter(|_| timestep >= 0.0)
        .ok_or_else(|| Error::InvalidStep {
            class,
            reason: format!("timestep {timestep} is outside the training schedule"),
        })?;
    Ok(original * a.sqrt() + noise * (1.0 - a).sqrt())
}

/// A config struct as the JSON map diffusers would save.
pub(crate) fn config_map<T: serde::Serialize>(config: &T) -> Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The step index on the first call of a run: the begin index if set, else the timestep's
/// index (`_init_step_index`). Later calls keep the stored index.
pub(crate) fn resolve_step_index(
    step_index: &mut Option<usize>,
    begin_index: Option<usize>,
    schedule: &[f64],
    timestep: f64,
    class: &'static str,
) -> Result<usize> {
    if let Some(i) = *step_index {
        return Ok(i);
    }
    let i = match begin_index {
        Some(b) => b,
        None => index_for_timestep(schedule, timestep).ok_or_else(|| Error::InvalidStep {
            class,
            reason: format!(
                "timestep {timestep} is not in the schedule (call set_timesteps first)"
            ),
        })?,
    };
    *step_index = Some(i);
    Ok(i)
}

/// `count` standard normals (f32): from the caller's source, else from a generator seeded from
/// the clock, as torch's default generator would be.
pub(crate) fn noise_values(
    noise: Option<&mut dyn NoiseSource>,
    fallback: &mut Option<TorchGenerator>,
    count: usize,
) -> Result<Vec<f32>> {
    match noise {
        Some(src) => src.noise(count),
        None => Ok(fallback
            .get_or_insert_with(|| TorchGenerator::new(entropy_seed()))
            .randn(count)),
    }
}

/// A seed for stochastic steps when the caller gives no generator.
pub(crate) fn entropy_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
