//! diffusers' `LMSDiscreteScheduler` (linear multistep over Karras-style sigmas).

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, interp_index,
    spaced_timesteps,
};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, noise_index};
use crate::sigmas::{SigmaSchedule, converted_sigmas};
use crate::{Error, Result};

const CLASS: &str = "LMSDiscreteScheduler";

fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn linspace() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

/// `LMSDiscreteScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LMSDiscreteConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas (alpha = beta = 0.6).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// What the model predicts.
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

/// Linear multistep sampler (order 4 by default, as diffusers' `step(order=4)`).
#[derive(Debug, Clone)]
pub struct LMSDiscreteScheduler<B: Backend> {
    config: LMSDiscreteConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    derivatives: Vec<Tensor<B, 2>>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    /// Maximum order of the multistep update.
    pub order: usize,
}

/// Integral of a polynomial of degree < 8 by 4-point Gauss-Legendre (exact for LMS's Lagrange
/// bases, which scipy's `quad` integrates to rounding).
fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    const X: [f64; 4] = [
        -0.861_136_311_594_052_6,
        -0.339_981_043_584_856_3,
        0.339_981_043_584_856_3,
        0.861_136_311_594_052_6,
    ];
    const W: [f64; 4] = [
        0.347_854_845_137_453_9,
        0.652_145_154_862_546_1,
        0.652_145_154_862_546_1,
        0.347_854_845_137_453_9,
    ];
    let (m, r) = ((a + b) / 2.0, (b - a) / 2.0);
    X.iter().zip(W).map(|(x, w)| w * f(m + r * x)).sum::<f64>() * r
}

impl<B: Backend> LMSDiscreteScheduler<B> {
    /// Builds the scheduler.
    pub fn new(config: LMSDiscreteConfig) -> Result<Self> {
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
        if config.betas.rescale_betas_zero_snr {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "LMSDiscreteScheduler has no `rescale_betas_zero_snr`".into(),
            });
        }
        let (_, ac) = alphas_cumprod(&config.betas, CLASS)?;
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let n = config.betas.num_train_timesteps;
        let mut s = Self {
            config,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            derivatives: Vec::new(),
            step_index: None,
            begin_index: None,
            order: 4,
        };
        Scheduler::<B>::set_timesteps(&mut s, &TimestepOptions::steps(n))?;
        Ok(s)
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = |i: usize| self.sigmas[i] as f64;
        let f = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(t - k)) / (s(t - current) - s(t - k)))
                .product::<f64>()
        };
        integrate(f, s(t), s(t + 1))
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

impl<B: Backend> Scheduler<B> for LMSDiscreteScheduler<B> {
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
        let cfg = &self.config;
        let train = cfg.betas.num_train_timesteps;
        let n = opts.num_inference_steps.unwrap_or(0);
        check_steps(n, train, CLASS)?;
        let mut ts: Vec<f64> = spaced_timesteps(cfg.timestep_spacing, n, train, cfg.steps_offset)
            .into_iter()
            .map(|v| v as f32 as f64)
            .collect();
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
        self.sigmas = sig.into_iter().map(|v| v as f32).collect();
        self.timesteps = ts.into_iter().map(|t| t as f32 as f64).collect();
        self.derivatives.clear();
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
        let sigma = self.sigmas[i];
        let x0 = crate::discrete::x0_at_sigma(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma,
        );
        let derivative = (sample.clone() - x0) / sigma;
        self.derivatives.push(derivative);
        if self.derivatives.len() > self.order {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(self.order);
        let mut prev = sample;
        for (current, d) in (0..order).zip(self.derivatives.iter().rev()) {
            let c = self.coefficient(order, i, current) as f32;
            prev = prev + d.clone() * c;
        }
        self.step_index = Some(i + 1);
        Ok(prev)
    }
}
