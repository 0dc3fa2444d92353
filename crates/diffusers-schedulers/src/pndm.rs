//! diffusers' `PNDMScheduler` (pseudo numerical methods: Runge-Kutta warm-up, then linear
//! multistep; the default scheduler of Stable Diffusion 1.x).

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discrete::{
    BetaConfig, PredictionType, TimestepSpacing, alphas_cumprod, check_steps, round_half_even,
};
use crate::scheduler::{NoiseSource, Scheduler, TimestepOptions, linspace};
use crate::{Error, Result};

const CLASS: &str = "PNDMScheduler";

fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn leading() -> TimestepSpacing {
    TimestepSpacing::Leading
}

/// `PNDMScheduler`'s config, with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PNDMConfig {
    /// Beta schedule keys.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Skip the Runge-Kutta warm-up (PLMS only), as Stable Diffusion does.
    #[serde(default)]
    pub skip_prk_steps: bool,
    /// Use 1 as the final `alphas_cumprod` instead of the first.
    #[serde(default)]
    pub set_alpha_to_one: bool,
    /// `epsilon` or `v_prediction`.
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    /// Spacing of the timesteps.
    #[serde(default = "leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// PNDM sampler.
#[derive(Debug, Clone)]
pub struct PNDMScheduler<B: Backend> {
    config: PNDMConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    prk_len: usize,
    timesteps: Vec<f64>,
    counter: usize,
    ets: Vec<Tensor<B, 2>>,
    cur_model_output: Option<Tensor<B, 2>>,
    cur_sample: Option<Tensor<B, 2>>,
}

impl<B: Backend> PNDMScheduler<B> {
    /// Builds the scheduler.
    pub fn new(config: PNDMConfig) -> Result<Self> {
        if !matches!(
            config.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "prediction_type must be epsilon or v_prediction".into(),
            });
        }
        if config.betas.rescale_betas_zero_snr {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "PNDMScheduler has no `rescale_betas_zero_snr`".into(),
            });
        }
        let (_, ac) = alphas_cumprod(&config.betas, CLASS)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { ac[0] };
        Ok(Self {
            config,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            num_inference_steps: None,
            prk_len: 0,
            timesteps: Vec::new(),
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
    }

    /// From `scheduler_config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(crate::registry::parse_config(json, CLASS)?)
    }

    fn alpha(&self, t: i64) -> Result<f32> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.alphas_cumprod
            .get(t as usize)
            .copied()
            .ok_or_else(|| Error::InvalidStep {
                class: CLASS,
                reason: format!("timestep {t} is outside the training schedule"),
            })
    }

    fn prev_sample(
        &self,
        sample: Tensor<B, 2>,
        t: i64,
        prev_t: i64,
        model_output: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        let a_t = self.alpha(t)?;
        let a_prev = self.alpha(prev_t)?;
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let model_output = if self.config.prediction_type == PredictionType::VPrediction {
            model_output * a_t.sqrt() + sample.clone() * b_t.sqrt()
        } else {
            model_output
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(sample * sample_coeff - model_output * (a_prev - a_t) / denom)
    }
}

impl<B: Backend> Scheduler<B> for PNDMScheduler<B> {
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
        if !self.config.skip_prk_steps && n < 4 {
            return Err(Error::InvalidConfig {
                class: CLASS,
                reason: "PRK warm-up needs at least 4 inference steps".into(),
            });
        }
        // Ascending `_timesteps`.
        let base: Vec<i64> = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .map(|v| round_half_even(v) as i64)
                .collect(),
            TimestepSpacing::Leading => {
                let r = train / n;
                (0..n)
                    .map(|i| (i * r + self.config.steps_offset) as i64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let mut v: Vec<i64> =
                    crate::discrete::spaced_timesteps(TimestepSpacing::Trailing, n, train, 0)
                        .into_iter()
                        .map(|x| x as i64)
                        .collect();
                v.reverse();
                v
            }
        };
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.config.skip_prk_steps {
            let mut p: Vec<i64> = base[..base.len() - 1].to_vec();
            if base.len() >= 2 {
                p.push(base[base.len() - 2]);
            }
            p.push(base[base.len() - 1]);
            p.reverse();
            (Vec::new(), p)
        } else {
            let half = (train / n / 2) as i64;
            let last4 = &base[base.len() - 4..];
            let mut prk: Vec<i64> = Vec::new();
            for &t in last4 {
                prk.push(t);
                prk.push(t + half);
            }
            prk.pop();
            let mut rep: Vec<i64> = prk.iter().flat_map(|&t| [t, t]).collect();
            rep.remove(0);
            rep.pop();
            rep.reverse();
            let mut plms: Vec<i64> = base[..base.len() - 3].to_vec();
            plms.reverse();
            (rep, plms)
        };
        self.prk_len = prk.len();
        self.timesteps = prk.into_iter().chain(plms).map(|t| t as f64).collect();
        self.num_inference_steps = Some(n);
        self.ets.clear();
        self.counter = 0;
        self.cur_model_output = None;
        self.cur_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_begin_index(&mut self, _begin_index: usize) {}

    fn add_noise(
        &self,
        original: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        timestep: f64,
    ) -> Result<Tensor<B, 2>> {
        crate::scheduler::add_noise_alphas(&self.alphas_cumprod, original, noise, timestep, CLASS)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 2>,
        timestep: f64,
        sample: Tensor<B, 2>,
        _noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<B, 2>> {
        let n = self.num_inference_steps.ok_or_else(|| Error::InvalidStep {
            class: CLASS,
            reason: "call set_timesteps before step".into(),
        })?;
        let train = self.config.betas.num_train_timesteps;
        let model_output = model_output.cast(DType::F32);
        let sample = sample.cast(DType::F32);
        let t = timestep as i64;
        let prev = if self.counter < self.prk_len && !self.config.skip_prk_steps {
            let diff = if self.counter % 2 == 1 {
                0
            } else {
                (train / n / 2) as i64
            };
            let prev_t = t - diff;
            let t = self.timesteps[self.counter / 4 * 4] as i64;
            let mo = match self.counter % 4 {
                0 => {
                    self.cur_model_output = Some(model_output.clone() * (1.0f32 / 6.0));
                    self.ets.push(model_output.clone());
                    self.cur_sample = Some(sample.clone());
                    model_output
                }
                1 | 2 => {
                    let add = model_output.clone() * (1.0f32 / 3.0);
                    self.cur_model_output = Some(match self.cur_model_output.take() {
                        Some(c) => c + add,
                        None => add,
                    });
                    model_output
                }
                _ => {
                    let add = model_output * (1.0f32 / 6.0);
                    match self.cur_model_output.take() {
                        Some(c) => c + add,
                        None => add,
                    }
                }
            };
            let cur = self.cur_sample.clone().unwrap_or(sample);
            self.prev_sample(cur, t, prev_t, mo)?
        } else {
            if !self.config.skip_prk_steps && self.ets.len() < 3 {
                return Err(Error::InvalidStep {
                    class: CLASS,
                    reason: "PLMS steps need 12 PRK steps first".into(),
                });
            }
            let step = (train / n) as i64;
            let (mut t, mut prev_t) = (t, t - step);
            if self.counter != 1 {
                let keep = self.ets.len().saturating_sub(3);
                self.ets.drain(..keep);
                self.ets.push(model_output.clone());
            } else {
                prev_t = t;
                t += step;
            }
            let e = &self.ets;
            let k = e.len();
            let mut sample = sample;
            let mo = if k == 1 && self.counter == 0 {
                self.cur_sample = Some(sample.clone());
                model_output
            } else if k == 1 && self.counter == 1 {
                if let Some(cs) = self.cur_sample.take() {
                    sample = cs;
                }
                (model_output + e[k - 1].clone()) / 2.0
            } else if k == 2 {
                (e[k - 1].clone() * 3.0 - e[k - 2].clone()) / 2.0
            } else if k == 3 {
                (e[k - 1].clone() * 23.0 - e[k - 2].clone() * 16.0 + e[k - 3].clone() * 5.0) / 12.0
            } else {
                (e[k - 1].clone() * 55.0 - e[k - 2].clone() * 59.0 + e[k - 3].clone() * 37.0
                    - e[k - 4].clone() * 9.0)
                    * (1.0f32 / 24.0)
            };
            self.prev_sample(sample, t, prev_t, mo)?
        };
        self.counter += 1;
        Ok(prev)
    }
}
