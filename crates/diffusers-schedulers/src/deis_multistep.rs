//! diffusers' `DEISMultistepScheduler` (diffusion exponential integrator sampler, log-rho).

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, interp_index,
    round_half_even, spaced_timesteps, threshold_sample,
};
use crate::scheduler::{
    NoiseSource, Scheduler, TimestepOptions, index_for_timestep, linspace, noise_index,
};
use crate::sigmas::{SigmaSchedule, converted_sigmas, flow_sigmas};
use crate::{Error, Result};

const CLASS: &str = "DEISMultistepScheduler";

fn d2() -> usize {
    2
}
fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn ratio() -> f64 {
    0.995
}
fn one() -> f64 {
    1.0
}
fn deis() -> String {
    "deis".into()
}
fn logrho() -> String {
    "logrho".into()
}
fn t() -> bool {
    true
}
fn linspace_spacing() -> TimestepSpacing {
    TimestepSpacing::Linspace
}
fn exponential() -> String {
    "exponential".into()
}

/// `DEISMultistepScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DEISMultistepConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// 1, 2 or 3.
    #[serde(default = "d2")]
    pub solver_order: usize,
    /// What the model predicts.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// Dynamic thresholding (Imagen).
    #[serde(default)]
    pub thresholding: bool,
    /// Quantile for thresholding.
    #[serde(default = "ratio")]
    pub dynamic_thresholding_ratio: f64,
    /// Max threshold.
    #[serde(default = "one")]
    pub sample_max_value: f64,
    /// Only `deis` (DPM-Solver names are mapped to it, as diffusers does).
    #[serde(default = "deis")]
    pub algorithm_type: String,
    /// Only `logrho`.
    #[serde(default = "logrho")]
    pub solver_type: String,
    /// Lower orders at the end of short schedules.
    #[serde(default = "t")]
    pub lower_order_final: bool,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas.
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Flow-matching sigmas.
    #[serde(default)]
    pub use_flow_sigmas: bool,
    /// Shift of the flow sigmas.
    #[serde(default = "one")]
    pub flow_shift: f64,
    /// Spacing of the timesteps.
    #[serde(default = "linspace_spacing")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// `flow_shift = exp(mu)` at `set_timesteps`.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// Only `exponential`.
    #[serde(default = "exponential")]
    pub time_shift_type: String,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// DEIS multistep sampler.
#[derive(Debug, Clone)]
pub struct DEISMultistepScheduler<B: Backend> {
    config: DEISMultistepConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor<B, 2>>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    flow_shift: f64,
}

impl<B: Backend> DEISMultistepScheduler<B> {
    /// Builds the scheduler.
    pub fn new(mut config: DEISMultistepConfig) -> Result<Self> {
        let bad = |r: &str| Error::InvalidConfig {
            class: CLASS,
            reason: r.to_string(),
        };
        crate::discrete::check_sigma_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
            CLASS,
        )?;
        if !(1..=3).contains(&config.solver_order) {
            return Err(bad("`solver_order` must be 1, 2 or 3"));
        }
        if matches!(config.algorithm_type.as_str(), "dpmsolver" | "dpmsolver++") {
            config.algorithm_type = "deis".into();
        }
        if config.algorithm_type != "deis" {
            return Err(bad("`algorithm_type` must be deis"));
        }
        if matches!(
            config.solver_type.as_str(),
            "midpoint" | "heun" | "bh1" | "bh2"
        ) {
            config.solver_type = "logrho".into();
        }
        if config.solver_type != "logrho" {
            return Err(bad("`solver_type` must be logrho"));
        }
        let (_, mut ac) = alphas_cumprod(&config.betas, CLASS)?;
        if config.betas.rescale_betas_zero_snr
            && let Some(last) = ac.last_mut()
        {
            *last = 2f32.powi(-24);
        }
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let n = config.betas.num_train_timesteps;
        let order = config.solver_order;
        let flow_shift = config.flow_shift;
        Ok(Self {
            config,
            sigmas: train_sigmas.clone(),
            train_sigmas,
            timesteps: (0..n).rev().map(|t| t as f32 as f64).collect(),
            model_outputs: vec![None; order],
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
            flow_shift,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn alpha_sigma(&self, sigma: f32) -> (f32, f32) {
        if self.config.use_flow_sigmas {
            (1.0 - sigma, sigma)
        } else {
            let a = 1.0 / (sigma * sigma + 1.0).sqrt();
            (a, sigma * a)
        }
    }
}

// diffusers evaluates these in f32 (numpy float32 logs of f32 tensors); the third-order
// coefficients cancel heavily, so they are computed in the same precision.
fn ind2(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

fn ind3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lc, ld) = (t.ln(), c.ln(), d.ln());
    let num = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    let den = (b.ln() - lc) * (b.ln() - ld);
    num / den
}

impl<B: Backend> Scheduler<B> for DEISMultistepScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        let cfg = self.config.clone();
        if let Some(mu) = opts.mu {
            if !(cfg.use_dynamic_shifting && cfg.time_shift_type == "exponential") {
                return Err(Error::ConflictingOptions {
                    class: CLASS,
                    reason: "`mu` needs `use_dynamic_shifting` with exponential time shift".into(),
                });
            }
            self.flow_shift = mu.exp();
        }
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
        let train = cfg.betas.num_train_timesteps;
        let n = opts.num_inference_steps.unwrap_or(0);
        check_steps(n, train, CLASS)?;
        let mut ts: Vec<f64> = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = linspace(0.0, (train - 1) as f64, n + 1)
                    .into_iter()
                    .map(round_half_even)
                    .collect();
                v.reverse();
                v.truncate(n);
                v
            }
            TimestepSpacing::Leading => {
                let r = train / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * r + cfg.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => spaced_timesteps(TimestepSpacing::Trailing, n, train, 0),
        };
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
        let flipped: Vec<f64> = self.train_sigmas.iter().rev().map(|&s| s as f64).collect();
        let repeat_last = |mut s: Vec<f64>| {
            let last = s[s.len() - 1];
            s.push(last);
            s
        };
        let kind = SigmaSchedule::from_flags(
            cfg.use_karras_sigmas,
            cfg.use_exponential_sigmas,
            cfg.use_beta_sigmas,
        );
        let sigmas: Vec<f64> = if let Some(kind) = kind {
            let (s, t) = converted_sigmas(kind, &flipped, n, (None, None), &log_sigmas, true);
            ts = t;
            repeat_last(s)
        } else if cfg.use_flow_sigmas {
            let (s, t) = flow_sigmas(self.flow_shift, train, n);
            ts = t;
            repeat_last(s)
        } else {
            let mut s: Vec<f64> = ts
                .iter()
                .map(|&t| interp_index(t, &self.train_sigmas))
                .collect();
            s.push(self.train_sigmas[0] as f64);
            s
        };
        self.sigmas = sigmas.into_iter().map(|v| v as f32).collect();
        self.timesteps = ts.into_iter().map(|t| t.trunc()).collect();
        self.model_outputs = vec![None; cfg.solver_order];
        self.lower_order_nums = 0;
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

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
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
        let (a, s) = self.alpha_sigma(self.sigmas[i]);
        Ok(original * a + noise * s)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        _noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let n = self.timesteps.len();
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => {
                index_for_timestep(&self.timesteps, timestep).unwrap_or(n.saturating_sub(1))
            }
        };
        if i >= n || i + 1 >= self.sigmas.len() {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("step {i} is past the end of a {n}-step schedule"),
            });
        }
        let cfg = &self.config;
        let lower_final = i == n - 1 && cfg.lower_order_final && n < 15;
        let lower_second = i + 2 == n && cfg.lower_order_final && n < 15;
        let model_output = model_output.cast(DType::F32);
        let sample = sample.cast(DType::F32);
        // convert_model_output: x0, (thresholded), then back to noise.
        let sigma = self.sigmas[i];
        let (a, s) = self.alpha_sigma(sigma);
        let x0 = match cfg.prediction_type {
            PredictionType::Epsilon => (sample.clone() - model_output * s) / a,
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => sample.clone() * a - model_output * s,
            PredictionType::FlowPrediction => sample.clone() - model_output * sigma,
        };
        let x0 = if cfg.thresholding {
            threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        } else {
            x0
        };
        let m = (sample.clone() - x0 * a) / s;
        let order = cfg.solver_order;
        self.model_outputs.rotate_left(1);
        self.model_outputs[order - 1] = Some(m.clone());
        let (alpha_t, sigma_t) = self.alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(self.sigmas[i]);
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_final {
            let h = (alpha_t.ln() - sigma_t.ln()) - (alpha_s0.ln() - sigma_s0.ln());
            sample * (alpha_t / alpha_s0) - m * (sigma_t * (h.exp() - 1.0))
        } else if order == 2 || self.lower_order_nums < 2 || lower_second {
            let m1 = self.model_outputs[order - 2]
                .clone()
                .unwrap_or_else(|| m.clone());
            let (alpha_s1, sigma_s1) = self.alpha_sigma(self.sigmas[i - 1]);
            let (rt, r0, r1) = (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1);
            let c1 = ind2(rt, r0, r1) - ind2(r0, r0, r1);
            let c2 = ind2(rt, r1, r0) - ind2(r0, r1, r0);
            (sample / alpha_s0 + m * c1 + m1 * c2) * alpha_t
        } else {
            let m1 = self.model_outputs[order - 2]
                .clone()
                .unwrap_or_else(|| m.clone());
            let m2 = self.model_outputs[order - 3]
                .clone()
                .unwrap_or_else(|| m1.clone());
            let (alpha_s1, sigma_s1) = self.alpha_sigma(self.sigmas[i - 1]);
            let (alpha_s2, sigma_s2) = self.alpha_sigma(self.sigmas[i - 2]);
            let (rt, r0, r1, r2) = (
                sigma_t / alpha_t,
                sigma_s0 / alpha_s0,
                sigma_s1 / alpha_s1,
                sigma_s2 / alpha_s2,
            );
            let c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2);
            let c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0);
            let c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1);
            (sample / alpha_s0 + m * c1 + m1 * c2 + m2 * c3) * alpha_t
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev)
    }
}
