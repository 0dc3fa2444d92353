//! Pyramid Attention Broadcast (diffusers' `hooks/pyramid_attention_broadcast.py`): inside a
//! timestep range, an attention module runs only every `*_block_skip_range` calls and otherwise
//! returns its last output.
//!
//! The timestep is the one the pipeline sets with the cache context (diffusers'
//! `current_timestep_callback` returning `pipe.current_timestep`); a call without one computes.
//! Attention modules are the hook call points whose last name part starts with `attn`; Wan's
//! `attn2` is the cross-attention. HunyuanVideo's token-refiner attention, which diffusers also
//! hooks, is not a hook call point here.

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::CallInfo;
use super::cache_utils::{CacheError, CacheMethod, parse_value, unknown_option};
use diffusers_core::config::ConfigMeta;

/// `PyramidAttentionBroadcastConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PyramidAttentionBroadcastConfig {
    /// Calls between computations of spatial self-attention.
    pub spatial_attention_block_skip_range: Option<usize>,
    /// Calls between computations of temporal self-attention.
    pub temporal_attention_block_skip_range: Option<usize>,
    /// Calls between computations of cross-attention.
    pub cross_attention_block_skip_range: Option<usize>,
    /// Timesteps (exclusive) within which spatial attention is reused.
    pub spatial_attention_timestep_skip_range: (f64, f64),
    /// Timesteps within which temporal attention is reused.
    pub temporal_attention_timestep_skip_range: (f64, f64),
    /// Timesteps within which cross-attention is reused.
    pub cross_attention_timestep_skip_range: (f64, f64),
    /// Name patterns (searched) of spatial attention.
    pub spatial_attention_block_identifiers: Vec<String>,
    /// Name patterns of temporal attention.
    pub temporal_attention_block_identifiers: Vec<String>,
    /// Name patterns of cross-attention.
    pub cross_attention_block_identifiers: Vec<String>,
    /// Keys this crate does not know.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Default for PyramidAttentionBroadcastConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: None,
            temporal_attention_block_skip_range: None,
            cross_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: (100.0, 800.0),
            temporal_attention_timestep_skip_range: (100.0, 800.0),
            cross_attention_timestep_skip_range: (100.0, 800.0),
            spatial_attention_block_identifiers: strings(&[
                "blocks",
                "transformer_blocks",
                "single_transformer_blocks",
                "layers",
                "visual_transformer_blocks",
            ]),
            temporal_attention_block_identifiers: strings(&["temporal_transformer_blocks"]),
            cross_attention_block_identifiers: strings(&["blocks", "transformer_blocks", "layers"]),
            meta: ConfigMeta::default(),
        }
    }
}

const OPTIONS: [&str; 6] = [
    "spatial_attention_block_skip_range",
    "temporal_attention_block_skip_range",
    "cross_attention_block_skip_range",
    "spatial_attention_timestep_skip_range",
    "temporal_attention_timestep_skip_range",
    "cross_attention_timestep_skip_range",
];

/// Parses `LO-HI` (or `LO/HI`).
pub(crate) fn parse_range(method: &str, key: &str, v: &str) -> Result<(f64, f64), CacheError> {
    let (lo, hi) = v
        .split_once('/')
        .or_else(|| v.split_once('-'))
        .ok_or_else(|| CacheError::Option(format!("{method}: `{key}={v}` is not LO/HI")))?;
    Ok((parse_value(method, key, lo)?, parse_value(method, key, hi)?))
}

impl PyramidAttentionBroadcastConfig {
    pub(crate) fn from_options(pairs: &[(&str, &str)]) -> Result<Self, CacheError> {
        let m = "pab";
        let mut c = Self::default();
        for (k, v) in pairs {
            match *k {
                "spatial_attention_block_skip_range" => {
                    c.spatial_attention_block_skip_range = Some(parse_value(m, k, v)?)
                }
                "temporal_attention_block_skip_range" => {
                    c.temporal_attention_block_skip_range = Some(parse_value(m, k, v)?)
                }
                "cross_attention_block_skip_range" => {
                    c.cross_attention_block_skip_range = Some(parse_value(m, k, v)?)
                }
                "spatial_attention_timestep_skip_range" => {
                    c.spatial_attention_timestep_skip_range = parse_range(m, k, v)?
                }
                "temporal_attention_timestep_skip_range" => {
                    c.temporal_attention_timestep_skip_range = parse_range(m, k, v)?
                }
                "cross_attention_timestep_skip_range" => {
                    c.cross_attention_timestep_skip_range = parse_range(m, k, v)?
                }
                _ => return Err(unknown_option(m, k, &OPTIONS)),
            }
        }
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        for r in [
            self.spatial_attention_block_skip_range,
            self.temporal_attention_block_skip_range,
            self.cross_attention_block_skip_range,
        ]
        .into_iter()
        .flatten()
        {
            if r == 0 {
                return Err(CacheError::Invalid(
                    "pab: block skip ranges must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn is_attention(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .is_some_and(|l| l.starts_with("attn"))
}

pub(crate) fn is_cross_attention(name: &str) -> bool {
    name.ends_with(".attn2")
}

fn any_search(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|p| Regex::new(p).is_ok_and(|r| r.is_match(name)))
}

#[derive(Debug)]
struct State<B: Backend> {
    iteration: usize,
    cache: Option<Vec<Tensor<B, 3>>>,
}

/// The PAB hook of one model: one state per attention module, shared by every cache context.
#[derive(Debug)]
pub(crate) struct PyramidAttentionBroadcast<B: Backend> {
    config: PyramidAttentionBroadcastConfig,
    state: Mutex<BTreeMap<String, State<B>>>,
}

impl<B: Backend> PyramidAttentionBroadcast<B> {
    pub(crate) fn new(mut config: PyramidAttentionBroadcastConfig) -> Self {
        if config.spatial_attention_block_skip_range.is_none()
            && config.temporal_attention_block_skip_range.is_none()
            && config.cross_attention_block_skip_range.is_none()
        {
            tracing::warn!(
                "pab: no block skip range set; using spatial_attention_block_skip_range=2"
            );
            config.spatial_attention_block_skip_range = Some(2);
        }
        Self {
            config,
            state: Mutex::new(BTreeMap::new()),
        }
    }

    /// The block skip range and timestep range of the module `name`, if hooked.
    fn ranges(&self, name: &str) -> Option<(usize, (f64, f64))> {
        if !is_attention(name) {
            return None;
        }
        let c = &self.config;
        let cross = is_cross_attention(name);
        if let (Some(r), false) = (c.spatial_attention_block_skip_range, cross)
            && any_search(&c.spatial_attention_block_identifiers, name)
        {
            return Some((r, c.spatial_attention_timestep_skip_range));
        }
        if let (Some(r), false) = (c.temporal_attention_block_skip_range, cross)
            && any_search(&c.temporal_attention_block_identifiers, name)
        {
            return Some((r, c.temporal_attention_timestep_skip_range));
        }
        if let (Some(r), true) = (c.cross_attention_block_skip_range, cross)
            && any_search(&c.cross_attention_block_identifiers, name)
        {
            return Some((r, c.cross_attention_timestep_skip_range));
        }
        None
    }
}

impl<B: Backend> CacheMethod<B> for PyramidAttentionBroadcast<B> {
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
        let cached = {
            let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = m.entry(info.name.to_string()).or_insert(State {
                iteration: 0,
                cache: None,
            });
            let compute = s.cache.is_none()
                || s.iteration == 0
                || !in_range
                || s.iteration.is_multiple_of(range.max(1));
            if compute { None } else { s.cache.clone() }
        };
        let out = match cached {
            Some(c) => c,
            None => original(),
        };
        let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get_mut(info.name) {
            s.cache = Some(out.clone());
            s.iteration += 1;
        }
        out
    }

    fn reset(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
