//! `Linear`: the projection every model uses, with a slot for low-rank (LoRA) deltas.
//!
//! The weight is stored as PyTorch stores it, `[out_features, in_features]`, so checkpoint
//! tensors load without transposition. A quantized weight attaches in the slot
//! [`Linear::packed`] (filled while loading, see [`QuantizedWeight`]), and the dense parameter
//! then stays unloaded; LoRA updates attach in the slot [`Linear::lora`] (see [`crate::lora`]).
//! Neither changes model code, since every model calls [`Linear::forward`].

use std::sync::Arc;

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor, Param,
};
use burn::prelude::*;

use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::linear;
use diffusers_quantization::QuantizedTensor;

use crate::lora::LoraSlot;

/// Configuration of a [`Linear`] layer (as `torch.nn.Linear`).
#[derive(Config, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// `y = x W^T + b` (+ any attached deltas), as `torch.nn.Linear`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`, as PyTorch stores it.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The active LoRA adapters' updates (empty unless an adapter is loaded).
    pub lora: LoraSlot<B>,
    /// The packed weight when the layer is quantized (then `weight` is never loaded).
    pub packed: QuantizedWeight<B>,
}

/// The packed (quantized) weight of a [`Linear`], or nothing.
///
/// Not a burn parameter: module visitors and mappers pass over it, and it is filled only while
/// loading, when a quantizing load hook (`diffusers_core::weights::with_linear_hook`) has just
/// taken this layer's weight and stashed its packed form
/// (`diffusers_quantization::packed::stash`): the loader maps a `Linear`'s fields in order, so
/// this slot, after `weight`, takes it.
#[derive(Clone, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// The packed matrix, shared by clones of the module.
    pub tensor: Option<Arc<QuantizedTensor>>,
    /// The dtype the layer computes in (that of its input, or this when given).
    pub compute_dtype: Option<DType>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> Default for QuantizedWeight<B> {
    fn default() -> Self {
        QuantizedWeight {
            tensor: None,
            compute_dtype: None,
            _b: std::marker::PhantomData,
        }
    }
}

impl<B: Backend> QuantizedWeight<B> {
    /// A slot holding `tensor`.
    pub fn new(tensor: QuantizedTensor) -> Self {
        QuantizedWeight {
            tensor: Some(Arc::new(tensor)),
            ..Default::default()
        }
    }

    /// Bytes held by the packed weight (0 when dense).
    pub fn nbytes(&self) -> usize {
        self.tensor.as_ref().map_or(0, |t| t.nbytes())
    }
}

impl<B: Backend> Module<B> for QuantizedWeight<B> {
    type Record = EmptyRecord;

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {
        crate::footprint::add_packed(self.nbytes());
    }

    fn map<M: ModuleMapper<B>>(mut self, _mapper: &mut M) -> Self {
        if let Some(t) = diffusers_quantization::packed::take_stashed() {
            self.tensor = Some(t);
        }
        self
    }

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }

    fn to_device(self, _: &B::Device) -> Self {
        self
    }

    fn fork(self, _: &B::Device) -> Self {
        self
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        devices
    }
}

impl<B: Backend> ModuleDisplayDefault for QuantizedWeight<B> {
    fn content(&self, content: Content) -> Option<Content> {
        let s = match &self.tensor {
            Some(t) => format!("{} {:?}", t.format(), t.shape()),
            None => "dense".to_string(),
        };
        content.add_single(&s).optional()
    }
}

impl<B: Backend> ModuleDisplay for QuantizedWeight<B> {}

impl<B: AutodiffBackend> AutodiffModule<B> for QuantizedWeight<B> {
    type InnerModule = QuantizedWeight<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        QuantizedWeight {
            tensor: self.tensor.clone(),
            compute_dtype: self.compute_dtype,
            _b: std::marker::PhantomData,
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        QuantizedWeight {
            tensor: module.tensor,
            compute_dtype: module.compute_dtype,
            _b: std::marker::PhantomData,
        }
    }
}

impl LinearConfig {
    /// Builds the layer with lazily-initialised parameters (no memory until used or loaded).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Linear<B> {
        let bound = 1.0 / (self.in_features as f64).sqrt();
        let init = burn::module::Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Linear {
            weight: init.init_with(
                [self.out_features, self.in_features],
                Some(self.in_features),
                Some(self.out_features),
                device,
            ),
            bias: self
                .bias
                .then(|| init.init_with([self.out_features], Some(self.in_features), None, device)),
            lora: LoraSlot::default(),
            packed: QuantizedWeight::default(),
        }
    }
}

impl<B: Backend> Linear<B> {
    /// Applies the layer to `[..., in_features]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if D > 2 {
            // As one [rows, in] matrix: burn-flex's 2-D matmul reads the transposed weight
            // through its strides, where the batched path copies it on every call.
            let mut dims = x.dims();
            let rows: Tensor<B, 2> = x.flatten(0, D - 2);
            dims[D - 1] = self.dims().1;
            return self.forward(rows).reshape(dims);
        }
        let y = match &self.packed.tensor {
            Some(q) => {
                let mut dims = x.dims();
                let inp = dims[D - 1];
                let x2: Tensor<B, 2> = x.clone().reshape([x.shape().num_elements() / inp, inp]);
                dims[D - 1] = q.shape()[0];
                self.forward_packed(x2, q).reshape(dims)
            }
            None => linear(
                x.clone(),
                self.weight.val().transpose(),
                self.bias.as_ref().map(|b| b.val()),
            ),
        };
        // PEFT's unfused forward: `result + lora_B(lora_A(x)) * scaling`, adapter by adapter.
        self.lora.deltas.iter().fold(y, |y, d| {
            let h = linear(x.clone(), d.down.clone().transpose(), None);
            let h = linear(h, d.up.clone().transpose(), None);
            y + h.mul_scalar(d.scale)
        })
    }

    /// `(in_features, out_features)`, without materialising the weight.
    pub fn dims(&self) -> (usize, usize) {
        let s = self.weight.lazy_shape();
        (s[1], s[0])
    }

    /// The dtype the layer computes in: the weight's, or for a quantized layer its compute
    /// dtype (that of the bias, or f32).
    pub fn dtype(&self) -> DType {
        if self.packed.tensor.is_some() {
            return self
                .packed
                .compute_dtype
                .or_else(|| self.bias.as_ref().map(|b| b.val().dtype()))
                .unwrap_or(DType::F32);
        }
        self.weight.val().dtype()
    }

    /// Whether the weight is quantized (packed).
    pub fn is_quantized(&self) -> bool {
        self.packed.tensor.is_some()
    }

    /// `x W^T + b` with the packed weight: on the CPU backend the host kernel dequantizes a few
    /// rows at a time inside the matmul (never the whole matrix); elsewhere the weight is
    /// dequantized on the host for the call.
    fn forward_packed(&self, x: Tensor<B, 2>, q: &QuantizedTensor) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let device = x.device();
        let bias = self.bias.as_ref().map(|b| b.val());
        if diffusers_core::backend::is_cpu::<B>() {
            let xf = if dtype == DType::F32 {
                x
            } else {
                x.cast(DType::F32)
            };
            let [rows, _] = xf.dims();
            let kernel = |xs: &[f32]| crate::host_quant_linear::matmul_packed(xs, rows, q);
            let y = match diffusers_core::backend::with_cpu_f32(&xf, kernel) {
                Some(y) => y,
                // Not contiguous: one contiguous copy, then the kernel.
                None => {
                    let xc = Tensor::<B, 2>::from_data(xf.into_data(), &device);
                    diffusers_core::backend::with_cpu_f32(&xc, kernel)
                        .expect("a fresh CPU f32 tensor is contiguous")
                }
            };
            let [out, _] = q.shape();
            let y = Tensor::<B, 2>::from_data(TensorData::new(y, [rows, out]), &device);
            let y = match bias {
                Some(b) => y + b.cast(DType::F32).unsqueeze(),
                None => y,
            };
            return if dtype == DType::F32 {
                y
            } else {
                y.cast(dtype)
            };
        }
        let [out, inp] = q.shape();
        let w = q
            .to_f32()
            .expect("a QuantizedTensor's storage is checked to hold its shape");
        let w = Tensor::<B, 2>::from_data(TensorData::new(w, [out, inp]), (&device, dtype));
        linear(x, w.transpose(), bias)
    }
}
