//! FasterCache (diffusers' `hooks/faster_cache.py`), guidance-distilled form: inside a timestep
//! range, attention modules run only every `*_attention_block_skip_range` calls; in between
//! their output is extrapolated from the last two, `t1 + (t1 - t2) * weight` (weight 0.5, as
//! diffusers without `attention_weight_callback`).
//!
//! The non-distilled form expects one model call with the `[uncond; cond]` batch (CogVideoX);
//! the Flux, Wan and HunyuanVideo pipelines call the two separately, where diffusers fails at
//! the first call; we refuse `is_guidance_distilled = false` at enable time. The timestep is the
//! one the pipeline sets with the cache context.

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::CallInfo;
use super::cache_utils::{CacheError, CacheMethod, parse_value, unknown_option};
use super::pyramid_attention_broadcast::{is_attention, is_cross_attention, parse_range};
use diffusers_core::config::ConfigMeta;

/// `FasterCacheConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FasterCacheConfig {
    /// Calls between computations of spatial attention.
    pub spatial_attention_block_skip_range: usize,
    /// Calls between computations of temporal attention.
    pub temporal_attention_block_skip_range: Option<usize>,
    /// Timesteps (exclusive) within which spatial attention is extrapolated.
    pub spatial_attention_timestep_skip_range: (f64, f64),
    /// Timesteps within which temporal attention is extrapolated.
    pub temporal_attention_timestep_skip_range: (f64, f64),
    /// Low-frequency update range (non-distilled form only).
    pub low_frequency_weight_update_timestep_range: (f64, f64),
    /// High-frequency update range (non-distilled form only).
    pub high_frequency_weight_update_timestep_range: (f64, f64),
    /// Low-frequency weight (non-distilled form only).
    pub alpha_low_frequency: f64,
    /// High-frequency weight (non-distilled form only).
    pub alpha_high_frequency: f64,
    /// Unconditional batch skip range (non-distilled form only).
    pub unconditional_batch_skip_range: usize,
    /// Unconditional batch timestep range (non-distilled form only).
    pub unconditional_batch_timestep_skip_range: (f64, f64),
    /// Name patterns (searched) of spatial attention.
    pub spatial_attention_block_identifiers: Vec<String>,
    /// Name patterns of temporal attention.
    pub temporal_attention_block_identifiers: Vec<String>,
    /// The extrapolation weight (diffusers' default `attention_weight_callback`: 0.5).
    pub attention_weight: f64,
    /// The latent layout (`BCFHW`, `BFCHW` or `BCHW`).
    pub tensor_format: String,
    /// Whether the model is guidance-distilled (the only form supported here).
    pub is_guidance_distilled: bool,
    /// Keys this crate does not know.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for FasterCacheConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: 2,
            temporal_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: (-1.0, 681.0),
            temporal_attention_timestep_skip_range: (-1.0, 681.0),
            low_frequency_weight_update_timestep_range: (99.0, 901.0),
            high_frequency_weight_update_timestep_range: (-1.0, 301.0),
            alpha_low_frequency: 1.1,
            alpha_high_frequency: 1.1,
            unconditional_batch_skip_range: 5,
            unconditional_batch_timestep_skip_range: (-1.0, 641.0),
            spatial_attention_block_identifiers: vec![
                "^blocks.*attn".into(),
                "^transformer_blocks.*attn".into(),
                "^single_transformer_blocks.*attn".into(),
            ],
            temporal_attention_block_identifiers: vec!["^temporal_transformer_blocks.*attn".into()],
            attention_weight: 0.5,
            tensor_format: "BCFHW".into(),
            is_guidance_distilled: false,
            meta: ConfigMeta::default(),
        }
    }
}

const OPTIONS: [&str; 7] = [
    "spatial_attention_block_skip_range",
    "temporal_attention_block_skip_range",
    "spatial_attention_timestep_skip_range",
    "temporal_attention_timestep_skip_range",
    "attention_weight",
    "tensor_format",
    "is_guidance_distilled",
];

impl FasterCacheConfig {
    /// The CLI form: `is_guidance_distilled` defaults to true there (the only usable form).
    pub(crate) fn from_options(pairs: &[(&str, &str)]) -> Result<Self, CacheError> {
        let m = "fastercache";
        let mut c = Self {
            is_guidance_distilled: true,
            ..Self::default()
        };
        for (k, v) in pairs {
            match *k {
                "spatial_attention_block_skip_range" => {
                    c.spatial_attention_block_skip_range = parse_value(m, k, v)?
                }
                "temporal_attention_block_skip_range" => {
                    c.temporal_attention_block_skip_range = Some(parse_value(m, k, v)?)
                }
                "spatial_attention_timestep_skip_range" => {
                    c.spatial_attention_timestep_skip_range = parse_range(m, k, v)?
                }
                "temporal_attention_timestep_skip_range" => {
                    c.temporal_attention_timestep_skip_range = parse_range(m, k, v)?
                }
                "attention_weight" => c.attention_weight = parse_value(m, k, v)?,
                "tensor_format" => c.tensor_format = v.to_string(),
                "is_guidance_distilled" => c.is_guidance_distilled = parse_value(m, k, v)?,
                _ => return Err(unknown_option(m, k, &OPTIONS)),
            }
        }
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        if !["BCFHW", "BFCHW", "BCHW"].contains(&self.tensor_format.as_str()) {
            return Err(CacheError::Invalid(format!(
                "fastercache: tensor_format must be one of BCFHW, BFCHW, BCHW, got {}",
                self.tensor_format
            )));
        }
        if !self.is_guidance_distilled {
            return Err(CacheError::Invalid(
                "fastercache: only is_guidance_distilled=true is supported (the pipelines run cond and uncond as separate calls)".into(),
            ));
        }
        if self.spatial_attention_block_skip_range == 0
            || self.temporal_attention_block_skip_range == Some(0)
        {
            return Err(CacheError::Invalid(
                "fastercache: block skip ranges must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State<B: Backend> {
    iteration: usize,
    cache: Option<[Vec<Tensor<B, 3>>; 2]>,
}

/// The FasterCache block hook of one model: one state per attention module, shared by every
/// cache context.
#[derive(Debug)]
pub(crate) struct FasterCache<B: Backend> {
    config: FasterCacheConfig,
    state: Mutex<BTreeMap<String, State<B>>>,
}

fn any_search(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|p| Regex::new(p).is_ok_and(|r| r.is_match(name)))
}

impl<B: Backend> FasterCache<B> {
    pub(crate) fn new(config: FasterCacheConfig) -> Self {
        Self {
            config,
            state: Mutex::new(BTreeMap::new()),
        }
    }

    fn ranges(&self, name: &str) -> Option<(usize, (f64, f64))> {
        let c = &self.config;
        if !is_attention(name) {
            return None;
        }
        if any_search(&c.spatial_attention_block_identifiers, name) && !is_cross_attention(name) {
            return Some((
                c.spatial_attention_block_skip_range,
                c.spatial_attention_timestep_skip_range,
            ));
        }
        if let Some(r) = c.temporal_attention_block_skip_range
            && any_search(&c.temporal_attention_block_identifiers, name)
        {
            return Some((r, c.temporal_attention_timestep_skip_range));
        }
        None
    }
}

impl<B: Backend> CacheMethod<B> for FasterCache<B> {
    fn hooks(&self, name: &str) -> bool {
        self.ranges(name).is_some()
    }

    fn module_forward(
        &self,
        info: &CallInfo<'_>,
        original: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
    ) -> Vec<Tensor<B, 3>> {
        let Some((range, (lo, hi))) = self.ranges(info.name) else {
            return original();
        };
        let in_range = info.timestep.is_some_and(|t| lo < t && t < hi);
        let approx = {
            let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = m.entry(info.name.to_string()).or_insert(State {
                iteration: 0,
                cache: None,
            });
            let skip = in_range && !(s.iteration > 0 && s.iteration.is_multiple_of(range.max(1)));
            match (&s.cache, skip) {
                (Some([t2, t1]), true) => {
                    let w = self.config.attention_weight as f32;
                    Some(
                        t2.iter()
                            .zip(t1)
                            .map(|(a, b)| b.clone() + (b.clone() - a.clone()) * w)
                            .collect::<Vec<_>>(),
                    )
                }
                _ => None,
            }
        };
        let out = match approx {
            Some(a) => a,
            None => original(),
        };
        let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get_mut(info.name) {
            s.cache = Some(match s.cache.take() {
                None => [out.clone(), out.clone()],
                Some([_, last]) => [last, out.clone()],
            });
            s.iteration += 1;
        }
        out
    }

    fn reset(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
