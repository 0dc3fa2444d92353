//! diffusers' `HunyuanVideoTransformer3DModel` (`models/transformers/transformer_hunyuan_video.py`),
//! the denoiser of HunyuanVideo text-to-video.
//!
//! The text states pass a token refiner (self-attention over the text tokens under the text
//! mask, conditioned on the timestep and the mask-weighted mean of the text states) before the
//! dual-stream blocks (image and text streams with their own weights, joint attention) and the
//! single-stream blocks (one stream over `[image, text]`). The text tokens come after the image
//! tokens in the joint attention; the 3-D rotary embedding rotates only the image tokens, and
//! the text tokens past each row's length are not attended.
//!
//! Module fields follow the checkpoint keys; [`checkpoint_key`] maps the ones that cannot
//! (`ff.net.0` / `ff.net.2`). `to_out.0` is the first element of a `Vec`, which is its key.
//!
//! Only the text-to-video model is built: a config with an `image_condition_type` (the
//! image-to-video variants' `latent_concat` / `token_replace`) is an [`Error::InvalidConfig`].

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::{gelu_tanh, silu};
use diffusers_nn::attention::{AttentionMask, scaled_dot_product_attention};
use diffusers_nn::conv::{Conv3d, Conv3dConfig};
use diffusers_nn::embeddings::{
    RopeOptions, RotaryPairing, apply_rotary_emb, get_timestep_embedding, rotary_cos_sin,
};
use diffusers_nn::hooks::{BlockStates, HookRegistry, module_call};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use serde::{Deserialize, Serialize};

use crate::transformer_flux::{AdaNorm, FeedForward, MlpEmbedding, TimeTextEmbed};
use crate::{Error, Result};

const MODEL: &str = "HunyuanVideoTransformer3DModel";

/// `HunyuanVideoTransformer3DModel`'s config, key for key with diffusers' defaults
/// (HunyuanVideo's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HunyuanVideoTransformer3DModelConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out (`in_channels` when null or 0, as diffusers' `out_channels or
    /// in_channels`).
    pub out_channels: Option<usize>,
    /// Heads.
    pub num_attention_heads: usize,
    /// Width of each head.
    pub attention_head_dim: usize,
    /// Dual-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    /// Token-refiner blocks.
    pub num_refiner_layers: usize,
    /// Feed-forward width over model width in the transformer blocks (the refiner's is 4
    /// whatever this says, as in diffusers).
    pub mlp_ratio: f64,
    /// Spatial patch size.
    pub patch_size: usize,
    /// Temporal patch size.
    pub patch_size_t: usize,
    /// Query/key normalisation: `"rms_norm"` or null.
    pub qk_norm: Option<String>,
    /// Guidance embedding (the guidance-distilled HunyuanVideo).
    pub guidance_embeds: bool,
    /// Width of the text-encoder states.
    pub text_embed_dim: usize,
    /// Width of the pooled CLIP embedding.
    pub pooled_projection_dim: usize,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Rotary features of the frame, row and column axes (summing to `attention_head_dim`).
    pub rope_axes_dim: Vec<usize>,
    /// Image conditioning of the image-to-video variants (not supported: must be null).
    pub image_condition_type: Option<String>,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for HunyuanVideoTransformer3DModelConfig {
    fn default() -> Self {
        Self {
            in_channels: 16,
            out_channels: Some(16),
            num_attention_heads: 24,
            attention_head_dim: 128,
            num_layers: 20,
            num_single_layers: 40,
            num_refiner_layers: 2,
            mlp_ratio: 4.0,
            patch_size: 2,
            patch_size_t: 1,
            qk_norm: Some("rms_norm".into()),
            guidance_embeds: true,
            text_embed_dim: 4096,
            pooled_projection_dim: 768,
            rope_theta: 256.0,
            rope_axes_dim: vec![16, 56, 56],
            image_condition_type: None,
            meta: ConfigMeta::default(),
        }
    }
}

impl HunyuanVideoTransformer3DModelConfig {
    /// Output channels (`out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.in_channels)
    }

    /// Model width (`num_attention_heads * attention_head_dim`).
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Feed-forward width of the transformer blocks (`int(inner_dim * mlp_ratio)`).
    pub fn mlp_dim(&self) -> usize {
        (self.inner_dim() as f64 * self.mlp_ratio) as usize
    }
}

impl diffusers_core::config::Config for HunyuanVideoTransformer3DModelConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = &self.image_condition_type {
            return Err(format!(
                "image_condition_type {kind:?} (HunyuanVideo image-to-video) is not supported: \
                 only text-to-video checkpoints (image_condition_type null) load"
            ));
        }
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err("num_attention_heads and attention_head_dim must be positive".into());
        }
        if self
            .num_attention_heads
            .checked_mul(self.attention_head_dim)
            .is_none()
        {
            return Err("num_attention_heads * attention_head_dim overflows".into());
        }
        if self.rope_axes_dim.len() != 3
            || self.rope_axes_dim.iter().any(|d| d % 2 != 0)
            || self.rope_axes_dim.iter().sum::<usize>() != self.attention_head_dim
        {
            return Err(format!(
                "rope_axes_dim {:?} must be three even sizes (frames, rows, columns) summing to \
                 attention_head_dim {}",
                self.rope_axes_dim, self.attention_head_dim
            ));
        }
        if self.in_channels == 0
            || self.patch_size == 0
            || self.patch_size_t == 0
            || self.text_embed_dim == 0
            || self.pooled_projection_dim == 0
        {
            return Err(
                "in_channels, patch_size, patch_size_t, text_embed_dim and pooled_projection_dim \
                 must be positive"
                    .into(),
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_dim() == 0 {
            return Err(format!(
                "mlp_ratio {} must give a positive feed-forward width",
                self.mlp_ratio
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "rope_theta {} must be a positive number",
                self.rope_theta
            ));
        }
        match self.qk_norm.as_deref() {
            None | Some("rms_norm") => Ok(()),
            Some(other) => Err(format!(
                "qk_norm {other:?} is not supported (rms_norm or null)"
            )),
        }
    }
}

/// `HunyuanVideoPatchEmbed`: a 3-D convolution with kernel and stride
/// `[patch_size_t, patch_size, patch_size]`.
#[derive(Module, Debug)]
pub struct HunyuanVideoPatchEmbed<B: Backend> {
    /// The patchifying convolution.
    pub proj: Conv3d<B>,
}

/// diffusers' `Attention` as HunyuanVideo uses it: self-attention in the token refiner
/// (`AttnProcessor2_0`), joint attention over `[image, text]` in the dual-stream blocks (the
/// text's own projections `add_*`) and over the joined sequence in the single-stream blocks
/// (no output projection), both with `HunyuanVideoAttnProcessor2_0`.
#[derive(Module, Debug)]
pub struct HunyuanVideoAttention<B: Backend> {
    /// Query.
    pub to_q: Linear<B>,
    /// Key.
    pub to_k: Linear<B>,
    /// Value.
    pub to_v: Linear<B>,
    /// Query RMS norm over each head (`qk_norm`; none in the refiner).
    pub norm_q: Option<RmsNorm<B>>,
    /// Key RMS norm.
    pub norm_k: Option<RmsNorm<B>>,
    /// Output projection (`to_out.0`; absent in single-stream blocks).
    pub to_out: Vec<Linear<B>>,
    /// Text query (dual-stream blocks).
    pub add_q_proj: Option<Linear<B>>,
    /// Text key.
    pub add_k_proj: Option<Linear<B>>,
    /// Text value.
    pub add_v_proj: Option<Linear<B>>,
    /// Text query norm.
    pub norm_added_q: Option<RmsNorm<B>>,
    /// Text key norm.
    pub norm_added_k: Option<RmsNorm<B>>,
    /// Text output projection.
    pub to_add_out: Option<Linear<B>>,
    heads: usize,
}

/// What an attention layer is built for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttnKind {
    /// Refiner self-attention: no norms, an output projection.
    Refiner,
    /// Dual-stream joint attention.
    Joint,
    /// Single-stream attention (`pre_only`).
    Single,
}

impl<B: Backend> HunyuanVideoAttention<B> {
    fn new(dim: usize, heads: usize, qk_norm: bool, kind: AttnKind, device: &B::Device) -> Self {
        let head_dim = dim / heads;
        let lin = || LinearConfig::new(dim, dim).init(device);
        let rms = || RmsNormConfig::new(head_dim).with_eps(1e-6).init(device);
        let norms = qk_norm && kind != AttnKind::Refiner;
        let joint = kind == AttnKind::Joint;
        Self {
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            norm_q: norms.then(rms),
            norm_k: norms.then(rms),
            to_out: if kind == AttnKind::Single {
                Vec::new()
            } else {
                vec![lin()]
            },
            add_q_proj: joint.then(lin),
            add_k_proj: joint.then(lin),
            add_v_proj: joint.then(lin),
            norm_added_q: (joint && norms).then(rms),
            norm_added_k: (joint && norms).then(rms),
            to_add_out: joint.then(lin),
            heads,
        }
    }

    /// `[b, s, dim]` -> `[b, heads, s, head_dim]`, through the per-head norm if any.
    fn split_heads(
        &self,
        x: Tensor<B, 3>,
        proj: &Linear<B>,
        norm: Option<&RmsNorm<B>>,
    ) -> Tensor<B, 4> {
        let [b, s, _] = x.dims();
        let y = proj.forward(x);
        let d = y.dims()[2] / self.heads;
        let y: Tensor<B, 4> = y.reshape([b, s, self.heads, d]);
        let y = match norm {
            Some(n) => n.forward(y),
            None => y,
        };
        y.swap_dims(1, 2)
    }

    /// Attention of `x` (image tokens first, then the `text_len` last tokens in single-stream
    /// blocks) and, in dual-stream blocks, of the text `context` appended after it.
    /// `rope` covers the whole joint sequence (identity rows for the text tokens). Returns the
    /// image part and the text part (single-stream blocks: the joint output and `None`).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        mask: Option<AttentionMask<B>>,
        rope: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [b, s_img, _] = x.dims();
        let mut q = self.split_heads(x.clone(), &self.to_q, self.norm_q.as_ref());
        let mut k = self.split_heads(x.clone(), &self.to_k, self.norm_k.as_ref());
        let mut v = self.split_heads(x, &self.to_v, None);
        let mut s_txt = 0;
        if let (Some(c), Some(aq), Some(ak), Some(av)) = (
            &context,
            &self.add_q_proj,
            &self.add_k_proj,
            &self.add_v_proj,
        ) {
            s_txt = c.dims()[1];
            let cq = self.split_heads(c.clone(), aq, self.norm_added_q.as_ref());
            let ck = self.split_heads(c.clone(), ak, self.norm_added_k.as_ref());
            q = Tensor::cat(vec![q, cq], 2);
            k = Tensor::cat(vec![k, ck], 2);
            v = Tensor::cat(vec![v, self.split_heads(c.clone(), av, None)], 2);
        }
        if let Some((cos, sin)) = rope {
            q = apply_rotary_emb(q, cos.clone(), sin.clone(), RotaryPairing::Interleaved);
            k = apply_rotary_emb(k, cos, sin, RotaryPairing::Interleaved);
        }
        let o = scaled_dot_product_attention(q, k, v, mask, None, false);
        let [_, h, s, d] = o.dims();
        let o = o.swap_dims(1, 2).reshape([b, s, h * d]);
        match (self.to_out.first(), &self.to_add_out) {
            (Some(out), Some(add_out)) => {
                let txt = o.clone().narrow(1, s_img, s_txt);
                let img = o.narrow(1, 0, s_img);
                (out.forward(img), Some(add_out.forward(txt)))
            }
            (Some(out), None) => (out.forward(o), None),
            _ => (o, None),
        }
    }
}

/// `LinearActivation(activation="silu")`: `net.0` of `FeedForward(activation_fn="linear-silu")`.
#[derive(Module, Debug)]
pub struct LinearActivation<B: Backend> {
    /// The projection before the SiLU.
    pub proj: Linear<B>,
}

/// `FeedForward(activation_fn="linear-silu")` of the token refiner: `net.0` (projection + SiLU),
/// `net.2`.
#[derive(Module, Debug)]
pub struct LinearSiluFeedForward<B: Backend> {
    /// `net.0`.
    pub net_0: LinearActivation<B>,
    /// `net.2`.
    pub net_2: Linear<B>,
}

/// `HunyuanVideoAdaNorm`: the refiner block's attention and feed-forward gates from the
/// conditioning (SiLU, then a linear to `2 * dim`).
#[derive(Module, Debug)]
pub struct HunyuanVideoAdaNorm<B: Backend> {
    /// `[2 * dim, dim]`.
    pub linear: Linear<B>,
}

/// `HunyuanVideoIndividualTokenRefinerBlock`.
#[derive(Module, Debug)]
pub struct HunyuanVideoIndividualTokenRefinerBlock<B: Backend> {
    /// Affine norm before the attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention over the text tokens.
    pub attn: HunyuanVideoAttention<B>,
    /// Affine norm before the feed-forward.
    pub norm2: LayerNorm<B>,
    /// Feed-forward.
    pub ff: LinearSiluFeedForward<B>,
    /// Gates.
    pub norm_out: HunyuanVideoAdaNorm<B>,
}

impl<B: Backend> HunyuanVideoIndividualTokenRefinerBlock<B> {
    fn new(dim: usize, heads: usize, device: &B::Device) -> Self {
        let ln = || LayerNormConfig::new(dim).with_eps(1e-6).init(device);
        // HunyuanVideoTokenRefiner is built with its default mlp_ratio 4.0 (the model's
        // mlp_ratio is not passed on).
        let inner = 4 * dim;
        Self {
            norm1: ln(),
            attn: HunyuanVideoAttention::new(dim, heads, false, AttnKind::Refiner, device),
            norm2: ln(),
            ff: LinearSiluFeedForward {
                net_0: LinearActivation {
                    proj: LinearConfig::new(dim, inner).init(device),
                },
                net_2: LinearConfig::new(inner, dim).init(device),
            },
            norm_out: HunyuanVideoAdaNorm {
                linear: LinearConfig::new(dim, 2 * dim).init(device),
            },
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        mask: Option<AttentionMask<B>>,
    ) -> Tensor<B, 3> {
        let n = self.norm1.forward(x.clone());
        let attn = module_call("attn", || vec![self.attn.forward(n, None, mask, None).0])
            .into_iter()
            .next()
            .expect("the attention hook returns the attention's output");
        let gates = self.norm_out.linear.forward(silu(temb)).chunk(2, 1);
        let gate_msa: Tensor<B, 3> = gates[0].clone().unsqueeze_dim(1);
        let gate_mlp: Tensor<B, 3> = gates[1].clone().unsqueeze_dim(1);
        let x = x + attn * gate_msa;
        let ff = &self.ff;
        let h = silu(ff.net_0.proj.forward(self.norm2.forward(x.clone())));
        x + ff.net_2.forward(h) * gate_mlp
    }
}

/// `HunyuanVideoIndividualTokenRefiner`.
#[derive(Module, Debug)]
pub struct HunyuanVideoIndividualTokenRefiner<B: Backend> {
    /// Refiner blocks.
    pub refiner_blocks: Vec<HunyuanVideoIndividualTokenRefinerBlock<B>>,
}

/// `HunyuanVideoTokenRefiner`: the text states projected to the model width and refined by
/// self-attention, conditioned on the timestep and the mask-weighted mean of the text states.
#[derive(Module, Debug)]
pub struct HunyuanVideoTokenRefiner<B: Backend> {
    /// `CombinedTimestepTextProjEmbeddings` (timestep + pooled text, SiLU MLPs).
    pub time_text_embed: TimeTextEmbed<B>,
    /// Text-state projection.
    pub proj_in: Linear<B>,
    /// Refiner blocks.
    pub token_refiner: HunyuanVideoIndividualTokenRefiner<B>,
}

/// A dual-stream block (`HunyuanVideoTransformerBlock`).
#[derive(Module, Debug)]
pub struct HunyuanVideoTransformerBlock<B: Backend> {
    /// Image modulation (`AdaLayerNormZero`).
    pub norm1: AdaNorm<B>,
    /// Text modulation.
    pub norm1_context: AdaNorm<B>,
    /// Joint attention.
    pub attn: HunyuanVideoAttention<B>,
    /// Image feed-forward.
    pub ff: FeedForward<B>,
    /// Text feed-forward.
    pub ff_context: FeedForward<B>,
    norm2: LayerNorm<B>,
}

impl<B: Backend> HunyuanVideoTransformerBlock<B> {
    /// Applies the block to image states `x` and text states `ctx` with the conditioning `temb`,
    /// the joint attention mask and the rotary tables (`[image + text tokens, head_dim]`);
    /// returns `(x, ctx)`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        mask: Option<AttentionMask<B>>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let m = self.norm1.chunks(temb.clone());
        let c = self.norm1_context.chunks(temb);
        let nx = self.norm1.modulate(x.clone(), m[0].clone(), m[1].clone());
        let nc = self
            .norm1_context
            .modulate(ctx.clone(), c[0].clone(), c[1].clone());
        let mut out = module_call("attn", || {
            let (a, c) = self.attn.forward(nx, Some(nc), mask, Some((cos, sin)));
            std::iter::once(a).chain(c).collect()
        })
        .into_iter();
        let (attn, attn_ctx) = (out.next(), out.next());
        let attn = attn.expect("the attention hook returns the attention's outputs");
        let x = x + attn * m[2].clone();
        let ctx = match attn_ctx {
            Some(a) => ctx + a * c[2].clone(),
            None => ctx,
        };
        let nx = self.norm2.forward(x.clone()) * (m[4].clone() + 1.0) + m[3].clone();
        let nc = self.norm2.forward(ctx.clone()) * (c[4].clone() + 1.0) + c[3].clone();
        let x = x + m[5].clone() * self.ff.forward(nx);
        let ctx = ctx + c[5].clone() * self.ff_context.forward(nc);
        (x, ctx)
    }
}

/// A single-stream block (`HunyuanVideoSingleTransformerBlock`).
#[derive(Module, Debug)]
pub struct HunyuanVideoSingleTransformerBlock<B: Backend> {
    /// Modulation (`AdaLayerNormZeroSingle`).
    pub norm: AdaNorm<B>,
    /// Self-attention over `[image, text]`.
    pub attn: HunyuanVideoAttention<B>,
    /// MLP up projection.
    pub proj_mlp: Linear<B>,
    /// Output over `[attention, mlp]`.
    pub proj_out: Linear<B>,
}

impl<B: Backend> HunyuanVideoSingleTransformerBlock<B> {
    /// Applies the block to the joint `[image, text]` states `x`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        mask: Option<AttentionMask<B>>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let m = self.norm.chunks(temb);
        let n = self.norm.modulate(x.clone(), m[0].clone(), m[1].clone());
        let mlp = gelu_tanh(self.proj_mlp.forward(n.clone()));
        let attn = module_call("attn", || {
            vec![self.attn.forward(n, None, mask, Some((cos, sin))).0]
        })
        .into_iter()
        .next()
        .expect("the attention hook returns the attention's output");
        m[2].clone() * self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2)) + x
    }
}

/// `HunyuanVideoTransformer3DModel` (text-to-video).
#[derive(Module, Debug)]
pub struct HunyuanVideoTransformer3DModel<B: Backend> {
    /// Patchify.
    pub x_embedder: HunyuanVideoPatchEmbed<B>,
    /// Text token refiner.
    pub context_embedder: HunyuanVideoTokenRefiner<B>,
    /// `HunyuanVideoConditionEmbedding`: timestep, guidance and pooled-text conditioning.
    pub time_text_embed: TimeTextEmbed<B>,
    /// Dual-stream blocks.
    pub transformer_blocks: Vec<HunyuanVideoTransformerBlock<B>>,
    /// Single-stream blocks.
    pub single_transformer_blocks: Vec<HunyuanVideoSingleTransformerBlock<B>>,
    /// Final modulation (`AdaLayerNormContinuous`).
    pub norm_out: AdaNorm<B>,
    /// Output projection to `patch_size_t * patch_size^2 * out_channels`.
    pub proj_out: Linear<B>,
    patch: [usize; 3],
    rope_axes: [usize; 3],
    rope_theta: f64,
    in_channels: usize,
    out_channels: usize,
    text_embed_dim: usize,
    pooled_projection_dim: usize,
    /// Hooks on the blocks, their attention modules and `proj_out` (step caches, offloading;
    /// see [`diffusers_nn::hooks`]).
    pub hooks: HookRegistry<B>,
}

/// Checkpoint key of a module path (`ff.net_0` -> `ff.net.0`, `ff.net_2` -> `ff.net.2`).
pub fn checkpoint_key(path: &str) -> String {
    path.replace(".net_0.", ".net.0.")
        .replace(".net_2.", ".net.2.")
}

/// Inputs of one transformer call, as diffusers' `forward` takes them.
#[derive(Debug, Clone)]
pub struct HunyuanVideoInputs<B: Backend> {
    /// Latents `[batch, in_channels, frames, height, width]`.
    pub hidden_states: Tensor<B, 5>,
    /// Timesteps `[batch]` (the scheduler's, in `[0, 1000]`).
    pub timestep: Tensor<B, 1>,
    /// Text-encoder states `[batch, text_seq, text_embed_dim]`.
    pub encoder_hidden_states: Tensor<B, 3>,
    /// Text mask `[batch, text_seq]`: 1 for a token, 0 for padding.
    pub encoder_attention_mask: Tensor<B, 2>,
    /// Pooled CLIP embedding `[batch, pooled_projection_dim]`.
    pub pooled_projections: Tensor<B, 2>,
    /// Guidance `[batch]` (the pipeline's `guidance_scale * 1000`); exactly when the model has
    /// `guidance_embeds`.
    pub guidance: Option<Tensor<B, 1>>,
}

/// Rotary tables `[tokens + text_len, sum(axes)]` over the (frame, row, column) patch grid,
/// frame-major as the tokens, with frequencies in f32 (diffusers' `get_1d_rotary_pos_embed`
/// default); the `text_len` rows after them are the identity (cos 1, sin 0), so the text
/// tokens appended after the image tokens pass unrotated.
fn rope_tables<B: Backend>(
    grid: [usize; 3],
    axes: [usize; 3],
    theta: f64,
    text_len: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let dim: usize = axes.iter().sum();
    let n = grid.iter().product::<usize>();
    let rows = n + text_len;
    let mut cos = vec![1f32; rows * dim];
    let mut sin = vec![0f32; rows * dim];
    let mut offset = 0;
    for (axis, &d) in axes.iter().enumerate() {
        // Position of token i along this axis (i = (t * rows + y) * columns + x).
        let stride: usize = grid[axis + 1..].iter().product();
        let pos: Vec<f64> = (0..n).map(|i| ((i / stride) % grid[axis]) as f64).collect();
        let opts = RopeOptions {
            theta,
            ..RopeOptions::default()
        };
        let (c, s) = rotary_cos_sin(d, &pos, opts);
        for r in 0..n {
            cos[r * dim + offset..r * dim + offset + d].copy_from_slice(&c[r * d..(r + 1) * d]);
            sin[r * dim + offset..r * dim + offset + d].copy_from_slice(&s[r * d..(r + 1) * d]);
        }
        offset += d;
    }
    (
        Tensor::from_data(TensorData::new(cos, [rows, dim]), (device, DType::F32)),
        Tensor::from_data(TensorData::new(sin, [rows, dim]), (device, DType::F32)),
    )
}

/// A `[b, 1, q, k]` keep-mask from host booleans (`None` when nothing is masked).
fn keep_mask<B: Backend>(
    keep: Vec<bool>,
    shape: [usize; 4],
    device: &B::Device,
) -> Option<AttentionMask<B>> {
    if keep.iter().all(|&k| k) {
        return None;
    }
    let values: Vec<f32> = keep
        .into_iter()
        .map(|k| if k { 1.0 } else { 0.0 })
        .collect();
    let t = Tensor::<B, 4>::from_data(TensorData::new(values, shape), (device, DType::F32));
    Some(AttentionMask::Keep(t.greater_elem(0.5)))
}

/// Step caches (diffusers' `CacheMixin`): the repeated block lists in definition order.
impl<B: Backend> diffusers_nn::hooks::CacheableModel<B> for HunyuanVideoTransformer3DModel<B> {
    fn hook_registry(&self) -> &HookRegistry<B> {
        &self.hooks
    }

    fn block_lists(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("transformer_blocks", self.transformer_blocks.len()),
            (
                "single_transformer_blocks",
                self.single_transformer_blocks.len(),
            ),
        ]
    }
}

impl<B: Backend> HunyuanVideoTransformer3DModel<B> {
    /// Builds the model (lazily initialised parameters) for any block counts.
    pub fn new(c: &HunyuanVideoTransformer3DModelConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let dim = c.inner_dim();
        let heads = c.num_attention_heads;
        let mlp = c.mlp_dim();
        let qk_norm = c.qk_norm.is_some();
        let patch = [c.patch_size_t, c.patch_size, c.patch_size];
        let out_channels = c.out_channels();
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        Ok(Self {
            x_embedder: HunyuanVideoPatchEmbed {
                proj: Conv3dConfig::new(c.in_channels, dim, patch)
                    .with_stride(patch)
                    .init(device),
            },
            context_embedder: HunyuanVideoTokenRefiner {
                time_text_embed: TimeTextEmbed {
                    timestep_embedder: MlpEmbedding::new(256, dim, device),
                    guidance_embedder: None,
                    text_embedder: MlpEmbedding::new(c.text_embed_dim, dim, device),
                },
                proj_in: lin(c.text_embed_dim, dim),
                token_refiner: HunyuanVideoIndividualTokenRefiner {
                    refiner_blocks: (0..c.num_refiner_layers)
                        .map(|_| HunyuanVideoIndividualTokenRefinerBlock::new(dim, heads, device))
                        .collect(),
                },
            },
            time_text_embed: TimeTextEmbed {
                timestep_embedder: MlpEmbedding::new(256, dim, device),
                guidance_embedder: c
                    .guidance_embeds
                    .then(|| MlpEmbedding::new(256, dim, device)),
                text_embedder: MlpEmbedding::new(c.pooled_projection_dim, dim, device),
            },
            transformer_blocks: (0..c.num_layers)
                .map(|_| HunyuanVideoTransformerBlock {
                    norm1: AdaNorm::new(dim, 6, device),
                    norm1_context: AdaNorm::new(dim, 6, device),
                    attn: HunyuanVideoAttention::new(dim, heads, qk_norm, AttnKind::Joint, device),
                    ff: FeedForward::new(dim, mlp, device),
                    ff_context: FeedForward::new(dim, mlp, device),
                    norm2: LayerNormConfig::new(dim)
                        .with_eps(1e-6)
                        .with_elementwise_affine(false)
                        .init(device),
                })
                .collect(),
            single_transformer_blocks: (0..c.num_single_layers)
                .map(|_| HunyuanVideoSingleTransformerBlock {
                    norm: AdaNorm::new(dim, 3, device),
                    attn: HunyuanVideoAttention::new(dim, heads, qk_norm, AttnKind::Single, device),
                    proj_mlp: lin(dim, mlp),
                    proj_out: lin(dim + mlp, dim),
                })
                .collect(),
            norm_out: AdaNorm::new(dim, 2, device),
            proj_out: lin(dim, patch.iter().product::<usize>() * out_channels),
            patch,
            rope_axes: [c.rope_axes_dim[0], c.rope_axes_dim[1], c.rope_axes_dim[2]],
            rope_theta: c.rope_theta,
            in_channels: c.in_channels,
            out_channels,
            text_embed_dim: c.text_embed_dim,
            pooled_projection_dim: c.pooled_projection_dim,
            hooks: HookRegistry::default(),
        })
    }

    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` (or its shards).
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, HunyuanVideoTransformer3DModelConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (diffusers' `variant=`).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, HunyuanVideoTransformer3DModelConfig)> {
        let folder = folder.as_ref();
        let config: HunyuanVideoTransformer3DModelConfig =
            diffusers_core::config::load_config(folder.join("config.json"))?;
        let weights = Weights::from_folder(folder, WeightsName::DIFFUSERS, variant)?;
        let key_map = |p: &str| checkpoint_key(p);
        let (m, _) = load_into(
            Self::new(&config, device)?,
            &weights,
            LoadOptions {
                dtype,
                key_map: Some(&key_map),
                ..Default::default()
            },
        )?;
        Ok((m, config))
    }

    /// Latent channels the model takes.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Patch size `[t, h, w]`.
    pub fn patch_size(&self) -> [usize; 3] {
        self.patch
    }

    fn invalid(reason: String) -> Error {
        Error::InvalidInput {
            model: MODEL,
            reason,
        }
    }

    /// Checks the inputs' shapes against each other and the model; returns the text mask's
    /// rows (each 0/1 with at least one token).
    fn check(&self, inputs: &HunyuanVideoInputs<B>) -> Result<Vec<Vec<bool>>> {
        let [b, c, f, h, w] = inputs.hidden_states.dims();
        let [pt, ph, pw] = self.patch;
        if c != self.in_channels {
            return Err(Self::invalid(format!(
                "latents have {c} channels, the model takes {}",
                self.in_channels
            )));
        }
        if b == 0 || f == 0 || h == 0 || w == 0 || f % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(Self::invalid(format!(
                "latents of batch {b} and frames x height x width {f}x{h}x{w}: all must be \
                 positive, the sizes multiples of the patch size {pt}x{ph}x{pw}"
            )));
        }
        let [tb, tl, td] = inputs.encoder_hidden_states.dims();
        if tb != b || tl == 0 || td != self.text_embed_dim {
            return Err(Self::invalid(format!(
                "text states [{tb}, {tl}, {td}] for a batch of {b}: [{b}, tokens > 0, {}] expected",
                self.text_embed_dim
            )));
        }
        let mask_dims = inputs.encoder_attention_mask.dims();
        if mask_dims != [b, tl] {
            return Err(Self::invalid(format!(
                "text mask {mask_dims:?} for text states [{b}, {tl}, _]: [{b}, {tl}] expected"
            )));
        }
        let pooled = inputs.pooled_projections.dims();
        if pooled != [b, self.pooled_projection_dim] {
            return Err(Self::invalid(format!(
                "pooled projections {pooled:?}: [{b}, {}] expected",
                self.pooled_projection_dim
            )));
        }
        if inputs.timestep.dims()[0] != b {
            return Err(Self::invalid(format!(
                "{} timesteps for a batch of {b}",
                inputs.timestep.dims()[0]
            )));
        }
        let has_guidance = self.time_text_embed.guidance_embedder.is_some();
        match &inputs.guidance {
            Some(g) if !has_guidance => {
                return Err(Self::invalid(format!(
                    "guidance {:?} given to a model without guidance_embeds",
                    g.dims()
                )));
            }
            None if has_guidance => {
                return Err(Self::invalid(
                    "the model has guidance_embeds: guidance (guidance_scale * 1000 per sample) \
                     is required"
                        .into(),
                ));
            }
            Some(g) if g.dims()[0] != b => {
                return Err(Self::invalid(format!(
                    "{} guidance values for a batch of {b}",
                    g.dims()[0]
                )));
            }
            _ => {}
        }
        let values = inputs
            .encoder_attention_mask
            .clone()
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| Self::invalid(format!("text mask unreadable: {e:?}")))?;
        let rows: Vec<Vec<bool>> = values
            .chunks(tl)
            .map(|r| r.iter().map(|&v| v == 1.0).collect())
            .collect();
        for (i, (row, keep)) in values.chunks(tl).zip(&rows).enumerate() {
            if row.iter().any(|&v| v != 0.0 && v != 1.0) {
                return Err(Self::invalid(format!(
                    "text mask row {i} holds values other than 0 and 1"
                )));
            }
            if !keep.iter().any(|&k| k) {
                return Err(Self::invalid(format!(
                    "text mask row {i} keeps no token (diffusers' mean over it is NaN)"
                )));
            }
        }
        Ok(rows)
    }

    /// One denoiser call: the predicted flow, shaped as the latents
    /// (`[batch, out_channels, frames, height, width]`).
    pub fn forward(&self, inputs: HunyuanVideoInputs<B>) -> Result<Tensor<B, 5>> {
        let mask_rows = self.check(&inputs)?;
        let HunyuanVideoInputs {
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            pooled_projections,
            guidance,
        } = inputs;
        let [b, _, f, h, w] = hidden_states.dims();
        let [pt, ph, pw] = self.patch;
        let (ppf, pph, ppw) = (f / pt, h / ph, w / pw);
        let s_img = ppf * pph * ppw;
        let s_txt = encoder_hidden_states.dims()[1];
        let device = hidden_states.device();

        // Conditioning: the 256-channel sinusoidal projections in f32, cast to the pooled
        // projection's dtype (diffusers' `.to(dtype=pooled_projection.dtype)`).
        let pdtype = pooled_projections.dtype();
        let proj = |t: Tensor<B, 1>| {
            get_timestep_embedding(t.cast(DType::F32), 256, true, 0.0, 1.0, 10000.0).cast(pdtype)
        };
        let tte = &self.time_text_embed;
        let mut temb = tte.timestep_embedder.forward(proj(timestep.clone()));
        if let (Some(g), Some(e)) = (guidance, &tte.guidance_embedder) {
            temb = temb + e.forward(proj(g));
        }
        let temb = temb + tte.text_embedder.forward(pooled_projections);

        let x = self.x_embedder.proj.forward(hidden_states);
        let dim = x.dims()[1];
        let x = x.reshape([b, dim, s_img]).swap_dims(1, 2);

        // Token refiner. Pooled text: the mask-weighted mean, in f32, back to the text dtype.
        let ce = &self.context_embedder;
        let tdtype = encoder_hidden_states.dtype();
        let mask_f: Tensor<B, 3> = encoder_attention_mask.cast(DType::F32).unsqueeze_dim(2);
        let pooled_text = ((encoder_hidden_states.clone().cast(DType::F32) * mask_f.clone())
            .sum_dim(1)
            / mask_f.sum_dim(1))
        .reshape([b, self.text_embed_dim])
        .cast(tdtype);
        let ptd = pooled_text.dtype();
        let t_proj =
            get_timestep_embedding(timestep.cast(DType::F32), 256, true, 0.0, 1.0, 10000.0)
                .cast(ptd);
        let refiner_temb = ce.time_text_embed.timestep_embedder.forward(t_proj)
            + ce.time_text_embed.text_embedder.forward(pooled_text);
        let ctx = ce.proj_in.forward(encoder_hidden_states);
        // Refiner mask: token pairs both kept; key 0 always (padded queries attend to it).
        let mut refine_keep = Vec::with_capacity(b * s_txt * s_txt);
        for row in &mask_rows {
            for &qk in row {
                for (j, &kk) in row.iter().enumerate() {
                    refine_keep.push(j == 0 || (qk && kk));
                }
            }
        }
        let refine_mask = keep_mask::<B>(refine_keep, [b, 1, s_txt, s_txt], &device);
        // Hooked as diffusers names them (PAB caches these attentions too).
        let _call = self.hooks.enter_model_call();
        let mut ctx = self
            .hooks
            .run_blocks(
                "context_embedder.token_refiner.refiner_blocks",
                &ce.token_refiner.refiner_blocks,
                BlockStates::new(ctx, None),
                |block, s| {
                    BlockStates::new(
                        block.forward(s.hidden_states, refiner_temb.clone(), refine_mask.clone()),
                        None,
                    )
                },
            )
            .hidden_states;

        // Joint mask over [image, text]: diffusers keeps the first image + sum(mask) tokens.
        let mut keep = Vec::with_capacity(b * (s_img + s_txt));
        for row in &mask_rows {
            let kept = s_img + row.iter().filter(|&&k| k).count();
            keep.extend((0..s_img + s_txt).map(|i| i < kept));
        }
        let mask = keep_mask::<B>(keep, [b, 1, 1, s_img + s_txt], &device);

        let (cos, sin) = rope_tables::<B>(
            [ppf, pph, ppw],
            self.rope_axes,
            self.rope_theta,
            s_txt,
            &device,
        );
        let x = if self.hooks.is_empty() {
            let mut x = x;
            for block in &self.transformer_blocks {
                let (nx, nc) =
                    block.forward(x, ctx, temb.clone(), mask.clone(), cos.clone(), sin.clone());
                x = nx;
                ctx = nc;
            }
            let mut joint = Tensor::cat(vec![x, ctx], 1);
            for block in &self.single_transformer_blocks {
                joint = block.forward(joint, temb.clone(), mask.clone(), cos.clone(), sin.clone());
            }
            joint.narrow(1, 0, s_img)
        } else {
            // Through the hooks, every block takes and returns the video and text streams
            // separately, as diffusers' blocks do (its single blocks join and split them).
            const ENC: &str = "block hooks return the encoder states their block returns";
            let states = BlockStates::new(x, Some(ctx));
            let states = self.hooks.run_blocks(
                "transformer_blocks",
                &self.transformer_blocks,
                states,
                |b, s| {
                    let ctx = s.encoder_hidden_states.expect(ENC);
                    let (x, c) = b.forward(
                        s.hidden_states,
                        ctx,
                        temb.clone(),
                        mask.clone(),
                        cos.clone(),
                        sin.clone(),
                    );
                    BlockStates::new(x, Some(c))
                },
            );
            let states = self.hooks.run_blocks(
                "single_transformer_blocks",
                &self.single_transformer_blocks,
                states,
                |b, s| {
                    let ctx = s.encoder_hidden_states.expect(ENC);
                    let joint = Tensor::cat(vec![s.hidden_states, ctx], 1);
                    let joint =
                        b.forward(joint, temb.clone(), mask.clone(), cos.clone(), sin.clone());
                    BlockStates::new(
                        joint.clone().narrow(1, 0, s_img),
                        Some(joint.narrow(1, s_img, s_txt)),
                    )
                },
            );
            states.hidden_states
        };

        // AdaLayerNormContinuous: (scale, shift) order.
        let m = self.norm_out.chunks(temb);
        let x = self.norm_out.modulate(x, m[1].clone(), m[0].clone());
        let x = module_call("proj_out", || vec![self.proj_out.forward(x)])
            .into_iter()
            .next()
            .expect("the proj_out hook returns proj_out's output");
        // Unpatchify: [b, f, h, w, c, pt, ph, pw] -> [b, c, f, pt, h, ph, w, pw].
        let x: Tensor<B, 8> = x.reshape([b, ppf, pph, ppw, self.out_channels, pt, ph, pw]);
        Ok(x.permute([0, 4, 1, 5, 2, 6, 3, 7])
            .reshape([b, self.out_channels, f, h, w]))
    }
}
