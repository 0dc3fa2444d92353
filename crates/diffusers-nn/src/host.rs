//! Glue between burn tensors and the CPU backend's host kernels (`host_*` modules): when a
//! layer takes its host path, and running a kernel over a tensor's f32 data in place.

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::backend::with_cpu_f32;

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

/// As [`in_place_f32`] when `x`'s storage is not shared; when it is (a resnet's input kept for
/// the residual, say), `fresh` computes the result from the borrowed values into a new vector
/// instead, so the input is not first copied (on one thread, by burn's copy-on-write). `fresh`
/// returns `None` to refuse, and `x` comes back.
pub(crate) fn map_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    in_place: impl FnOnce(&mut [f32]) -> bool,
    fresh: impl FnOnce(&[f32]) -> Option<Vec<f32>>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !applies::<B>(x.dtype()) {
        return Err(x);
    }
    let (x, shared) = diffusers_core::backend::cpu_storage_is_shared(x);
    if shared != Some(true) {
        return in_place_f32(x, in_place);
    }
    let shape = x.dims();
    match with_cpu_f32(&x, fresh) {
        Some(Some(out)) if out.len() == shape.iter().product::<usize>() => {
            Ok(Tensor::from_data(TensorData::new(out, shape), &x.device()))
        }
        Some(_) => Err(x),
        // Not contiguous: the in-place path's `into_data` makes the contiguous copy anyway.
        None => in_place_f32(x, in_place),
    }
}
