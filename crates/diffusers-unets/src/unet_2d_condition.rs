//! diffusers' `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`) with the blocks and
//! options of the SD 1.x, SD 2.x, SDXL and LCM checkpoints.
//!
//! Module fields follow the checkpoint keys; [`checkpoint_key`] maps the ones that cannot
//! (`ff.net.0` / `ff.net.2`, and the projection variant of `proj_in` / `proj_out`).
//!
//! diffusers' naming quirk is kept: without `num_attention_heads`, `attention_head_dim` is the
//! number of heads of each block (SD 1.x: 8, SD 2.x: `[5, 10, 20, 20]`), each head being
//! `channels / heads` wide. diffusers itself rejects `num_attention_heads`; it is accepted here
//! with the meaning its name says (the head count), taking precedence.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::ConfigMeta;
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::silu;
use diffusers_nn::conv::{Conv2d, Conv2dConfig};
use diffusers_nn::embeddings::get_timestep_embedding;
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{GroupNorm, GroupNormConfig};
use serde::{Deserialize, Serialize};

use crate::unet_2d_blocks::{BlockArgs, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D};
use crate::{Error, Result};

const MODEL: &str = "UNet2DConditionModel";

/// A value given once for every block, or one per block (diffusers' `int | tuple[int]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// The same value for every block.
    One(T),
    /// One value per block.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The per-block values for `n` blocks; `key` names the config key in the error.
    pub fn per_block(&self, n: usize, key: &str) -> std::result::Result<Vec<T>, String> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); n]),
            Self::Many(v) if v.len() == n => Ok(v.clone()),
            Self::Many(v) => Err(format!("{key} has {} values for {n} down blocks", v.len())),
        }
    }
}

/// `null` read as `false` (SDXL-base's config has `"upcast_attention": null`).
fn null_false<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn d4() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_false1() -> OneOrMany<bool> {
    OneOrMany::One(false)
}
fn d_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_layers() -> OneOrMany<usize> {
    OneOrMany::One(2)
}
fn d_1() -> usize {
    1
}
fn d_1f() -> f64 {
    1.0
}
fn d_silu() -> String {
    "silu".into()
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> OneOrMany<usize> {
    OneOrMany::One(1280)
}
fn d_one1() -> OneOrMany<usize> {
    OneOrMany::One(1)
}
fn d_heads() -> OneOrMany<usize> {
    OneOrMany::One(8)
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_3() -> usize {
    3
}
fn d_64() -> usize {
    64
}

/// `UNet2DConditionModel`'s config, key for key with diffusers' defaults (SD 1.x's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UNet2DConditionModelConfig {
    /// Latent size the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<OneOrMany<usize>>,
    /// Latent channels in.
    #[serde(default = "d4")]
    pub in_channels: usize,
    /// Channels out.
    #[serde(default = "d4")]
    pub out_channels: usize,
    /// `sample = 2 * sample - 1` first.
    #[serde(default, deserialize_with = "null_false")]
    pub center_input_sample: bool,
    /// `cos, sin` instead of `sin, cos` in the timestep embedding.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per block.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn` (or `null`: no mid block).
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per block.
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Must be `false` (cross-attention-only transformers are not supported).
    #[serde(default = "d_false1")]
    pub only_cross_attention: OneOrMany<bool>,
    /// Channels per block.
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "d_layers")]
    pub layers_per_block: OneOrMany<usize>,
    /// Padding of the downsamplers' convolutions.
    #[serde(default = "d_1")]
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets.
    #[serde(default = "d_1f")]
    pub mid_block_scale_factor: f64,
    /// Dropout (inference: unused).
    #[serde(default)]
    pub dropout: f64,
    /// Must be `silu`.
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// Group-norm groups (required).
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    /// Group-norm epsilon of the resnets and the output norm.
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Width of the text states (one value, or one per block).
    #[serde(default = "d_cross")]
    pub cross_attention_dim: OneOrMany<usize>,
    /// Transformer blocks per attention (SDXL: `[1, 2, 10]`).
    #[serde(default = "d_one1")]
    pub transformer_layers_per_block: OneOrMany<usize>,
    /// Must be `null`.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Must be `null` (no text projection before the blocks).
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Must be `null`.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// The number of heads per block unless `num_attention_heads` is set (diffusers' quirk).
    #[serde(default = "d_heads")]
    pub attention_head_dim: OneOrMany<usize>,
    /// Heads per block (takes precedence over `attention_head_dim`).
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
    /// Must be `false`.
    #[serde(default, deserialize_with = "null_false")]
    pub dual_cross_attention: bool,
    /// Linear instead of 1x1-conv projections in the transformers (SD 2.x, SDXL).
    #[serde(default, deserialize_with = "null_false")]
    pub use_linear_projection: bool,
    /// Must be `null` (class embeddings are not supported).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// `null` or `text_time` (SDXL).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Sinusoidal width of each SDXL time id.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Must be `null`.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// f32 attention for half-precision inputs (SD 2.1).
    #[serde(default, deserialize_with = "null_false")]
    pub upcast_attention: bool,
    /// Must be `default`.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Must be `false`.
    #[serde(default, deserialize_with = "null_false")]
    pub resnet_skip_time_act: bool,
    /// Must be 1.
    #[serde(default = "d_1f")]
    pub resnet_out_scale_factor: f64,
    /// Must be `positional`.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 * block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Must be `null`.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Must be `null`.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Width of the guidance embedding added to the timestep projection (LCM).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of `conv_in` (odd).
    #[serde(default = "d_3")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd).
    #[serde(default = "d_3")]
    pub conv_out_kernel: usize,
    /// Input width of `add_embedding` (SDXL: text embedding + 6 time ids x `addition_time_embed_dim`).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Must be `default`.
    #[serde(default = "d_default")]
    pub attention_type: String,
    /// Must be `false`.
    #[serde(default, deserialize_with = "null_false")]
    pub class_embeddings_concat: bool,
    /// Must be `null` or `false`.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Must be `null`.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Unused (`addition_embed_type="text"` only).
    #[serde(default = "d_64")]
    pub addition_embed_type_num_heads: usize,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

/// The block kinds the UNet supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CrossAttn,
    Plain,
}

/// The per-block values resolved from a config.
#[derive(Debug, Clone)]
struct Plan {
    down: Vec<Kind>,
    up: Vec<Kind>,
    mid: bool,
    layers: Vec<usize>,
    heads: Vec<usize>,
    cross: Vec<usize>,
    transformer_layers: Vec<usize>,
    groups: usize,
    time_embed_dim: usize,
    add_time_embed_dim: Option<usize>,
    add_input_dim: Option<usize>,
}

fn unsupported<T: std::fmt::Debug>(key: &str, value: T, supported: &str) -> String {
    format!("{key} = {value:?} is not supported ({supported})")
}

impl UNet2DConditionModelConfig {
    fn plan(&self) -> std::result::Result<Plan, String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({n}) must have the same length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        let kind = |key: &str, i: usize, t: &str, cross: &str, plain: &str| {
            if t == cross {
                Ok(Kind::CrossAttn)
            } else if t == plain {
                Ok(Kind::Plain)
            } else {
                Err(unsupported(
                    &format!("{key}[{i}]"),
                    t,
                    &format!("supported: {cross}, {plain}"),
                ))
            }
        };
        let down = (self.down_block_types.iter().enumerate())
            .map(|(i, t)| {
                kind(
                    "down_block_types",
                    i,
                    t,
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let up = (self.up_block_types.iter().enumerate())
            .map(|(i, t)| kind("up_block_types", i, t, "CrossAttnUpBlock2D", "UpBlock2D"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mid = match self.mid_block_type.as_deref() {
            None => false,
            Some("UNetMidBlock2DCrossAttn") => true,
            Some(t) => {
                return Err(unsupported(
                    "mid_block_type",
                    t,
                    "supported: UNetMidBlock2DCrossAttn, null",
                ));
            }
        };
        let only_cross = self
            .only_cross_attention
            .per_block(n, "only_cross_attention")?;
        if only_cross.iter().any(|&b| b) || self.mid_block_only_cross_attention == Some(true) {
            return Err(unsupported(
                "only_cross_attention",
                &self.only_cross_attention,
                "must be false",
            ));
        }
        let checks: [(&str, bool, String, &str); 16] = [
            (
                "act_fn",
                self.act_fn == "silu",
                format!("{:?}", self.act_fn),
                "must be silu",
            ),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_none(),
                format!("{:?}", self.reverse_transformer_layers_per_block),
                "must be null",
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.is_none(),
                format!("{:?}", self.encoder_hid_dim),
                "must be null",
            ),
            (
                "encoder_hid_dim_type",
                self.encoder_hid_dim_type.is_none(),
                format!("{:?}", self.encoder_hid_dim_type),
                "must be null",
            ),
            (
                "dual_cross_attention",
                !self.dual_cross_attention,
                "true".into(),
                "must be false",
            ),
            (
                "class_embed_type",
                self.class_embed_type.is_none(),
                format!("{:?}", self.class_embed_type),
                "class embeddings are not supported",
            ),
            (
                "num_class_embeds",
                self.num_class_embeds.is_none(),
                format!("{:?}", self.num_class_embeds),
                "class embeddings are not supported",
            ),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift == "default",
                format!("{:?}", self.resnet_time_scale_shift),
                "must be default",
            ),
            (
                "resnet_skip_time_act",
                !self.resnet_skip_time_act,
                "true".into(),
                "must be false",
            ),
            (
                "resnet_out_scale_factor",
                self.resnet_out_scale_factor == 1.0,
                self.resnet_out_scale_factor.to_string(),
                "must be 1",
            ),
            (
                "time_embedding_type",
                self.time_embedding_type == "positional",
                format!("{:?}", self.time_embedding_type),
                "must be positional",
            ),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_none(),
                format!("{:?}", self.time_embedding_act_fn),
                "must be null",
            ),
            (
                "timestep_post_act",
                self.timestep_post_act.is_none(),
                format!("{:?}", self.timestep_post_act),
                "must be null",
            ),
            (
                "attention_type",
                self.attention_type == "default",
                format!("{:?}", self.attention_type),
                "must be default",
            ),
            (
                "class_embeddings_concat",
                !self.class_embeddings_concat,
                "true".into(),
                "must be false",
            ),
            (
                "cross_attention_norm",
                self.cross_attention_norm.is_none(),
                format!("{:?}", self.cross_attention_norm),
                "must be null",
            ),
        ];
        if let Some((key, _, value, why)) = checks.iter().find(|c| !c.1) {
            return Err(format!("{key} = {value} is not supported ({why})"));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err(format!(
                "conv_in_kernel {} / conv_out_kernel {} must be odd",
                self.conv_in_kernel, self.conv_out_kernel
            ));
        }
        let groups = self
            .norm_num_groups
            .ok_or_else(|| unsupported("norm_num_groups", "null", "must be set"))?;
        let layers = self.layers_per_block.per_block(n, "layers_per_block")?;
        let heads = match &self.num_attention_heads {
            Some(h) => h.per_block(n, "num_attention_heads")?,
            None => self.attention_head_dim.per_block(n, "attention_head_dim")?,
        };
        let cross = self
            .cross_attention_dim
            .per_block(n, "cross_attention_dim")?;
        let transformer_layers = self
            .transformer_layers_per_block
            .per_block(n, "transformer_layers_per_block")?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || !c.is_multiple_of(groups) {
                return Err(format!(
                    "block_out_channels[{i}] = {c} is not a positive multiple of norm_num_groups {groups}"
                ));
            }
            if heads[i] == 0 || !c.is_multiple_of(heads[i]) {
                return Err(format!(
                    "block_out_channels[{i}] = {c} is not a multiple of the head count {} \
                     (attention_head_dim / num_attention_heads)",
                    heads[i]
                ));
            }
        }
        let time_embed_dim = self
            .time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0]);
        let (add_time_embed_dim, add_input_dim) = match self.addition_embed_type.as_deref() {
            None => (None, None),
            Some("text_time") => match (
                self.addition_time_embed_dim,
                self.projection_class_embeddings_input_dim,
            ) {
                (Some(t), Some(p)) => (Some(t), Some(p)),
                _ => {
                    return Err(
                        "addition_embed_type \"text_time\" needs addition_time_embed_dim \
                                and projection_class_embeddings_input_dim"
                            .into(),
                    );
                }
            },
            Some(t) => {
                return Err(unsupported(
                    "addition_embed_type",
                    t,
                    "supported: text_time, null",
                ));
            }
        };
        Ok(Plan {
            down,
            up,
            mid,
            layers,
            heads,
            cross,
            transformer_layers,
            groups,
            time_embed_dim,
            add_time_embed_dim,
            add_input_dim,
        })
    }
}

impl diffusers_core::config::Config for UNet2DConditionModelConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.plan().map(|_| ())
    }
}

/// `TimestepEmbedding`: `linear_1`, SiLU, `linear_2`, with LCM's `cond_proj` added to the input.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// First projection.
    pub linear_1: Linear<B>,
    /// Second projection.
    pub linear_2: Linear<B>,
    /// Projection of the condition (`time_cond_proj_dim`) to the input width, without bias.
    pub cond_proj: Option<Linear<B>>,
}

impl<B: Backend> TimestepEmbedding<B> {
    fn new(i: usize, o: usize, cond: Option<usize>, device: &B::Device) -> Self {
        Self {
            linear_1: LinearConfig::new(i, o).init(device),
            linear_2: LinearConfig::new(o, o).init(device),
            cond_proj: cond.map(|c| LinearConfig::new(c, i).with_bias(false).init(device)),
        }
    }

    /// `linear_2(silu(linear_1(x + cond_proj(condition))))`.
    pub fn forward(&self, x: Tensor<B, 2>, condition: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
        let x = match (&self.cond_proj, condition) {
            (Some(p), Some(c)) => x + p.forward(c),
            (_, _) => x,
        };
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// `UNet2DConditionModel`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Input convolution.
    pub conv_in: Conv2d<B>,
    /// Timestep MLP (`time_embedding`).
    pub time_embedding: TimestepEmbedding<B>,
    /// SDXL's text/time-id embedding (`addition_embed_type="text_time"`).
    pub add_embedding: Option<TimestepEmbedding<B>>,
    /// Down blocks.
    pub down_blocks: Vec<DownBlock2D<B>>,
    /// Mid block.
    pub mid_block: Option<UNetMidBlock2DCrossAttn<B>>,
    /// Up blocks.
    pub up_blocks: Vec<UpBlock2D<B>>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output convolution.
    pub conv_out: Conv2d<B>,
    in_channels: usize,
    time_proj_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input_sample: bool,
    add_time_embed_dim: Option<usize>,
    add_input_dim: Option<usize>,
    time_cond_proj_dim: Option<usize>,
    cross_attention_dims: Vec<usize>,
    num_upsamplers: usize,
}

/// Checkpoint key of a module path: `ff.net_0` -> `ff.net.0`, `ff.net_2` -> `ff.net.2`, and the
/// projection variant dropped (`proj_in.Conv.weight` / `proj_in.Linear.weight` ->
/// `proj_in.weight`).
pub fn checkpoint_key(path: &str) -> String {
    path.replace(".net_0.", ".net.0.")
        .replace(".net_2.", ".net.2.")
        .replace(".Conv.", ".")
        .replace(".Linear.", ".")
}

/// Inputs of one UNet call, as diffusers' `forward` takes them.
#[derive(Debug, Clone)]
pub struct UNet2DConditionInputs<B: Backend> {
    /// Noisy latents `[batch, in_channels, height, width]`.
    pub sample: Tensor<B, 4>,
    /// Timesteps `[batch]` (or `[1]`, broadcast to the batch), f32.
    pub timestep: Tensor<B, 1>,
    /// Text states `[batch, seq, cross_attention_dim]`.
    pub encoder_hidden_states: Tensor<B, 3>,
    /// SDXL's `added_cond_kwargs`: `(text_embeds [batch, d], time_ids [batch, 6])`.
    pub added_cond: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    /// LCM's guidance embedding `[batch, time_cond_proj_dim]`.
    pub timestep_cond: Option<Tensor<B, 2>>,
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason,
    }
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(c: &UNet2DConditionModelConfig, device: &B::Device) -> Result<Self> {
        let p = c.plan().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let conv = |i, o, k: usize| {
            Conv2dConfig::new(i, o, [k, k])
                .with_padding([(k - 1) / 2, (k - 1) / 2])
                .init(device)
        };
        let base = |i: usize, cin: usize, cout: usize, prev: usize, layers: usize| BlockArgs {
            in_channels: cin,
            out_channels: cout,
            prev_output_channel: prev,
            temb_channels: p.time_embed_dim,
            num_layers: layers,
            transformer_layers: p.transformer_layers[i],
            eps: c.norm_eps,
            groups: p.groups,
            heads: Some(p.heads[i]),
            cross_attention_dim: p.cross[i],
            use_linear_projection: c.use_linear_projection,
            upcast_attention: c.upcast_attention,
            add_sample: i + 1 < n,
            downsample_padding: c.downsample_padding,
            output_scale_factor: 1.0,
        };
        let down_blocks = (0..n)
            .map(|i| {
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                let mut a = base(i, cin, ch[i], 0, p.layers[i]);
                if p.down[i] == Kind::Plain {
                    a.heads = None;
                }
                DownBlock2D::new(&a, device)
            })
            .collect();
        let mid_block = p.mid.then(|| {
            let mut a = base(n - 1, ch[n - 1], ch[n - 1], 0, 1);
            a.add_sample = false;
            a.output_scale_factor = c.mid_block_scale_factor;
            UNetMidBlock2DCrossAttn::new(&a, device)
        });
        let up_blocks = (0..n)
            .map(|i| {
                // Up block i mirrors down block j = n - 1 - i.
                let j = n - 1 - i;
                let out = ch[j];
                let prev = if i == 0 { ch[n - 1] } else { ch[j + 1] };
                let cin = ch[j.saturating_sub(1)];
                let mut a = base(j, cin, out, prev, p.layers[j] + 1);
                a.add_sample = i + 1 < n;
                if p.up[i] == Kind::Plain {
                    a.heads = None;
                }
                UpBlock2D::new(&a, device)
            })
            .collect();
        Ok(Self {
            conv_in: conv(c.in_channels, ch[0], c.conv_in_kernel),
            time_embedding: TimestepEmbedding::new(
                ch[0],
                p.time_embed_dim,
                c.time_cond_proj_dim,
                device,
            ),
            add_embedding: p
                .add_input_dim
                .map(|d| TimestepEmbedding::new(d, p.time_embed_dim, None, device)),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(p.groups, ch[0])
                .with_eps(c.norm_eps)
                .init(device),
            conv_out: conv(ch[0], c.out_channels, c.conv_out_kernel),
            in_channels: c.in_channels,
            time_proj_dim: ch[0],
            flip_sin_to_cos: c.flip_sin_to_cos,
            freq_shift: c.freq_shift,
            center_input_sample: c.center_input_sample,
            add_time_embed_dim: p.add_time_embed_dim,
            add_input_dim: p.add_input_dim,
            time_cond_proj_dim: c.time_cond_proj_dim,
            cross_attention_dims: (0..n)
                .filter(|&i| p.down[i] == Kind::CrossAttn || p.up[n - 1 - i] == Kind::CrossAttn)
                .map(|i| p.cross[i])
                .chain(p.mid.then(|| p.cross[n - 1]))
                .collect(),
            num_upsamplers: n - 1,
        })
    }

    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` (or its shards, or the
    /// `.bin` pickle), converting the weights to `dtype` if given.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, UNet2DConditionModelConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (`fp16` for `diffusion_pytorch_model.fp16.safetensors`, as
    /// diffusers' `variant=`; the default files, with a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, UNet2DConditionModelConfig)> {
        let folder = folder.as_ref();
        let config: UNet2DConditionModelConfig =
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

    /// The sinusoidal projection (f32) of `t: [n]` to `dim` channels.
    fn time_proj(&self, t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
        get_timestep_embedding(t, dim, self.flip_sin_to_cos, self.freq_shift, 1.0, 10000.0)
    }

    fn check_inputs(&self, i: &UNet2DConditionInputs<B>) -> Result<()> {
        let [b, c, h, w] = i.sample.dims();
        if c != self.in_channels {
            return Err(invalid(format!(
                "sample has {c} channels, the model takes in_channels = {}",
                self.in_channels
            )));
        }
        if b == 0 || h == 0 || w == 0 {
            return Err(invalid(format!(
                "sample shape [{b}, {c}, {h}, {w}] is empty"
            )));
        }
        let [eb, _, ed] = i.encoder_hidden_states.dims();
        if eb != b {
            return Err(invalid(format!(
                "encoder_hidden_states has batch {eb}, sample has batch {b}"
            )));
        }
        if let Some(&d) = self.cross_attention_dims.iter().find(|&&d| d != ed) {
            return Err(invalid(format!(
                "encoder_hidden_states has width {ed}, the model's cross_attention_dim is {d}"
            )));
        }
        let tb = i.timestep.dims()[0];
        if tb != b && tb != 1 {
            return Err(invalid(format!(
                "timestep has {tb} values for batch {b} (give 1 or {b})"
            )));
        }
        match (&i.added_cond, self.add_input_dim, self.add_time_embed_dim) {
            (None, Some(_), _) => {
                return Err(invalid(
                    "addition_embed_type \"text_time\" (SDXL) needs added_cond: \
                     (text_embeds [batch, d], time_ids [batch, 6])"
                        .into(),
                ));
            }
            (Some(_), None, _) => {
                return Err(invalid(
                    "added_cond given, but the model has no addition_embed_type".into(),
                ));
            }
            (Some((text, ids)), Some(input), Some(tdim)) => {
                let [tb, td] = text.dims();
                let [ib, n] = ids.dims();
                if tb != b || ib != b || td + n * tdim != input {
                    return Err(invalid(format!(
                        "text_embeds [{tb}, {td}] and time_ids [{ib}, {n}] do not fit batch {b} and \
                         projection_class_embeddings_input_dim {input} (= d + ids x {tdim})"
                    )));
                }
            }
            _ => {}
        }
        match (&i.timestep_cond, self.time_cond_proj_dim) {
            (Some(_), None) => {
                return Err(invalid(
                    "timestep_cond given, but the model has no time_cond_proj_dim".into(),
                ));
            }
            (Some(t), Some(d)) if t.dims() != [b, d] => {
                return Err(invalid(format!(
                    "timestep_cond has shape {:?}, expected [{b}, {d}]",
                    t.dims()
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// One denoiser call: the prediction `[batch, out_channels, height, width]`.
    ///
    /// Any height and width work: when they are not multiples of `2^(blocks - 1)`, each
    /// upsampler is given the size of the matching skip state, as diffusers does.
    pub fn forward(&self, inputs: UNet2DConditionInputs<B>) -> Result<Tensor<B, 4>> {
        self.check_inputs(&inputs)?;
        let UNet2DConditionInputs {
            sample,
            timestep,
            encoder_hidden_states: ctx,
            added_cond,
            timestep_cond,
        } = inputs;
        let [b, _, h, w] = sample.dims();
        let dtype = sample.dtype();
        let factor = 1usize << self.num_upsamplers;
        let forward_upsample_size = !h.is_multiple_of(factor) || !w.is_multiple_of(factor);
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };
        let timestep = timestep.cast(DType::F32).expand([b]);
        let t_emb = self.time_proj(timestep, self.time_proj_dim).cast(dtype);
        let mut emb = self.time_embedding.forward(t_emb, timestep_cond);
        if let (Some(add), Some((text, ids)), Some(tdim)) =
            (&self.add_embedding, added_cond, self.add_time_embed_dim)
        {
            let n = ids.dims()[1];
            let ids = ids.cast(DType::F32).reshape([b * n]);
            let time_embeds = self.time_proj(ids, tdim).reshape([b, n * tdim]);
            let add_embeds = Tensor::cat(vec![text.cast(DType::F32), time_embeds], 1).cast(dtype);
            emb = emb + add.forward(add_embeds, None);
        }
        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (y, states) = block.forward(x, emb.clone(), ctx.clone());
            x = y;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, emb.clone(), ctx.clone());
        }
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.resnets.len().min(skips.len());
            let mut own = skips.split_off(skips.len() - k);
            let upsample_size = match skips.last() {
                Some(s) if i < last && forward_upsample_size => {
                    let [_, _, sh, sw] = s.dims();
                    Some([sh, sw])
                }
                _ => None,
            };
            x = block.forward(x, &mut own, emb.clone(), ctx.clone(), upsample_size);
        }
        let x = silu(self.conv_norm_out.forward(x));
        Ok(self.conv_out.forward(x))
    }
}
