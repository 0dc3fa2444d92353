//! TaylorSeer (diffusers' `hooks/taylorseer_cache.py`): the wrapped modules run at the warm-up
//! steps and every `cache_interval` steps after; in between their outputs are predicted by a
//! Taylor expansion from divided differences of the computed ones (or, for "inactive" modules,
//! replaced by zeros).
//!
//! Modules are chosen by full regex match on their names, as diffusers' `re.fullmatch` on
//! `named_modules()`; here only the names the models expose to hooks can match: block names
//! (`transformer_blocks.0`), their attention modules (`transformer_blocks.0.attn`, Wan's
//! `blocks.0.attn1` / `attn2`) and `proj_out`.

use burn::prelude::*;
use burn::tensor::DType;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::cache_utils::{CacheError, CacheMethod, PerContext, parse_value, unknown_option};
use super::{BlockStates, CallInfo};
use diffusers_core::config::ConfigMeta;

/// diffusers' default active patterns (attention modules of the block lists).
pub const DEFAULT_CACHE_IDENTIFIERS: [&str; 4] = [
    "^blocks.*attn",
    "^transformer_blocks.*attn",
    "^single_transformer_blocks.*attn",
    "^temporal_transformer_blocks.*attn",
];
/// Lite mode's active pattern.
pub const LITE_CACHE_IDENTIFIERS: [&str; 1] = ["^proj_out$"];
/// Lite mode's inactive pattern (every direct child of a `*block*` list).
pub const LITE_SKIP_PREDICT_IDENTIFIERS: [&str; 1] = ["^[^.]*block[^.]*\\.[^.]+$"];

/// The dtype TaylorSeer keeps its factors in (`taylor_factors_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaylorFactorsDtype {
    /// `torch.bfloat16` (diffusers' default): every factor is rounded to bf16 when stored.
    #[default]
    Bfloat16,
    /// `torch.float32`.
    Float32,
}

/// `TaylorSeerCacheConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaylorSeerCacheConfig {
    /// Steps between full computations after the warm-up (diffusers fails with
    /// `ZeroDivisionError` on 0; we refuse it).
    pub cache_interval: usize,
    /// Steps computed fully before caching starts.
    pub disable_cache_before_step: usize,
    /// From this step on every step computes.
    pub disable_cache_after_step: Option<usize>,
    /// The Taylor expansion's order.
    pub max_order: usize,
    /// The dtype of the stored factors.
    pub taylor_factors_dtype: TaylorFactorsDtype,
    /// Patterns of modules that are "inactive": zeros instead of a prediction.
    pub skip_predict_identifiers: Option<Vec<String>>,
    /// Patterns of modules whose outputs are predicted.
    pub cache_identifiers: Option<Vec<String>>,
    /// Lite mode: predict only `proj_out`, blocks return zeros (user patterns are ignored).
    pub use_lite_mode: bool,
    /// Keys this crate does not know.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for TaylorSeerCacheConfig {
    fn default() -> Self {
        Self {
            cache_interval: 5,
            disable_cache_before_step: 3,
            disable_cache_after_step: None,
            max_order: 1,
            taylor_factors_dtype: TaylorFactorsDtype::Bfloat16,
            skip_predict_identifiers: None,
            cache_identifiers: None,
            use_lite_mode: false,
            meta: ConfigMeta::default(),
        }
    }
}

const OPTIONS: [&str; 6] = [
    "cache_interval",
    "disable_cache_before_step",
    "disable_cache_after_step",
    "max_order",
    "taylor_factors_dtype",
    "use_lite_mode",
];

impl TaylorSeerCacheConfig {
    pub(crate) fn from_options(pairs: &[(&str, &str)]) -> Result<Self, CacheError> {
        let m = "taylorseer";
        let mut c = Self::default();
        for (k, v) in pairs {
            match *k {
                "cache_interval" => c.cache_interval = parse_value(m, k, v)?,
                "disable_cache_before_step" => c.disable_cache_before_step = parse_value(m, k, v)?,
                "disable_cache_after_step" => {
                    c.disable_cache_after_step = if *v == "none" || *v == "None" {
                        None
                    } else {
                        Some(parse_value(m, k, v)?)
                    }
                }
                "max_order" => c.max_order = parse_value(m, k, v)?,
                "use_lite_mode" => c.use_lite_mode = parse_value(m, k, v)?,
                "taylor_factors_dtype" => {
                    c.taylor_factors_dtype = match *v {
                        "bfloat16" | "bf16" => TaylorFactorsDtype::Bfloat16,
                        "float32" | "f32" => TaylorFactorsDtype::Float32,
                        _ => {
                            return Err(CacheError::Option(format!(
                                "taylorseer: taylor_factors_dtype `{v}` (valid: bfloat16, float32)"
                            )));
                        }
                    }
                }
                _ => return Err(unknown_option(m, k, &OPTIONS)),
            }
        }
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        if self.cache_interval == 0 {
            return Err(CacheError::Invalid(
                "taylorseer: cache_interval must be at least 1".into(),
            ));
        }
        self.patterns().map(|_| ())
    }

    /// The (active, inactive) patterns, compiled for full matches.
    fn patterns(&self) -> Result<(Vec<Regex>, Vec<Regex>), CacheError> {
        let (active, inactive): (Vec<String>, Vec<String>) = if self.use_lite_mode {
            if self.cache_identifiers.is_some() || self.skip_predict_identifiers.is_some() {
                tracing::warn!("taylorseer: lite mode ignores the user's identifiers");
            }
            (
                LITE_CACHE_IDENTIFIERS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                LITE_SKIP_PREDICT_IDENTIFIERS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        } else {
            (
                self.cache_identifiers.clone().unwrap_or_else(|| {
                    DEFAULT_CACHE_IDENTIFIERS
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                }),
                self.skip_predict_identifiers.clone().unwrap_or_default(),
            )
        };
        let compile = |p: &String| {
            Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| CacheError::Invalid(format!("taylorseer: pattern `{p}`: {e}")))
        };
        Ok((
            active.iter().map(compile).collect::<Result<_, _>>()?,
            inactive.iter().map(compile).collect::<Result<_, _>>()?,
        ))
    }
}

#[derive(Debug)]
struct State<B: Backend> {
    current_step: i64,
    last_update_step: Option<i64>,
    /// Per output: the factors by order.
    factors: Vec<Vec<Tensor<B, 3>>>,
    dtypes: Vec<DType>,
    inactive_shapes: Option<Vec<[usize; 3]>>,
    device: Option<B::Device>,
}

impl<B: Backend> Default for State<B> {
    fn default() -> Self {
        Self {
            current_step: -1,
            last_update_step: None,
            factors: Vec::new(),
            dtypes: Vec::new(),
            inactive_shapes: None,
            device: None,
        }
    }
}

/// The TaylorSeer hook of one model (diffusers' `TaylorSeerCacheHook` on each matching
/// module, one state per module and cache context).
#[derive(Debug)]
pub(crate) struct TaylorSeerCache<B: Backend> {
    config: TaylorSeerCacheConfig,
    active: Vec<Regex>,
    inactive: Vec<Regex>,
    state: PerContext<State<B>>,
}

impl<B: Backend> TaylorSeerCache<B> {
    pub(crate) fn new(config: TaylorSeerCacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        let (active, inactive) = config.patterns()?;
        Ok(Self {
            config,
            active,
            inactive,
            state: PerContext::default(),
        })
    }

    fn is_inactive(&self, name: &str) -> bool {
        self.inactive.iter().any(|r| r.is_match(name))
    }

    /// Advances the module's step counter; whether this call computes.
    fn should_compute(&self, key: &str) -> bool {
        let c = &self.config;
        let step = self.state.with(key, |s| {
            s.current_step += 1;
            s.current_step
        });
        let before = c.disable_cache_before_step as i64;
        let warmup = step < before;
        let interval = (step - before - 1).rem_euclid(c.cache_interval.max(1) as i64) == 0;
        let cooldown = c.disable_cache_after_step.is_some_and(|a| step >= a as i64);
        warmup || interval || cooldown
    }

    fn factor_dtype(&self, t: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.config.taylor_factors_dtype {
            TaylorFactorsDtype::Bfloat16 => t.cast(DType::BF16),
            TaylorFactorsDtype::Float32 => t.cast(DType::F32),
        }
    }

    fn update(&self, key: &str, inactive: bool, outputs: &[Tensor<B, 3>]) {
        self.state.with(key, |s| {
            s.dtypes = outputs.iter().map(|o| o.dtype()).collect();
            s.device = outputs.first().map(|o| o.device());
            if inactive {
                s.inactive_shapes = Some(outputs.iter().map(|o| o.dims()).collect());
            } else {
                let mut all = Vec::with_capacity(outputs.len());
                for (i, out) in outputs.iter().enumerate() {
                    let mut new = vec![out.clone()];
                    if let Some(last) = s.last_update_step {
                        let delta = (s.current_step - last) as f32;
                        let prev = s.factors.get(i);
                        for j in 0..self.config.max_order {
                            let Some(p) = prev.and_then(|p| p.get(j)) else {
                                break;
                            };
                            if p.dims() != new[j].dims() {
                                break;
                            }
                            let next = (new[j].clone() - p.clone().cast(out.dtype())) / delta;
                            new.push(next);
                        }
                    }
                    all.push(new.into_iter().map(|f| self.factor_dtype(f)).collect());
                }
                s.factors = all;
            }
            s.last_update_step = Some(s.current_step);
        });
    }

    /// The predicted outputs; `None` before any update (diffusers raises).
    fn predict(&self, key: &str, inactive: bool) -> Option<Vec<Tensor<B, 3>>> {
        self.state.with(key, |s| {
            let last = s.last_update_step?;
            if inactive {
                let device = s.device.clone()?;
                let shapes = s.inactive_shapes.as_ref()?;
                return Some(
                    shapes
                        .iter()
                        .zip(&s.dtypes)
                        .map(|(shape, dt)| Tensor::zeros(*shape, (&device, *dt)))
                        .collect(),
                );
            }
            if s.factors.is_empty() {
                return None;
            }
            let offset = (s.current_step - last) as f64;
            let mut outs = Vec::new();
            for (i, factors) in s.factors.iter().enumerate() {
                let dt = s.dtypes.get(i).copied().unwrap_or(DType::F32);
                let mut out: Option<Tensor<B, 3>> = None;
                let mut fact = 1.0f64;
                for (k, f) in factors.iter().enumerate() {
                    if k > 0 {
                        fact *= k as f64;
                    }
                    let coeff = offset.powi(k as i32) / fact;
                    let term = f.clone().cast(dt) * coeff as f32;
                    out = Some(match out {
                        None => term,
                        Some(o) => o + term,
                    });
                }
                outs.push(out?);
            }
            Some(outs)
        })
    }

    fn call(
        &self,
        info: &CallInfo<'_>,
        run: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
    ) -> Vec<Tensor<B, 3>> {
        let key = format!("{}\u{0}{}", info.name, info.context);
        let inactive = self.is_inactive(info.name);
        if !self.should_compute(&key) {
            if let Some(p) = self.predict(&key, inactive) {
                return p;
            }
            tracing::warn!(
                "taylorseer: {} predicted before any update; computing",
                info.name
            );
        }
        let out = run();
        self.update(&key, inactive, &out);
        out
    }
}

impl<B: Backend> CacheMethod<B> for TaylorSeerCache<B> {
    fn hooks(&self, name: &str) -> bool {
        self.active.iter().any(|r| r.is_match(name)) || self.is_inactive(name)
    }

    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        let mut states = Some(states);
        let mut run = || {
            let Some(s) = states.take() else {
                return Vec::new();
            };
            let out = original(s);
            std::iter::once(out.hidden_states)
                .chain(out.encoder_hidden_states)
                .collect()
        };
        let mut out = self.call(info, &mut run).into_iter();
        let hidden = out.next().expect("a block call returns its states");
        BlockStates::new(hidden, out.next())
    }

    fn module_forward(
        &self,
        info: &CallInfo<'_>,
        original: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
    ) -> Vec<Tensor<B, 3>> {
        self.call(info, original)
    }

    fn reset(&self) {
        self.state.clear();
    }
}
