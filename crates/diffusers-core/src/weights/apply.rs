//! Copying checkpoint tensors into a burn module, one parameter at a time.
//!
//! This is the one place that walks burn modules for loading (burn-version-specific).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::Backend;
use burn::tensor::{DType, Tensor};

use super::Weights;
use crate::{Error, Result};

/// How to load a checkpoint into a module.
#[derive(Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// The compute dtype: every float tensor is converted to it. `None` keeps the stored dtype.
    pub dtype: Option<DType>,
    /// Accept module parameters the checkpoint lacks (they keep their initial value).
    pub allow_missing: bool,
    /// Accept checkpoint tensors no parameter takes.
    pub allow_unexpected: bool,
    /// Prefix prepended to every module path (e.g. `text_model.` or a fixture case name).
    pub prefix: &'a str,
    /// Maps a module path (burn's field names) to the checkpoint key. Each crate keeps its
    /// checkpoint key names in one such function.
    pub key_map: Option<&'a dyn Fn(&str) -> String>,
}

/// What a load did, for callers that opted into missing or unexpected keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Module parameters with no checkpoint tensor.
    pub missing: Vec<String>,
    /// Checkpoint tensors (under the prefix) that no parameter took.
    pub unexpected: Vec<String>,
    /// Parameters loaded.
    pub loaded: usize,
}

/// What a [`LinearHook`] says about one `Linear` weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookDecision {
    /// Load the weight as usual (dense).
    Dense,
    /// The hook took the weight (and these checkpoint tensors): the parameter stays unloaded
    /// and never allocates.
    Taken(Vec<String>),
}

/// Called by [`load_into`] for every `Linear` weight (a float parameter `weight` of a
/// `diffusers_nn::linear::Linear`) before it is read, with its checkpoint key, the shape the
/// module expects, and the checkpoint. Quantization installs one (with
/// [`with_linear_hook`]) to pack each weight as it comes out of the file, so no dense copy of a
/// quantized component is ever held; the error string becomes [`Error::LinearHook`].
pub type LinearHook = Arc<
    dyn Fn(&str, &[usize], &Weights) -> std::result::Result<HookDecision, String> + Send + Sync,
>;

thread_local! {
    static LINEAR_HOOK: RefCell<Option<LinearHook>> = const { RefCell::new(None) };
}

/// Runs `f` with `hook` consulted by every [`load_into`] on this thread (model loaders need not
/// know about it: a pipeline wraps a component's load in this). The previous hook comes back
/// afterwards, also when `f` panics.
pub fn with_linear_hook<R>(hook: Option<LinearHook>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<LinearHook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            LINEAR_HOOK.with(|h| *h.borrow_mut() = prev);
        }
    }
    let prev = LINEAR_HOOK.with(|h| std::mem::replace(&mut *h.borrow_mut(), hook));
    let _restore = Restore(prev);
    f()
}

/// The checkpoint key of a module path: `prefix` + `key_map(path)` (the path itself without a
/// key map), as [`load_into`] and [`map_layer_weights`] both name parameters.
fn checkpoint_key(path: &str, prefix: &str, key_map: Option<&dyn Fn(&str) -> String>) -> String {
    match key_map {
        Some(f) => format!("{prefix}{}", f(path)),
        None => format!("{prefix}{path}"),
    }
}

struct Loader<'a, B: Backend> {
    weights: &'a Weights,
    opts: LoadOptions<'a>,
    path: Vec<String>,
    containers: Vec<String>,
    hook: Option<LinearHook>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    error: Option<Error>,
    loaded: usize,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> Loader<'_, B> {
    fn key(&self) -> String {
        checkpoint_key(&self.path.join("."), self.opts.prefix, self.opts.key_map)
    }

    fn load<const D: usize>(
        &mut self,
        expected: &[usize],
        device: &B::Device,
    ) -> Option<Tensor<B, D>> {
        if self.error.is_some() {
            return None;
        }
        let key = self.key();
        let Some(info) = self.weights.info(&key) else {
            self.missing.push(key);
            return None;
        };
        if info.shape != expected {
            self.error = Some(Error::ShapeMismatch {
                path: info.file.clone(),
                key,
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
            return None;
        }
        let data = match self.weights.read(&key) {
            Ok(d) => d,
            Err(e) => {
                self.error = Some(e);
                return None;
            }
        };
        let dtype = self.opts.dtype.unwrap_or(data.dtype);
        self.used.insert(key);
        self.loaded += 1;
        Some(Tensor::from_data(data, (device, dtype)))
    }
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let shape = param.lazy_shape();
        let device = param.lazy_device();
        let is_linear_weight = D == 2
            && self.path.last().is_some_and(|p| p == "weight")
            && self.containers.last().is_some_and(|c| c == "Struct:Linear");
        if let (true, Some(hook), None) = (is_linear_weight, self.hook.clone(), &self.error) {
            let key = self.key();
            match hook(&key, shape.as_slice(), self.weights) {
                Ok(HookDecision::Dense) => {}
                Ok(HookDecision::Taken(keys)) => {
                    self.used.extend(keys);
                    self.loaded += 1;
                    return param;
                }
                Err(message) => {
                    self.error = Some(Error::LinearHook {
                        path: self.weights.origin().to_path_buf(),
                        key,
                        message,
                    });
                    return param;
                }
            }
        }
        // Recorded for offloading (and, when loading is deferred, left lazy: read from the
        // file when first used).
        if self.error.is_none() {
            let key = self.key();
            let file = self
                .weights
                .safetensors_file_of(&key)
                .map(|f| f.to_path_buf());
            let fits = self
                .weights
                .info(&key)
                .is_some_and(|i| i.shape == shape.as_slice());
            if let (Some(file), true) = (file, fits) {
                let lazy = super::offload::record::<B, D>(
                    param.id,
                    &file,
                    &key,
                    self.opts.dtype,
                    shape.clone(),
                    &device,
                );
                if let Some(lazy) = lazy {
                    self.used.insert(key);
                    self.loaded += 1;
                    return lazy;
                }
            }
        }
        match self.load::<D>(&shape.to_vec(), &device) {
            // The parameter is replaced without ever materialising its initial value.
            Some(t) => Param::initialized(param.id, t),
            None => param,
        }
    }
}

/// Loads `weights` into `module`, checking every shape, and reporting missing and unexpected
/// keys by name (an error unless the options allow them).
///
/// Parameters that are not yet initialised are replaced without being materialised, so a
/// module built with `init` and loaded here allocates each weight once.
pub fn load_into<B: Backend, M: Module<B>>(
    module: M,
    weights: &Weights,
    opts: LoadOptions<'_>,
) -> Result<(M, LoadReport)> {
    let mut loader = Loader::<B> {
        weights,
        opts,
        path: Vec::new(),
        containers: Vec::new(),
        hook: LINEAR_HOOK.with(|h| h.borrow().clone()),
        used: BTreeSet::new(),
        missing: Vec::new(),
        error: None,
        loaded: 0,
        _b: std::marker::PhantomData,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    let unexpected: Vec<String> = weights
        .keys()
        .filter(|k| k.starts_with(opts.prefix) && !loader.used.contains(*k))
        .map(str::to_string)
        .collect();
    if !loader.missing.is_empty() && !opts.allow_missing {
        return Err(Error::MissingKeys {
            path: weights.origin().to_path_buf(),
            keys: loader.missing,
        });
    }
    if !unexpected.is_empty() && !opts.allow_unexpected {
        return Err(Error::UnexpectedKeys {
            path: weights.origin().to_path_buf(),
            keys: unexpected,
        });
    }
    for k in &loader.missing {
        tracing::warn!("{}: no tensor for `{k}`", weights.origin().display());
    }
    Ok((
        module,
        LoadReport {
            missing: loader.missing,
            unexpected,
            loaded: loader.loaded,
        },
    ))
}

struct ShapeCollector<'a> {
    path: Vec<String>,
    key_map: Option<&'a dyn Fn(&str) -> String>,
    out: std::collections::BTreeMap<String, Vec<usize>>,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for ShapeCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let p = self.path.join(".");
        let key = match self.key_map {
            Some(f) => f(&p),
            None => p,
        };
        self.out.insert(key, param.lazy_shape().to_vec());
    }
}

/// Every float parameter of a module by checkpoint key, with its shape, without materialising
/// any parameter (for comparing a model's layout with a real checkpoint's).
pub fn module_shapes<B: Backend, M: Module<B>>(
    module: &M,
    key_map: Option<&dyn Fn(&str) -> String>,
) -> std::collections::BTreeMap<String, Vec<usize>> {
    let mut c = ShapeCollector {
        path: Vec::new(),
        key_map,
        out: Default::default(),
    };
    module.visit(&mut c);
    c.out
}

/// What [`map_layer_weights`] does at each layer weight: the weight (`weight` parameter) of
/// every `diffusers_nn` `Linear` (2-D) and `Conv2d` (4-D), named by its checkpoint key (the
/// key the model's loader reads it from, prefix and key map applied). Adapters use it to attach
/// LoRA updates by diffusers' module names and to fold them into the weights.
pub trait LayerWeights<B: Backend> {
    /// Called at every layer weight, in module order, with its module path (burn's field
    /// names), its checkpoint key, the layer type (`"Linear"` or `"Conv2d"`) and the weight's
    /// shape, without materialising it. Return true to have [`update`](Self::update) replace
    /// its value.
    fn select(&mut self, path: &str, key: &str, layer: &str, shape: &[usize]) -> bool;

    /// The new value of a selected weight, given (and returned) as `[out, rest]` (a
    /// convolution's kernel flattened, as PyTorch lays it out).
    fn update(&mut self, key: &str, weight: Tensor<B, 2>) -> Tensor<B, 2>;
}

struct LayerMapper<'a, B: Backend, V: LayerWeights<B> + ?Sized> {
    prefix: &'a str,
    key_map: Option<&'a dyn Fn(&str) -> String>,
    path: Vec<String>,
    containers: Vec<String>,
    visitor: &'a mut V,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend, V: LayerWeights<B> + ?Sized> ModuleMapper<B> for LayerMapper<'_, B, V> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.path.last().is_none_or(|p| p != "weight") {
            return param;
        }
        let layer = match (D, self.containers.last().map(String::as_str)) {
            (2, Some("Struct:Linear")) => "Linear",
            (4, Some("Struct:Conv2d")) => "Conv2d",
            _ => return param,
        };
        let module_path = self.path.join(".");
        let key = checkpoint_key(&module_path, self.prefix, self.key_map);
        let shape = param.lazy_shape().to_vec();
        if !self.visitor.select(&module_path, &key, layer, &shape) {
            return param;
        }
        let value = param.val();
        let dims = value.dims();
        let rest = dims[1..].iter().product::<usize>();
        let updated = self.visitor.update(&key, value.reshape([dims[0], rest]));
        // A new id: the updated weight is no longer what its file holds, so offloading keeps it
        // rather than reloading the file's (see `offload::release`).
        Param::initialized(burn::module::ParamId::new(), updated.reshape(dims))
    }
}

/// Walks `module` calling `visitor` at every `Linear` and `Conv2d` weight with its checkpoint
/// key (`prefix` + `key_map(module path)`, as [`load_into`] computes it), replacing the weights
/// it selects; other parameters are left as they are (and unmaterialised).
pub fn map_layer_weights<B: Backend, M: Module<B>, V: LayerWeights<B> + ?Sized>(
    module: M,
    prefix: &str,
    key_map: Option<&dyn Fn(&str) -> String>,
    visitor: &mut V,
) -> M {
    let mut mapper = LayerMapper {
        prefix,
        key_map,
        path: Vec::new(),
        containers: Vec::new(),
        visitor,
        _b: std::marker::PhantomData,
    };
    module.map(&mut mapper)
}
