//! Scaled dot-product attention through burn's fused `attention` op, with PyTorch's mask
//! conventions.

use burn::prelude::*;
use burn::tensor::Bool;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

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
    let [b, h, lq, _] = q.dims();
    let lk = k.dims()[2];
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
