//! Enabling and disabling a step cache on a transformer (diffusers' `models/cache_utils.py`,
//! `CacheMixin.enable_cache` / `disable_cache`), and the report of what the cache did.
//!
//! A cache is one [`ModelHook`] registered under the name [`CACHE_HOOK`] on the model's
//! [`HookRegistry`]; it wraps the blocks and modules its method names (the model's repeated
//! blocks, attention modules, `proj_out`) and records, per module and cache context, whether
//! each call ran the module (`C`) or returned a cached or predicted output (`S`), as the oracle's
//! fixtures record diffusers' hooks.
//!
//! Where diffusers accepts nonsensical input silently (a negative or NaN threshold, which makes
//! first-block cache always compute or always skip; a TaylorSeer `cache_interval` of 0, which
//! fails with `ZeroDivisionError` at the first call), [`enable_cache`] refuses it with a
//! one-line [`CacheError`].

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use burn::prelude::*;

use super::faster_cache::{FasterCache, FasterCacheConfig};
use super::first_block_cache::{FirstBlockCache, FirstBlockCacheConfig};
use super::mag_cache::{MagCache, MagCacheConfig};
use super::pyramid_attention_broadcast::{
    PyramidAttentionBroadcast, PyramidAttentionBroadcastConfig,
};
use super::sea_cache::{SeaCache, SeaCacheConfig};
use super::taylorseer_cache::{TaylorSeerCache, TaylorSeerCacheConfig};
use super::{BlockStates, CallInfo, HookRegistry, ModelHook};

/// The registry name of the step cache hook (one cache per model).
pub const CACHE_HOOK: &str = "step_cache";

/// The cache methods' names as the CLI and [`CacheConfig::parse`] take them.
pub const CACHE_METHODS: [&str; 6] = [
    "first-block",
    "taylorseer",
    "magcache",
    "pab",
    "fastercache",
    "seacache",
];

/// A step cache configuration (the config classes diffusers' `enable_cache` accepts).
#[derive(Debug, Clone, PartialEq)]
pub enum CacheConfig {
    /// `FirstBlockCacheConfig`.
    FirstBlock(FirstBlockCacheConfig),
    /// `TaylorSeerCacheConfig`.
    TaylorSeer(TaylorSeerCacheConfig),
    /// `MagCacheConfig`.
    Mag(MagCacheConfig),
    /// `PyramidAttentionBroadcastConfig`.
    PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig),
    /// `FasterCacheConfig` (the guidance-distilled form).
    FasterCache(FasterCacheConfig),
    /// `SeaCacheConfig` (skips only where the pipeline passes sigma and the raw latents: Wan).
    Sea(SeaCacheConfig),
}

impl CacheConfig {
    /// The method's CLI name (`first-block`, `taylorseer`, ...).
    pub fn method(&self) -> &'static str {
        match self {
            Self::FirstBlock(_) => "first-block",
            Self::TaylorSeer(_) => "taylorseer",
            Self::Mag(_) => "magcache",
            Self::PyramidAttentionBroadcast(_) => "pab",
            Self::FasterCache(_) => "fastercache",
            Self::Sea(_) => "seacache",
        }
    }

    /// The diffusers config class.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::FirstBlock(_) => "FirstBlockCacheConfig",
            Self::TaylorSeer(_) => "TaylorSeerCacheConfig",
            Self::Mag(_) => "MagCacheConfig",
            Self::PyramidAttentionBroadcast(_) => "PyramidAttentionBroadcastConfig",
            Self::FasterCache(_) => "FasterCacheConfig",
            Self::Sea(_) => "SeaCacheConfig",
        }
    }

    /// Parses `METHOD[:OPTIONS]` as the CLI's `--cache` takes it: `first-block:0.2` (the
    /// threshold), or options by diffusers' config field names separated by commas
    /// (`taylorseer:cache_interval=4,max_order=2`, `first-block:threshold=0.2`). The config is
    /// validated as [`enable_cache`] would.
    pub fn parse(spec: &str) -> Result<Self, CacheError> {
        let (method, opts) = spec.split_once(':').unwrap_or((spec, ""));
        if !CACHE_METHODS.contains(&method) {
            return Err(CacheError::UnknownMethod(method.to_string()));
        }
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in opts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((k, v)) => pairs.push((k.trim(), v.trim())),
                None if method == "first-block" || method == "magcache" => {
                    pairs.push(("threshold", item))
                }
                None => {
                    return Err(CacheError::Option(format!(
                        "{method}: option `{item}` is not NAME=VALUE"
                    )));
                }
            }
        }
        let config = match method {
            "first-block" => Self::FirstBlock(FirstBlockCacheConfig::from_options(&pairs)?),
            "taylorseer" => Self::TaylorSeer(TaylorSeerCacheConfig::from_options(&pairs)?),
            "magcache" => Self::Mag(MagCacheConfig::from_options(&pairs)?),
            "pab" => Self::PyramidAttentionBroadcast(
                PyramidAttentionBroadcastConfig::from_options(&pairs)?,
            ),
            "fastercache" => Self::FasterCache(FasterCacheConfig::from_options(&pairs)?),
            "seacache" => Self::Sea(SeaCacheConfig::from_options(&pairs)?),
            other => {
                return Err(CacheError::UnknownMethod(other.to_string()));
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values diffusers would accept but that make no sense (see the module docs).
    pub fn validate(&self) -> Result<(), CacheError> {
        match self {
            Self::FirstBlock(c) => check_threshold("first-block", c.threshold),
            Self::TaylorSeer(c) => c.validate(),
            Self::Mag(c) => c.validate(),
            Self::PyramidAttentionBroadcast(c) => c.validate(),
            Self::FasterCache(c) => c.validate(),
            Self::Sea(c) => c.validate(),
        }
    }
}

pub(crate) fn check_threshold(method: &'static str, threshold: f64) -> Result<(), CacheError> {
    if threshold.is_nan() || threshold < 0.0 {
        return Err(CacheError::Threshold { method, threshold });
    }
    Ok(())
}

/// Parses one option value, naming the option in the error.
pub(crate) fn parse_value<T: std::str::FromStr>(
    method: &str,
    key: &str,
    value: &str,
) -> Result<T, CacheError> {
    value.parse().map_err(|_| {
        CacheError::Option(format!(
            "{method}: `{key}={value}` is not a valid {}",
            std::any::type_name::<T>()
        ))
    })
}

/// An unknown option name, listing the valid ones.
pub(crate) fn unknown_option(method: &str, key: &str, valid: &[&str]) -> CacheError {
    CacheError::Option(format!(
        "{method}: unknown option `{key}` (valid: {})",
        valid.join(", ")
    ))
}

/// Why a cache cannot be enabled.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CacheError {
    /// A cache is already enabled (diffusers: "Caching has already been enabled with ...").
    #[error(
        "caching has already been enabled with {0}: disable it first to apply a new caching technique"
    )]
    AlreadyEnabled(&'static str),
    /// A negative or NaN threshold (diffusers accepts both silently).
    #[error("{method}: threshold must be a non-negative number, got {threshold}")]
    Threshold {
        /// The method.
        method: &'static str,
        /// The threshold given.
        threshold: f64,
    },
    /// A config value out of range (diffusers fails at the first call or accepts it).
    #[error("{0}")]
    Invalid(String),
    /// The model has too few blocks of the kind the method hooks.
    #[error("{method} needs at least {needed} transformer blocks; the model has {found}")]
    TooFewBlocks {
        /// The method.
        method: &'static str,
        /// Blocks needed.
        needed: usize,
        /// Blocks found.
        found: usize,
    },
    /// An unknown method name.
    #[error(
        "unknown cache method `{0}` (valid: first-block, taylorseer, magcache, pab, fastercache, seacache)"
    )]
    UnknownMethod(String),
    /// An unknown option name or a bad option value.
    #[error("{0}")]
    Option(String),
}

/// A model whose step can be cached: its hook registry and its repeated block lists.
pub trait CacheableModel<B: Backend> {
    /// The model's hooks.
    fn hook_registry(&self) -> &HookRegistry<B>;

    /// The model's repeated block lists in definition order with their lengths
    /// (`[("transformer_blocks", 19), ("single_transformer_blocks", 38)]`), as diffusers finds
    /// them among the model's children.
    fn block_lists(&self) -> Vec<(&'static str, usize)>;

    /// Enables `config` on the model ([`enable_cache`]).
    fn enable_cache(&self, config: &CacheConfig) -> Result<(), CacheError> {
        enable_cache(self.hook_registry(), &self.block_lists(), config)
    }

    /// Disables the model's cache ([`disable_cache`]).
    fn disable_cache(&self) -> bool {
        disable_cache(self.hook_registry())
    }

    /// What the cache did since the last reset ([`cache_report`]).
    fn cache_report(&self) -> Option<CacheReport> {
        cache_report(self.hook_registry())
    }
}

/// The method of a step cache: which blocks and modules it wraps and what it does there.
pub(crate) trait CacheMethod<B: Backend>: Send + Sync + fmt::Debug {
    fn hooks(&self, name: &str) -> bool;

    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        let _ = info;
        original(states)
    }

    fn module_forward(
        &self,
        info: &CallInfo<'_>,
        original: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
    ) -> Vec<Tensor<B, 3>> {
        let _ = info;
        original()
    }

    fn reset(&self);

    /// The start of a model call (its context, step and sigma).
    fn on_model_call(&self, info: &CallInfo<'_>) {
        let _ = info;
    }

    /// The raw latents the model is about to get (SeaCache's indicator).
    fn set_model_input(&self, latents: Tensor<B, 5>) {
        let _ = latents;
    }

    /// MagCache's calibration ratios of completed runs, per context.
    fn calibration_ratios(&self) -> BTreeMap<String, Vec<f64>> {
        BTreeMap::new()
    }
}

#[derive(Debug, Default)]
struct Record {
    /// Per model call: its context and whether every hooked module ran.
    calls: Vec<(String, bool)>,
    schedules: BTreeMap<String, BTreeMap<String, String>>,
    blocks_skipped: usize,
    modules_skipped: usize,
}

/// What a step cache did since the model's hooks were last reset (the start of the last
/// pipeline run).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CacheReport {
    /// The method (`first-block`, `taylorseer`, ...).
    pub method: &'static str,
    /// Transformer calls made (one per cache context and step).
    pub calls: usize,
    /// Calls in which every block or module the cache wraps ran its own forward.
    pub full_calls: usize,
    /// Block calls that returned a cached, predicted or passed-through output instead of running.
    pub blocks_skipped: usize,
    /// Module calls (attention, `proj_out`) that returned a cached or predicted output.
    pub modules_skipped: usize,
    /// Per wrapped module, per cache context: one letter per call, `C` when the module ran and
    /// `S` when the cache answered instead (the oracle fixtures' `schedules`).
    pub schedules: BTreeMap<String, BTreeMap<String, String>>,
    /// MagCache with `calibrate`: the magnitude ratios each completed run measured, per cache
    /// context (the values to pass as `mag_ratios`).
    pub calibration_ratios: BTreeMap<String, Vec<f64>>,
}

/// The hook a cache registers: the method plus its record.
#[derive(Debug)]
struct StepCache<B: Backend> {
    method: &'static str,
    inner: Box<dyn CacheMethod<B>>,
    record: Mutex<Record>,
}

impl<B: Backend> StepCache<B> {
    fn log(&self, info: &CallInfo<'_>, ran: bool, block: bool) {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        r.schedules
            .entry(info.name.to_string())
            .or_default()
            .entry(info.context.to_string())
            .or_default()
            .push(if ran { 'C' } else { 'S' });
        if !ran {
            if block {
                r.blocks_skipped += 1;
            } else {
                r.modules_skipped += 1;
            }
            if let Some(last) = r.calls.last_mut() {
                last.1 = false;
            }
        }
    }

    fn report(&self) -> CacheReport {
        let r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        CacheReport {
            method: self.method,
            calls: r.calls.len(),
            full_calls: r.calls.iter().filter(|c| c.1).count(),
            blocks_skipped: r.blocks_skipped,
            modules_skipped: r.modules_skipped,
            schedules: r.schedules.clone(),
            calibration_ratios: self.inner.calibration_ratios(),
        }
    }
}

impl<B: Backend> ModelHook<B> for StepCache<B> {
    fn name(&self) -> &str {
        CACHE_HOOK
    }

    fn hooks(&self, name: &str) -> bool {
        self.inner.hooks(name)
    }

    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        let mut ran = false;
        let out = self.inner.block_forward(info, states, &mut |s| {
            ran = true;
            original(s)
        });
        self.log(info, ran, true);
        out
    }

    fn module_forward(
        &self,
        info: &CallInfo<'_>,
        original: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
    ) -> Vec<Tensor<B, 3>> {
        let mut ran = false;
        let out = self.inner.module_forward(info, &mut || {
            ran = true;
            original()
        });
        self.log(info, ran, false);
        out
    }

    fn on_model_call(&self, info: &CallInfo<'_>) {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .push((info.context.to_string(), true));
        self.inner.on_model_call(info);
    }

    fn reset_state(&self) {
        self.inner.reset();
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = Record::default();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Enables the step cache `config` on the model whose hooks are `registry` and whose repeated
/// block lists are `block_lists` (definition order, with lengths), as diffusers'
/// `enable_cache`. Fails if a cache is already enabled, if the config is out of range, or if the
/// model lacks the blocks the method needs (first-block cache: at least 2).
pub fn enable_cache<B: Backend>(
    registry: &HookRegistry<B>,
    block_lists: &[(&str, usize)],
    config: &CacheConfig,
) -> Result<(), CacheError> {
    if let Some(h) = registry.get_hook(CACHE_HOOK) {
        let method = h
            .as_any()
            .downcast_ref::<StepCache<B>>()
            .map_or("another cache", |c| c.method);
        return Err(CacheError::AlreadyEnabled(method));
    }
    config.validate()?;
    let blocks: Vec<String> = block_lists
        .iter()
        .flat_map(|(list, n)| (0..*n).map(move |i| format!("{list}.{i}")))
        .collect();
    let inner: Box<dyn CacheMethod<B>> = match config {
        CacheConfig::FirstBlock(c) => Box::new(FirstBlockCache::new(c.clone(), blocks)?),
        CacheConfig::TaylorSeer(c) => Box::new(TaylorSeerCache::new(c.clone())?),
        CacheConfig::Mag(c) => Box::new(MagCache::new(c.clone(), blocks)?),
        CacheConfig::PyramidAttentionBroadcast(c) => {
            Box::new(PyramidAttentionBroadcast::new(c.clone()))
        }
        CacheConfig::FasterCache(c) => Box::new(FasterCache::new(c.clone())),
        CacheConfig::Sea(c) => Box::new(SeaCache::new(c.clone(), blocks)?),
    };
    let hook = StepCache {
        method: config.method(),
        inner,
        record: Mutex::new(Record::default()),
    };
    registry
        .register_hook(Arc::new(hook))
        .map_err(|_| CacheError::AlreadyEnabled("another cache"))?;
    tracing::debug!("enabled step cache {}", config.method());
    Ok(())
}

/// Removes the model's step cache (and the state it held); returns whether one was enabled.
/// diffusers' `disable_cache` only warns when no cache is enabled.
pub fn disable_cache<B: Backend>(registry: &HookRegistry<B>) -> bool {
    let removed = registry.remove_hook(CACHE_HOOK).is_some();
    if !removed {
        tracing::warn!("disable_cache: no cache is enabled");
    }
    removed
}

/// What the model's step cache did since its hooks were last reset; `None` without a cache.
pub fn cache_report<B: Backend>(registry: &HookRegistry<B>) -> Option<CacheReport> {
    let hook = registry.get_hook(CACHE_HOOK)?;
    hook.as_any()
        .downcast_ref::<StepCache<B>>()
        .map(StepCache::report)
}

/// Gives the model's step cache the raw latents of the next model call (`[batch, C, T, H, W]`),
/// which SeaCache filters into its indicator; other caches ignore them. WanPipeline calls it
/// before each transformer call, as diffusers' SeaCache root hook reads the transformer's
/// `hidden_states`.
pub fn set_model_input<B: Backend>(registry: &HookRegistry<B>, latents: &Tensor<B, 5>) {
    if let Some(hook) = registry.get_hook(CACHE_HOOK)
        && let Some(cache) = hook.as_any().downcast_ref::<StepCache<B>>()
    {
        cache.inner.set_model_input(latents.clone());
    }
}

/// The mean of `|t|`, as diffusers' `t.abs().mean()` (computed in f32).
pub(crate) fn abs_mean<B: Backend>(t: Tensor<B, 3>) -> f32 {
    t.cast(burn::tensor::DType::F32)
        .abs()
        .mean()
        .into_data()
        .to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}

/// Per-context state, created lazily (diffusers' `StateManager`).
#[derive(Debug)]
pub(crate) struct PerContext<S>(Mutex<BTreeMap<String, S>>);

impl<S> Default for PerContext<S> {
    fn default() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
}

impl<S: Default> PerContext<S> {
    /// Runs `f` on the state of `context` (no lock may be held while a block runs: callers
    /// copy what they need out).
    pub(crate) fn with<R>(&self, context: &str, f: impl FnOnce(&mut S) -> R) -> R {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(context.to_string()).or_default())
    }

    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
