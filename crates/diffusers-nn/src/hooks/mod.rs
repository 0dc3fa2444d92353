//! Hooks on a model's blocks and modules (diffusers' `hooks/hooks.py`): the one place where
//! offloading (`group_offloading`) and the step caches attach to the transformers without
//! changing model code.
//!
//! A model holds a [`HookRegistry`] and runs its repeated blocks through
//! [`HookRegistry::run_blocks`], its attention modules and output projection through
//! [`module_call`]; each call point is named as diffusers names the module
//! (`transformer_blocks.0`, `single_transformer_blocks.3.attn`, `proj_out`). With nothing
//! registered these run the block or module as is. Registered [`ModelHook`]s see each call by
//! name and may run it, or return something else instead (a cache's reused or extrapolated
//! output); a [`BlockOffload`] policy decides where each block's weights live while it runs.
//!
//! ```
//! use burn::tensor::Tensor;
//! use diffusers_core::backend::Cpu;
//! use diffusers_nn::hooks::{BlockStates, HookRegistry};
//!
//! let device = Default::default();
//! let hooks = HookRegistry::<Cpu>::default();
//! let blocks = vec![2.0f32, 3.0]; // stand-ins for a model's blocks
//! let x = Tensor::<Cpu, 3>::ones([1, 2, 4], &device);
//! let out = hooks.run_blocks("blocks", &blocks, BlockStates::new(x, None), |k, s| {
//!     BlockStates::new(s.hidden_states * *k, None)
//! });
//! assert_eq!(out.hidden_states.into_data().to_vec::<f32>().unwrap()[0], 6.0);
//! ```

pub mod cache_utils;
pub mod faster_cache;
pub mod first_block_cache;
pub mod group_offloading;
pub mod mag_cache;
pub mod pyramid_attention_broadcast;
pub mod sea_cache;
pub mod taylorseer_cache;

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

pub use cache_utils::{
    CacheConfig, CacheError, CacheReport, CacheableModel, cache_report, disable_cache, enable_cache,
};
pub use group_offloading::BlockOffload;

/// The states a transformer block takes and returns: the image (or video) tokens and, for
/// blocks with a text stream (Flux, HunyuanVideo), the text tokens.
#[derive(Debug, Clone)]
pub struct BlockStates<B: Backend> {
    /// `hidden_states`.
    pub hidden_states: Tensor<B, 3>,
    /// `encoder_hidden_states`, when the block returns them.
    pub encoder_hidden_states: Option<Tensor<B, 3>>,
}

impl<B: Backend> BlockStates<B> {
    /// States of a block.
    pub fn new(hidden_states: Tensor<B, 3>, encoder_hidden_states: Option<Tensor<B, 3>>) -> Self {
        Self {
            hidden_states,
            encoder_hidden_states,
        }
    }
}

/// What a hook knows about the call it wraps.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// The module's name in the model, as diffusers names it (`transformer_blocks.0`).
    pub name: &'a str,
    /// The cache context of the current model call (`cond`, `uncond`; `default` when the
    /// caller set none), as diffusers' `cache_context`.
    pub context: &'a str,
    /// The denoising step of the current call and the number of steps, when the pipeline gave
    /// them (diffusers' `CacheContext.step_index` / `num_inference_steps`).
    pub step: Option<(usize, usize)>,
    /// The scheduler's timestep of the current call (0..1000), when the pipeline gave it
    /// (diffusers' `pipe.current_timestep`).
    pub timestep: Option<f64>,
    /// The current sigma, when the pipeline gave it.
    pub sigma: Option<f64>,
}

/// A hook on a model's blocks and modules (diffusers' `ModelHook` with `new_forward`).
///
/// Hooks keep their own state behind interior mutability: a model's forward takes `&self`, and
/// no lock may be held while `original` runs (a block's modules call hooks too).
pub trait ModelHook<B: Backend>: Send + Sync + fmt::Debug {
    /// The hook's name in the registry (one hook per name).
    fn name(&self) -> &str;

    /// Whether the hook wraps the block or module called `name`.
    fn hooks(&self, name: &str) -> bool;

    /// A block call: run `original` on `states` (or not) and return the block's output.
    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        let _ = info;
        original(states)
    }

    /// A module call (an attention module's outputs, in diffusers' order, or `proj_out`'s).
    fn module_forward(
        &self,
        info: &CallInfo<'_>,
        original: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
    ) -> Vec<Tensor<B, 3>> {
        let _ = info;
        original()
    }

    /// Called at the start of every model call, with its context (before any block).
    fn on_model_call(&self, info: &CallInfo<'_>) {
        let _ = info;
    }

    /// Forgets what the hook learnt (diffusers' `reset_state`; pipelines call it at the start
    /// of every run, so that each run starts fresh).
    fn reset_state(&self);

    /// The hook as `Any`, for reading its report.
    fn as_any(&self) -> &dyn Any;
}

/// The cache context and step information of the current model call.
#[derive(Debug, Clone, Default)]
struct CallState {
    context: Option<String>,
    step: Option<(usize, usize)>,
    timestep: Option<f64>,
    sigma: Option<f64>,
}

struct Inner<B: Backend> {
    hooks: RwLock<Vec<Arc<dyn ModelHook<B>>>>,
    offload: RwLock<Option<BlockOffload>>,
    call: Mutex<CallState>,
}

/// The hooks of one model (diffusers' `HookRegistry`). Clones share the same hooks.
#[derive(Clone)]
pub struct HookRegistry<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Default for HookRegistry<B> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                hooks: RwLock::new(Vec::new()),
                offload: RwLock::new(None),
                call: Mutex::new(CallState::default()),
            }),
        }
    }
}

impl<B: Backend> fmt::Debug for HookRegistry<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.hooks().iter().map(|h| h.name().to_string()).collect();
        f.debug_struct("HookRegistry")
            .field("hooks", &names)
            .field("offload", &self.offload())
            .finish()
    }
}

/// Why a hook cannot be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// A hook of this name is already registered (diffusers: "Hook with name X already exists").
    #[error("a hook named `{0}` is already registered on this model: remove it first")]
    Duplicate(String),
}

impl<B: Backend> HookRegistry<B> {
    fn hooks(&self) -> Vec<Arc<dyn ModelHook<B>>> {
        self.inner
            .hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Registers `hook` (after the ones already there: it wraps calls inside them).
    pub fn register_hook(&self, hook: Arc<dyn ModelHook<B>>) -> Result<(), HookError> {
        let mut hooks = self.inner.hooks.write().unwrap_or_else(|e| e.into_inner());
        if hooks.iter().any(|h| h.name() == hook.name()) {
            return Err(HookError::Duplicate(hook.name().to_string()));
        }
        hooks.push(hook);
        Ok(())
    }

    /// Removes the hook called `name`; returns it if it was there.
    pub fn remove_hook(&self, name: &str) -> Option<Arc<dyn ModelHook<B>>> {
        let mut hooks = self.inner.hooks.write().unwrap_or_else(|e| e.into_inner());
        let pos = hooks.iter().position(|h| h.name() == name)?;
        Some(hooks.remove(pos))
    }

    /// The hook called `name`.
    pub fn get_hook(&self, name: &str) -> Option<Arc<dyn ModelHook<B>>> {
        self.hooks().into_iter().find(|h| h.name() == name)
    }

    /// Whether no hook and no offload policy is registered (the model then runs as it is).
    pub fn is_empty(&self) -> bool {
        self.hooks().is_empty() && self.offload().is_none()
    }

    /// Forgets every hook's state (diffusers' `_reset_stateful_cache`).
    pub fn reset_stateful_hooks(&self) {
        for h in self.hooks() {
            h.reset_state();
        }
        *self.inner.call.lock().unwrap_or_else(|e| e.into_inner()) = CallState::default();
    }

    /// Sets the cache context of the next model calls (diffusers' `cache_context(name)`), with
    /// the step `(index, count)`, timestep and sigma where the pipeline knows them.
    pub fn set_context(
        &self,
        name: &str,
        step: Option<(usize, usize)>,
        timestep: Option<f64>,
        sigma: Option<f64>,
    ) {
        *self.inner.call.lock().unwrap_or_else(|e| e.into_inner()) = CallState {
            context: Some(name.to_string()),
            step,
            timestep,
            sigma,
        };
    }

    /// Where the blocks run through [`run_blocks`](Self::run_blocks) keep their weights.
    pub fn offload(&self) -> Option<BlockOffload> {
        *self.inner.offload.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or clears) the block offload policy.
    pub fn set_offload(&self, offload: Option<BlockOffload>) {
        *self
            .inner
            .offload
            .write()
            .unwrap_or_else(|e| e.into_inner()) = offload;
    }

    fn call_state(&self) -> CallState {
        self.inner
            .call
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks the start of one model call: hooks see it (with its context), and [`module_call`]s
    /// made until the guard drops find this registry. Models call it first in `forward`.
    pub fn enter_model_call(&self) -> ModelCallGuard {
        let hooks = self.hooks();
        if !hooks.is_empty() {
            let st = self.call_state();
            let info = info(&st, "");
            for h in &hooks {
                h.on_model_call(&info);
            }
        }
        push_scope(Scope {
            registry: self.inner.clone(),
            name: String::new(),
        })
    }

    /// Runs `blocks` (the model's list called `list`, e.g. `transformer_blocks`) in order on
    /// `states`, each as `forward(block, states)`, through the hooks that wrap `list.i` and
    /// the offload policy.
    pub fn run_blocks<M>(
        &self,
        list: &str,
        blocks: &[M],
        states: BlockStates<B>,
        forward: impl Fn(&M, BlockStates<B>) -> BlockStates<B> + Sync,
    ) -> BlockStates<B>
    where
        M: Module<B> + Sync,
    {
        let hooks = self.hooks();
        let offload = self.offload();
        if hooks.is_empty() && offload.is_none() {
            return blocks.iter().fold(states, |s, b| forward(b, s));
        }
        let st = self.call_state();
        let run = |i: usize, block: &M, s: BlockStates<B>| {
            let name = format!("{list}.{i}");
            let _scope = push_scope(Scope {
                registry: self.inner.clone(),
                name: name.clone(),
            });
            let wrapping: Vec<&Arc<dyn ModelHook<B>>> =
                hooks.iter().filter(|h| h.hooks(&name)).collect();
            let info = info(&st, &name);
            call_chain(&wrapping, &info, s, &mut |s| forward(block, s))
        };
        group_offloading::run(offload, blocks, states, run)
    }
}

fn info<'a>(st: &'a CallState, name: &'a str) -> CallInfo<'a> {
    CallInfo {
        name,
        context: st.context.as_deref().unwrap_or("default"),
        step: st.step,
        timestep: st.timestep,
        sigma: st.sigma,
    }
}

fn call_chain<B: Backend>(
    hooks: &[&Arc<dyn ModelHook<B>>],
    info: &CallInfo<'_>,
    states: BlockStates<B>,
    original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
) -> BlockStates<B> {
    match hooks.split_first() {
        None => original(states),
        Some((h, rest)) => h.block_forward(info, states, &mut |s| {
            call_chain(rest, info, s, &mut *original)
        }),
    }
}

fn module_chain<B: Backend>(
    hooks: &[&Arc<dyn ModelHook<B>>],
    info: &CallInfo<'_>,
    original: &mut dyn FnMut() -> Vec<Tensor<B, 3>>,
) -> Vec<Tensor<B, 3>> {
    match hooks.split_first() {
        None => original(),
        Some((h, rest)) => h.module_forward(info, &mut || module_chain(rest, info, &mut *original)),
    }
}

struct Scope {
    registry: Arc<dyn Any + Send + Sync>,
    name: String,
}

thread_local! {
    static SCOPES: RefCell<Vec<Scope>> = const { RefCell::new(Vec::new()) };
}

/// Ends a scope entered by [`HookRegistry::enter_model_call`] (or a block) when dropped.
#[must_use = "the scope ends when this is dropped"]
#[derive(Debug)]
pub struct ModelCallGuard {
    _p: (),
}

impl Drop for ModelCallGuard {
    fn drop(&mut self) {
        SCOPES.with(|s| {
            s.borrow_mut().pop();
        });
    }
}

fn push_scope(scope: Scope) -> ModelCallGuard {
    SCOPES.with(|s| s.borrow_mut().push(scope));
    ModelCallGuard { _p: () }
}

/// Calls the module `name` (relative to the current block, or to the model outside blocks:
/// `attn`, `proj_out`) through the hooks of the model whose call is running on this thread;
/// `forward` returns the module's outputs in diffusers' order. Without a hook on it, this is
/// `forward()`.
pub fn module_call<B: Backend>(
    name: &str,
    forward: impl FnOnce() -> Vec<Tensor<B, 3>>,
) -> Vec<Tensor<B, 3>> {
    let found = SCOPES.with(|s| {
        let s = s.borrow();
        let scope = s.last()?;
        let inner = scope.registry.clone().downcast::<Inner<B>>().ok()?;
        let full = if scope.name.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", scope.name)
        };
        Some((inner, full))
    });
    let Some((inner, full)) = found else {
        return forward();
    };
    let registry = HookRegistry { inner };
    let hooks = registry.hooks();
    let wrapping: Vec<&Arc<dyn ModelHook<B>>> = hooks.iter().filter(|h| h.hooks(&full)).collect();
    if wrapping.is_empty() {
        return forward();
    }
    let st = registry.call_state();
    let info = info(&st, &full);
    let mut forward = Some(forward);
    // Hooks run the original at most once; a second call gets no outputs.
    module_chain(&wrapping, &info, &mut || {
        forward.take().map_or_else(Vec::new, |f| f())
    })
}

// The registry is not a burn parameter: module visitors and mappers pass over it.
impl<B: Backend> Module<B> for HookRegistry<B> {
    type Record = EmptyRecord;

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
        self
    }

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }

    fn to_device(self, _device: &B::Device) -> Self {
        self
    }

    fn fork(self, _device: &B::Device) -> Self {
        self
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        devices
    }
}

impl<B: Backend> ModuleDisplayDefault for HookRegistry<B> {
    fn content(&self, content: Content) -> Option<Content> {
        let names: Vec<String> = self.hooks().iter().map(|h| h.name().to_string()).collect();
        content.add_single(&format!("{names:?}")).optional()
    }
}

impl<B: Backend> ModuleDisplay for HookRegistry<B> {}

impl<B: AutodiffBackend> AutodiffModule<B> for HookRegistry<B> {
    type InnerModule = HookRegistry<B::InnerBackend>;

    /// Hooks do not carry over to the inner backend (they hold its tensors' type).
    fn valid(&self) -> Self::InnerModule {
        HookRegistry::default()
    }

    fn from_inner(_module: Self::InnerModule) -> Self {
        HookRegistry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffusers_core::backend::Cpu;

    /// Skips every block but the first and counts module calls.
    #[derive(Debug, Default)]
    struct Skip {
        seen: Mutex<Vec<String>>,
    }

    impl ModelHook<Cpu> for Skip {
        fn name(&self) -> &str {
            "skip"
        }
        fn hooks(&self, name: &str) -> bool {
            (name.starts_with("blocks.") && !name.ends_with(".attn")) || name == "proj_out"
        }
        fn block_forward(
            &self,
            info: &CallInfo<'_>,
            states: BlockStates<Cpu>,
            original: &mut dyn FnMut(BlockStates<Cpu>) -> BlockStates<Cpu>,
        ) -> BlockStates<Cpu> {
            self.seen
                .lock()
                .expect("lock")
                .push(format!("{}@{}", info.name, info.context));
            if info.name == "blocks.0" {
                original(states)
            } else {
                states
            }
        }
        fn module_forward(
            &self,
            info: &CallInfo<'_>,
            original: &mut dyn FnMut() -> Vec<Tensor<Cpu, 3>>,
        ) -> Vec<Tensor<Cpu, 3>> {
            self.seen.lock().expect("lock").push(info.name.to_string());
            original().into_iter().map(|t| t * 10.0).collect()
        }
        fn reset_state(&self) {
            self.seen.lock().expect("lock").clear();
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[test]
    fn hooks_wrap_blocks_and_modules_by_name() {
        let device = Default::default();
        let hooks = HookRegistry::<Cpu>::default();
        let skip = Arc::new(Skip::default());
        hooks.register_hook(skip.clone()).expect("register");
        assert_eq!(
            hooks.register_hook(Arc::new(Skip::default())),
            Err(HookError::Duplicate("skip".into()))
        );
        hooks.set_context("uncond", None, None, None);
        let x = Tensor::<Cpu, 3>::ones([1, 1, 2], &device);
        let _call = hooks.enter_model_call();
        let blocks = [2.0f32, 3.0, 5.0];
        let out = hooks.run_blocks("blocks", &blocks, BlockStates::new(x, None), |k, s| {
            // A module inside a block: `blocks.i.attn` is not hooked.
            let y = module_call("attn", || vec![s.hidden_states.clone() * *k]);
            BlockStates::new(y[0].clone(), None)
        });
        let proj = module_call("proj_out", || vec![out.hidden_states.clone()]);
        let v = proj[0].clone().into_data().to_vec::<f32>().expect("f32");
        assert_eq!(v, vec![20.0, 20.0]);
        assert_eq!(
            *skip.seen.lock().expect("lock"),
            vec![
                "blocks.0@uncond",
                "blocks.1@uncond",
                "blocks.2@uncond",
                "proj_out"
            ]
        );
        hooks.reset_stateful_hooks();
        assert!(skip.seen.lock().expect("lock").is_empty());
        assert!(hooks.remove_hook("skip").is_some());
        assert!(hooks.is_empty());
    }

    #[test]
    fn module_calls_outside_a_model_call_run_as_is() {
        let device = Default::default();
        let x = Tensor::<Cpu, 3>::ones([1, 1, 2], &device);
        let y = module_call::<Cpu>("proj_out", || vec![x.clone() * 2.0]);
        assert_eq!(
            y[0].clone().into_data().to_vec::<f32>().expect("f32"),
            vec![2.0, 2.0]
        );
    }
}
