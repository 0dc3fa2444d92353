//! diffusers' `KDPM2DiscreteScheduler` (DPM-Solver-2 over Karras sigmas, from k-diffusion).

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, BetaSchedule, PredictionType, TimestepSpacing, alphas_cumprod, check_steps,
    interp_index, sigma_to_t, spaced_timesteps,
};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, noise_index};
use crate::sigmas::{SigmaSchedule, converted_sigmas};
use crate::{Error, Result};

const CLASS: &str = "KDPM2DiscreteScheduler";

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
fn linspace() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

/// The config of `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler` (Stable
/// Diffusion's beta defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KDPM2Config {
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
    #[serde(default = "linear")]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas (alpha = beta = 0.6).
    #[serde(default)]
    pub use_beta_sigmas: bool,
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

/// The per-run schedule both KDPM2 schedulers start from: timesteps, sigmas with 0 appended, and
/// the training log-sigmas.
pub(crate) struct BaseSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
    pub log_sigmas: Vec<f32>,
}

pub(crate) fn validate(config: &KDPM2Config, class: &'static str) -> Result<Vec<f32>> {
    crate::discrete::check_sigma_flags(
        config.use_karras_sigmas,
        config.use_exponential_sigmas,
        config.use_beta_sigmas,
        class,
    )?;
    if !matches!(
        config.prediction_type,
        PredictionType::Epsilon | PredictionType::VPrediction
    ) {
        return Err(Error::InvalidConfig {
            class,
            reason: "prediction_type must be epsilon or v_prediction".into(),
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
    let (_, ac) = alphas_cumprod(&betas, class)?;
    Ok(ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect())
}

pub(crate) fn base_schedule(
    config: &KDPM2Config,
    train_sigmas: &[f32],
    opts: &TimestepOptions,
    class: &'static str,
) -> Result<BaseSchedule> {
    if opts.timesteps.is_some() {
        return Err(Error::CustomScheduleUnsupported {
            class,
            what: "timesteps",
        });
    }
    if opts.sigmas.is_some() {
        return Err(Error::CustomScheduleUnsupported {
            class,
            what: "sigmas",
        });
    }
    let train = config.num_train_timesteps;
    let n = opts.num_inference_steps.unwrap_or(0);
    check_steps(n, train, class)?;
    let mut ts: Vec<f64> = spaced_timesteps(config.timestep_spacing, n, train, config.steps_offset)
        .into_iter()
        .map(|v| v as f32 as f64)
        .collect();
    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
    let mut sig: Vec<f64> = ts.iter().map(|&t| interp_index(t, train_sigmas)).collect();
    if let Some(kind) = SigmaSchedule::from_flags(
        config.use_karras_sigmas,
        config.use_exponential_sigmas,
        config.use_beta_sigmas,
    ) {
        let (s, t) = converted_sigmas(kind, &sig, n, (None, None), &log_sigmas, true);
        sig = s;
        ts = t;
    }
    sig.push(0.0);
    Ok(BaseSchedule {
        timesteps: ts,
        sigmas: sig.into_iter().map(|v| v as f32).collect(),
        log_sigmas,
    })
}

/// `torch.lerp(a, b, 0.5)`: `b - (b - a) * 0.5`.
pub(crate) fn lerp_half(a: f32, b: f32) -> f32 {
    b - (b - a) * 0.5
}

/// `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])`.
pub(crate) fn repeat_inner(x: &[f32]) -> Vec<f32> {
    let mut out = vec![x[0]];
    for &v in &x[1..] {
        out.extend([v, v]);
    }
    out.push(x[x.len() - 1]);
    out
}

/// DPM-Solver-2 over Karras-style sigmas.
#[derive(Debug, Clone)]
pub struct KDPM2DiscreteScheduler<B: Backend> {
    config: KDPM2Config,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    first_sample: Option<Tensor<B, 2>>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<B: Backend> KDPM2DiscreteScheduler<B> {
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
            first_sample: None,
            step_index: None,
            begin_index: None,
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

impl<B: Backend> Scheduler<B> for KDPM2DiscreteScheduler<B> {
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
        // exp(lerp(log s, log roll(s, 1), 0.5))
        let interpol: Vec<f32> = (0..k)
            .map(|i| lerp_half(s[i].ln(), s[(i + k - 1) % k].ln()).exp())
            .collect();
        let t_interpol: Vec<f64> = interpol
            .iter()
            .map(|&x| sigma_to_t(x as f64, &base.log_sigmas))
            .collect();
        let mut timesteps = vec![base.timesteps[0]];
        for (ti, t) in t_interpol.iter().zip(&base.timesteps).skip(1) {
            timesteps.push(*ti);
            timesteps.push(*t);
        }
        self.timesteps = timesteps.into_iter().map(|t| t as f32 as f64).collect();
        self.sigmas = repeat_inner(s);
        self.sigmas_interpol = repeat_inner(&interpol);
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
            self.sigmas_interpol[i]
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
        _noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let i = self.index(timestep)?;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("step {i} is past the end of the schedule"),
            });
        }
        let model_output = model_output.cast(DType::F32);
        let sample = sample.cast(DType::F32);
        let first = self.first_sample.is_none();
        let (sigma, interpol, next) = if first {
            (
                self.sigmas[i],
                self.sigmas_interpol[i + 1],
                self.sigmas[i + 1],
            )
        } else {
            (self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i])
        };
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
            base + derivative * (next - sigma)
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }
}
