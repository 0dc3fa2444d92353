//! Copying checkpoint tensors into a burn module, one parameter at a time.
//!
//! This is the one place that walks burn modules for loading (burn-version-specific).

use std::collections::BTreeSet;

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

struct Loader<'a, B: Backend> {
    weights: &'a Weights,
    opts: LoadOptions<'a>,
    path: Vec<String>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    error: Option<Error>,
    loaded: usize,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> Loader<'_, B> {
    fn key(&self) -> String {
        let module_path = self.path.join(".");
        let mapped = match self.opts.key_map {
            Some(f) => f(&module_path),
            None => module_path,
        };
        format!("{}{}", self.opts.prefix, mapped)
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
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let shape = param.lazy_shape();
        let device = param.lazy_device();
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
