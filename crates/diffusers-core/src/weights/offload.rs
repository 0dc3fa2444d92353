//! Releasing a loaded module's parameters and loading them again from their weight files, the
//! mechanism under diffusers' CPU offloading (`enable_model_cpu_offload`,
//! `enable_sequential_cpu_offload`, `enable_group_offload`).
//!
//! While [`record_param_sources`] runs a model's load, [`load_into`](super::load_into) notes,
//! for every parameter it reads from a file, where it came from (file, key, dtype). [`release`]
//! then replaces each such parameter by a lazy one that reads its tensor again from that file
//! the first time it is used (burn's uninitialised [`Param`]), and drops the loaded tensor: the
//! host copy of an offloaded component is the memory map of its weight files, as the issue of
//! no extra copy asks. Parameters with no file behind them (in-memory checkpoints, LoRA-fused
//! weights, quantized layers' packed forms) stay as they are.
//!
//! A lazy parameter's read cannot return an error (burn's initialiser is infallible): a failure
//! is kept in the [`ParamSources`] (checked by [`ParamSources::take_error`]) and the parameter
//! is filled with NaN, so a pipeline that checks after each stage reports it instead of
//! producing an image.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::Backend;
use burn::tensor::{DType, Tensor};

use super::SafetensorsFile;
use crate::{Error, Result};

/// Where one parameter was read from.
#[derive(Debug, Clone)]
struct Source {
    file: PathBuf,
    key: String,
    /// The dtype the loader converted to (`None`: the stored one).
    dtype: Option<DType>,
}

thread_local! {
    static RECORDER: RefCell<Option<(ParamSources, bool)>> = const { RefCell::new(None) };
}

/// Called by the loader for every parameter it reads from the safetensors `file` (pickles and
/// in-memory checkpoints are not reopened: their parameters stay loaded). Returns the lazy
/// parameter to use instead of reading it now when the recording defers loading.
pub(crate) fn record<B: Backend, const D: usize>(
    id: ParamId,
    file: &std::path::Path,
    key: &str,
    dtype: Option<DType>,
    shape: burn::tensor::Shape,
    device: &B::Device,
) -> Option<Param<Tensor<B, D>>> {
    RECORDER.with(|r| {
        let r = r.borrow();
        let (sources, defer) = r.as_ref()?;
        sources
            .inner
            .sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Source {
                    file: file.to_path_buf(),
                    key: key.to_string(),
                    dtype,
                },
            );
        defer.then(|| lazy_param(sources.clone(), id, shape, device.clone()))
    })
}

fn lazy_param<B: Backend, const D: usize>(
    sources: ParamSources,
    id: ParamId,
    shape: burn::tensor::Shape,
    device: B::Device,
) -> Param<Tensor<B, D>> {
    let dims = shape.to_vec();
    Param::uninitialized(
        id,
        move |device: &B::Device, _| sources.read::<B, D>(id, &dims, device),
        device,
        false,
        shape,
    )
}

/// Runs `f` (a model's or a pipeline's loads) noting where every parameter loaded from a
/// safetensors file came from. With `defer`, those parameters are not read at all: they come
/// back lazy, each read from its file the first time it is used (a pipeline loaded for
/// offloading holds no component in memory until its turn).
pub fn record_param_sources<R>(defer: bool, f: impl FnOnce() -> R) -> (R, ParamSources) {
    struct Restore(Option<(ParamSources, bool)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            RECORDER.with(|r| *r.borrow_mut() = prev);
        }
    }
    let sources = ParamSources::default();
    let prev = RECORDER.with(|r| r.borrow_mut().replace((sources.clone(), defer)));
    let restore = Restore(prev);
    let out = f();
    drop(restore);
    (out, sources)
}

#[derive(Debug)]
struct Inner {
    sources: RwLock<HashMap<ParamId, Source>>,
    files: Mutex<HashMap<PathBuf, Arc<SafetensorsFile>>>,
    error: Mutex<Option<Error>>,
}

/// The weight files behind one component's parameters (from [`record_param_sources`]),
/// shared by its lazy parameters.
#[derive(Debug, Clone)]
pub struct ParamSources {
    inner: Arc<Inner>,
}

impl Default for ParamSources {
    /// No parameter has a file behind it.
    fn default() -> Self {
        ParamSources {
            inner: Arc::new(Inner {
                sources: RwLock::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                error: Mutex::new(None),
            }),
        }
    }
}

impl ParamSources {
    fn sources(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ParamId, Source>> {
        self.inner.sources.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Parameters with a file behind them.
    pub fn len(&self) -> usize {
        self.sources().len()
    }

    /// Whether no parameter has a file behind it (nothing can be released).
    pub fn is_empty(&self) -> bool {
        self.sources().is_empty()
    }

    /// Opens every weight file (memory maps) so that the reads of lazy parameters do not fail;
    /// call before a stage runs. Files already open stay open.
    pub fn open(&self) -> Result<()> {
        let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        for s in self.sources().values() {
            if !files.contains_key(&s.file) {
                let f = SafetensorsFile::open(&s.file)?;
                files.insert(s.file.clone(), Arc::new(f));
            }
        }
        Ok(())
    }

    /// Unmaps the weight files (after a stage: their pages leave this process's memory).
    pub fn close(&self) {
        self.inner
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The first read that failed since the last call, if any.
    pub fn take_error(&self) -> Result<()> {
        match self
            .inner
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read<B: Backend, const D: usize>(
        &self,
        id: ParamId,
        shape: &[usize],
        device: &B::Device,
    ) -> Tensor<B, D> {
        let fail = |e: Error| {
            let mut slot = self.inner.error.lock().unwrap_or_else(|e| e.into_inner());
            tracing::error!("reloading an offloaded weight failed: {e}");
            slot.get_or_insert(e);
            Tensor::<B, D>::full(shape.to_vec(), f32::NAN, device)
        };
        let Some(s) = self.sources().get(&id).cloned() else {
            return fail(Error::MissingKeys {
                path: PathBuf::new(),
                keys: vec![format!("parameter {id}")],
            });
        };
        let file = {
            let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
            match files.get(&s.file) {
                Some(f) => f.clone(),
                None => match SafetensorsFile::open(&s.file) {
                    Ok(f) => {
                        let f = Arc::new(f);
                        files.insert(s.file.clone(), f.clone());
                        f
                    }
                    Err(e) => return fail(e),
                },
            }
        };
        match file.read_unmapped(&s.key) {
            Ok(data) if data.shape.as_slice() == shape => {
                let dtype = s.dtype.unwrap_or(data.dtype);
                Tensor::from_data(data, (device, dtype))
            }
            Ok(data) => fail(Error::ShapeMismatch {
                path: s.file.clone(),
                key: s.key.clone(),
                expected: shape.to_vec(),
                found: data.shape.to_vec(),
            }),
            Err(e) => fail(e),
        }
    }
}

struct Releaser<'a> {
    sources: &'a ParamSources,
    released: usize,
}

impl<B: Backend> ModuleMapper<B> for Releaser<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !param.is_initialized() || !self.sources.sources().contains_key(&param.id) {
            return param;
        }
        self.released += 1;
        // Dropping `param` frees its tensor (unless a clone of the module still holds it).
        lazy_param(
            self.sources.clone(),
            param.id,
            param.lazy_shape(),
            param.lazy_device(),
        )
    }
}

/// Replaces every loaded parameter of `module` that `sources` knows by a lazy one that reads it
/// again from its file when first used, freeing the loaded tensors; returns the module and the
/// number of parameters released.
pub fn release<B: Backend, M: Module<B>>(module: M, sources: &ParamSources) -> (M, usize) {
    let mut r = Releaser {
        sources,
        released: 0,
    };
    let module = module.map(&mut r);
    (module, r.released)
}

struct Materializer;

impl<B: Backend> ModuleVisitor<B> for Materializer {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_initialized() {
            let _ = param.val();
        }
    }
}

/// Loads every lazy parameter of `module` now (a component moved to its device before its turn,
/// as diffusers' model offload does, rather than one layer at a time as it runs).
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Materializer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::weights::{LoadOptions, Weights, load_into};
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::tensor::TensorData;
    use std::collections::BTreeMap;

    fn write_linear(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("w.safetensors");
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let b = [0.25f32, -1.0];
        let mut bytes = Vec::new();
        let header = r#"{"weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},"bias":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}}"#.to_string();
        let mut header = header.into_bytes();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header);
        for v in w.iter().chain(b.iter()) {
            bytes.extend(v.to_le_bytes());
        }
        std::fs::write(&path, bytes).expect("test");
        path
    }

    #[test]
    fn released_parameters_reload_equal_from_their_file() {
        let dir = tempfile::tempdir().expect("test");
        let path = write_linear(dir.path());
        let device = Default::default();
        let weights = Weights::open(&path).expect("test");
        let ((model, _), sources) = record_param_sources(false, || {
            load_into(
                LinearConfig::new(3, 2).init::<Cpu>(&device),
                &weights,
                LoadOptions::default(),
            )
            .expect("test")
        });
        assert_eq!(sources.len(), 2);
        let before = model.weight.val().into_data();
        let (released, n) = release(model, &sources);
        assert_eq!(n, 2);
        assert!(!released.weight.is_initialized());
        sources.open().expect("test");
        materialize(&released);
        assert!(released.weight.is_initialized());
        assert_eq!(released.weight.val().into_data(), before);
        sources.take_error().expect("test");
        // Released again, a clone loads its own copy and leaves the module lazy.
        let (released, _) = release(released, &sources);
        let live = released.clone();
        materialize(&live);
        assert!(!released.weight.is_initialized());
        assert!(live.bias.as_ref().expect("test").is_initialized());
    }

    #[test]
    fn deferred_loads_read_nothing_until_used() {
        let dir = tempfile::tempdir().expect("test");
        let path = write_linear(dir.path());
        let device = Default::default();
        let weights = Weights::open(&path).expect("test");
        let ((model, report), sources) = record_param_sources(true, || {
            load_into(
                LinearConfig::new(3, 2).init::<Cpu>(&device),
                &weights,
                LoadOptions {
                    dtype: Some(DType::F16),
                    ..Default::default()
                },
            )
            .expect("test")
        });
        assert_eq!((report.loaded, sources.len()), (2, 2));
        assert!(!model.weight.is_initialized());
        let w = model.weight.val();
        assert_eq!(w.dtype(), DType::F16);
        let v = w
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("test");
        assert_eq!(v, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    }

    #[test]
    fn in_memory_weights_are_not_released_and_read_errors_are_kept() {
        let device = Default::default();
        let mut t = BTreeMap::new();
        t.insert(
            "weight".to_string(),
            TensorData::new(vec![1.0f32; 6], [3, 2]),
        );
        t.insert("bias".to_string(), TensorData::new(vec![0.0f32; 2], [2]));
        let weights = Weights::from_tensors("mem", t);
        let ((model, _), sources) = record_param_sources(false, || {
            load_into(
                LinearConfig::new(3, 2).init::<Cpu>(&device),
                &weights,
                LoadOptions::default(),
            )
            .expect("test")
        });
        assert!(sources.is_empty());
        let (model, n) = release(model, &sources);
        assert_eq!(n, 0);
        assert!(model.weight.is_initialized());

        // A file that vanished: the read fails into NaN and the error is reported.
        let dir = tempfile::tempdir().expect("test");
        let path = write_linear(dir.path());
        let weights = Weights::open(&path).expect("test");
        let ((model, _), sources) = record_param_sources(false, || {
            load_into(
                LinearConfig::new(3, 2).init::<Cpu>(&device),
                &weights,
                LoadOptions::default(),
            )
            .expect("test")
        });
        drop(weights);
        let (model, _) = release(model, &sources);
        std::fs::remove_file(&path).expect("test");
        let w: Tensor<Cpu, 2> = model.weight.val();
        assert!(w.into_data().to_vec::<f32>().expect("test")[0].is_nan());
        assert!(sources.take_error().is_err());
        let _ = Module::<Cpu>::num_params(&model);
    }
}
