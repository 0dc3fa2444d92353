//! transformers' `T5EncoderModel` (Flux's and SD3's second text encoder), and the same encoder
//! as `UMT5EncoderModel` (Wan's text encoder, [`crate::umt5`]) when the config's `model_type` is
//! `umt5`: then every block has its own relative attention bias, where T5 computes it in the
//! first block and shares it.
//!
//! Checkpoint keys (`encoder.block.0.layer.0.SelfAttention.q.weight`) differ from Rust field
//! names in case and in `layer.0`/`layer.1`; [`checkpoint_key`] is the one place that maps them.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::gelu_tanh;
use diffusers_nn::attention::{AttentionMask, scaled_dot_product_attention};
use diffusers_nn::embedding::{Embedding, EmbeddingConfig};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{RmsNorm, RmsNormConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const MODEL: &str = "T5EncoderModel";

fn d_vocab() -> usize {
    32128
}
fn d_model() -> usize {
    512
}
fn d_kv() -> usize {
    64
}
fn d_ff() -> usize {
    2048
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    8
}
fn d_buckets() -> usize {
    32
}
fn d_distance() -> usize {
    128
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ff_proj() -> String {
    "relu".into()
}
fn d_model_type() -> String {
    "t5".into()
}

/// transformers' `T5Config` (the keys an encoder uses), with its defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Width.
    #[serde(default = "d_model")]
    pub d_model: usize,
    /// Width of each head.
    #[serde(default = "d_kv")]
    pub d_kv: usize,
    /// Feed-forward width.
    #[serde(default = "d_ff")]
    pub d_ff: usize,
    /// Encoder blocks.
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "d_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which positions share a bucket.
    #[serde(default = "d_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu`, `gated-gelu` (T5 v1.1, Flux) or `gated-relu`.
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
    /// `t5`, `mt5` (the same encoder) or `umt5` (a relative attention bias in every block).
    #[serde(default = "d_model_type")]
    pub model_type: String,
    /// Other keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl diffusers_core::config::Config for T5Config {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn unused_keys() -> &'static [&'static str] {
        &[
            "classifier_dropout",
            "dense_act_fn",
            "dropout_rate",
            "eos_token_id",
            "pad_token_id",
            "decoder_start_token_id",
            "is_decoder",
            "is_encoder_decoder",
            "is_gated_act",
            "num_decoder_layers",
            "scale_decoder_outputs",
            "n_positions",
            "output_past",
        ]
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(
            self.feed_forward_proj.as_str(),
            "relu" | "gated-gelu" | "gated-relu"
        ) {
            return Err(format!(
                "feed_forward_proj `{}` is not supported",
                self.feed_forward_proj
            ));
        }
        if !matches!(self.model_type.as_str(), "t5" | "mt5" | "umt5") {
            return Err(format!(
                "model_type `{}` is not a T5 encoder (t5, mt5 or umt5)",
                self.model_type
            ));
        }
        if self.num_heads == 0 || self.relative_attention_num_buckets < 4 {
            return Err(
                "num_heads must be positive and relative_attention_num_buckets at least 4".into(),
            );
        }
        Ok(())
    }
}

impl T5Config {
    fn gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    /// UMT5: every block has its own `relative_attention_bias`.
    pub fn bias_in_every_block(&self) -> bool {
        self.model_type == "umt5"
    }
}

/// Self-attention with T5's relative position bias (no score scaling).
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    /// Query (no bias).
    pub q: Linear<B>,
    /// Key.
    pub k: Linear<B>,
    /// Value.
    pub v: Linear<B>,
    /// Output.
    pub o: Linear<B>,
    /// `[num_buckets, heads]`: in the first block only (T5), or in every block (UMT5).
    pub relative_attention_bias: Option<Embedding<B>>,
    heads: usize,
    d_kv: usize,
    buckets: usize,
    max_distance: usize,
}

/// Norm, then self-attention, with a residual (`layer.0`).
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention<B: Backend> {
    /// `SelfAttention`.
    pub self_attention: T5Attention<B>,
    /// RMS norm.
    pub layer_norm: RmsNorm<B>,
}

/// The feed-forward network (`DenseReluDense`): gated (`wi_0`, `wi_1`) or not (`wi`).
#[derive(Module, Debug)]
pub struct T5DenseReluDense<B: Backend> {
    /// Gate (gated forms).
    pub wi_0: Option<Linear<B>>,
    /// Up projection (gated forms).
    pub wi_1: Option<Linear<B>>,
    /// Up projection (plain form).
    pub wi: Option<Linear<B>>,
    /// Down projection.
    pub wo: Linear<B>,
    gelu: bool,
}

/// Norm, then feed-forward, with a residual (`layer.1`).
#[derive(Module, Debug)]
pub struct T5LayerFF<B: Backend> {
    /// `DenseReluDense`.
    pub dense_relu_dense: T5DenseReluDense<B>,
    /// RMS norm.
    pub layer_norm: RmsNorm<B>,
}

/// One encoder block.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    /// `layer.0`.
    pub attention: T5LayerSelfAttention<B>,
    /// `layer.1`.
    pub feed_forward: T5LayerFF<B>,
}

/// The encoder stack.
#[derive(Module, Debug)]
pub struct T5Stack<B: Backend> {
    /// Blocks.
    pub block: Vec<T5Block<B>>,
    /// Final RMS norm.
    pub final_layer_norm: RmsNorm<B>,
}

/// `T5EncoderModel`.
#[derive(Module, Debug)]
pub struct T5EncoderModel<B: Backend> {
    /// Token embeddings (`shared`, tied to `encoder.embed_tokens`).
    pub shared: Embedding<B>,
    /// The encoder.
    pub encoder: T5Stack<B>,
}

/// Checkpoint key of a module path: `attention` -> `layer.0`, `feed_forward` -> `layer.1`,
/// `self_attention` -> `SelfAttention`, `dense_relu_dense` -> `DenseReluDense`.
pub fn checkpoint_key(path: &str) -> String {
    path.split('.')
        .map(|part| match part {
            "attention" => "layer.0",
            "feed_forward" => "layer.1",
            "self_attention" => "SelfAttention",
            "dense_relu_dense" => "DenseReluDense",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// transformers' `_relative_position_bucket` (bidirectional), for `k - q` offsets.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> i64 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let rel = relative.abs();
    let max_exact = half / 2;
    if rel < max_exact {
        bucket += rel;
    } else {
        // torch: log(float32(rel) / max_exact) / log(max_distance / max_exact) * (half - max_exact),
        // in float32, truncated.
        let l = ((rel as f32) / max_exact as f32).ln();
        let d = ((max_distance as f64) / max_exact as f64).ln() as f32;
        let large = max_exact + (l / d * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket
}

impl<B: Backend> T5Attention<B> {
    fn bias(&self, s: usize, device: &B::Device) -> Option<Tensor<B, 4>> {
        let table = self.relative_attention_bias.as_ref()?;
        let buckets: Vec<i64> = (0..s)
            .flat_map(|q| (0..s).map(move |k| (q, k)))
            .map(|(q, k)| {
                relative_position_bucket(k as i64 - q as i64, self.buckets, self.max_distance)
            })
            .collect();
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [s, s]), device);
        // [s, s, heads] -> [1, heads, s, s]
        Some(table.forward(idx).permute([2, 0, 1]).unsqueeze::<4>())
    }

    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let inner = self.heads * self.d_kv;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, self.d_kv]).swap_dims(1, 2);
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let o = scaled_dot_product_attention(
            q,
            k,
            v,
            Some(AttentionMask::Additive(bias)),
            Some(1.0),
            false,
        );
        self.o.forward(o.swap_dims(1, 2).reshape([b, s, inner]))
    }
}

impl<B: Backend> T5DenseReluDense<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let act = |t: Tensor<B, 3>| {
            if self.gelu {
                gelu_tanh(t)
            } else {
                burn::tensor::activation::relu(t)
            }
        };
        let h = match (&self.wi_0, &self.wi_1, &self.wi) {
            (Some(w0), Some(w1), _) => act(w0.forward(x.clone())) * w1.forward(x),
            (_, _, Some(wi)) => act(wi.forward(x)),
            _ => x,
        };
        self.wo.forward(h)
    }
}

impl<B: Backend> T5EncoderModel<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(c: &T5Config, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let inner = c.num_heads * c.d_kv;
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || {
            RmsNormConfig::new(c.d_model)
                .with_eps(c.layer_norm_epsilon)
                .init(device)
        };
        let block = (0..c.num_layers)
            .map(|i| T5Block {
                attention: T5LayerSelfAttention {
                    self_attention: T5Attention {
                        q: lin(c.d_model, inner),
                        k: lin(c.d_model, inner),
                        v: lin(c.d_model, inner),
                        o: lin(inner, c.d_model),
                        relative_attention_bias: (i == 0 || c.bias_in_every_block()).then(|| {
                            EmbeddingConfig::new(c.relative_attention_num_buckets, c.num_heads)
                                .init(device)
                        }),
                        heads: c.num_heads,
                        d_kv: c.d_kv,
                        buckets: c.relative_attention_num_buckets,
                        max_distance: c.relative_attention_max_distance,
                    },
                    layer_norm: norm(),
                },
                feed_forward: T5LayerFF {
                    dense_relu_dense: T5DenseReluDense {
                        wi_0: c.gated().then(|| lin(c.d_model, c.d_ff)),
                        wi_1: c.gated().then(|| lin(c.d_model, c.d_ff)),
                        wi: (!c.gated()).then(|| lin(c.d_model, c.d_ff)),
                        wo: lin(c.d_ff, c.d_model),
                        gelu: c.feed_forward_proj == "gated-gelu",
                    },
                    layer_norm: norm(),
                },
            })
            .collect();
        Ok(Self {
            shared: EmbeddingConfig::new(c.vocab_size, c.d_model).init(device),
            encoder: T5Stack {
                block,
                final_layer_norm: norm(),
            },
        })
    }

    /// Loads `config.json` and `model.safetensors` (or its shards) from a transformers folder.
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
        let config: T5Config = diffusers_core::config::load_config(folder.join("config.json"))?;
        let weights = Weights::from_folder(folder, WeightsName::TRANSFORMERS, variant)?;
        // The embedding is tied: checkpoints store it as `shared` or `encoder.embed_tokens`.
        let shared_key = if weights.contains("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let key_map = move |p: &str| {
            let k = checkpoint_key(p);
            if k == "shared.weight" {
                shared_key.to_string()
            } else {
                k
            }
        };
        let (m, report) = load_into(
            Self::new(&config, device)?,
            &weights,
            LoadOptions {
                dtype,
                allow_unexpected: true,
                key_map: Some(&key_map),
                ..Default::default()
            },
        )?;
        let tied = ["shared.weight", "encoder.embed_tokens.weight"];
        if let Some(k) = report
            .unexpected
            .iter()
            .find(|k| !tied.contains(&k.as_str()))
        {
            return Err(Error::Core(diffusers_core::Error::UnexpectedKeys {
                path: weights.origin().to_path_buf(),
                keys: vec![k.clone()],
            }));
        }
        Ok(m)
    }

    /// Encodes `[batch, seq]` token ids to `[batch, seq, d_model]` (`last_hidden_state`).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>> {
        self.forward_masked(input_ids, None)
    }

    /// [`Self::forward`] with transformers' `attention_mask=` (`[batch, seq]`, 1 for tokens, 0
    /// for padding): padded keys get the dtype's lowest value added to their scores, as
    /// transformers' bidirectional mask does. Wan's pipeline passes the tokenizer's mask.
    pub fn forward_masked(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Tensor<B, 3>> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let invalid = |reason: String| Error::InvalidConfig {
            model: MODEL,
            reason,
        };
        let mut x = self.shared.forward(input_ids);
        let heads = self
            .encoder
            .block
            .first()
            .ok_or_else(|| invalid("the encoder has no blocks".into()))?
            .attention
            .self_attention
            .heads;
        let mask = match attention_mask {
            None => None,
            Some(m) if m.dims() != [b, s] => {
                return Err(Error::InvalidInput {
                    model: MODEL,
                    reason: format!(
                        "attention_mask has shape {:?}, the input ids {:?}",
                        m.dims(),
                        [b, s]
                    ),
                });
            }
            Some(m) => {
                let dtype = x.dtype();
                // torch.finfo(dtype).min
                let lowest = match dtype {
                    DType::F16 => -65504.0,
                    DType::BF16 => -3.3895313892515355e38,
                    _ => f64::from(f32::MIN),
                };
                let padded = m.equal_elem(0).reshape([b, 1, 1, s]);
                let zeros = Tensor::<B, 4>::zeros([b, 1, 1, s], (&device, dtype));
                Some(zeros.mask_fill(padded, lowest).expand([b, heads, s, s]))
            }
        };
        let mut shared: Option<Tensor<B, 4>> = None;
        for (i, block) in self.encoder.block.iter().enumerate() {
            let a = &block.attention;
            // T5: the first block's bias for every block; UMT5: each block's own.
            let bias = match a.self_attention.bias(s, &device) {
                Some(own) => {
                    shared.get_or_insert_with(|| own.clone());
                    own
                }
                None => shared.clone().ok_or_else(|| {
                    invalid(format!("block {i} has no relative_attention_bias to use"))
                })?,
            };
            let bias = match &mask {
                Some(m) => bias.expand([b, heads, s, s]) + m.clone(),
                None => bias,
            };
            x = x.clone() + a.self_attention.forward(a.layer_norm.forward(x), bias);
            let f = &block.feed_forward;
            x = x.clone() + f.dense_relu_dense.forward(f.layer_norm.forward(x));
        }
        Ok(self.encoder.final_layer_norm.forward(x))
    }
}
