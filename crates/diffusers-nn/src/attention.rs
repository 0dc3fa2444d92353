//! Scaled dot-product attention through burn's fused `attention` op, with PyTorch's mask
//! conventions; on the CPU backend, unmasked f32 attention runs a multi-threaded host kernel
//! (`host_attention`) instead.

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, TensorData};

/// An attention mask in PyTorch's convention, broadcastable to `[batch, heads, q_len, k_len]`.
#[derive(Debug, Clone)]
pub enum AttentionMask<B: Backend> {
    /// `true` where a query may attend (as `F.scaled_dot_product_attention`'s boolean mask).
    Keep(Tensor<B, 4, Bool>),
    /// Added to the scores before the softmax (e.g. `-inf`/large negative for masked keys).
    Additive(Tensor<B, 4>),
}

/// `softmax(q kᵀ · scale + mask) v`, as `torch.nn.functional.scaled_dot_product_attention`.
///
/// `q: [batch, heads, q_len, head_dim]`, `k, v: [batch, heads, k_len, head_dim]`; `scale`
/// defaults to `1/sqrt(head_dim)`; `causal` masks keys after each query position
/// (top-left aligned, as PyTorch).
pub fn scaled_dot_product_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<AttentionMask<B>>,
    scale: Option<f64>,
    causal: bool,
) -> Tensor<B, 4> {
    let [b, h, lq, d] = q.dims();
    let lk = k.dims()[2];
    let host_path = mask.is_none() && !causal && crate::host::applies::<B>(q.dtype());
    let (q, k, v) = if host_path {
        let host_scale = scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
        match host(q, k, v, host_scale) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        }
    } else {
        (q, k, v)
    };
    let full = [b, h, lq, lk];
    let (bool_mask, bias) = match mask {
        None => (None, None),
        Some(AttentionMask::Keep(m)) => (Some(m.expand(full).bool_not()), None),
        Some(AttentionMask::Additive(m)) => {
            let m = if m.dtype() == q.dtype() {
                m
            } else {
                m.cast(q.dtype())
            };
            (None, Some(m.expand(full)))
        }
    };
    attention(
        q,
        k,
        v,
        bool_mask,
        bias,
        AttentionModuleOptions {
            scale,
            softcap: None,
            is_causal: causal,
        },
    )
}

/// Unmasked f32 attention through [`crate::host_attention`]; gives the inputs back when
/// their data is not f32 or their shapes disagree, for burn's op to handle (and report).
#[allow(clippy::type_complexity)]
fn host<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let device = q.device();
    let [b, h, lq, d] = q.dims();
    let [_, _, lk, dv] = v.dims();
    let dims = crate::host_attention::Dims {
        bh: b * h,
        lq,
        lk,
        d,
        dv,
    };
    let (qd, kd, vd) = (q.into_data(), k.into_data(), v.into_data());
    let out = match (
        qd.as_slice::<f32>(),
        kd.as_slice::<f32>(),
        vd.as_slice::<f32>(),
    ) {
        (Ok(qs), Ok(ks), Ok(vs)) => crate::host_attention::attention_f32(qs, ks, vs, dims, scale),
        _ => None,
    };
    match out {
        Some(out) => Ok(Tensor::from_data(
            TensorData::new(out, [b, h, lq, dv]),
            &device,
        )),
        None => Err((
            Tensor::from_data(qd, &device),
            Tensor::from_data(kd, &device),
            Tensor::from_data(vd, &device),
        )),
    }
}
