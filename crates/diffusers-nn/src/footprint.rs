//! Bytes held by a module's weights: dense parameters (by their dtype) plus packed quantized
//! weights, without materialising any parameter that is not yet loaded.

use std::cell::Cell;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

thread_local! {
    /// Packed bytes counted by `QuantizedWeight::visit` during [`memory_footprint`] (visitors
    /// only see burn parameters, and a packed weight is not one).
    static PACKED: Cell<Option<usize>> = const { Cell::new(None) };
}

pub(crate) fn add_packed(bytes: usize) {
    PACKED.with(|p| {
        if let Some(n) = p.get() {
            p.set(Some(n + bytes));
        }
    });
}

/// A module's weight memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of loaded dense parameters.
    pub dense_bytes: usize,
    /// Bytes of packed (quantized) weights, values and scales.
    pub packed_bytes: usize,
    /// Dense parameters not loaded (a quantized layer's dense slot): never allocated.
    pub unloaded_params: usize,
}

impl Footprint {
    /// Dense plus packed bytes.
    pub fn total(&self) -> usize {
        self.dense_bytes + self.packed_bytes
    }
}

struct Counter {
    dense: usize,
    unloaded: usize,
}

impl<B: Backend> ModuleVisitor<B> for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.is_initialized() {
            let v = param.val();
            self.dense += v.shape().num_elements() * v.dtype().size();
        } else {
            self.unloaded += 1;
        }
    }
}

/// The bytes `module`'s weights hold (`memory_footprint()` in diffusers).
pub fn memory_footprint<B: Backend, M: Module<B>>(module: &M) -> Footprint {
    let prev = PACKED.with(|p| p.replace(Some(0)));
    let mut c = Counter {
        dense: 0,
        unloaded: 0,
    };
    module.visit(&mut c);
    let packed = PACKED.with(|p| p.replace(prev)).unwrap_or(0);
    Footprint {
        dense_bytes: c.dense,
        packed_bytes: packed,
        unloaded_params: c.unloaded,
    }
}
