//! diffusers' `DPMSolverMultistepScheduler` (DPM-Solver, DPM-Solver++, their SDE forms).

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, BetaSchedule, PredictionType, TimestepSpacing, alphas_cumprod, check_steps,
    round_half_even, sigma_to_t,
};
use crate::random::TorchGenerator;
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, index_for_timestep, linspace};
use crate::sigmas::{SigmaSchedule, converted_sigmas, flow_sigmas};
use crate::{Error, Result};

const CLASS: &str = "DPMSolverMultistepScheduler";

/// `algorithm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    /// DPM-Solver (noise prediction; deprecated in diffusers).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// DPM-Solver++ (data prediction).
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// SDE DPM-Solver (deprecated in diffusers).
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
    /// SDE DPM-Solver++.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

/// `solver_type` of second-order updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverType {
    /// Midpoint (default).
    #[serde(alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    /// Heun.
    Heun,
}

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
fn pp() -> AlgorithmType {
    AlgorithmType::DpmSolverPlusPlus
}
fn midpoint() -> SolverType {
    SolverType::Midpoint
}
fn t() -> bool {
    true
}
fn zero() -> String {
    "zero".into()
}
pub(crate) fn neg_inf() -> f64 {
    f64::NEG_INFINITY
}
fn linspace_spacing() -> TimestepSpacing {
    TimestepSpacing::Linspace
}
fn exponential() -> String {
    "exponential".into()
}

/// `DPMSolverMultistepScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DPMSolverMultistepConfig {
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
    /// Algorithm.
    #[serde(default = "pp")]
    pub algorithm_type: AlgorithmType,
    /// Second-order solver.
    #[serde(default = "midpoint")]
    pub solver_type: SolverType,
    /// Lower-order steps at the end for short schedules.
    #[serde(default = "t")]
    pub lower_order_final: bool,
    /// A first-order final step.
    #[serde(default)]
    pub euler_at_final: bool,
    /// Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential sigmas.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta sigmas (alpha = beta = 0.6).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Uniform steps in log-SNR (Lu et al.).
    #[serde(default)]
    pub use_lu_lambdas: bool,
    /// Flow-matching sigmas.
    #[serde(default)]
    pub use_flow_sigmas: bool,
    /// Shift of the flow sigmas.
    #[serde(default = "one")]
    pub flow_shift: f64,
    /// `zero` or `sigma_min`.
    #[serde(default = "zero")]
    pub final_sigmas_type: String,
    /// Clip lambda (for cosine schedules); diffusers' default `-inf` (saved as `-Infinity`)
    /// clips nothing.
    #[serde(default = "neg_inf", with = "diffusers_core::json::non_finite")]
    pub lambda_min_clipped: f64,
    /// `learned`/`learned_range` (not supported yet).
    #[serde(default)]
    pub variance_type: Option<String>,
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

/// Multistep DPM-Solver sampler (DPM++ 2M and friends).
#[derive(Debug, Clone)]
pub struct DPMSolverMultistepScheduler<B: Backend> {
    config: DPMSolverMultistepConfig,
    train_sigmas: Vec<f32>,
    lambda_t: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor<B, 2>>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
    flow_shift: f64,
    fallback: Option<TorchGenerator>,
}

fn missing_noise() -> Error {
    Error::InvalidStep {
        class: CLASS,
        reason: "SDE step without noise".into(),
    }
}

/// `lambda_min_clipped` must be a number or `-inf` (its default): `NaN` and `+inf` would clip
/// every timestep or none in ways diffusers does not define.
pub(crate) fn check_lambda_min_clipped(v: f64, class: &'static str) -> Result<()> {
    if v.is_nan() || v == f64::INFINITY {
        return Err(Error::InvalidConfig {
            class,
            reason: format!(
                "`lambda_min_clipped` is {}: it must be a number or -Infinity (no clipping)",
                diffusers_core::json::non_finite::word(v)
            ),
        });
    }
    Ok(())
}

/// `searchsorted(flip(lambda_t), lambda_min_clipped)`: how many of the noisiest training
/// timesteps the clip removes. A clip above every timestep's log-SNR leaves none: an error.
pub(crate) fn lambda_clipped(
    lambda_t: &[f32],
    lambda_min_clipped: f64,
    class: &'static str,
) -> Result<usize> {
    let clipped = lambda_t
        .iter()
        .rev()
        .filter(|&&l| (l as f64) < lambda_min_clipped)
        .count();
    if clipped >= lambda_t.len() {
        return Err(Error::InvalidConfig {
            class,
            reason: format!(
                "`lambda_min_clipped` = {lambda_min_clipped} is above the log-SNR of every training timestep: none is left to sample"
            ),
        });
    }
    Ok(clipped)
}

pub(crate) fn alpha_sigma(sigma: f32, flow: bool) -> (f32, f32) {
    if flow {
        (1.0 - sigma, sigma)
    } else {
        let a = 1.0 / (sigma * sigma + 1.0).sqrt();
        (a, sigma * a)
    }
}

impl<B: Backend> DPMSolverMultistepScheduler<B> {
    /// Builds the scheduler.
    pub fn new(config: DPMSolverMultistepConfig) -> Result<Self> {
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
        if config.variance_type.is_some() {
            return Err(bad(
                "`variance_type` learned/learned_range is not supported yet",
            ));
        }
        if !(1..=3).contains(&config.solver_order) {
            return Err(bad("`solver_order` must be 1, 2 or 3"));
        }
        check_lambda_min_clipped(config.lambda_min_clipped, CLASS)?;
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(bad("`final_sigmas_type` must be zero or sigma_min"));
        }
        if matches!(
            config.algorithm_type,
            AlgorithmType::DpmSolver | AlgorithmType::SdeDpmSolver
        ) && config.final_sigmas_type == "zero"
        {
            return Err(bad(
                "`final_sigmas_type` zero is not supported for dpmsolver and sde-dpmsolver; choose sigma_min",
            ));
        }
        if config.prediction_type == PredictionType::FlowPrediction
            && matches!(
                config.algorithm_type,
                AlgorithmType::DpmSolver | AlgorithmType::SdeDpmSolver
            )
        {
            return Err(bad("flow_prediction needs dpmsolver++ or sde-dpmsolver++"));
        }
        let (_, mut ac) = alphas_cumprod(&config.betas, CLASS)?;
        if config.betas.rescale_betas_zero_snr
            && let Some(last) = ac.last_mut()
        {
            *last = 2f32.powi(-24);
        }
        let lambda_t = ac
            .iter()
            .map(|a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .collect();
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let n = config.betas.num_train_timesteps;
        let order = config.solver_order;
        let flow_shift = config.flow_shift;
        Ok(Self {
            timesteps: (0..n).rev().map(|t| t as f32 as f64).collect(),
            sigmas: train_sigmas.clone(),
            train_sigmas,
            lambda_t,
            config,
            model_outputs: vec![None; order],
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
            flow_shift,
            fallback: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn convert(&self, model_output: Tensor<B, 2>, sample: Tensor<B, 2>, i: usize) -> Tensor<B, 2> {
        let c = &self.config;
        convert_model_output(
            ConvertOptions {
                algorithm: c.algorithm_type,
                prediction: c.prediction_type,
                thresholding: c
                    .thresholding
                    .then_some((c.dynamic_thresholding_ratio, c.sample_max_value)),
                flow: c.use_flow_sigmas,
            },
            self.sigmas[i],
            model_output,
            sample,
        )
    }
}

/// What [`convert_model_output`] needs from a DPM-Solver config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvertOptions {
    pub algorithm: AlgorithmType,
    pub prediction: PredictionType,
    pub thresholding: Option<(f64, f64)>,
    pub flow: bool,
}

/// DPM-Solver's `convert_model_output`: the data prediction (`++` algorithms) or the noise
/// prediction, thresholded when configured.
pub(crate) fn convert_model_output<B: Backend>(
    o: ConvertOptions,
    sigma: f32,
    model_output: Tensor<B, 2>,
    sample: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let (a, s) = alpha_sigma(sigma, o.flow);
    let threshold = |x: Tensor<B, 2>| match o.thresholding {
        Some((ratio, max)) => crate::discrete::threshold_sample(x, ratio, max),
        None => x,
    };
    match o.algorithm {
        AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus => {
            threshold(match o.prediction {
                PredictionType::Epsilon => (sample - model_output * s) / a,
                PredictionType::Sample => model_output,
                PredictionType::VPrediction => sample * a - model_output * s,
                PredictionType::FlowPrediction => sample - model_output * sigma,
            })
        }
        _ => {
            let eps = match o.prediction {
                PredictionType::Sample => (sample.clone() - model_output * a) / s,
                PredictionType::VPrediction => model_output * a + sample.clone() * s,
                _ => model_output,
            };
            if o.thresholding.is_some() {
                let x0 = threshold((sample.clone() - eps * s) / a);
                (sample - x0 * a) / s
            } else {
                eps
            }
        }
    }
}

impl<B: Backend> Scheduler<B> for DPMSolverMultistepScheduler<B> {
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
        if opts.sigmas.is_some() {
            return Err(Error::CustomScheduleUnsupported {
                class: CLASS,
                what: "sigmas",
            });
        }
        let train = cfg.betas.num_train_timesteps;
        if opts.num_inference_steps.is_some() && opts.timesteps.is_some() {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "can only pass one of `num_inference_steps` or `timesteps`".into(),
            });
        }
        if opts.timesteps.is_some()
            && (cfg.use_karras_sigmas || cfg.use_lu_lambdas || cfg.use_exponential_sigmas)
        {
            return Err(Error::ConflictingOptions {
                class: CLASS,
                reason: "cannot use `timesteps` with karras, exponential sigmas or lu lambdas"
                    .into(),
            });
        }
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
        let mut ts: Vec<f64> = match &opts.timesteps {
            Some(t) => {
                if t.is_empty() {
                    return Err(Error::ZeroSteps { class: CLASS });
                }
                t.iter().map(|&v| v.trunc()).collect()
            }
            None => {
                let n = opts.num_inference_steps.unwrap_or(0);
                check_steps(n, train, CLASS)?;
                // searchsorted(flip(lambda_t), lambda_min_clipped)
                let clipped = lambda_clipped(&self.lambda_t, cfg.lambda_min_clipped, CLASS)?;
                let last = train - clipped;
                match cfg.timestep_spacing {
                    TimestepSpacing::Linspace => {
                        let mut v: Vec<f64> = linspace(0.0, last as f64 - 1.0, n + 1)
                            .into_iter()
                            .map(round_half_even)
                            .collect();
                        v.reverse();
                        v.truncate(n);
                        v
                    }
                    TimestepSpacing::Leading => {
                        let r = last / (n + 1);
                        (1..=n)
                            .rev()
                            .map(|i| (i * r + cfg.steps_offset) as f64)
                            .collect()
                    }
                    TimestepSpacing::Trailing => {
                        let r = train as f64 / n as f64;
                        let mut out = Vec::new();
                        let mut k = 0usize;
                        loop {
                            let v = last as f64 + k as f64 * -r;
                            if v <= 0.0 {
                                break;
                            }
                            out.push(round_half_even(v) - 1.0);
                            k += 1;
                        }
                        out
                    }
                }
            }
        };
        let n = ts.len();
        let flipped: Vec<f64> = self.train_sigmas.iter().rev().map(|&s| s as f64).collect();
        let round_ts = cfg.betas.beta_schedule != BetaSchedule::SquaredcosCapV2;
        // diffusers checks karras, then Lu lambdas, then exponential and beta.
        let kind = SigmaSchedule::from_flags(
            cfg.use_karras_sigmas,
            cfg.use_exponential_sigmas && !cfg.use_lu_lambdas,
            cfg.use_beta_sigmas && !cfg.use_lu_lambdas,
        );
        let mut sigmas: Vec<f64> = if let Some(kind) = kind {
            let (s, t) = converted_sigmas(kind, &flipped, n, (None, None), &log_sigmas, round_ts);
            ts = t;
            s
        } else if cfg.use_lu_lambdas {
            let lambdas: Vec<f64> = log_sigmas.iter().rev().map(|&l| l as f64).collect();
            let (lmin, lmax) = (lambdas[lambdas.len() - 1], lambdas[0]);
            let s: Vec<f64> = linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (lmax + r * (lmin - lmax)).exp())
                .collect();
            ts = s
                .iter()
                .map(|&x| sigma_to_t(x, &log_sigmas))
                .map(|t| if round_ts { round_half_even(t) } else { t })
                .collect();
            s
        } else if cfg.use_flow_sigmas {
            let (s, t) = flow_sigmas(self.flow_shift, train, n);
            ts = t;
            s
        } else {
            ts.iter()
                .map(|&t| crate::discrete::interp_index(t, &self.train_sigmas))
                .collect()
        };
        // sigma_min as diffusers computes it: sqrt((1 - ac[0]) / ac[0]), the first training sigma.
        let last_sigma = if cfg.final_sigmas_type == "sigma_min" {
            self.train_sigmas[0] as f64
        } else {
            0.0
        };
        sigmas.push(last_sigma);
        self.sigmas = sigmas.into_iter().map(|v| v as f32).collect();
        // `.to(int64)` truncates.
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
        let i = crate::scheduler::noise_index(
            &self.timesteps,
            self.begin_index,
            self.step_index,
            timestep,
            CLASS,
        )?;
        let (a, s) = alpha_sigma(self.sigmas[i], self.config.use_flow_sigmas);
        Ok(original * a + noise * s)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => {
                index_for_timestep(&self.timesteps, timestep).ok_or_else(|| Error::InvalidStep {
                    class: CLASS,
                    reason: format!(
                        "timestep {timestep} is not in the schedule (call set_timesteps first)"
                    ),
                })?
            }
        };
        let n = self.timesteps.len();
        if i >= n || i + 1 >= self.sigmas.len() {
            return Err(Error::InvalidStep {
                class: CLASS,
                reason: format!("step {i} is past the end of a {n}-step schedule"),
            });
        }
        let cfg = &self.config;
        let lower_order_final = i == n - 1
            && (cfg.euler_at_final
                || (cfg.lower_order_final && n < 15)
                || cfg.final_sigmas_type == "zero");
        let lower_order_second = i + 2 == n && cfg.lower_order_final && n < 15;
        let out_dtype = model_output.dtype();
        let sample = sample.cast(DType::F32);
        let m = self.convert(model_output.cast(DType::F32), sample.clone(), i);
        let order = cfg.solver_order;
        self.model_outputs.rotate_left(1);
        self.model_outputs[order - 1] = Some(m.clone());
        let sde = matches!(
            cfg.algorithm_type,
            AlgorithmType::SdeDpmSolver | AlgorithmType::SdeDpmSolverPlusPlus
        );
        let noise: Option<Tensor<B, 2>> = if sde {
            let dims = sample.dims();
            let count = dims[0] * dims[1];
            let values = crate::scheduler::noise_values(noise, &mut self.fallback, count)?;
            Some(Tensor::from_data(
                TensorData::new(values, dims),
                (&sample.device(), DType::F32),
            ))
        } else {
            None
        };
        let flow = cfg.use_flow_sigmas;
        let lam = |s: f32| {
            let (a, sg) = alpha_sigma(s, flow);
            (a, sg, a.ln() - sg.ln())
        };
        let (alpha_t, sigma_t, lambda_t) = lam(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0, lambda_s0) = lam(self.sigmas[i]);
        let algo = cfg.algorithm_type;
        let solver = cfg.solver_type;
        let h = lambda_t - lambda_s0;
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            match algo {
                AlgorithmType::DpmSolverPlusPlus => {
                    sample * (sigma_t / sigma_s0) - m * (alpha_t * ((-h).exp() - 1.0))
                }
                AlgorithmType::DpmSolver => {
                    sample * (alpha_t / alpha_s0) - m * (sigma_t * (h.exp() - 1.0))
                }
                AlgorithmType::SdeDpmSolverPlusPlus => {
                    sample * (sigma_t / sigma_s0 * (-h).exp())
                        + m * (alpha_t * (1.0 - (-2.0 * h).exp()))
                        + noise.clone().ok_or_else(missing_noise)?
                            * (sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())
                }
                AlgorithmType::SdeDpmSolver => {
                    sample * (alpha_t / alpha_s0) - m * (2.0 * (sigma_t * (h.exp() - 1.0)))
                        + noise.clone().ok_or_else(missing_noise)?
                            * (sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
                }
            }
        } else {
            let m0 = m;
            let m1 = self.model_outputs[order - 2]
                .clone()
                .unwrap_or_else(|| m0.clone());
            let (_, _, lambda_s1) = lam(self.sigmas[i - 1]);
            let h0 = lambda_s0 - lambda_s1;
            let r0 = h0 / h;
            if order == 2 || self.lower_order_nums < 2 || lower_order_second {
                let d0 = m0.clone();
                let d1 = (m0 - m1) * (1.0 / r0);
                let eh = (-h).exp() - 1.0;
                match (algo, solver) {
                    (AlgorithmType::DpmSolverPlusPlus, SolverType::Midpoint) => {
                        sample * (sigma_t / sigma_s0)
                            - d0 * (alpha_t * eh)
                            - d1 * (0.5 * (alpha_t * eh))
                    }
                    (AlgorithmType::DpmSolverPlusPlus, SolverType::Heun) => {
                        sample * (sigma_t / sigma_s0) - d0 * (alpha_t * eh)
                            + d1 * (alpha_t * (eh / h + 1.0))
                    }
                    (AlgorithmType::DpmSolver, SolverType::Midpoint) => {
                        let e = h.exp() - 1.0;
                        sample * (alpha_t / alpha_s0)
                            - d0 * (sigma_t * e)
                            - d1 * (0.5 * (sigma_t * e))
                    }
                    (AlgorithmType::DpmSolver, SolverType::Heun) => {
                        let e = h.exp() - 1.0;
                        sample * (alpha_t / alpha_s0)
                            - d0 * (sigma_t * e)
                            - d1 * (sigma_t * (e / h - 1.0))
                    }
                    (AlgorithmType::SdeDpmSolverPlusPlus, s) => {
                        let e2 = 1.0 - (-2.0 * h).exp();
                        let z = noise.clone().ok_or_else(missing_noise)?;
                        let c1 = match s {
                            SolverType::Midpoint => 0.5 * (alpha_t * e2),
                            SolverType::Heun => alpha_t * (e2 / (-2.0 * h) + 1.0),
                        };
                        sample * (sigma_t / sigma_s0 * (-h).exp())
                            + d0 * (alpha_t * e2)
                            + d1 * c1
                            + z * (sigma_t * e2.sqrt())
                    }
                    (AlgorithmType::SdeDpmSolver, s) => {
                        let e = h.exp() - 1.0;
                        let z = noise.clone().ok_or_else(missing_noise)?;
                        let c1 = match s {
                            SolverType::Midpoint => sigma_t * e,
                            SolverType::Heun => 2.0 * (sigma_t * (e / h - 1.0)),
                        };
                        sample * (alpha_t / alpha_s0) - d0 * (2.0 * (sigma_t * e)) - d1 * c1
                            + z * (sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
                    }
                }
            } else {
                let m2 = self.model_outputs[order - 3]
                    .clone()
                    .unwrap_or_else(|| m1.clone());
                let (_, _, lambda_s2) = lam(self.sigmas[i - 2]);
                let h1 = lambda_s1 - lambda_s2;
                let r1 = h1 / h;
                let d0 = m0.clone();
                let d1_0 = (m0 - m1.clone()) * (1.0 / r0);
                let d1_1 = (m1 - m2) * (1.0 / r1);
                let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()) * (r0 / (r0 + r1));
                let d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1));
                match algo {
                    AlgorithmType::DpmSolverPlusPlus => {
                        let eh = (-h).exp() - 1.0;
                        sample * (sigma_t / sigma_s0) - d0 * (alpha_t * eh)
                            + d1 * (alpha_t * (eh / h + 1.0))
                            - d2 * (alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))
                    }
                    AlgorithmType::DpmSolver => {
                        let e = h.exp() - 1.0;
                        sample * (alpha_t / alpha_s0)
                            - d0 * (sigma_t * e)
                            - d1 * (sigma_t * (e / h - 1.0))
                            - d2 * (sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))
                    }
                    AlgorithmType::SdeDpmSolverPlusPlus => {
                        let e2 = 1.0 - (-2.0 * h).exp();
                        let z = noise.clone().ok_or_else(missing_noise)?;
                        sample * (sigma_t / sigma_s0 * (-h).exp())
                            + d0 * (alpha_t * e2)
                            + d1 * (alpha_t * (e2 / (-2.0 * h) + 1.0))
                            + d2 * (alpha_t
                                * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / ((2.0 * h) * (2.0 * h))
                                    - 0.5))
                            + z * (sigma_t * e2.sqrt())
                    }
                    AlgorithmType::SdeDpmSolver => {
                        return Err(Error::InvalidConfig {
                            class: CLASS,
                            reason: "third-order sde-dpmsolver does not exist in diffusers".into(),
                        });
                    }
                }
            }
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev.cast(out_dtype))
    }
}
