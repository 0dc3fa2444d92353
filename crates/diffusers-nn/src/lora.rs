//! The LoRA slot of [`Linear`](crate::linear::Linear) and [`Conv2d`](crate::conv::Conv2d): the
//! low-rank updates of the active adapters, added to the layer's output (PEFT's `LoraLayer`
//! forward, unfused: `y = base(x) + lora_B(lora_A(x)) * scaling` for each adapter).
//!
//! The slot is not a burn parameter (records and visitors pass over it). It is filled by a
//! module mapper pass (`diffusers_adapters::peft`), which walks a model with the checkpoint
//! names its loader uses and, at each layer's weight, [`stash`]es that layer's new deltas: the
//! slot comes after the weight among the layer's fields, so its `map` takes them.

use std::any::Any;
use std::cell::RefCell;

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// One adapter's low-rank update on a layer.
#[derive(Clone, Debug)]
pub struct LoraDelta<B: Backend> {
    /// The adapter's name.
    pub adapter: String,
    /// `lora_A` (`lora_down`): `[rank, in_features]`, a convolution's kernel flattened to
    /// `[rank, in_channels * kh * kw]`.
    pub down: Tensor<B, 2>,
    /// `lora_B` (`lora_up`): `[out_features, rank]`.
    pub up: Tensor<B, 2>,
    /// What multiplies the update: PEFT's scaling (`lora_alpha / r`) times the adapter weight.
    pub scale: f64,
}

impl<B: Backend> LoraDelta<B> {
    /// The dense update `scale * up @ down`, `[out, in]` (a convolution's kernel flattened), in
    /// f32.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        let up = self.up.clone().cast(burn::tensor::DType::F32);
        let down = self.down.clone().cast(burn::tensor::DType::F32);
        up.matmul(down).mul_scalar(self.scale)
    }
}

/// The deltas attached to one layer (empty unless an adapter is active on it).
#[derive(Clone, Debug)]
pub struct LoraSlot<B: Backend> {
    /// The active adapters' updates, in the order they are added.
    pub deltas: Vec<LoraDelta<B>>,
}

impl<B: Backend> Default for LoraSlot<B> {
    fn default() -> Self {
        LoraSlot { deltas: Vec::new() }
    }
}

impl<B: Backend> LoraSlot<B> {
    /// Whether no update is attached.
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// Bytes held by the attached updates.
    pub fn nbytes(&self) -> usize {
        self.deltas
            .iter()
            .map(|d| {
                let n = d.down.shape().num_elements() + d.up.shape().num_elements();
                n * d.down.dtype().size()
            })
            .sum()
    }
}

thread_local! {
    static STASH: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Gives the next [`LoraSlot`] that a module mapper maps on this thread these deltas (an empty
/// list clears it). Called by an adapter pass at a layer's weight, so that the same layer's
/// slot, mapped next, takes them.
pub fn stash<B: Backend>(deltas: Vec<LoraDelta<B>>) {
    STASH.with(|s| *s.borrow_mut() = Some(Box::new(deltas)));
}

/// Drops deltas stashed and not taken.
pub fn clear_stash() {
    STASH.with(|s| *s.borrow_mut() = None);
}

fn take_stashed<B: Backend>() -> Option<Vec<LoraDelta<B>>> {
    let any = STASH.with(|s| s.borrow_mut().take())?;
    any.downcast::<Vec<LoraDelta<B>>>().ok().map(|b| *b)
}

impl<B: Backend> Module<B> for LoraSlot<B> {
    type Record = EmptyRecord;

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper<B>>(mut self, _mapper: &mut M) -> Self {
        if let Some(deltas) = take_stashed::<B>() {
            self.deltas = deltas;
        }
        self
    }

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }

    fn to_device(self, device: &B::Device) -> Self {
        LoraSlot {
            deltas: self
                .deltas
                .into_iter()
                .map(|d| LoraDelta {
                    down: d.down.to_device(device),
                    up: d.up.to_device(device),
                    ..d
                })
                .collect(),
        }
    }

    fn fork(self, device: &B::Device) -> Self {
        self.to_device(device)
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        devices
    }
}

impl<B: Backend> ModuleDisplayDefault for LoraSlot<B> {
    fn content(&self, content: Content) -> Option<Content> {
        let names: Vec<&str> = self.deltas.iter().map(|d| d.adapter.as_str()).collect();
        content.add_single(&format!("{names:?}")).optional()
    }
}

impl<B: Backend> ModuleDisplay for LoraSlot<B> {}

impl<B: AutodiffBackend> AutodiffModule<B> for LoraSlot<B> {
    type InnerModule = LoraSlot<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        LoraSlot {
            deltas: self
                .deltas
                .iter()
                .map(|d| LoraDelta {
                    adapter: d.adapter.clone(),
                    down: d.down.clone().inner(),
                    up: d.up.clone().inner(),
                    scale: d.scale,
                })
                .collect(),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        LoraSlot {
            deltas: module
                .deltas
                .into_iter()
                .map(|d| LoraDelta {
                    adapter: d.adapter,
                    down: Tensor::from_inner(d.down),
                    up: Tensor::from_inner(d.up),
                    scale: d.scale,
                })
                .collect(),
        }
    }
}
