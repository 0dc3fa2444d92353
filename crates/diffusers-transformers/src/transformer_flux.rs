//! diffusers' `FluxTransformer2DModel` (`models/transformers/transformer_flux.py`).
//!
//! Module fields follow the checkpoint keys; [`checkpoint_key`] maps the two that cannot
//! (`ff.net.0` / `ff.net.2`).

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::{Gelu, GeluApproximate, GeluConfig, gelu_tanh, silu};
use diffusers_nn::attention::scaled_dot_product_attention;
use diffusers_nn::embeddings::{
    RotaryPairing, apply_rotary_emb, get_timestep_embedding, multi_axis_rotary_pos_embed,
};
use diffusers_nn::hooks::{BlockStates, HookRegistry, module_call};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const MODEL: &str = "FluxTransformer2DModel";

fn d1() -> usize {
    1
}
fn d64() -> usize {
    64
}
fn d19() -> usize {
    19
}
fn d38() -> usize {
    38
}
fn d128() -> usize {
    128
}
fn d24() -> usize {
    24
}
fn d4096() -> usize {
    4096
}
fn d768() -> usize {
    768
}
fn d_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

/// `FluxTransformer2DModel`'s config, key for key with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FluxTransformer2DModelConfig {
    /// Patch size (1 for FLUX.1: latents are packed 2x2 by the pipeline).
    #[serde(default = "d1")]
    pub patch_size: usize,
    /// Packed latent channels.
    #[serde(default = "d64")]
    pub in_channels: usize,
    /// Output channels (defaults to `in_channels`).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Double-stream blocks.
    #[serde(default = "d19")]
    pub num_layers: usize,
    /// Single-stream blocks.
    #[serde(default = "d38")]
    pub num_single_layers: usize,
    /// Width of each head.
    #[serde(default = "d128")]
    pub attention_head_dim: usize,
    /// Heads.
    #[serde(default = "d24")]
    pub num_attention_heads: usize,
    /// Width of the T5 text states.
    #[serde(default = "d4096")]
    pub joint_attention_dim: usize,
    /// Width of the pooled CLIP embedding.
    #[serde(default = "d768")]
    pub pooled_projection_dim: usize,
    /// Guidance embedding (FLUX.1-dev).
    #[serde(default)]
    pub guidance_embeds: bool,
    /// RoPE features per position axis.
    #[serde(default = "d_axes")]
    pub axes_dims_rope: Vec<usize>,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl diffusers_core::config::Config for FluxTransformer2DModelConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {:?} must sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.patch_size != 1 {
            return Err("only patch_size 1 is supported".into());
        }
        Ok(())
    }
}

/// `TimestepEmbedding` (`linear_1`, SiLU, `linear_2`) and `PixArtAlphaTextProjection`.
#[derive(Module, Debug)]
pub struct MlpEmbedding<B: Backend> {
    /// First projection.
    pub linear_1: Linear<B>,
    /// Second projection.
    pub linear_2: Linear<B>,
}

impl<B: Backend> MlpEmbedding<B> {
    pub(crate) fn new(i: usize, o: usize, device: &B::Device) -> Self {
        Self {
            linear_1: LinearConfig::new(i, o).init(device),
            linear_2: LinearConfig::new(o, o).init(device),
        }
    }

    /// `TimestepEmbedding`: SiLU between the projections.
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }

    /// `PixArtAlphaTextProjection(act_fn="gelu_tanh")`: tanh-GELU between the projections.
    pub(crate) fn forward_gelu_tanh<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.linear_2.forward(gelu_tanh(self.linear_1.forward(x)))
    }
}

/// `CombinedTimestep(Guidance)TextProjEmbeddings`.
#[derive(Module, Debug)]
pub struct TimeTextEmbed<B: Backend> {
    /// Timestep MLP.
    pub timestep_embedder: MlpEmbedding<B>,
    /// Guidance MLP (FLUX.1-dev).
    pub guidance_embedder: Option<MlpEmbedding<B>>,
    /// Pooled text projection.
    pub text_embedder: MlpEmbedding<B>,
}

/// `AdaLayerNormZero` / `AdaLayerNormZeroSingle` / `AdaLayerNormContinuous`: SiLU then a linear
/// producing modulation chunks.
#[derive(Module, Debug)]
pub struct AdaNorm<B: Backend> {
    /// `[chunks * dim, dim]`.
    pub linear: Linear<B>,
    norm: LayerNorm<B>,
    chunks: usize,
}

impl<B: Backend> AdaNorm<B> {
    pub(crate) fn new(dim: usize, chunks: usize, device: &B::Device) -> Self {
        Self {
            linear: LinearConfig::new(dim, chunks * dim).init(device),
            norm: LayerNormConfig::new(dim)
                .with_eps(1e-6)
                .with_elementwise_affine(false)
                .init(device),
            chunks,
        }
    }

    pub(crate) fn chunks(&self, temb: Tensor<B, 2>) -> Vec<Tensor<B, 3>> {
        self.linear
            .forward(silu(temb))
            .chunk(self.chunks, 1)
            .into_iter()
            .map(|c| c.unsqueeze_dim(1))
            .collect()
    }

    pub(crate) fn modulate(
        &self,
        x: Tensor<B, 3>,
        shift: Tensor<B, 3>,
        scale: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.norm.forward(x) * (scale + 1.0) + shift
    }
}

/// `FluxAttention` (joint attention in double blocks, self-attention in single blocks).
#[derive(Module, Debug)]
pub struct FluxAttention<B: Backend> {
    /// Query.
    pub to_q: Linear<B>,
    /// Key.
    pub to_k: Linear<B>,
    /// Value.
    pub to_v: Linear<B>,
    /// Query RMS norm over each head.
    pub norm_q: RmsNorm<B>,
    /// Key RMS norm.
    pub norm_k: RmsNorm<B>,
    /// Image output projection (`to_out.0`; absent in single blocks).
    pub to_out: Vec<Linear<B>>,
    /// Text query (double blocks).
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

/// `FeedForward(activation_fn="gelu-approximate")`: `net.0` (projection + tanh-GELU), `net.2`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `net.0`.
    pub net_0: Gelu<B>,
    /// `net.2`.
    pub net_2: Linear<B>,
}

/// A double-stream block (`FluxTransformerBlock`).
#[derive(Module, Debug)]
pub struct FluxTransformerBlock<B: Backend> {
    /// Image modulation.
    pub norm1: AdaNorm<B>,
    /// Text modulation.
    pub norm1_context: AdaNorm<B>,
    /// Joint attention.
    pub attn: FluxAttention<B>,
    /// Image feed-forward.
    pub ff: FeedForward<B>,
    /// Text feed-forward.
    pub ff_context: FeedForward<B>,
    norm2: LayerNorm<B>,
}

/// A single-stream block (`FluxSingleTransformerBlock`).
#[derive(Module, Debug)]
pub struct FluxSingleTransformerBlock<B: Backend> {
    /// Modulation.
    pub norm: AdaNorm<B>,
    /// MLP up projection.
    pub proj_mlp: Linear<B>,
    /// Output over `[attention, mlp]`.
    pub proj_out: Linear<B>,
    /// Self-attention.
    pub attn: FluxAttention<B>,
}

/// `FluxTransformer2DModel`.
#[derive(Module, Debug)]
pub struct FluxTransformer2DModel<B: Backend> {
    /// Packed-latent projection.
    pub x_embedder: Linear<B>,
    /// T5-state projection.
    pub context_embedder: Linear<B>,
    /// Timestep, guidance and pooled-text conditioning.
    pub time_text_embed: TimeTextEmbed<B>,
    /// Double-stream blocks.
    pub transformer_blocks: Vec<FluxTransformerBlock<B>>,
    /// Single-stream blocks.
    pub single_transformer_blocks: Vec<FluxSingleTransformerBlock<B>>,
    /// Final modulation (`AdaLayerNormContinuous`).
    pub norm_out: AdaNorm<B>,
    /// Output projection.
    pub proj_out: Linear<B>,
    axes_dims: Vec<usize>,
    /// Hooks on the blocks, their attention modules and `proj_out` (step caches, offloading;
    /// see [`diffusers_nn::hooks`]).
    pub hooks: HookRegistry<B>,
}

/// Checkpoint key of a module path (`ff.net_0` -> `ff.net.0`, `ff.net_2` -> `ff.net.2`).
pub fn checkpoint_key(path: &str) -> String {
    path.replace(".net_0.", ".net.0.")
        .replace(".net_2.", ".net.2.")
}

impl<B: Backend> FluxAttention<B> {
    fn new(dim: usize, heads: usize, head_dim: usize, joint: bool, device: &B::Device) -> Self {
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let rms = || RmsNormConfig::new(head_dim).with_eps(1e-6).init(device);
        let inner = heads * head_dim;
        Self {
            to_q: lin(dim, inner),
            to_k: lin(dim, inner),
            to_v: lin(dim, inner),
            norm_q: rms(),
            norm_k: rms(),
            to_out: if joint {
                vec![lin(inner, dim)]
            } else {
                Vec::new()
            },
            add_q_proj: joint.then(|| lin(dim, inner)),
            add_k_proj: joint.then(|| lin(dim, inner)),
            add_v_proj: joint.then(|| lin(dim, inner)),
            norm_added_q: joint.then(rms),
            norm_added_k: joint.then(rms),
            to_add_out: joint.then(|| lin(inner, dim)),
            heads,
        }
    }

    fn heads(&self, x: Tensor<B, 3>, proj: &Linear<B>, norm: Option<&RmsNorm<B>>) -> Tensor<B, 4> {
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

    /// Attention over `[text, image]` (joint) or the already joined sequence (single).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [b, s_img, _] = x.dims();
        let mut q = self.heads(x.clone(), &self.to_q, Some(&self.norm_q));
        let mut k = self.heads(x.clone(), &self.to_k, Some(&self.norm_k));
        let mut v = self.heads(x, &self.to_v, None);
        let mut s_txt = 0;
        if let (Some(c), Some(aq), Some(ak), Some(av)) = (
            &context,
            &self.add_q_proj,
            &self.add_k_proj,
            &self.add_v_proj,
        ) {
            s_txt = c.dims()[1];
            q = Tensor::cat(
                vec![self.heads(c.clone(), aq, self.norm_added_q.as_ref()), q],
                2,
            );
            k = Tensor::cat(
                vec![self.heads(c.clone(), ak, self.norm_added_k.as_ref()), k],
                2,
            );
            v = Tensor::cat(vec![self.heads(c.clone(), av, None), v], 2);
        }
        let q = apply_rotary_emb(q, cos.clone(), sin.clone(), RotaryPairing::Interleaved);
        let k = apply_rotary_emb(k, cos, sin, RotaryPairing::Interleaved);
        let o = scaled_dot_product_attention(q, k, v, None, None, false);
        let [_, h, s, d] = o.dims();
        let o = o.swap_dims(1, 2).reshape([b, s, h * d]);
        match (&self.to_out.first(), &self.to_add_out) {
            (Some(out), Some(add_out)) => {
                let txt = o.clone().narrow(1, 0, s_txt);
                let img = o.narrow(1, s_txt, s_img);
                (out.forward(img), Some(add_out.forward(txt)))
            }
            _ => (o, None),
        }
    }
}

impl<B: Backend> FeedForward<B> {
    /// `FeedForward(dim, inner_dim=inner, activation_fn="gelu-approximate")`.
    pub(crate) fn new(dim: usize, inner: usize, device: &B::Device) -> Self {
        Self {
            net_0: GeluConfig::new(dim, inner)
                .with_approximate(GeluApproximate::Tanh)
                .init(device),
            net_2: LinearConfig::new(inner, dim).init(device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.net_2.forward(self.net_0.forward(x))
    }
}

impl<B: Backend> FluxTransformerBlock<B> {
    /// Applies the block to image states `x` and text states `ctx` with the conditioning `temb`
    /// and the rotary `cos`/`sin` (`[text + image tokens, head_dim]`); returns `(ctx, x)`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: Tensor<B, 3>,
        temb: Tensor<B, 2>,
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
            let (a, c) = self.attn.forward(nx, Some(nc), cos, sin);
            std::iter::once(a).chain(c).collect()
        })
        .into_iter();
        let (attn, attn_ctx) = (out.next(), out.next());
        let attn = attn.expect("the attention hook returns the attention's outputs");
        let x = x + m[2].clone() * attn;
        let nx = self.norm2.forward(x.clone()) * (m[4].clone() + 1.0) + m[3].clone();
        let x = x.clone() + m[5].clone() * self.ff.forward(nx);
        let ctx = match attn_ctx {
            Some(a) => ctx + c[2].clone() * a,
            None => ctx,
        };
        let nc = self.norm2.forward(ctx.clone()) * (c[4].clone() + 1.0) + c[3].clone();
        let ctx = ctx.clone() + c[5].clone() * self.ff_context.forward(nc);
        (ctx, x)
    }
}

impl<B: Backend> FluxSingleTransformerBlock<B> {
    /// Applies the block to the joint `[text, image]` states `x`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let m = self.norm.chunks(temb);
        let n = self.norm.modulate(x.clone(), m[0].clone(), m[1].clone());
        let mlp = gelu_tanh(self.proj_mlp.forward(n.clone()));
        let attn = module_call("attn", || vec![self.attn.forward(n, None, cos, sin).0])
            .into_iter()
            .next()
            .expect("the attention hook returns the attention's output");
        x + m[2].clone() * self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2))
    }
}

/// Inputs of one transformer call, as diffusers' `forward` takes them.
#[derive(Debug, Clone)]
pub struct FluxInputs<B: Backend> {
    /// Packed latents `[batch, image_seq, in_channels]`.
    pub hidden_states: Tensor<B, 3>,
    /// T5 states `[batch, text_seq, joint_attention_dim]`.
    pub encoder_hidden_states: Tensor<B, 3>,
    /// Pooled CLIP embedding `[batch, pooled_projection_dim]`.
    pub pooled_projections: Tensor<B, 2>,
    /// Timesteps in `[0, 1]` (`t / 1000`), `[batch]`.
    pub timestep: Tensor<B, 1>,
    /// Guidance scale (FLUX.1-dev), `[batch]`.
    pub guidance: Option<Tensor<B, 1>>,
    /// Position ids of the text tokens `[text_seq][3]`.
    pub txt_ids: Vec<Vec<f64>>,
    /// Position ids of the image tokens `[image_seq][3]`.
    pub img_ids: Vec<Vec<f64>>,
}

/// Step caches (diffusers' `CacheMixin`): the repeated block lists in definition order.
impl<B: Backend> diffusers_nn::hooks::CacheableModel<B> for FluxTransformer2DModel<B> {
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

impl<B: Backend> FluxTransformer2DModel<B> {
    /// Builds the model (lazily initialised parameters) for any block counts.
    pub fn new(c: &FluxTransformer2DModelConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let dim = c.num_attention_heads * c.attention_head_dim;
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let out_channels = c.out_channels.unwrap_or(c.in_channels);
        let ln = || {
            LayerNormConfig::new(dim)
                .with_eps(1e-6)
                .with_elementwise_affine(false)
                .init(device)
        };
        Ok(Self {
            x_embedder: lin(c.in_channels, dim),
            context_embedder: lin(c.joint_attention_dim, dim),
            time_text_embed: TimeTextEmbed {
                timestep_embedder: MlpEmbedding::new(256, dim, device),
                guidance_embedder: c
                    .guidance_embeds
                    .then(|| MlpEmbedding::new(256, dim, device)),
                text_embedder: MlpEmbedding::new(c.pooled_projection_dim, dim, device),
            },
            transformer_blocks: (0..c.num_layers)
                .map(|_| FluxTransformerBlock {
                    norm1: AdaNorm::new(dim, 6, device),
                    norm1_context: AdaNorm::new(dim, 6, device),
                    attn: FluxAttention::new(
                        dim,
                        c.num_attention_heads,
                        c.attention_head_dim,
                        true,
                        device,
                    ),
                    ff: FeedForward::new(dim, 4 * dim, device),
                    ff_context: FeedForward::new(dim, 4 * dim, device),
                    norm2: ln(),
                })
                .collect(),
            single_transformer_blocks: (0..c.num_single_layers)
                .map(|_| FluxSingleTransformerBlock {
                    norm: AdaNorm::new(dim, 3, device),
                    proj_mlp: lin(dim, 4 * dim),
                    proj_out: lin(dim + 4 * dim, dim),
                    attn: FluxAttention::new(
                        dim,
                        c.num_attention_heads,
                        c.attention_head_dim,
                        false,
                        device,
                    ),
                })
                .collect(),
            norm_out: AdaNorm::new(dim, 2, device),
            proj_out: lin(dim, c.patch_size * c.patch_size * out_channels),
            axes_dims: c.axes_dims_rope.clone(),
            hooks: HookRegistry::default(),
        })
    }

    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` (or its shards).
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, FluxTransformer2DModelConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (`fp16` for `diffusion_pytorch_model.fp16.safetensors`, as
    /// diffusers' `variant=`; the default files, with a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, FluxTransformer2DModelConfig)> {
        let folder = folder.as_ref();
        let config: FluxTransformer2DModelConfig =
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

    /// One denoiser call: the predicted flow `[batch, image_seq, out_channels]`.
    pub fn forward(&self, inputs: FluxInputs<B>) -> Result<Tensor<B, 3>> {
        let FluxInputs {
            hidden_states,
            encoder_hidden_states,
            pooled_projections,
            timestep,
            guidance,
            txt_ids,
            img_ids,
        } = inputs;
        let device = hidden_states.device();
        let dtype = hidden_states.dtype();
        let [_, s_img, _] = hidden_states.dims();
        let s_txt = encoder_hidden_states.dims()[1];
        if txt_ids.len() != s_txt || img_ids.len() != s_img {
            return Err(Error::InvalidInput {
                model: MODEL,
                reason: format!(
                    "{} text ids for {s_txt} text tokens, {} image ids for {s_img} image tokens",
                    txt_ids.len(),
                    img_ids.len()
                ),
            });
        }
        let tte = &self.time_text_embed;
        if guidance.is_some() != tte.guidance_embedder.is_some() {
            return Err(Error::InvalidInput {
                model: MODEL,
                reason: "guidance must be given exactly when the model has guidance_embeds".into(),
            });
        }
        let x = self.x_embedder.forward(hidden_states);
        // timestep.to(dtype) * 1000, then the 256-channel sinusoidal projection (f32), back to dtype.
        let proj = |t: Tensor<B, 1>| {
            get_timestep_embedding(t.cast(dtype) * 1000.0, 256, true, 0.0, 1.0, 10000.0).cast(dtype)
        };
        let mut temb = tte.timestep_embedder.forward(proj(timestep));
        if let (Some(g), Some(e)) = (guidance, &tte.guidance_embedder) {
            temb = temb + e.forward(proj(g));
        }
        let temb = temb + tte.text_embedder.forward(pooled_projections);
        let mut ctx = self.context_embedder.forward(encoder_hidden_states);
        let ids: Vec<Vec<f64>> = txt_ids.into_iter().chain(img_ids).collect();
        let (cos, sin) = multi_axis_rotary_pos_embed::<B>(&ids, &self.axes_dims, 10000.0, &device);
        let _call = self.hooks.enter_model_call();
        let x = if self.hooks.is_empty() {
            let mut x = x;
            for block in &self.transformer_blocks {
                let (c, h) = block.forward(x, ctx, temb.clone(), cos.clone(), sin.clone());
                ctx = c;
                x = h;
            }
            let mut joint = Tensor::cat(vec![ctx, x], 1);
            for block in &self.single_transformer_blocks {
                joint = block.forward(joint, temb.clone(), cos.clone(), sin.clone());
            }
            joint.narrow(1, s_txt, s_img)
        } else {
            // Through the hooks, every block takes and returns the image and text streams
            // separately, as diffusers' blocks do (its single blocks join and split them).
            const ENC: &str = "block hooks return the encoder states their block returns";
            let states = BlockStates::new(x, Some(ctx));
            let states = self.hooks.run_blocks(
                "transformer_blocks",
                &self.transformer_blocks,
                states,
                |b, s| {
                    let ctx = s.encoder_hidden_states.expect(ENC);
                    let (c, h) =
                        b.forward(s.hidden_states, ctx, temb.clone(), cos.clone(), sin.clone());
                    BlockStates::new(h, Some(c))
                },
            );
            let states = self.hooks.run_blocks(
                "single_transformer_blocks",
                &self.single_transformer_blocks,
                states,
                |b, s| {
                    let ctx = s.encoder_hidden_states.expect(ENC);
                    let joint = Tensor::cat(vec![ctx, s.hidden_states], 1);
                    let joint = b.forward(joint, temb.clone(), cos.clone(), sin.clone());
                    BlockStates::new(
                        joint.clone().narrow(1, s_txt, s_img),
                        Some(joint.narrow(1, 0, s_txt)),
                    )
                },
            );
            states.hidden_states
        };
        let m = self.norm_out.chunks(temb);
        // AdaLayerNormContinuous: (scale, shift) order.
        let x = self.norm_out.modulate(x, m[1].clone(), m[0].clone());
        let out = module_call("proj_out", || vec![self.proj_out.forward(x)]);
        Ok(out
            .into_iter()
            .next()
            .expect("the proj_out hook returns proj_out's output"))
    }
}
