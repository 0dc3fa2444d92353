//! Glue between burn tensors and the CPU backend's host kernels (`host_*` modules): when a
//! layer takes its host path, and running a kernel over a tensor's f32 data in place.

use burn::prelude::*;
use burn::tensor::DType;

/// Whether a tensor of `dtype` on backend `B` takes the host kernels: the CPU backend, f32.
pub(crate) fn applies<B: Backend>(dtype: DType) -> bool {
    diffusers_core::backend::is_cpu::<B>() && dtype == DType::F32
}

/// Runs `kernel` over `x`'s f32 data in place (no copy when `x` is not shared) and returns
/// the result; gives `x` back, unchanged, on other backends and dtypes or when `kernel`
/// refuses (returns `false`, leaving the data untouched).
pub(crate) fn in_place_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    kernel: impl FnOnce(&mut [f32]) -> bool,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !applies::<B>(x.dtype()) {
        return Err(x);
    }
    let device = x.device();
    let mut data = x.into_data();
    let done = data.as_mut_slice::<f32>().is_ok_and(kernel);
    let y = Tensor::from_data(data, &device);
    if done { Ok(y) } else { Err(y) }
}
