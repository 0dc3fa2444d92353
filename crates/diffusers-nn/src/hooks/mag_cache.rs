//! MagCache (diffusers' `hooks/mag_cache.py`): from the model's per-step magnitude ratios of
//! the residual, the accumulated error of reusing the last computed residual is estimated; while
//! it stays under `threshold` (and at most `max_skip_steps` in a row) every block is skipped and
//! the head's input plus the last residual is used. `calibrate` computes every step and reports
//! the ratios of the run (the values to pass as `mag_ratios`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use super::cache_utils::{CacheError, CacheMethod, PerContext, parse_value, unknown_option};
use super::{BlockStates, CallInfo};
use diffusers_core::config::ConfigMeta;

/// diffusers' `FLUX_MAG_RATIOS` (FLUX.1-dev, 28 steps; resampled to other step counts).
pub const FLUX_MAG_RATIOS: [f32; 28] = [
    1.0, 1.21094, 1.11719, 1.07812, 1.0625, 1.03906, 1.03125, 1.03906, 1.02344, 1.03125, 1.02344,
    0.98047, 1.01562, 1.00781, 1.0, 1.00781, 1.0, 1.00781, 1.0, 1.0, 0.99609, 0.99609, 0.98047,
    0.98828, 0.96484, 0.95703, 0.93359, 0.89062,
];

/// `MagCacheConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MagCacheConfig {
    /// Accumulated error up to which steps are skipped (diffusers accepts a negative one; we
    /// refuse it).
    pub threshold: f64,
    /// Most steps skipped in a row.
    pub max_skip_steps: usize,
    /// Fraction of the first steps never skipped.
    pub retention_ratio: f64,
    /// The run's step count (the ratios are resampled to it).
    pub num_inference_steps: usize,
    /// The model's magnitude ratios per step (required unless calibrating).
    pub mag_ratios: Option<Vec<f32>>,
    /// Compute every step and report the ratios.
    pub calibrate: bool,
    /// Keys this crate does not know.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for MagCacheConfig {
    fn default() -> Self {
        Self {
            threshold: 0.06,
            max_skip_steps: 3,
            retention_ratio: 0.2,
            num_inference_steps: 28,
            mag_ratios: None,
            calibrate: false,
            meta: ConfigMeta::default(),
        }
    }
}

const OPTIONS: [&str; 6] = [
    "threshold",
    "max_skip_steps",
    "retention_ratio",
    "num_inference_steps",
    "mag_ratios",
    "calibrate",
];

/// diffusers' `nearest_interp`: `ratios` resampled to `n` values (index
/// `round_half_even(f32(i) * f32((len-1)/(n-1)))`; `n == 1` takes the last).
pub fn nearest_interp(ratios: &[f32], n: usize) -> Vec<f32> {
    let Some(&last) = ratios.last() else {
        return Vec::new();
    };
    if n == 1 {
        return vec![last];
    }
    let scale = ((ratios.len() - 1) as f64 / (n - 1) as f64) as f32;
    (0..n)
        .map(|i| {
            let idx = ((i as f32) * scale).round_ties_even() as usize;
            ratios.get(idx).copied().unwrap_or(last)
        })
        .collect()
}

impl MagCacheConfig {
    pub(crate) fn from_options(pairs: &[(&str, &str)]) -> Result<Self, CacheError> {
        let m = "magcache";
        let mut c = Self::default();
        for (k, v) in pairs {
            match *k {
                "threshold" => c.threshold = parse_value(m, k, v)?,
                "max_skip_steps" => c.max_skip_steps = parse_value(m, k, v)?,
                "retention_ratio" => c.retention_ratio = parse_value(m, k, v)?,
                "num_inference_steps" => c.num_inference_steps = parse_value(m, k, v)?,
                "calibrate" => c.calibrate = parse_value(m, k, v)?,
                "mag_ratios" => {
                    c.mag_ratios = Some(if *v == "flux" {
                        FLUX_MAG_RATIOS.to_vec()
                    } else {
                        v.split('/')
                            .map(|x| parse_value(m, k, x.trim()))
                            .collect::<Result<_, _>>()?
                    })
                }
                _ => return Err(unknown_option(m, k, &OPTIONS)),
            }
        }
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        super::cache_utils::check_threshold("magcache", self.threshold)?;
        if self.num_inference_steps == 0 {
            return Err(CacheError::Invalid(
                "magcache: num_inference_steps must be at least 1".into(),
            ));
        }
        if !self.calibrate && self.mag_ratios.as_ref().is_none_or(|r| r.is_empty()) {
            return Err(CacheError::Invalid(
                "magcache: `mag_ratios` must be provided (they are model-dependent): run once with calibrate=true, or pass mag_ratios=flux for FLUX.1".into(),
            ));
        }
        Ok(())
    }

    /// The ratios used: `mag_ratios` resampled to `num_inference_steps` (empty when calibrating).
    pub fn resolved_ratios(&self) -> Vec<f32> {
        match (&self.mag_ratios, self.calibrate) {
            (Some(r), false) if r.len() != self.num_inference_steps => {
                tracing::info!(
                    "magcache: interpolating mag_ratios from length {} to {}",
                    r.len(),
                    self.num_inference_steps
                );
                nearest_interp(r, self.num_inference_steps)
            }
            (Some(r), false) => r.clone(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug)]
struct State<B: Backend> {
    previous_residual: Option<Tensor<B, 3>>,
    head_block_input: Option<Tensor<B, 3>>,
    should_compute: bool,
    accumulated_ratio: f32,
    accumulated_err: f32,
    accumulated_steps: usize,
    step_index: usize,
    calibration_ratios: Vec<f64>,
}

impl<B: Backend> Default for State<B> {
    fn default() -> Self {
        Self {
            previous_residual: None,
            head_block_input: None,
            should_compute: true,
            accumulated_ratio: 1.0,
            accumulated_err: 0.0,
            accumulated_steps: 0,
            step_index: 0,
            calibration_ratios: Vec::new(),
        }
    }
}

/// The MagCache hook of one model (diffusers' `MagCacheHeadHook` on the first block,
/// `MagCacheBlockHook` on the others, one state per cache context).
#[derive(Debug)]
pub(crate) struct MagCache<B: Backend> {
    config: MagCacheConfig,
    ratios: Vec<f32>,
    head: String,
    tail: String,
    blocks: Vec<String>,
    state: PerContext<State<B>>,
    /// The calibration ratios of completed runs, per context.
    calibrated: Mutex<BTreeMap<String, Vec<f64>>>,
}

impl<B: Backend> MagCache<B> {
    /// diffusers hooks nothing (with a warning) on a model without blocks; we refuse it.
    pub(crate) fn new(config: MagCacheConfig, blocks: Vec<String>) -> Result<Self, CacheError> {
        let (Some(head), Some(tail)) = (blocks.first().cloned(), blocks.last().cloned()) else {
            return Err(CacheError::TooFewBlocks {
                method: "magcache",
                needed: 1,
                found: 0,
            });
        };
        Ok(Self {
            ratios: config.resolved_ratios(),
            config,
            head,
            tail,
            blocks,
            state: PerContext::default(),
            calibrated: Mutex::new(BTreeMap::new()),
        })
    }

    fn advance(&self, context: &str, s: &mut State<B>) {
        s.step_index += 1;
        if s.step_index >= self.config.num_inference_steps {
            if self.config.calibrate {
                tracing::info!(
                    "MagCache calibration ({context}): mag_ratios={:?}",
                    s.calibration_ratios
                );
                self.calibrated
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(context.to_string(), s.calibration_ratios.clone());
            }
            s.step_index = 0;
            s.accumulated_ratio = 1.0;
            s.accumulated_steps = 0;
            s.accumulated_err = 0.0;
            s.previous_residual = None;
            s.calibration_ratios.clear();
        }
    }

    /// The head's decision (diffusers' `MagCacheHeadHook.new_forward` up to the skip).
    fn decide(&self, s: &mut State<B>) -> bool {
        if self.config.calibrate {
            return true;
        }
        let step = s.step_index;
        let scale = self.ratios.get(step).copied().unwrap_or(1.0);
        let retention_step =
            (self.config.retention_ratio * self.config.num_inference_steps as f64 + 0.5) as usize;
        if step < retention_step {
            return true;
        }
        s.accumulated_ratio *= scale;
        s.accumulated_steps += 1;
        s.accumulated_err += (1.0 - s.accumulated_ratio).abs();
        let skip = s.previous_residual.is_some()
            && s.accumulated_err <= self.config.threshold as f32
            && s.accumulated_steps <= self.config.max_skip_steps;
        if !skip {
            s.accumulated_ratio = 1.0;
            s.accumulated_steps = 0;
            s.accumulated_err = 0.0;
        }
        !skip
    }
}

/// `‖cur‖₂ / (‖prev‖₂ + 1e-8)` over the last dim, averaged (diffusers' calibration ratio).
fn norm_ratio<B: Backend>(cur: &Tensor<B, 3>, prev: &Tensor<B, 3>) -> f64 {
    let norm = |t: &Tensor<B, 3>| t.clone().cast(DType::F32).powi_scalar(2).sum_dim(2).sqrt();
    let r = (norm(cur) / (norm(prev) + 1e-8)).mean();
    r.into_data()
        .to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .map_or(f64::NAN, f64::from)
}

fn add_residual<B: Backend>(input: Tensor<B, 3>, res: &Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, c] = input.dims();
    let [rb, rs, rc] = res.dims();
    if [b, s, c] == [rb, rs, rc] {
        input + res.clone()
    } else if b == rb && c == rc && s > rs {
        let head = input.clone().narrow(1, 0, s - rs);
        let tail = input.narrow(1, s - rs, rs) + res.clone();
        Tensor::cat(vec![head, tail], 1)
    } else {
        tracing::warn!(
            "MagCache: input {:?} and residual {:?} do not fit; returning the input",
            [b, s, c],
            [rb, rs, rc]
        );
        input
    }
}

impl<B: Backend> CacheMethod<B> for MagCache<B> {
    fn hooks(&self, name: &str) -> bool {
        self.blocks.iter().any(|b| b == name)
    }

    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        let ctx = info.context;
        if info.name == self.head {
            let skip = self.state.with(ctx, |s| {
                s.head_block_input = Some(states.hidden_states.clone());
                let compute = self.decide(s);
                s.should_compute = compute;
                if compute {
                    None
                } else {
                    s.previous_residual.clone()
                }
            });
            if let Some(res) = skip {
                // The text stream is returned unchanged.
                return BlockStates::new(
                    add_residual(states.hidden_states, &res),
                    states.encoder_hidden_states,
                );
            }
        }
        let compute = self.state.with(ctx, |s| s.should_compute);
        let is_tail = info.name == self.tail;
        if !compute {
            if is_tail {
                self.state.with(ctx, |s| self.advance(ctx, s));
            }
            return states;
        }
        let out = original(states);
        if is_tail {
            self.state.with(ctx, |s| {
                let Some(input) = s.head_block_input.clone() else {
                    return;
                };
                let [_, si, _] = input.dims();
                let [_, so, _] = out.hidden_states.dims();
                let residual = if so > si {
                    out.hidden_states.clone().narrow(1, so - si, si) - input
                } else {
                    out.hidden_states.clone() - input
                };
                if self.config.calibrate {
                    let ratio = match &s.previous_residual {
                        None => 1.0,
                        Some(prev) => norm_ratio(&residual, prev),
                    };
                    s.calibration_ratios.push(ratio);
                }
                s.previous_residual = Some(residual);
                self.advance(ctx, s);
            });
        }
        out
    }

    fn calibration_ratios(&self) -> BTreeMap<String, Vec<f64>> {
        self.calibrated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reset(&self) {
        self.state.clear();
        self.calibrated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
