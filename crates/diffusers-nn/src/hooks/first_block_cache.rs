//! First-block cache (diffusers' `hooks/first_block_cache.py`): the first block always runs;
//! when the change of its residual since the last fully computed call is at most `threshold`
//! (relative mean absolute difference), the other blocks are skipped and the residual the last
//! block added in that call is reused.

use std::collections::BTreeSet;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::cache_utils::{
    CacheError, CacheMethod, PerContext, abs_mean, parse_value, unknown_option,
};
use super::{BlockStates, CallInfo};
use diffusers_core::config::ConfigMeta;

/// `FirstBlockCacheConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FirstBlockCacheConfig {
    /// Relative change of the first block's residual above which the remaining blocks run.
    /// diffusers accepts a negative (always compute) or NaN (always skip) threshold; we refuse
    /// both.
    pub threshold: f64,
    /// Keys this crate does not know.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for FirstBlockCacheConfig {
    fn default() -> Self {
        Self {
            threshold: 0.05,
            meta: ConfigMeta::default(),
        }
    }
}

impl FirstBlockCacheConfig {
    /// The config with `threshold`.
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            ..Self::default()
        }
    }

    pub(crate) fn from_options(pairs: &[(&str, &str)]) -> Result<Self, CacheError> {
        let mut c = Self::default();
        for (k, v) in pairs {
            match *k {
                "threshold" => c.threshold = parse_value("first-block", k, v)?,
                _ => return Err(unknown_option("first-block", k, &["threshold"])),
            }
        }
        Ok(c)
    }
}

#[derive(Debug)]
struct State<B: Backend> {
    head_block_output: Option<BlockStates<B>>,
    head_block_residual: Option<Tensor<B, 3>>,
    tail_block_residuals: Option<(Tensor<B, 3>, Option<Tensor<B, 3>>)>,
    should_compute: bool,
}

impl<B: Backend> Default for State<B> {
    fn default() -> Self {
        Self {
            head_block_output: None,
            head_block_residual: None,
            tail_block_residuals: None,
            should_compute: true,
        }
    }
}

/// The first-block cache hook of one model (diffusers' `FBCHeadBlockHook` on the first block,
/// `FBCBlockHook` on the others, sharing one state per cache context).
#[derive(Debug)]
pub(crate) struct FirstBlockCache<B: Backend> {
    config: FirstBlockCacheConfig,
    head: String,
    tail: String,
    blocks: BTreeSet<String>,
    state: PerContext<State<B>>,
}

impl<B: Backend> FirstBlockCache<B> {
    /// Hooks `blocks` (the model's repeated blocks in order: the first is the head, the last the
    /// tail); diffusers fails with `IndexError` below 2 blocks.
    pub(crate) fn new(
        config: FirstBlockCacheConfig,
        blocks: Vec<String>,
    ) -> Result<Self, CacheError> {
        let (Some(head), Some(tail)) = (blocks.first(), blocks.last()) else {
            return Err(CacheError::TooFewBlocks {
                method: "first-block",
                needed: 2,
                found: 0,
            });
        };
        if blocks.len() < 2 {
            return Err(CacheError::TooFewBlocks {
                method: "first-block",
                needed: 2,
                found: blocks.len(),
            });
        }
        Ok(Self {
            config,
            head: head.clone(),
            tail: tail.clone(),
            blocks: blocks.iter().cloned().collect(),
            state: PerContext::default(),
        })
    }
}

fn add_opt<B: Backend>(a: Option<Tensor<B, 3>>, b: Option<Tensor<B, 3>>) -> Option<Tensor<B, 3>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (_, b) => b,
    }
}

impl<B: Backend> CacheMethod<B> for FirstBlockCache<B> {
    fn hooks(&self, name: &str) -> bool {
        self.blocks.contains(name)
    }

    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        if info.name == self.head {
            let input = states.hidden_states.clone();
            let out = original(states);
            let residual = out.hidden_states.clone() - input;
            let prev = self
                .state
                .with(info.context, |s| s.head_block_residual.clone());
            let compute = match prev {
                None => true,
                Some(prev) => {
                    let diff = abs_mean(residual.clone() - prev.clone()) / abs_mean(prev);
                    tracing::trace!("first-block cache {}: diff {diff}", info.context);
                    f64::from(diff) > self.config.threshold
                }
            };
            return self.state.with(info.context, |s| {
                s.should_compute = compute;
                if compute {
                    s.head_block_output = Some(out.clone());
                    s.head_block_residual = Some(residual);
                    out
                } else {
                    match &s.tail_block_residuals {
                        Some((rh, re)) => BlockStates::new(
                            rh.clone() + out.hidden_states,
                            add_opt(re.clone(), out.encoder_hidden_states),
                        ),
                        // diffusers fails here (no tail residual); never reached since a skip
                        // follows a computed call.
                        None => out,
                    }
                }
            });
        }
        let compute = self.state.with(info.context, |s| s.should_compute);
        if !compute {
            return states;
        }
        let out = original(states);
        if info.name == self.tail {
            self.state.with(info.context, |s| {
                if let Some(head) = &s.head_block_output {
                    let rh = out.hidden_states.clone() - head.hidden_states.clone();
                    let re = match (&out.encoder_hidden_states, &head.encoder_hidden_states) {
                        (Some(o), Some(h)) => Some(o.clone() - h.clone()),
                        _ => None,
                    };
                    s.tail_block_residuals = Some((rh, re));
                }
            });
        }
        out
    }

    fn reset(&self) {
        self.state.clear();
    }
}
