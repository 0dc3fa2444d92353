//! transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`.
//!
//! Module fields are named as the checkpoint keys (`text_model.encoder.layers.0.self_attn.q_proj`),
//! so weights load without a key map.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{DType, Int};
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::{gelu, quick_gelu};
use diffusers_nn::attention::scaled_dot_product_attention;
use diffusers_nn::embedding::{Embedding, EmbeddingConfig};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{LayerNorm, LayerNormConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const MODEL: &str = "CLIPTextModel";

fn d_vocab() -> usize {
    49408
}
fn d_hidden() -> usize {
    512
}
fn d_inter() -> usize {
    2048
}
fn d_proj() -> usize {
    512
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    8
}
fn d_pos() -> usize {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_pad() -> i64 {
    1
}
fn d_bos() -> i64 {
    49406
}
fn d_eos() -> i64 {
    49407
}

/// transformers' `CLIPTextConfig`, key for key with its defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CLIPTextConfig {
    /// Vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Width.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    /// Width of `text_projection` (with projection).
    #[serde(default = "d_proj")]
    pub projection_dim: usize,
    /// Encoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Maximum sequence length.
    #[serde(default = "d_pos")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Padding token.
    #[serde(default = "d_pad")]
    pub pad_token_id: i64,
    /// Start token.
    #[serde(default = "d_bos")]
    pub bos_token_id: i64,
    /// End token; 2 means the legacy pooling (the highest token id).
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
    /// Other keys (`architectures`, `model_type`, `transformers_version`, ...).
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl diffusers_core::config::Config for CLIPTextConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn unused_keys() -> &'static [&'static str] {
        &["attention_dropout", "dropout"]
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!(
                "hidden_act `{}` is not supported (quick_gelu, gelu)",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

impl CLIPTextConfig {
    /// Reads a `config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(diffusers_core::config::load_config(path)?)
    }
}

/// Token and position embeddings.
#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings<B: Backend> {
    /// `[vocab, hidden]`.
    pub token_embedding: Embedding<B>,
    /// `[max_positions, hidden]`.
    pub position_embedding: Embedding<B>,
}

/// Multi-head self-attention.
#[derive(Module, Debug)]
pub struct CLIPAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    heads: usize,
}

/// The feed-forward block.
#[derive(Module, Debug)]
pub struct CLIPMLP<B: Backend> {
    /// Up projection.
    pub fc1: Linear<B>,
    /// Down projection.
    pub fc2: Linear<B>,
    quick: bool,
}

/// One pre-norm transformer layer.
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: CLIPAttention<B>,
    /// Norm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// MLP.
    pub mlp: CLIPMLP<B>,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm<B>,
}

/// The layer stack.
#[derive(Module, Debug)]
pub struct CLIPEncoder<B: Backend> {
    /// Layers.
    pub layers: Vec<CLIPEncoderLayer<B>>,
}

/// Embeddings, encoder and final norm (`text_model`).
#[derive(Module, Debug)]
pub struct CLIPTextTransformer<B: Backend> {
    /// Embeddings.
    pub embeddings: CLIPTextEmbeddings<B>,
    /// Encoder.
    pub encoder: CLIPEncoder<B>,
    /// Final norm.
    pub final_layer_norm: LayerNorm<B>,
    eos_token_id: i64,
}

/// What a CLIP text encoder returns.
#[derive(Debug, Clone)]
pub struct CLIPTextOutput<B: Backend> {
    /// `[batch, seq, hidden]` after the final norm.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]` at the end-of-text token (or `text_embeds` `[batch, projection_dim]`
    /// for the model with projection).
    pub pooled: Tensor<B, 2>,
    /// The embeddings and each layer's output (before the final norm), for `clip_skip`.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

impl CLIPTextConfig {
    fn transformer<B: Backend>(&self, device: &B::Device) -> CLIPTextTransformer<B> {
        let h = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(h)
                .with_eps(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        CLIPTextTransformer {
            embeddings: CLIPTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, h)
                    .init(device),
            },
            encoder: CLIPEncoder {
                layers: (0..self.num_hidden_layers)
                    .map(|_| CLIPEncoderLayer {
                        self_attn: CLIPAttention {
                            q_proj: lin(h, h),
                            k_proj: lin(h, h),
                            v_proj: lin(h, h),
                            out_proj: lin(h, h),
                            heads: self.num_attention_heads,
                        },
                        layer_norm1: ln(),
                        mlp: CLIPMLP {
                            fc1: lin(h, self.intermediate_size),
                            fc2: lin(self.intermediate_size, h),
                            quick: self.hidden_act == "quick_gelu",
                        },
                        layer_norm2: ln(),
                    })
                    .collect(),
            },
            final_layer_norm: ln(),
            eos_token_id: self.eos_token_id,
        }
    }
}

impl<B: Backend> CLIPAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let d = h / self.heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let o = scaled_dot_product_attention(q, k, v, None, None, true);
        self.out_proj.forward(o.swap_dims(1, 2).reshape([b, s, h]))
    }
}

impl<B: Backend> CLIPMLP<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.fc1.forward(x);
        let h = if self.quick { quick_gelu(h) } else { gelu(h) };
        self.fc2.forward(h)
    }
}

impl<B: Backend> CLIPTextTransformer<B> {
    /// Encodes `[batch, seq]` token ids.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<CLIPTextOutput<B>> {
        let [b, s] = input_ids.dims();
        let max = self.embeddings.position_embedding.num_embeddings();
        if s > max {
            return Err(Error::InvalidInput {
                model: MODEL,
                reason: format!("{s} tokens exceed max_position_embeddings {max}"),
            });
        }
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &device).reshape([1, s]);
        let mut x = self.embeddings.token_embedding.forward(input_ids.clone())
            + self.embeddings.position_embedding.forward(positions);
        let mut hidden_states = vec![x.clone()];
        for layer in &self.encoder.layers {
            x = x.clone() + layer.self_attn.forward(layer.layer_norm1.forward(x));
            x = x.clone() + layer.mlp.forward(layer.layer_norm2.forward(x));
            hidden_states.push(x.clone());
        }
        let last = self.final_layer_norm.forward(x);
        // The end-of-text position: the first `eos_token_id`, or the highest id for legacy configs.
        let ids: Vec<i64> = input_ids
            .into_data()
            .convert::<i64>()
            .into_vec()
            .map_err(|e| Error::InvalidInput {
                model: MODEL,
                reason: format!("token ids: {e:?}"),
            })?;
        let positions: Vec<i64> = ids
            .chunks(s.max(1))
            .map(|row| {
                let pos = if self.eos_token_id == 2 {
                    // argmax returns the first maximum.
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, i64::MIN),
                            |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                        )
                        .0
                } else {
                    row.iter()
                        .position(|&v| v == self.eos_token_id)
                        .unwrap_or(0)
                };
                pos as i64
            })
            .collect();
        let idx =
            Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(positions, [b]), &device);
        let hidden = last.dims()[2];
        let gather = idx.reshape([b, 1, 1]).expand([b, 1, hidden]);
        let pooled = last.clone().gather(1, gather).reshape([b, hidden]);
        Ok(CLIPTextOutput {
            last_hidden_state: last,
            pooled,
            hidden_states,
        })
    }
}

/// `CLIPTextModel`: the text transformer, pooled at the end-of-text token.
#[derive(Module, Debug)]
pub struct CLIPTextModel<B: Backend> {
    /// `text_model.*`.
    pub text_model: CLIPTextTransformer<B>,
}

/// `CLIPTextModelWithProjection`: pooled output through `text_projection` (SDXL's second encoder).
#[derive(Module, Debug)]
pub struct CLIPTextModelWithProjection<B: Backend> {
    /// `text_model.*`.
    pub text_model: CLIPTextTransformer<B>,
    /// `[projection_dim, hidden]`, no bias.
    pub text_projection: Linear<B>,
}

/// Checkpoint key of a module path. transformers 4.x writes `CLIPTextModel` weights under
/// `text_model.`; transformers 5 writes them without that prefix (the projection model keeps it).
pub fn checkpoint_key(path: &str, prefixed: bool) -> String {
    if prefixed {
        path.to_string()
    } else {
        path.strip_prefix("text_model.").unwrap_or(path).to_string()
    }
}

fn load<B: Backend, M: Module<B>>(
    module: M,
    folder: &Path,
    variant: Option<&str>,
    dtype: Option<DType>,
) -> Result<M> {
    let weights = Weights::from_folder(folder, WeightsName::TRANSFORMERS, variant)?;
    let prefixed = weights.contains("text_model.embeddings.token_embedding.weight");
    let key_map = move |p: &str| checkpoint_key(p, prefixed);
    let (m, report) = load_into(
        module,
        &weights,
        LoadOptions {
            dtype,
            // Older checkpoints keep the `position_ids` buffer; it is derived here.
            allow_unexpected: true,
            key_map: Some(&key_map),
            ..Default::default()
        },
    )?;
    if let Some(k) = report
        .unexpected
        .iter()
        .find(|k| !k.ends_with("position_ids"))
    {
        return Err(Error::Core(diffusers_core::Error::UnexpectedKeys {
            path: weights.origin().to_path_buf(),
            keys: vec![k.clone()],
        }));
    }
    Ok(m)
}

impl<B: Backend> CLIPTextModel<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(config: &CLIPTextConfig, device: &B::Device) -> Result<Self> {
        config.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        Ok(Self {
            text_model: config.transformer(device),
        })
    }

    /// Loads `config.json` and `model.safetensors` from a transformers folder.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (`fp16` for `model.fp16.safetensors`, as
    /// diffusers' `variant=`; the default files, with a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        let config = CLIPTextConfig::load(folder.join("config.json"))?;
        load(Self::new(&config, device)?, folder, variant, dtype)
    }

    /// Encodes token ids; `pooled` is the end-of-text hidden state.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<CLIPTextOutput<B>> {
        self.text_model.forward(input_ids)
    }
}

impl<B: Backend> CLIPTextModelWithProjection<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(config: &CLIPTextConfig, device: &B::Device) -> Result<Self> {
        config.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        Ok(Self {
            text_model: config.transformer(device),
            text_projection: LinearConfig::new(config.hidden_size, config.projection_dim)
                .with_bias(false)
                .init(device),
        })
    }

    /// Loads `config.json` and `model.safetensors` from a transformers folder.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (`fp16` for `model.fp16.safetensors`, as
    /// diffusers' `variant=`; the default files, with a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        let config = CLIPTextConfig::load(folder.join("config.json"))?;
        load(Self::new(&config, device)?, folder, variant, dtype)
    }

    /// Encodes token ids; `pooled` is `text_embeds` (the projected end-of-text state).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<CLIPTextOutput<B>> {
        let mut out = self.text_model.forward(input_ids)?;
        out.pooled = self.text_projection.forward(out.pooled);
        Ok(out)
    }
}
