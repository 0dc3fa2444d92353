//! Adapters by name on any model's layers: diffusers' `loaders/peft.py` (`load_lora_adapter`,
//! `set_adapters`, `enable_lora`/`disable_lora`, `delete_adapters`, `fuse_lora`/`unfuse_lora`),
//! with the state PEFT keeps inside its `LoraLayer`s held here, one [`ComponentAdapters`] per
//! model component.
//!
//! Layers are found by the names diffusers gives them (`transformer_blocks.0.attn.to_q`): a
//! model is walked with the checkpoint key map its loader uses
//! ([`diffusers_core::weights::map_layer_weights`]), so no model code knows about adapters.
//! Unfused, the active adapters' updates sit in each layer's [`LoraSlot`](diffusers_nn::lora)
//! and cost their own FLOPs per call; fused, they are folded into the weights, and unfusing
//! re-reads the touched weights from the model's files, so the originals come back bit-equal
//! without a copy held in memory.
//!
//! ```
//! use burn::prelude::*;
//! use diffusers_adapters::peft::{Adapter, ComponentAdapters, LoraPair, LayerHost};
//! use diffusers_core::backend::Cpu;
//! use diffusers_nn::linear::{Linear, LinearConfig};
//!
//! #[derive(Module, Debug)]
//! struct Block<B: Backend> {
//!     to_q: Linear<B>,
//! }
//!
//! let device = Default::default();
//! let mut block = Block::<Cpu> { to_q: LinearConfig::new(4, 3).init(&device) };
//! let pair = LoraPair {
//!     down: Tensor::ones([2, 4], &device),
//!     up: Tensor::ones([3, 2], &device),
//!     scaling: 0.5,
//! };
//! let mut adapters = ComponentAdapters::new("transformer");
//! adapters.load(Adapter { name: "a".into(), layers: [("to_q".to_string(), pair)].into() })?;
//! let report = adapters.apply(&mut block, None)?;
//! assert_eq!(report.touched["a"], 1);
//! assert_eq!(block.to_q.lora.deltas.len(), 1);
//! # Ok::<(), diffusers_adapters::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::weights::{LayerWeights, Weights, map_layer_weights};
use diffusers_nn::lora::{LoraDelta, clear_stash, stash};

use crate::{Error, Result};

/// A model whose `Linear`/`Conv2d` weights can be walked by checkpoint key (every burn module
/// is one): the type-erased handle pipelines give [`ComponentAdapters`] for each component.
pub trait LayerHost<B: Backend> {
    /// Runs `visitor` over the layer weights (see [`map_layer_weights`]), with `key_map`
    /// turning module paths into checkpoint keys.
    fn map_layers(
        &mut self,
        key_map: Option<&dyn Fn(&str) -> String>,
        visitor: &mut dyn LayerWeights<B>,
    );
}

impl<B: Backend, M: Module<B>> LayerHost<B> for M {
    fn map_layers(
        &mut self,
        key_map: Option<&dyn Fn(&str) -> String>,
        visitor: &mut dyn LayerWeights<B>,
    ) {
        *self = map_layer_weights(self.clone(), "", key_map, visitor);
    }
}

/// What [`ComponentAdapters::apply`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Layers of the model each loaded adapter has an update for.
    pub touched: BTreeMap<String, usize>,
    /// Adapter layers (diffusers' names) that match no layer of the model.
    pub unmatched: Vec<String>,
}

/// One adapter's low-rank pair on one layer.
#[derive(Clone, Debug)]
pub struct LoraPair<B: Backend> {
    /// `lora_A`: `[rank, in]` (a convolution's kernel flattened to `[rank, in * kh * kw]`).
    pub down: Tensor<B, 2>,
    /// `lora_B`: `[out, rank]`.
    pub up: Tensor<B, 2>,
    /// PEFT's scaling at adapter weight 1 (`lora_alpha / r`).
    pub scaling: f64,
}

/// One named adapter on one component: its pairs by layer, named as diffusers names the
/// layers inside the component (`transformer_blocks.0.attn.to_q`).
#[derive(Clone, Debug)]
pub struct Adapter<B: Backend> {
    /// The adapter's name.
    pub name: String,
    /// Its pairs by layer name.
    pub layers: BTreeMap<String, LoraPair<B>>,
}

/// The adapters of one model component and which of them are active, with which weights.
#[derive(Clone, Debug)]
pub struct ComponentAdapters<B: Backend> {
    component: String,
    adapters: Vec<Adapter<B>>,
    active: Vec<(String, f64)>,
    enabled: bool,
    /// Module paths of the layers whose weights hold fused updates.
    fused: BTreeSet<String>,
}

impl<B: Backend> ComponentAdapters<B> {
    /// No adapters, on the component named `component` (for messages).
    pub fn new(component: &str) -> Self {
        ComponentAdapters {
            component: component.to_string(),
            adapters: Vec::new(),
            active: Vec::new(),
            enabled: true,
            fused: BTreeSet::new(),
        }
    }

    /// The loaded adapters' names, in load order.
    pub fn names(&self) -> Vec<&str> {
        self.adapters.iter().map(|a| a.name.as_str()).collect()
    }

    /// Whether an adapter of this name is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.adapters.iter().any(|a| a.name == name)
    }

    /// The active adapters and their weights.
    pub fn active(&self) -> &[(String, f64)] {
        &self.active
    }

    /// Whether some layer holds fused updates.
    pub fn is_fused(&self) -> bool {
        !self.fused.is_empty()
    }

    /// Adds an adapter, which becomes the only active one at weight 1 (as PEFT activates a
    /// newly injected adapter). Call [`apply`](Self::apply) to attach it. An error if the name
    /// is taken or while updates are fused.
    pub fn load(&mut self, adapter: Adapter<B>) -> Result<()> {
        if self.contains(&adapter.name) {
            return Err(Error::Invalid(format!(
                "{}: an adapter named `{}` is already loaded",
                self.component, adapter.name
            )));
        }
        self.refuse_fused("load an adapter")?;
        self.active = vec![(adapter.name.clone(), 1.0)];
        self.adapters.push(adapter);
        Ok(())
    }

    /// diffusers' `set_adapters`: these adapters active with these weights (names this
    /// component lacks are an error; the pipeline passes each component its own).
    pub fn set_adapters(&mut self, adapters: &[(String, f64)]) -> Result<()> {
        if let Some((name, _)) = adapters.iter().find(|(n, _)| !self.contains(n)) {
            return Err(Error::Invalid(format!(
                "{}: no adapter named `{name}` (loaded: {})",
                self.component,
                self.names().join(", ")
            )));
        }
        self.refuse_fused("change the active adapters")?;
        self.active = adapters.to_vec();
        Ok(())
    }

    /// diffusers' `enable_lora`/`disable_lora`: a disabled component computes without its
    /// adapters (they stay loaded).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// diffusers' `delete_adapters`: drops the adapter (and deactivates it).
    pub fn delete(&mut self, name: &str) -> Result<()> {
        if !self.contains(name) {
            return Err(Error::Invalid(format!(
                "{}: no adapter named `{name}`",
                self.component
            )));
        }
        self.refuse_fused("delete an adapter")?;
        self.adapters.retain(|a| a.name != name);
        self.active.retain(|(n, _)| n != name);
        Ok(())
    }

    fn refuse_fused(&self, what: &str) -> Result<()> {
        if self.is_fused() {
            return Err(Error::Invalid(format!(
                "{}: cannot {what} while adapters are fused (unfuse_lora first)",
                self.component
            )));
        }
        Ok(())
    }

    /// The updates each layer gets: the active adapters' pairs times their weights, in the
    /// order of `active`; none when disabled.
    fn deltas(&self) -> BTreeMap<&str, Vec<LoraDelta<B>>> {
        let mut out: BTreeMap<&str, Vec<LoraDelta<B>>> = BTreeMap::new();
        if !self.enabled {
            return out;
        }
        for (name, weight) in &self.active {
            let Some(adapter) = self.adapters.iter().find(|a| &a.name == name) else {
                continue;
            };
            for (layer, pair) in &adapter.layers {
                out.entry(layer.as_str()).or_default().push(LoraDelta {
                    adapter: name.clone(),
                    down: pair.down.clone(),
                    up: pair.up.clone(),
                    scale: pair.scaling * weight,
                });
            }
        }
        out
    }

    /// Attaches the active adapters' updates to `model`'s layers (and clears every other
    /// layer's), finding layers by their checkpoint names (`key_map`, the model crate's
    /// `checkpoint_key`). Reports how many layers each loaded adapter has and which adapter
    /// layers match no layer of the model (the caller decides whether that is an error, see
    /// [`prune`](Self::prune)). A pair whose shapes do not fit its layer is an error, and the
    /// model is then left without updates.
    pub fn apply(
        &self,
        model: &mut dyn LayerHost<B>,
        key_map: Option<&dyn Fn(&str) -> String>,
    ) -> Result<ApplyReport> {
        let deltas = if self.is_fused() {
            BTreeMap::new()
        } else {
            self.deltas()
        };
        let mut visitor = Attach {
            deltas: &deltas,
            adapters: &self.adapters,
            seen: BTreeSet::new(),
            bad_shapes: Vec::new(),
        };
        model.map_layers(key_map, &mut visitor);
        clear_stash();
        let Attach {
            seen, bad_shapes, ..
        } = visitor;
        if let Some(reason) = bad_shapes.into_iter().next() {
            let mut clear = Attach {
                deltas: &BTreeMap::new(),
                adapters: &[],
                seen: BTreeSet::new(),
                bad_shapes: Vec::new(),
            };
            model.map_layers(key_map, &mut clear);
            clear_stash();
            return Err(Error::Invalid(format!("{}: {reason}", self.component)));
        }
        let unmatched: Vec<String> = self
            .adapters
            .iter()
            .flat_map(|a| a.layers.keys())
            .filter(|k| !seen.contains(k.as_str()))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(ApplyReport {
            touched: self
                .adapters
                .iter()
                .map(|a| {
                    let n = a
                        .layers
                        .keys()
                        .filter(|k| seen.contains(k.as_str()))
                        .count();
                    (a.name.clone(), n)
                })
                .collect(),
            unmatched,
        })
    }

    /// Drops these layers from the adapter `name` (the layers [`apply`](Self::apply) found no
    /// match for, when a partial load is accepted).
    pub fn prune(&mut self, name: &str, layers: &[String]) {
        if let Some(a) = self.adapters.iter_mut().find(|a| a.name == name) {
            for l in layers {
                a.layers.remove(l);
            }
        }
    }

    /// diffusers' `fuse_lora(lora_scale)`: folds the active adapters' updates, times
    /// `lora_scale`, into the weights (`W += scale * up @ down` per adapter, in the weight's
    /// dtype as PEFT's merge), leaving no per-call cost. Quantized layers cannot take them: an
    /// error (`quantized` names the component as quantized). The pipeline then re-applies
    /// ([`apply`](Self::apply)), which attaches nothing while fused.
    pub fn fuse(
        &mut self,
        model: &mut dyn LayerHost<B>,
        key_map: Option<&dyn Fn(&str) -> String>,
        lora_scale: f64,
        quantized: bool,
    ) -> Result<usize> {
        if self.is_fused() {
            return Err(Error::Invalid(format!(
                "{}: adapters are already fused",
                self.component
            )));
        }
        let deltas = self.deltas();
        if deltas.is_empty() {
            return Ok(0);
        }
        if quantized {
            return Err(Error::Invalid(format!(
                "{}: cannot fuse adapters into quantized weights (use them unfused)",
                self.component
            )));
        }
        let mut visitor = Fuse {
            deltas: &deltas,
            lora_scale,
            fused: BTreeSet::new(),
        };
        model.map_layers(key_map, &mut visitor);
        self.fused = visitor.fused;
        Ok(self.fused.len())
    }

    /// diffusers' `unfuse_lora`: the fused layers' weights read again from `weights` (the
    /// component's own files, with `file_key_map` the key map its loader used and `dtype` the
    /// dtype it loaded in), so they are the originals bit for bit. Re-attach the updates with
    /// [`apply`](Self::apply) afterwards.
    pub fn unfuse(
        &mut self,
        model: &mut dyn LayerHost<B>,
        weights: &Weights,
        file_key_map: Option<&dyn Fn(&str) -> String>,
        dtype: Option<DType>,
    ) -> Result<usize> {
        if !self.is_fused() {
            return Ok(0);
        }
        let mut visitor = Restore {
            fused: &self.fused,
            weights,
            dtype,
            error: None,
            restored: 0,
        };
        model.map_layers(file_key_map, &mut visitor);
        if let Some(e) = visitor.error {
            return Err(e);
        }
        let restored = visitor.restored;
        self.fused.clear();
        Ok(restored)
    }
}

/// The layer name of a weight's checkpoint key (`…to_q.weight` -> `…to_q`).
fn layer_name(key: &str) -> &str {
    key.strip_suffix(".weight").unwrap_or(key)
}

/// Stashes each layer's updates for its slot (an empty list clears it) and checks shapes.
struct Attach<'a, B: Backend> {
    deltas: &'a BTreeMap<&'a str, Vec<LoraDelta<B>>>,
    adapters: &'a [Adapter<B>],
    seen: BTreeSet<String>,
    bad_shapes: Vec<String>,
}

impl<B: Backend> LayerWeights<B> for Attach<'_, B> {
    fn select(&mut self, _path: &str, key: &str, layer: &str, shape: &[usize]) -> bool {
        let name = layer_name(key);
        let out = shape[0];
        let inp: usize = shape[1..].iter().product();
        for adapter in self.adapters {
            if let Some(pair) = adapter.layers.get(name) {
                self.seen.insert(name.to_string());
                let ([r_down, i], [o, r_up]) = (pair.down.dims(), pair.up.dims());
                if r_down != r_up || i != inp || o != out {
                    self.bad_shapes.push(format!(
                        "adapter `{}` on `{name}` ({layer} {shape:?}): lora_A {:?} and lora_B {:?} do not fit",
                        adapter.name,
                        [r_down, i],
                        [o, r_up]
                    ));
                }
            }
        }
        let deltas = if self.bad_shapes.is_empty() {
            self.deltas.get(name).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        stash(deltas);
        false
    }

    fn update(&mut self, _key: &str, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        weight
    }
}

/// Adds each selected layer's updates to its weight and clears its slot.
struct Fuse<'a, B: Backend> {
    deltas: &'a BTreeMap<&'a str, Vec<LoraDelta<B>>>,
    lora_scale: f64,
    fused: BTreeSet<String>,
}

impl<B: Backend> LayerWeights<B> for Fuse<'_, B> {
    fn select(&mut self, path: &str, key: &str, _layer: &str, _shape: &[usize]) -> bool {
        stash::<B>(Vec::new());
        if self.deltas.contains_key(layer_name(key)) {
            self.fused.insert(path.to_string());
            return true;
        }
        false
    }

    fn update(&mut self, key: &str, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = weight.dtype();
        let deltas = self
            .deltas
            .get(layer_name(key))
            .cloned()
            .unwrap_or_default();
        // PEFT merges adapter by adapter: `W += delta` in the weight's dtype, the delta
        // `up @ down * scaling` computed in f32.
        deltas.into_iter().fold(weight, |w, d| {
            let delta = LoraDelta {
                scale: d.scale * self.lora_scale,
                ..d
            }
            .delta_weight();
            w + delta.cast(dtype)
        })
    }
}

/// Reads the fused layers' weights again from the component's files.
struct Restore<'a> {
    fused: &'a BTreeSet<String>,
    weights: &'a Weights,
    dtype: Option<DType>,
    error: Option<Error>,
    restored: usize,
}

impl<B: Backend> LayerWeights<B> for Restore<'_> {
    fn select(&mut self, path: &str, _key: &str, _layer: &str, _shape: &[usize]) -> bool {
        self.error.is_none() && self.fused.contains(path)
    }

    fn update(&mut self, key: &str, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.weights.read(key) {
            Ok(data) => {
                // As the loader made it: the stored values converted to the load dtype.
                let dtype = self.dtype.unwrap_or(data.dtype);
                let device = weight.device();
                let t = match data.shape.len() {
                    2 => Tensor::<B, 2>::from_data(data, (&device, dtype)),
                    4 => Tensor::<B, 4>::from_data(data, (&device, dtype)).reshape(weight.dims()),
                    n => {
                        self.error = Some(Error::Invalid(format!(
                            "`{key}` has {n} dimensions in its file, not a layer weight"
                        )));
                        return weight;
                    }
                };
                self.restored += 1;
                t
            }
            Err(e) => {
                self.error = Some(e.into());
                weight
            }
        }
    }
}
