//! Scaled dot-product attention through burn's fused `attention` op, with PyTorch's mask
//! conventions; on the CPU backend, unmasked f32 attention runs a multi-threaded host kernel
//! (`host_attention`) instead.

use burn::prelude::*;
use burn::tensor::Bool;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use diffusers_core::backend::{StridedF32, cpu_f32_from_layout, with_cpu_f32_strided};

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

/// The kernel's view of a CPU tensor's storage.
fn view(s: StridedF32<'_, 4>) -> crate::host_attention::View<'_> {
    crate::host_attention::View {
        data: s.data,
        offset: s.offset,
        strides: [s.strides[0], s.strides[1], s.strides[2]],
    }
}

/// Unmasked f32 attention through [`crate::host_attention`], reading `q`, `k`, `v` where they
/// lie (permuted views included) and returning the result as a `[b, h, lq, dv]` view of
/// `[b, lq, h, dv]` storage, so the usual `swap_dims(1, 2)` and reshape that follow cost
/// nothing. Gives the inputs back when they are not CPU f32 tensors with their last dimension
/// contiguous, or their shapes disagree, for burn's op to handle (and report).
#[allow(clippy::type_complexity)]
fn host<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let [b, h, lq, d] = q.dims();
    let [kb, kh, lk, kd] = k.dims();
    let [vb, vh, vl, dv] = v.dims();
    if [kb, kh, kd] != [b, h, d] || [vb, vh, vl] != [b, h, lk] {
        return Err((q, k, v));
    }
    let dims = crate::host_attention::Dims {
        batch: b,
        heads: h,
        lq,
        lk,
        d,
        dv,
    };
    // Inputs whose rows are not contiguous are copied contiguous first.
    let contiguous_rows = |t: Tensor<B, 4>| {
        let ok = with_cpu_f32_strided(&t, |s| s.strides[3] == 1 || s.shape[3] == 1);
        if ok == Some(false) {
            let device = t.device();
            Tensor::from_data(t.into_data(), &device)
        } else {
            t
        }
    };
    let (q, k, v) = (contiguous_rows(q), contiguous_rows(k), contiguous_rows(v));
    let out = with_cpu_f32_strided(&q, |qs| {
        with_cpu_f32_strided(&k, |ks| {
            with_cpu_f32_strided(&v, |vs| {
                crate::host_attention::attention_f32(view(qs), view(ks), view(vs), dims, scale)
            })
        })
    })
    .flatten()
    .flatten()
    .flatten();
    match out.and_then(|out| {
        cpu_f32_from_layout::<B, 4>(out, [b, h, lq, dv], [lq * h * dv, dv, h * dv, 1])
    }) {
        Some(out) => Ok(out),
        None => Err((q, k, v)),
    }
}
