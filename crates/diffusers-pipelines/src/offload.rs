//! Offloading and memory statistics of pipelines: diffusers' `enable_model_cpu_offload`,
//! `enable_sequential_cpu_offload` and `enable_group_offload` (`pipelines/pipeline_utils.py`,
//! `hooks/group_offloading.py`).
//!
//! Every pipeline notes, while it loads, which weight file holds each parameter
//! (`diffusers_core::weights::offload`). With an [`OffloadMode`], a component's weights stay in
//! their files (memory-mapped; quantized layers keep their packed form in memory) until its
//! turn comes, and are released when its stage ends:
//!
//! - [`OffloadMode::Model`]: a component is loaded for its stage (text encoding, denoising,
//!   decoding; each layer as it is first used) and released after it;
//! - [`OffloadMode::Sequential`]: each layer loads as it is first used; the transformers' blocks
//!   are freed as soon as each block ends ([`diffusers_nn::hooks::BlockOffload::Sequential`]);
//! - [`OffloadMode::Group`]: the transformers' blocks load N at a time, the next group on
//!   another thread while the current one runs
//!   ([`diffusers_nn::hooks::BlockOffload::Group`]); the other components as `Model`.
//!
//! On the CPU backend the device is the host, so every mode means: load each component only
//! when its turn comes and free it after (the text encoders are gone before the denoiser
//! loads). A pipeline loaded with an offload mode ([`crate::PipelineOptions::offload`]) reads
//! no weights at load time at all. Images are bit-equal with and without offloading (the same
//! tensors are read from the same files).

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use burn::module::Module;
use burn::prelude::Backend;
use diffusers_core::memory::{self, DeviceMemory};
use diffusers_core::weights::offload::{ParamSources, release};
use diffusers_nn::hooks::{BlockOffload, HookRegistry};

use crate::{Error, Result};

/// Where a pipeline keeps its components' weights between their turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadMode {
    /// Whole components, loaded for their stage (`enable_model_cpu_offload`).
    Model,
    /// Layer by layer (`enable_sequential_cpu_offload`).
    Sequential,
    /// Groups of `blocks_per_group` transformer blocks (`enable_group_offload(...,
    /// offload_type="block_level", num_blocks_per_group=N, use_stream=True)`).
    Group {
        /// Blocks per group (at least 1).
        blocks_per_group: usize,
    },
}

impl OffloadMode {
    /// The policy the transformer's blocks run under.
    pub(crate) fn block_offload(self) -> Option<BlockOffload> {
        match self {
            OffloadMode::Model => None,
            OffloadMode::Sequential => Some(BlockOffload::Sequential),
            OffloadMode::Group { blocks_per_group } => Some(BlockOffload::Group {
                blocks_per_group,
                prefetch: true,
            }),
        }
    }
}

impl fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadMode::Model => f.write_str("model"),
            OffloadMode::Sequential => f.write_str("sequential"),
            OffloadMode::Group { blocks_per_group } => write!(f, "group:{blocks_per_group}"),
        }
    }
}

impl FromStr for OffloadMode {
    type Err = Error;

    /// `model`, `sequential`, `group` (one block per group) or `group:N`.
    ///
    /// ```
    /// use diffusers_pipelines::offload::OffloadMode;
    /// assert_eq!("group:2".parse::<OffloadMode>().unwrap(), OffloadMode::Group { blocks_per_group: 2 });
    /// assert!("group:0".parse::<OffloadMode>().is_err());
    /// assert!("disk".parse::<OffloadMode>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::Offload(reason);
        match s {
            "model" => Ok(OffloadMode::Model),
            "sequential" => Ok(OffloadMode::Sequential),
            "group" => Ok(OffloadMode::Group {
                blocks_per_group: 1,
            }),
            _ => match s.strip_prefix("group:") {
                Some(n) => match n.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(OffloadMode::Group {
                        blocks_per_group: n,
                    }),
                    _ => Err(bad(format!(
                        "`group:{n}`: the number of blocks per group must be a whole number of at least 1"
                    ))),
                },
                None => Err(bad(format!(
                    "unknown offload mode `{s}` (expected model, sequential, group or group:N)"
                ))),
            },
        }
    }
}

/// Memory used by one stage of the last run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMemory {
    /// `encode_prompt`, `encode_image`, `denoise` or `decode`.
    pub stage: &'static str,
    /// The most resident host memory of the process during the stage (Linux `VmHWM`, restarted
    /// at the stage's start), in bytes.
    pub peak_host_bytes: Option<u64>,
    /// The device allocator's usage at the stage's end (GPU backends).
    pub device: Option<DeviceMemory>,
}

/// A pipeline's offloading state and memory statistics.
#[derive(Debug, Default)]
pub(crate) struct PipelineMemory {
    mode: Option<OffloadMode>,
    sources: ParamSources,
    stages: Mutex<Vec<StageMemory>>,
}

impl PipelineMemory {
    pub(crate) fn new(sources: ParamSources, mode: Option<OffloadMode>) -> Self {
        Self {
            mode,
            sources,
            stages: Mutex::new(Vec::new()),
        }
    }

    /// Switches offloading on (or off), setting the transformer's block policy.
    pub(crate) fn set_mode<B: Backend>(
        &mut self,
        mode: Option<OffloadMode>,
        pipeline: &'static str,
        hooks: Option<&HookRegistry<B>>,
    ) -> Result<()> {
        if mode.is_some() && self.sources.is_empty() {
            return Err(Error::Offload(format!(
                "{pipeline}: no component has weights in safetensors files to offload to"
            )));
        }
        if let Some(h) = hooks {
            h.set_offload(mode.and_then(OffloadMode::block_offload));
        }
        self.mode = mode;
        Ok(())
    }

    /// Starts a stage: restarts the host peak.
    pub(crate) fn begin_stage(&self) {
        memory::reset_host_peak();
    }

    /// Ends a stage: records its memory.
    pub(crate) fn end_stage<B: Backend>(&self, stage: &'static str, device: &B::Device) {
        let m = StageMemory {
            stage,
            peak_host_bytes: memory::host_peak_since_reset_bytes(),
            device: memory::device_memory::<B>(device),
        };
        tracing::debug!(?m, "stage memory");
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m);
    }

    /// Forgets the last run's statistics (at the start of a run).
    pub(crate) fn start_run(&self) {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The statistics of the stages of the last run.
    pub(crate) fn stages(&self) -> Vec<StageMemory> {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Before a component's turn: its weight files are opened (its layers then load from them
    /// as they are first used).
    pub(crate) fn acquire(&self) -> Result<()> {
        if self.mode.is_some() {
            self.sources.open()?;
        }
        Ok(())
    }

    /// After a component's turn: its weights are released (back to their files).
    pub(crate) fn release<B: Backend, M: Module<B>>(
        &self,
        component: Option<&mut M>,
    ) -> Result<()> {
        let Some(m) = component else {
            return Ok(());
        };
        if self.mode.is_none() {
            return self.check();
        }
        let (released, _) = release(m.clone(), &self.sources);
        *m = released;
        self.sources.close();
        self.sources.take_error().map_err(Error::from)
    }

    /// Releases a component now (when offloading is switched on after loading).
    pub(crate) fn release_now<B: Backend, M: Module<B>>(&self, component: Option<&mut M>) {
        if let Some(m) = component {
            let (released, _) = release(m.clone(), &self.sources);
            *m = released;
        }
    }

    /// Runs one stage on `component`: loaded for it, released after it, its memory recorded.
    pub(crate) fn stage<B: Backend, M: Module<B>, R>(
        &self,
        stage: &'static str,
        device: &B::Device,
        component: &mut M,
        f: impl FnOnce(&M) -> Result<R>,
    ) -> Result<R> {
        self.begin_stage();
        self.acquire()?;
        let out = f(component);
        self.release(Some(component))?;
        self.end_stage::<B>(stage, device);
        out
    }

    /// A read failure during the stage (reported instead of an image made from NaN weights).
    pub(crate) fn check(&self) -> Result<()> {
        self.sources.take_error().map_err(Error::from)
    }
}

thread_local! {
    static DEFER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a pipeline's load) with deferred weight loading when `defer` (a pipeline loaded
/// for offloading reads no weights until each component's turn).
pub(crate) fn with_deferred_loading<R>(defer: bool, f: impl FnOnce() -> R) -> R {
    let prev = DEFER.with(|d| d.replace(defer));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEFER.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// Runs a pipeline constructor's loads, recording where its weights come from (and deferring
/// them when [`with_deferred_loading`] asks).
pub(crate) fn record_loading<R>(f: impl FnOnce() -> R) -> (R, ParamSources) {
    let defer = DEFER.with(|d| d.get());
    diffusers_core::weights::offload::record_param_sources(defer, f)
}
