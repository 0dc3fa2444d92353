//! Backends and devices: the one place that names burn's backend types.
//!
//! Models are generic over `B: Backend`; applications pick a backend at run time from a
//! [`DeviceSpec`] (`cpu`, `cuda`, `cuda:N`).

pub mod kernel_cache;

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;

use crate::{Error, Result};

/// The CPU backend used by tests and the `cpu` device: burn's `flex` (f32, f16 and bf16).
pub type Cpu = burn::backend::Flex;

/// Whether `B` is the [`Cpu`] backend: layers with a host-only fast path (see
/// `diffusers_nn::attention`) check this and use burn's generic op on every other backend.
///
/// ```
/// use diffusers_core::backend::{Cpu, is_cpu};
/// assert!(is_cpu::<Cpu>());
/// ```
pub fn is_cpu<B: burn::tensor::backend::Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Cpu>()
}

/// Runs `f` over the f32 elements of `x` when `B` is the [`Cpu`] backend and `x` is a
/// contiguous f32 tensor, borrowing its storage (no copy, even when the storage is shared with
/// other tensors, as a layer's weights are); `None` otherwise. The CPU host kernels
/// (`diffusers_nn`'s `host_*` modules) read their inputs through this.
///
/// ```
/// use burn::tensor::Tensor;
/// use diffusers_core::backend::{Cpu, with_cpu_f32};
///
/// let x = Tensor::<Cpu, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &Default::default());
/// assert_eq!(with_cpu_f32(&x, |s| s.iter().sum::<f32>()), Some(10.0));
/// assert_eq!(with_cpu_f32(&x.transpose(), |s| s.len()), None); // not contiguous
/// ```
pub fn with_cpu_f32<B: burn::tensor::backend::Backend, const D: usize, R>(
    x: &burn::tensor::Tensor<B, D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    with_flex_f32(x, |t| t.as_slice::<f32>().map(f)).flatten()
}

/// Runs `f` over `x`'s `FlexTensor` when `B` is the [`Cpu`] backend and `x` an f32 (not
/// quantized) tensor; `None` otherwise. The clone shares `x`'s storage (no copy).
fn with_flex_f32<B: burn::tensor::backend::Backend, const D: usize, R>(
    x: &burn::tensor::Tensor<B, D>,
    f: impl FnOnce(&burn_flex::FlexTensor) -> R,
) -> Option<R> {
    if !is_cpu::<B>() || x.dtype() != DType::F32 {
        return None;
    }
    match x.clone().into_primitive() {
        burn::tensor::TensorPrimitive::Float(t) => {
            let t: &dyn std::any::Any = &t;
            let t = t.downcast_ref::<burn_flex::FlexTensor>()?;
            (t.dtype() == DType::F32).then(|| f(t))
        }
        burn::tensor::TensorPrimitive::QFloat(_) => None,
    }
}

/// A [`Cpu`] f32 tensor's storage as it lies: the whole buffer, where the tensor starts in it,
/// and its strides (in elements), for kernels that read views (a permuted `[b, n, h, d]`
/// projection, say) without copying them contiguous first.
#[derive(Debug, Clone, Copy)]
pub struct StridedF32<'a, const D: usize> {
    /// The whole storage buffer.
    pub data: &'a [f32],
    /// Index of element `[0, ..., 0]`.
    pub offset: usize,
    /// Distance between neighbours along each dimension.
    pub strides: [usize; D],
    /// The tensor's shape.
    pub shape: [usize; D],
}

impl<const D: usize> StridedF32<'_, D> {
    /// Index in [`Self::data`] of the element at `index`.
    pub fn index(&self, index: [usize; D]) -> usize {
        self.offset
            + index
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>()
    }
}

/// Runs `f` over `x`'s storage as it lies ([`StridedF32`]) when `B` is the [`Cpu`] backend and
/// `x` is f32 with non-negative strides, every element of it inside the buffer; `None`
/// otherwise.
///
/// ```
/// use burn::tensor::Tensor;
/// use diffusers_core::backend::{Cpu, with_cpu_f32_strided};
///
/// let x = Tensor::<Cpu, 2>::from_floats([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &Default::default());
/// let t = x.transpose(); // [3, 2], a view
/// assert_eq!(with_cpu_f32_strided(&t, |v| (v.strides, v.data[v.index([2, 1])])), Some(([1, 3], 6.0)));
/// ```
pub fn with_cpu_f32_strided<B: burn::tensor::backend::Backend, const D: usize, R>(
    x: &burn::tensor::Tensor<B, D>,
    f: impl FnOnce(StridedF32<'_, D>) -> R,
) -> Option<R> {
    with_flex_f32(x, |t| {
        let layout = t.layout();
        let shape: [usize; D] = layout.shape().as_slice().try_into().ok()?;
        let mut strides = [0usize; D];
        for (s, &l) in strides.iter_mut().zip(layout.strides()) {
            *s = usize::try_from(l).ok()?;
        }
        let view = StridedF32 {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            strides,
            shape,
        };
        let empty = shape.contains(&0);
        let last = view.index(shape.map(|n| n.saturating_sub(1)));
        (!empty && last < view.data.len()).then(|| f(view))
    })
    .flatten()
}

/// A [`Cpu`] f32 tensor of `shape` over `data` laid out with `strides` (in elements): a kernel
/// that wrote its result in another order (`[b, n, h, d]` for a `[b, h, n, d]` result, say)
/// hands it over as a view, so the caller's permute back is free. `None` on other backends,
/// or when an element would fall outside `data`.
///
/// ```
/// use diffusers_core::backend::{Cpu, cpu_f32_from_layout};
///
/// // [[1, 2, 3], [4, 5, 6]] stored column by column.
/// let t = cpu_f32_from_layout::<Cpu, 2>(vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0], [2, 3], [1, 2]);
/// let t = t.unwrap();
/// assert_eq!(t.into_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// ```
pub fn cpu_f32_from_layout<B: burn::tensor::backend::Backend, const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    strides: [usize; D],
) -> Option<burn::tensor::Tensor<B, D>> {
    if !is_cpu::<B>() {
        return None;
    }
    let last: usize = shape
        .iter()
        .zip(&strides)
        .map(|(n, s)| n.saturating_sub(1) * s)
        .sum();
    if shape.contains(&0) || last >= data.len() {
        return None;
    }
    let layout = burn_flex::Layout::new(
        burn::tensor::Shape::from(shape.to_vec()),
        strides.iter().map(|&s| s as isize).collect(),
        0,
    );
    let t = burn_flex::FlexTensor::new(burn::tensor::Bytes::from_elems(data), layout, DType::F32);
    let t: Box<dyn std::any::Any> = Box::new(t);
    let t = t.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(burn::tensor::Tensor::from_primitive(
        burn::tensor::TensorPrimitive::Float(*t),
    ))
}

/// Whether `x`, a [`Cpu`] tensor, shares its storage with another tensor (a layer's input kept
/// for a residual connection, say): writing into it in place would first copy it. `None` on
/// other backends. Gives `x` back.
///
/// ```
/// use burn::tensor::Tensor;
/// use diffusers_core::backend::{Cpu, cpu_storage_is_shared};
///
/// let x = Tensor::<Cpu, 1>::from_floats([1.0, 2.0], &Default::default());
/// let (x, shared) = cpu_storage_is_shared(x);
/// assert_eq!(shared, Some(false));
/// let kept = x.clone();
/// assert_eq!(cpu_storage_is_shared(x).1, Some(true));
/// # drop(kept);
/// ```
pub fn cpu_storage_is_shared<B: burn::tensor::backend::Backend, const D: usize>(
    x: burn::tensor::Tensor<B, D>,
) -> (burn::tensor::Tensor<B, D>, Option<bool>) {
    if !is_cpu::<B>() {
        return (x, None);
    }
    match x.into_primitive() {
        burn::tensor::TensorPrimitive::Float(t) => {
            let any: &dyn std::any::Any = &t;
            let shared = any
                .downcast_ref::<burn_flex::FlexTensor>()
                .map(|t| !t.is_unique());
            (
                burn::tensor::Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t)),
                shared,
            )
        }
        q => (burn::tensor::Tensor::from_primitive(q), None),
    }
}

/// The CUDA backend (kernels compiled with NVRTC at run time, chosen by autotuning), one kernel
/// per op: burn's `CubeBackend` on the CUDA runtime, without burn's fusion layer.
///
/// Not `burn::backend::Cuda` (that is [`CudaFused`]): in burn 0.21 the fusion layer computes
/// wrong values for some shapes (burn issue #5122, "Fusion produces wrong results ... (CUDA)").
/// Measured here on an H200 against diffusers: one tiny Flux transformer call in f32 was 1.1e-1
/// off (diffusers on the same GPU: 2.6e-6), the tiny Flux pipeline's image 5.8e-2, a UNet call on
/// an odd-sized latent 1.0e-1, and a bf16 UNet call gave NaN.
#[cfg(feature = "cuda")]
pub type Cuda = burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// burn's CUDA backend with kernel fusion (`burn::backend::Cuda`). Faster, but wrong for some
/// shapes in burn 0.21 (see [`Cuda`]): kept for measuring and for re-checking newer burn
/// releases, not used by the pipelines or the CLI.
#[cfg(feature = "cuda")]
pub type CudaFused = burn::backend::Cuda;

/// A device named on the command line or in options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (`flex`).
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| Error::UnknownDevice(s.clone())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Checks that this build includes the backend for the device.
    pub fn ensure_compiled(self) -> Result<Self> {
        match self {
            DeviceSpec::Cpu => Ok(self),
            DeviceSpec::Cuda(_) if cfg!(feature = "cuda") => Ok(self),
            DeviceSpec::Cuda(_) => Err(Error::BackendNotCompiled(self.to_string())),
        }
    }

    /// The burn device for the CUDA backend.
    #[cfg(feature = "cuda")]
    pub fn cuda_device(self) -> burn::backend::cuda::CudaDevice {
        match self {
            DeviceSpec::Cuda(n) => burn::backend::cuda::CudaDevice::new(n),
            DeviceSpec::Cpu => burn::backend::cuda::CudaDevice::new(0),
        }
    }
}

/// A compute dtype named on the command line or in options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            _ => Err(Error::UnknownDtype(s.to_string())),
        }
    }
}

impl From<Precision> for DType {
    fn from(p: Precision) -> DType {
        match p {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::BF16 => DType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(0)));
        assert_eq!(
            "CUDA:3".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(3))
        );
        assert!(matches!(
            "tpu".parse::<DeviceSpec>(),
            Err(Error::UnknownDevice(_))
        ));
        assert!(matches!(
            "cuda:x".parse::<DeviceSpec>(),
            Err(Error::UnknownDevice(_))
        ));
        let cuda = DeviceSpec::Cuda(0).ensure_compiled();
        assert_eq!(cuda.is_ok(), cfg!(feature = "cuda"));
        assert_eq!("bf16".parse::<Precision>().ok(), Some(Precision::BF16));
        assert!(matches!(
            "f8".parse::<Precision>(),
            Err(Error::UnknownDtype(_))
        ));
    }
}
