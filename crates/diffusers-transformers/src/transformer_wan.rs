//! diffusers' `WanTransformer3DModel` (`models/transformers/transformer_wan.py`), the denoiser
//! of Wan 2.1 text-to-video.
//!
//! Module fields follow the checkpoint keys; [`checkpoint_key`] maps the ones that cannot
//! (`ffn.net.0` / `ffn.net.2`, `attn*.to_out.0`).
//!
//! Where diffusers computes in f32 whatever the model's dtype (its `FP32LayerNorm`s, the
//! `scale_shift_table` modulation, the residual adds: `_keep_in_fp32_modules` and the
//! `.float()` calls of `WanTransformerBlock.forward`), this does too. One difference in bf16/f16:
//! the loader converts every parameter to the compute dtype, so the `scale_shift_table`s and
//! the time embedder hold half-precision values where diffusers keeps the checkpoint's f32
//! (no difference for checkpoints stored in bf16).

use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::silu;
use diffusers_nn::attention::scaled_dot_product_attention;
use diffusers_nn::conv::{Conv3d, Conv3dConfig};
use diffusers_nn::embeddings::{
    RotaryPairing, apply_rotary_emb, get_timestep_embedding, multi_axis_rotary_pos_embed,
};
use diffusers_nn::hooks::{BlockStates, HookRegistry, module_call};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use serde::{Deserialize, Serialize};

use crate::transformer_flux::{FeedForward, MlpEmbedding};
use crate::{Error, Result};

const MODEL: &str = "WanTransformer3DModel";

/// `WanTransformer3DModel`'s config, key for key with diffusers' defaults (the 14B model's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WanTransformer3DModelConfig {
    /// Patch size `[t, h, w]`.
    pub patch_size: Vec<usize>,
    /// Heads.
    pub num_attention_heads: usize,
    /// Width of each head.
    pub attention_head_dim: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out (`in_channels` when null or 0, as diffusers' `out_channels or
    /// in_channels`).
    pub out_channels: Option<usize>,
    /// Width of the UMT5 text states.
    pub text_dim: usize,
    /// Channels of the sinusoidal timestep projection.
    pub freq_dim: usize,
    /// Feed-forward hidden width.
    pub ffn_dim: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Whether the cross-attention input has an affine `FP32LayerNorm` (`norm2`).
    pub cross_attn_norm: bool,
    /// Query/key normalisation (diffusers builds an RMS norm across heads whatever this says).
    pub qk_norm: Option<String>,
    /// Epsilon of every norm.
    pub eps: f64,
    /// Image-embedding width (Wan 2.1 image-to-video; not supported here).
    pub image_dim: Option<usize>,
    /// Added key/value width (image-to-video; not supported here).
    pub added_kv_proj_dim: Option<usize>,
    /// Positions the rotary tables cover per axis.
    pub rope_max_seq_len: usize,
    /// Image position embedding length (FLF2V; not supported here).
    pub pos_embed_seq_len: Option<usize>,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for WanTransformer3DModelConfig {
    fn default() -> Self {
        Self {
            patch_size: vec![1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
            meta: ConfigMeta::default(),
        }
    }
}

impl WanTransformer3DModelConfig {
    /// Output channels (`out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.in_channels)
    }

    /// Patch size as `[t, h, w]` (validated by [`diffusers_core::config::Config::validate`]).
    fn patch(&self) -> [usize; 3] {
        let p = &self.patch_size;
        [p[0], p[1], p[2]]
    }

    /// Rotary features of the `[t, h, w]` axes (`h = w = 2 * (head_dim / 6)`, `t` the rest).
    pub fn rope_axes(&self) -> [usize; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }
}

impl diffusers_core::config::Config for WanTransformer3DModelConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.patch_size.len() != 3 || self.patch_size.contains(&0) {
            return Err(format!(
                "patch_size must be three positive sizes [t, h, w], got {:?}",
                self.patch_size
            ));
        }
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err("num_attention_heads and attention_head_dim must be positive".into());
        }
        if !self.attention_head_dim.is_multiple_of(2) || self.attention_head_dim < 6 {
            return Err(format!(
                "attention_head_dim {} must be even and at least 6 (three rotary axes)",
                self.attention_head_dim
            ));
        }
        if self.in_channels == 0 || self.freq_dim == 0 || self.text_dim == 0 || self.ffn_dim == 0 {
            return Err("in_channels, freq_dim, text_dim and ffn_dim must be positive".into());
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("eps {} must be a positive number", self.eps));
        }
        if self.image_dim.is_some()
            || self.added_kv_proj_dim.is_some()
            || self.pos_embed_seq_len.is_some()
        {
            return Err(
                "image_dim, added_kv_proj_dim and pos_embed_seq_len (Wan image-to-video) are \
                 not supported yet: only text-to-video checkpoints load"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `WanAttention` without image keys: self-attention (`attn1`, rotary) or cross-attention
/// over the text states (`attn2`), with RMS norms across all heads on queries and keys.
#[derive(Module, Debug)]
pub struct WanAttention<B: Backend> {
    /// Query.
    pub to_q: Linear<B>,
    /// Key.
    pub to_k: Linear<B>,
    /// Value.
    pub to_v: Linear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: Linear<B>,
    /// Query RMS norm over `heads * head_dim`.
    pub norm_q: RmsNorm<B>,
    /// Key RMS norm.
    pub norm_k: RmsNorm<B>,
    heads: usize,
}

impl<B: Backend> WanAttention<B> {
    fn new(dim: usize, heads: usize, eps: f64, device: &B::Device) -> Self {
        let lin = || LinearConfig::new(dim, dim).init(device);
        let rms = || RmsNormConfig::new(dim).with_eps(eps).init(device);
        Self {
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: lin(),
            norm_q: rms(),
            norm_k: rms(),
            heads,
        }
    }

    /// `[b, s, heads * d]` -> `[b, heads, s, d]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, s, inner] = x.dims();
        x.reshape([b, s, self.heads, inner / self.heads])
            .swap_dims(1, 2)
    }

    /// Attention of `x` over itself (with the rotary tables) or over `context`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        rope: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let kv = context.unwrap_or_else(|| x.clone());
        let q = self.split_heads(self.norm_q.forward(self.to_q.forward(x)));
        let k = self.split_heads(self.norm_k.forward(self.to_k.forward(kv.clone())));
        let v = self.split_heads(self.to_v.forward(kv));
        let (q, k) = match rope {
            Some((cos, sin)) => (
                apply_rotary_emb(q, cos.clone(), sin.clone(), RotaryPairing::Interleaved),
                apply_rotary_emb(k, cos, sin, RotaryPairing::Interleaved),
            ),
            None => (q, k),
        };
        let o = scaled_dot_product_attention(q, k, v, None, None, false);
        let [_, h, _, d] = o.dims();
        self.to_out
            .forward(o.swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

/// `WanTransformerBlock`: modulated self-attention, cross-attention over the text, modulated
/// feed-forward.
#[derive(Module, Debug)]
pub struct WanTransformerBlock<B: Backend> {
    /// Self-attention.
    pub attn1: WanAttention<B>,
    /// Cross-attention.
    pub attn2: WanAttention<B>,
    /// Affine norm before the cross-attention (`cross_attn_norm`).
    pub norm2: Option<LayerNorm<B>>,
    /// Feed-forward.
    pub ffn: FeedForward<B>,
    /// `[1, 6, dim]`: shift, scale, gate of the attention and of the feed-forward.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    norm: LayerNorm<B>,
}

/// f32 `[b, 1, dim]` chunks of `table + temb` along dimension 1.
fn modulation<B: Backend>(table: &Param<Tensor<B, 3>>, temb: Tensor<B, 3>) -> Vec<Tensor<B, 3>> {
    let n = table.dims()[1];
    (table.val().cast(DType::F32) + temb.cast(DType::F32)).chunk(n, 1)
}

impl<B: Backend> WanTransformerBlock<B> {
    /// Applies the block to `x` (`[b, tokens, dim]`) with the text states `context`, the
    /// timestep projection `temb` (`[b, 6, dim]`) and the rotary tables (`[tokens, head_dim]`).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        temb: Tensor<B, 3>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let m = modulation(&self.scale_shift_table, temb);
        let (shift, scale, gate) = (&m[0], &m[1], &m[2]);
        let (c_shift, c_scale, c_gate) = (&m[3], &m[4], &m[5]);
        // 1. Self-attention: norm, modulation and the residual add in f32.
        let n = (self.norm.forward(x.clone().cast(DType::F32)) * (scale.clone() + 1.0)
            + shift.clone())
        .cast(dtype);
        let attn = first(module_call("attn1", || {
            vec![self.attn1.forward(n, None, Some((cos, sin)))]
        }));
        let x = (x.cast(DType::F32) + attn.cast(DType::F32) * gate.clone()).cast(dtype);
        // 2. Cross-attention.
        let n = match &self.norm2 {
            Some(norm2) => norm2.forward(x.clone().cast(DType::F32)).cast(dtype),
            None => x.clone(),
        };
        let x = x + first(module_call("attn2", || {
            vec![self.attn2.forward(n, Some(context), None)]
        }));
        // 3. Feed-forward.
        let n = (self.norm.forward(x.clone().cast(DType::F32)) * (c_scale.clone() + 1.0)
            + c_shift.clone())
        .cast(dtype);
        let ff = self.ffn.forward(n);
        (x.cast(DType::F32) + ff.cast(DType::F32) * c_gate.clone()).cast(dtype)
    }
}

/// `WanTimeTextImageEmbedding` without the image embedder.
#[derive(Module, Debug)]
pub struct WanTimeTextEmbedding<B: Backend> {
    /// `TimestepEmbedding` (`linear_1`, SiLU, `linear_2`).
    pub time_embedder: MlpEmbedding<B>,
    /// `[6 * dim, dim]`: the per-block modulation, after a SiLU.
    pub time_proj: Linear<B>,
    /// `PixArtAlphaTextProjection` (`linear_1`, tanh-GELU, `linear_2`).
    pub text_embedder: MlpEmbedding<B>,
}

/// `WanTransformer3DModel` (text-to-video).
#[derive(Module, Debug)]
pub struct WanTransformer3DModel<B: Backend> {
    /// Patchify: a 3-D convolution with kernel and stride `patch_size`.
    pub patch_embedding: Conv3d<B>,
    /// Timestep and text conditioning.
    pub condition_embedder: WanTimeTextEmbedding<B>,
    /// Transformer blocks.
    pub blocks: Vec<WanTransformerBlock<B>>,
    /// Output projection to `out_channels * prod(patch_size)`.
    pub proj_out: Linear<B>,
    /// `[1, 2, dim]`: shift and scale of the output norm.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    norm_out: LayerNorm<B>,
    patch: [usize; 3],
    rope_axes: [usize; 3],
    rope_max_seq_len: usize,
    freq_dim: usize,
    in_channels: usize,
    out_channels: usize,
    text_dim: usize,
    /// Hooks on the blocks, their attention modules and `proj_out` (step caches, offloading;
    /// see [`diffusers_nn::hooks`]).
    pub hooks: HookRegistry<B>,
}

/// The one output of a hooked module call.
fn first<B: Backend>(outputs: Vec<Tensor<B, 3>>) -> Tensor<B, 3> {
    outputs
        .into_iter()
        .next()
        .expect("module hooks return the module's output")
}

/// Checkpoint key of a module path (`ffn.net_0` -> `ffn.net.0`, `to_out` -> `to_out.0`).
pub fn checkpoint_key(path: &str) -> String {
    path.replace(".net_0.", ".net.0.")
        .replace(".net_2.", ".net.2.")
        .replace(".to_out.", ".to_out.0.")
}

/// Inputs of one transformer call, as diffusers' `forward` takes them.
#[derive(Debug, Clone)]
pub struct WanInputs<B: Backend> {
    /// Latents `[batch, in_channels, frames, height, width]`.
    pub hidden_states: Tensor<B, 5>,
    /// Timesteps `[batch]` (the scheduler's, in `[0, 1000]`).
    pub timestep: Tensor<B, 1>,
    /// UMT5 states `[batch, text_seq, text_dim]`.
    pub encoder_hidden_states: Tensor<B, 3>,
}

/// Step caches (diffusers' `CacheMixin`): the repeated block lists in definition order.
impl<B: Backend> diffusers_nn::hooks::CacheableModel<B> for WanTransformer3DModel<B> {
    fn hook_registry(&self) -> &HookRegistry<B> {
        &self.hooks
    }

    fn block_lists(&self) -> Vec<(&'static str, usize)> {
        vec![("blocks", self.blocks.len())]
    }
}

impl<B: Backend> WanTransformer3DModel<B> {
    /// Builds the model (lazily initialised parameters) for any block count.
    pub fn new(c: &WanTransformer3DModelConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let dim = c.num_attention_heads * c.attention_head_dim;
        let patch = c.patch();
        let out_channels = c.out_channels();
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let ln = |affine: bool| {
            LayerNormConfig::new(dim)
                .with_eps(c.eps)
                .with_elementwise_affine(affine)
                .init(device)
        };
        let table =
            |n: usize| burn::module::Initializer::Zeros.init::<B, 3, _>([1, n, dim], device);
        Ok(Self {
            patch_embedding: Conv3dConfig::new(c.in_channels, dim, patch)
                .with_stride(patch)
                .init(device),
            condition_embedder: WanTimeTextEmbedding {
                time_embedder: MlpEmbedding::new(c.freq_dim, dim, device),
                time_proj: lin(dim, 6 * dim),
                text_embedder: MlpEmbedding::new(c.text_dim, dim, device),
            },
            blocks: (0..c.num_layers)
                .map(|_| WanTransformerBlock {
                    attn1: WanAttention::new(dim, c.num_attention_heads, c.eps, device),
                    attn2: WanAttention::new(dim, c.num_attention_heads, c.eps, device),
                    norm2: c.cross_attn_norm.then(|| ln(true)),
                    ffn: FeedForward::new(dim, c.ffn_dim, device),
                    scale_shift_table: table(6),
                    norm: ln(false),
                })
                .collect(),
            proj_out: lin(dim, out_channels * patch.iter().product::<usize>()),
            scale_shift_table: table(2),
            norm_out: ln(false),
            patch,
            rope_axes: c.rope_axes(),
            rope_max_seq_len: c.rope_max_seq_len,
            freq_dim: c.freq_dim,
            in_channels: c.in_channels,
            out_channels,
            text_dim: c.text_dim,
            hooks: HookRegistry::default(),
        })
    }

    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` (or its shards).
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, WanTransformer3DModelConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (diffusers' `variant=`).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, WanTransformer3DModelConfig)> {
        let folder = folder.as_ref();
        let config: WanTransformer3DModelConfig =
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

    /// One denoiser call: the predicted flow, shaped as the latents
    /// (`[batch, out_channels, frames, height, width]`).
    pub fn forward(&self, inputs: WanInputs<B>) -> Result<Tensor<B, 5>> {
        let WanInputs {
            hidden_states,
            timestep,
            encoder_hidden_states,
        } = inputs;
        let [b, c, f, h, w] = hidden_states.dims();
        let [pt, ph, pw] = self.patch;
        if c != self.in_channels {
            return Err(Self::invalid(format!(
                "latents have {c} channels, the model takes {}",
                self.in_channels
            )));
        }
        if f == 0
            || h == 0
            || w == 0
            || !f.is_multiple_of(pt)
            || !h.is_multiple_of(ph)
            || !w.is_multiple_of(pw)
        {
            return Err(Self::invalid(format!(
                "latent frames x height x width {f}x{h}x{w} must be positive multiples of the \
                 patch size {pt}x{ph}x{pw}"
            )));
        }
        let (ppf, pph, ppw) = (f / pt, h / ph, w / pw);
        if ppf.max(pph).max(ppw) > self.rope_max_seq_len {
            return Err(Self::invalid(format!(
                "{ppf}x{pph}x{ppw} patches: more than rope_max_seq_len {} along an axis",
                self.rope_max_seq_len
            )));
        }
        let [cb, _, cd] = encoder_hidden_states.dims();
        if cb != b || cd != self.text_dim {
            return Err(Self::invalid(format!(
                "text states [{cb}, _, {cd}] for a batch of {b} and text_dim {}",
                self.text_dim
            )));
        }
        if timestep.dims()[0] != b {
            return Err(Self::invalid(format!(
                "{} timesteps for a batch of {b}",
                timestep.dims()[0]
            )));
        }
        let device = hidden_states.device();
        let dtype = hidden_states.dtype();

        // Rotary tables over the (frame, row, column) patch grid, frame-major as the tokens.
        let ids: Vec<Vec<f64>> = (0..ppf)
            .flat_map(|t| {
                (0..pph)
                    .flat_map(move |y| (0..ppw).map(move |x| vec![t as f64, y as f64, x as f64]))
            })
            .collect();
        let (cos, sin) = multi_axis_rotary_pos_embed::<B>(&ids, &self.rope_axes, 10000.0, &device);

        let x = self.patch_embedding.forward(hidden_states);
        let dim = x.dims()[1];
        let x = x.reshape([b, dim, ppf * pph * ppw]).swap_dims(1, 2);

        // Conditioning: the sinusoidal projection in f32, cast to the time embedder's dtype;
        // temb in the text states' dtype.
        let ce = &self.condition_embedder;
        let t = get_timestep_embedding(
            timestep.cast(DType::F32),
            self.freq_dim,
            true,
            0.0,
            1.0,
            10000.0,
        )
        .cast(ce.time_embedder.linear_1.dtype());
        let temb = ce
            .time_embedder
            .forward(t)
            .cast(encoder_hidden_states.dtype());
        let tproj: Tensor<B, 3> = ce
            .time_proj
            .forward(silu(temb.clone()))
            .reshape([b, 6, dim]);
        let context = ce.text_embedder.forward_gelu_tanh(encoder_hidden_states);

        let _call = self.hooks.enter_model_call();
        let x = self
            .hooks
            .run_blocks(
                "blocks",
                &self.blocks,
                BlockStates::new(x, None),
                |block, s| {
                    BlockStates::new(
                        block.forward(
                            s.hidden_states,
                            context.clone(),
                            tproj.clone(),
                            cos.clone(),
                            sin.clone(),
                        ),
                        None,
                    )
                },
            )
            .hidden_states;

        let m = modulation(&self.scale_shift_table, temb.unsqueeze_dim(1));
        let x = (self.norm_out.forward(x.cast(DType::F32)) * (m[1].clone() + 1.0) + m[0].clone())
            .cast(dtype);
        let x = first(module_call("proj_out", || vec![self.proj_out.forward(x)]));
        // Unpatchify: [b, f, h, w, pt, ph, pw, c] -> [b, c, f, pt, h, ph, w, pw].
        let x: Tensor<B, 8> = x.reshape([b, ppf, pph, ppw, pt, ph, pw, self.out_channels]);
        Ok(x.permute([0, 7, 1, 4, 2, 5, 3, 6])
            .reshape([b, self.out_channels, f, h, w]))
    }
}
