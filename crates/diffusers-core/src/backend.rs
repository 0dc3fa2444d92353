//! Backends and devices: the one place that names burn's backend types.
//!
//! Models are generic over `B: Backend`; applications pick a backend at run time from a
//! [`DeviceSpec`] (`cpu`, `cuda`, `cuda:N`).

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
    if !is_cpu::<B>() || x.dtype() != DType::F32 {
        return None;
    }
    match x.clone().into_primitive() {
        burn::tensor::TensorPrimitive::Float(t) => {
            let t: &dyn std::any::Any = &t;
            let t = t.downcast_ref::<burn_flex::FlexTensor>()?;
            t.as_slice::<f32>().map(f)
        }
        burn::tensor::TensorPrimitive::QFloat(_) => None,
    }
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

/// The CUDA backend (kernels compiled with NVRTC at run time), with kernel fusion.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

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
