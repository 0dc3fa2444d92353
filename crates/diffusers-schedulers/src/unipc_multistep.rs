//! diffusers' `UniPCMultistepScheduler` (unified predictor-corrector; Wan's default, with flow
//! sigmas and flow prediction).

use burn::prelude::*;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, interp_index,
    round_half_even, sigma_to_t, spaced_timesteps,
};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, linspace};
use crate::sigmas::{SigmaSchedule, converted_sigmas, karras_sigmas};
use crate::{Error, Result};

const CLASS: &str = "UniPCMultistepScheduler";

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
fn t() -> bool {
    true
}
fn bh2() -> String {
    "bh2".into()
}
fn linspace_spacing() -> TimestepSpacing {
    TimestepSpacing::Linspace
}
fn zero() -> String {
    "zero".into()
}
fn exponential() -> String {
    "exponential".into()
}

/// `UniPCMultistepScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UniPCMultistepConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Order of the predictor (1-3).
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
    /// Work in the data (x0) parameterisation.
    #[serde(default = "t")]
    pub predict_x0: bool,
    /// `bh1` or `bh2`.
    #[serde(default = "bh2")]
    pub solver_type: String,
    /// Lower orders at the end.
    #[serde(default = "t")]
    pub lower_order_final: bool,
    /// Steps without the corrector.
    #[serde(default)]
    pub disable_corrector: Vec<usize>,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas (alpha = beta = 0.6).
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
    /// `zero` or `sigma_min`.
    #[serde(default = "zero")]
    pub final_sigmas_type: String,
    /// `mu`-dependent shift of flow sigmas.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// `exponential` or `linear`.
    #[serde(default = "exponential")]
    pub time_shift_type: String,
    /// Lower bound for karras/exponential sigmas.
    #[serde(default)]
    pub sigma_min: Option<f64>,
    /// Upper bound for karras/exponential sigmas.
    #[serde(default)]
    pub sigma_max: Option<f64>,
    /// Stretch flow sigmas to end here.
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// UniPC predictor-corrector sampler.
#[derive(Debug, Clone)]
pub struct UniPCMultistepScheduler<B: Backend> {
    config: UniPCMultistepConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor<B, 2>>>,
    lower_order_nums: usize,
    this_order: usize,
    last_sample: Option<Tensor<B, 2>>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

/// Solves `a x = b` (n <= 3) by Gaussian elimination with partial pivoting, in f32 (LAPACK's
/// `sgesv` algorithm).
fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f32; n];
    for row in (0..n).rev() {
        let mut s = b[row];
        for k in row + 1..n {
            s -= a[row][k] * x[k];
        }
        x[row] = s / a[row][row];
    }
    x
}

impl<B: Backend> UniPCMultistepScheduler<B> {
    /// Builds the scheduler.
    pub fn new(config: UniPCMultistepConfig) -> Result<Self> {
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
        let mut config = config;
        if matches!(config.solver_type.as_str(), "midpoint" | "heun" | "logrho") {
            config.solver_type = "bh2".into();
        }
        if !matches!(config.solver_type.as_str(), "bh1" | "bh2") {
            return Err(bad("`solver_type` must be bh1 or bh2"));
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(bad("`final_sigmas_type` must be zero or sigma_min"));
        }
        if !config.predict_x0 && config.prediction_type == PredictionType::FlowPrediction {
            return Err(bad("flow_prediction needs predict_x0"));
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
        Ok(Self {
            config,
            sigmas: train_sigmas.clone(),
            train_sigmas,
            timesteps: (0..n).rev().map(|t| t as f32 as f64).collect(),
            model_outputs: vec![None; order],
            lower_order_nums: 0,
            this_order: 1,
            last_sample: None,
            step_index: None,
            begin_index: None,
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

    fn lambda(&self, sigma: f32) -> f32 {
        let (a, s) = self.alpha_sigma(sigma);
        a.ln() - s.ln()
    }

    /// `rhos` and the update's scalar coefficients, as diffusers' bh updates compute them.
    fn coefficients(
        &self,
        h: f32,
        rks: &[f32],
        order: usize,
    ) -> (f32, f32, Vec<Vec<f32>>, Vec<f32>) {
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1f32;
        let b_h = if self.config.solver_type == "bh1" {
            hh
        } else {
            hh.exp_m1()
        };
        let mut r = Vec::new();
        let mut b = Vec::new();
        for i in 1..=order {
            r.push(
                rks.iter()
                    .map(|&x| x.powi(i as i32 - 1))
                    .collect::<Vec<f32>>(),
            );
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (h_phi_1, b_h, r, b)
    }

    fn combine(rhos: &[f32], d1s: &[Tensor<B, 2>]) -> Option<Tensor<B, 2>> {
        d1s.iter()
            .zip(rhos)
            .map(|(d, &r)| d.clone() * r)
            .reduce(|a, b| a + b)
    }

    fn predictor(&self, sample: Tensor<B, 2>, order: usize, i: usize) -> Tensor<B, 2> {
        let m = |k: usize| self.model_outputs[self.model_outputs.len() - 1 - k].clone();
        let m0 = m(0).unwrap_or_else(|| sample.clone());
        let (alpha_t, sigma_t) = self.alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(self.sigmas[i]);
        let lambda_s0 = self.lambda(self.sigmas[i]);
        let h = self.lambda(self.sigmas[i + 1]) - lambda_s0;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let rk = (self.lambda(self.sigmas[i - k]) - lambda_s0) / h;
            rks.push(rk);
            d1s.push((m(k).unwrap_or_else(|| m0.clone()) - m0.clone()) / rk);
        }
        rks.push(1.0);
        let (h_phi_1, b_h, r, b) = self.coefficients(h, &rks, order);
        let rhos: Vec<f32> = if d1s.is_empty() {
            Vec::new()
        } else if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            solve(
                r[..k].iter().map(|row| row[..k].to_vec()).collect(),
                b[..k].to_vec(),
            )
        };
        let pred = Self::combine(&rhos, &d1s);
        if self.config.predict_x0 {
            let x = sample * (sigma_t / sigma_s0) - m0 * (alpha_t * h_phi_1);
            match pred {
                Some(p) => x - p * (alpha_t * b_h),
                None => x,
            }
        } else {
            let x = sample * (alpha_t / alpha_s0) - m0 * (sigma_t * h_phi_1);
            match pred {
                Some(p) => x - p * (sigma_t * b_h),
                None => x,
            }
        }
    }

    fn corrector(
        &self,
        model_t: Tensor<B, 2>,
        last: Tensor<B, 2>,
        order: usize,
        i: usize,
    ) -> Tensor<B, 2> {
        let m = |k: usize| self.model_outputs[self.model_outputs.len() - 1 - k].clone();
        let m0 = m(0).unwrap_or_else(|| model_t.clone());
        let (alpha_t, sigma_t) = self.alpha_sigma(self.sigmas[i]);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(self.sigmas[i - 1]);
        let lambda_s0 = self.lambda(self.sigmas[i - 1]);
        let h = self.lambda(self.sigmas[i]) - lambda_s0;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let rk = (self.lambda(self.sigmas[i - (k + 1)]) - lambda_s0) / h;
            rks.push(rk);
            d1s.push((m(k).unwrap_or_else(|| m0.clone()) - m0.clone()) / rk);
        }
        rks.push(1.0);
        let (h_phi_1, b_h, r, b) = self.coefficients(h, &rks, order);
        let rhos = if order == 1 { vec![0.5] } else { solve(r, b) };
        let corr = Self::combine(&rhos[..rhos.len() - 1], &d1s);
        let d1_t = model_t - m0.clone();
        let last_rho = rhos[rhos.len() - 1];
        let res = match corr {
            Some(c) => c + d1_t * last_rho,
            None => d1_t * last_rho,
        };
        if self.config.predict_x0 {
            last * (sigma_t / sigma_s0) - m0 * (alpha_t * h_phi_1) - res * (alpha_t * b_h)
        } else {
            last * (alpha_t / alpha_s0) - m0 * (sigma_t * h_phi_1) - res * (sigma_t * b_h)
        }
    }

    fn convert(&self, model_output: Tensor<B, 2>, sample: Tensor<B, 2>, i: usize) -> Tensor<B, 2> {
        let sigma = self.sigmas[i];
        let (a, s) = self.alpha_sigma(sigma);
        if self.config.predict_x0 {
            let x0 = match self.config.prediction_type {
                PredictionType::Epsilon => (sample - model_output * s) / a,
                PredictionType::Sample => model_output,
                PredictionType::VPrediction => sample * a - model_output * s,
                PredictionType::FlowPrediction => sample - model_output * sigma,
            };
            if self.config.thresholding {
                crate::discrete::threshold_sample(
                    x0,
                    self.config.dynamic_thresholding_ratio,
                    self.config.sample_max_value,
                )
            } else {
                x0
            }
        } else {
            match self.config.prediction_type {
                PredictionType::Sample => (sample - model_output * a) / s,
                PredictionType::VPrediction => model_output * a + sample * s,
                _ => model_output,
            }
        }
    }
}

impl<B: Backend> Scheduler<B> for UniPCMultistepScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn config(&self) -> Map<String, Value> {
        crate::scheduler::config_map(&self.config)
    }

    fn set_timesteps(&mut self, opts: &TimestepOptions) -> Result<()> {
        let cfg = self.config.clone();
        let train = cfg.betas.num_train_timesteps;
        if cfg.use_dynamic_shifting && opts.mu.is_none() {
            return Err(Error::MissingMu { class: CLASS });
        }
        if opts.timesteps.is_some() {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "timesteps",
            });
        }
        if opts.sigmas.is_some() && !cfg.use_flow_sigmas {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "sigmas (without use_flow_sigmas)",
            });
        }
        let n = match &opts.sigmas {
            Some(s) => s.len(),
            None => opts.num_inference_steps.unwrap_or(0),
        };
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
        let sigma_min_last = cfg.final_sigmas_type == "sigma_min";
        let sigmas: Vec<f64> = if cfg.use_karras_sigmas {
            let mut s = karras_sigmas(&flipped, n, cfg.sigma_min, cfg.sigma_max, 7.0);
            if cfg.use_flow_sigmas {
                s = s.iter().map(|&x| x / (x + 1.0)).collect();
                ts = s.iter().map(|&x| x * train as f64).collect();
            } else {
                ts = s
                    .iter()
                    .map(|&x| round_half_even(sigma_to_t(x, &log_sigmas)))
                    .collect();
            }
            let last = if sigma_min_last { s[s.len() - 1] } else { 0.0 };
            s.push(last);
            s
        } else if let Some(kind) =
            SigmaSchedule::from_flags(false, cfg.use_exponential_sigmas, cfg.use_beta_sigmas)
        {
            let (mut s, t) = converted_sigmas(
                kind,
                &flipped,
                n,
                (cfg.sigma_min, cfg.sigma_max),
                &log_sigmas,
                false,
            );
            ts = t;
            let last = if sigma_min_last { s[s.len() - 1] } else { 0.0 };
            s.push(last);
            s
        } else if cfg.use_flow_sigmas {
            let mut s: Vec<f64> = match &opts.sigmas {
                Some(s) => s.clone(),
                None => {
                    let mut v = linspace(1.0, 1.0 / train as f64, n + 1);
                    v.pop();
                    v
                }
            };
            if cfg.use_dynamic_shifting {
                let mu = opts.mu.unwrap_or_default();
                s = s
                    .iter()
                    .map(|&t| {
                        if cfg.time_shift_type == "linear" {
                            mu / (mu + (1.0 / t - 1.0))
                        } else {
                            mu.exp() / (mu.exp() + (1.0 / t - 1.0))
                        }
                    })
                    .collect();
            } else {
                let f = cfg.flow_shift;
                s = s.iter().map(|&x| f * x / (1.0 + (f - 1.0) * x)).collect();
            }
            if let Some(st) = cfg.shift_terminal.filter(|v| *v != 0.0) {
                let om: Vec<f64> = s.iter().map(|&t| 1.0 - t).collect();
                let scale = om[om.len() - 1] / (1.0 - st);
                s = om.iter().map(|&z| 1.0 - z / scale).collect();
            }
            if (s[0] - 1.0).abs() < 1e-6 {
                s[0] -= 1e-6;
            }
            ts = s.iter().map(|&x| x * train as f64).collect();
            let last = if sigma_min_last { s[s.len() - 1] } else { 0.0 };
            s.push(last);
            s
        } else {
            let mut s: Vec<f64> = ts
                .iter()
                .map(|&t| interp_index(t, &self.train_sigmas))
                .collect();
            s.push(if sigma_min_last {
                self.train_sigmas[0] as f64
            } else {
                0.0
            });
            s
        };
        self.sigmas = sigmas.into_iter().map(|v| v as f32).collect();
        self.timesteps = ts.into_iter().map(|t| t.trunc()).collect();
        self.model_outputs = vec![None; cfg.solver_order];
        self.lower_order_nums = 0;
        self.last_sample = None;
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
        let i = crate::scheduler::noise_index(
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
                let hits: Vec<usize> = self
                    .timesteps
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| **t == timestep)
                    .map(|(i, _)| i)
                    .collect();
                match hits.len() {
                    0 => n.saturating_sub(1),
                    1 => hits[0],
                    _ => hits[1],
                }
            }
        };
        if i >= n || i + 1 >= self.sigmas.len() {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("step {i} is past the end of a {n}-step schedule"),
            });
        }
        let use_corrector = i > 0
            && !self.config.disable_corrector.contains(&(i - 1))
            && self.last_sample.is_some();
        let converted = self.convert(model_output, sample.clone(), i);
        let sample = match (use_corrector, self.last_sample.take()) {
            (true, Some(last)) => self.corrector(converted.clone(), last, self.this_order, i),
            _ => sample,
        };
        let order = self.config.solver_order;
        self.model_outputs.rotate_left(1);
        self.model_outputs[order - 1] = Some(converted);
        let this_order = if self.config.lower_order_final {
            order.min(n - i)
        } else {
            order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        let prev = self.predictor(sample, self.this_order, i);
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev)
    }
}
