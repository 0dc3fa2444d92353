//! transformers' `LlamaModel` (`models/llama/modeling_llama.py`), HunyuanVideo's text encoder,
//! with every hidden state; and HunyuanVideo's prompt template (diffusers'
//! `pipelines/hunyuan_video/pipeline_hunyuan_video.py`: `DEFAULT_PROMPT_TEMPLATE` and
//! `_get_llama_prompt_embeds`, here [`PromptTemplate`] and [`get_llama_prompt_embeds`]).
//!
//! Module fields are the checkpoint keys of a `LlamaModel` (`layers.0.self_attn.q_proj.weight`,
//! `embed_tokens.weight`, `norm.weight`), as transformers 4.x and 5.x both save it; a
//! `LlamaForCausalLM` checkpoint has them under `model.` with an `lm_head` beside, which is
//! ignored. [`checkpoint_key`] is the one place that maps them. `config.json` is read in both
//! forms transformers writes: 4.x's `rope_theta` + `rope_scaling`, 5.x's `rope_parameters`.
//!
//! ```no_run
//! use diffusers_core::backend::Cpu;
//! use diffusers_text_encoders::llama::{LlamaModel, LlamaPromptOptions, PromptTemplate, get_llama_prompt_embeds};
//! use diffusers_text_encoders::tokenizer::PromptTokenizer;
//!
//! let device = Default::default();
//! let encoder = LlamaModel::<Cpu>::from_folder("HunyuanVideo/text_encoder", None, &device)?;
//! let tokenizer = PromptTokenizer::from_pretrained("HunyuanVideo/tokenizer")?;
//! let out = get_llama_prompt_embeds(&encoder, &tokenizer, &["A cat walks on the grass"],
//!     &PromptTemplate::default(), LlamaPromptOptions::default())?;
//! // out.prompt_embeds: [1, 256, 4096], out.prompt_attention_mask: [1, 256]
//! # Ok::<(), diffusers_text_encoders::Error>(())
//! ```

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::silu;
use diffusers_nn::attention::{AttentionMask, scaled_dot_product_attention};
use diffusers_nn::embedding::{Embedding, EmbeddingConfig};
use diffusers_nn::embeddings::{
    RopeOptions, RotaryPairing, apply_rotary_emb, get_1d_rotary_pos_embed,
};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{RmsNorm, RmsNormConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tokenizer::PromptTokenizer;
use crate::{Error, Result};

const MODEL: &str = "LlamaModel";

/// transformers' `LlamaConfig`, key for key (both the 4.x and the 5.x rope keys), with its
/// defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` means `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// `silu` (the only activation Llama checkpoints use).
    pub hidden_act: String,
    /// Longest sequence the model was trained for (not enforced, as transformers).
    pub max_position_embeddings: usize,
    /// RMS-norm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base (transformers 4.x; 5.x writes it in `rope_parameters`).
    pub rope_theta: Option<f64>,
    /// Rotary scaling (transformers 4.x): only `null` (or type `default`) is supported.
    pub rope_scaling: Option<Value>,
    /// Rotary parameters (transformers 5.x: `{"rope_theta": ..., "rope_type": "default"}`).
    pub rope_parameters: Option<Value>,
    /// Biases in q/k/v/o projections.
    pub attention_bias: bool,
    /// Biases in the MLP projections.
    pub mlp_bias: bool,
    /// Width of each head; `None` means `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// Whether `lm_head` shares `embed_tokens` (a causal-LM matter; the encoder ignores it).
    pub tie_word_embeddings: bool,
    /// Other keys (`architectures`, `model_type`, token ids, ...).
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            head_dim: None,
            tie_word_embeddings: false,
            meta: ConfigMeta::default(),
        }
    }
}

impl diffusers_core::config::Config for LlamaConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn unused_keys() -> &'static [&'static str] {
        &[
            "attention_dropout",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "pretraining_tp",
        ]
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let kv = self.key_value_heads();
        if self.num_attention_heads == 0 || kv == 0 || !self.num_attention_heads.is_multiple_of(kv)
        {
            return Err(format!(
                "num_attention_heads {} is not a positive multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        let head_dim = self.head_dim();
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {head_dim} must be even and positive (rotary embedding)"
            ));
        }
        if !matches!(self.hidden_act.as_str(), "silu" | "swish") {
            return Err(format!(
                "hidden_act `{}` is not supported (silu)",
                self.hidden_act
            ));
        }
        self.rope_theta_value().map(|_| ())
    }
}

/// The `rope_type` of a rope dict (`rope_type`, or the older `type`), `default` when absent.
fn rope_type(v: &Value) -> &str {
    v.get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
}

impl LlamaConfig {
    /// Key/value heads (`num_key_value_heads`, else `num_attention_heads`).
    pub fn key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of each head (`head_dim`, else `hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base: `rope_parameters.rope_theta` (5.x), else `rope_theta` (4.x), else
    /// 10000. Rotary scaling other than the default (`llama3`, `linear`, `dynamic`, `yarn`, ...)
    /// is an error: HunyuanVideo's encoder has none, and computing it wrong would be silent.
    pub fn rope_theta_value(&self) -> std::result::Result<f64, String> {
        let unsupported = |key: &str, ty: &str| {
            Err(format!(
                "{key} of type `{ty}` is not supported (only rotary embeddings without scaling: \
                 rope_scaling null or rope_type `default`)"
            ))
        };
        let mut theta = self.rope_theta;
        if let Some(p) = self.rope_parameters.as_ref().filter(|p| !p.is_null()) {
            if !p.is_object() {
                return Err(format!("rope_parameters must be an object, not {p}"));
            }
            let ty = rope_type(p);
            if ty != "default" {
                return unsupported("rope_parameters", ty);
            }
            if let Some(t) = p.get("rope_theta") {
                theta =
                    Some(t.as_f64().ok_or_else(|| {
                        format!("rope_parameters.rope_theta `{t}` is not a number")
                    })?);
            }
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            if !s.is_object() {
                return Err(format!("rope_scaling must be an object or null, not {s}"));
            }
            let ty = rope_type(s);
            if ty != "default" {
                return unsupported("rope_scaling", ty);
            }
        }
        let theta = theta.unwrap_or(10000.0);
        if !(theta.is_finite() && theta > 0.0) {
            return Err(format!("rope_theta {theta} must be positive"));
        }
        Ok(theta)
    }
}

/// Self-attention with rotary embeddings on queries and keys, grouped key/value heads.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub o_proj: Linear<B>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// The gated feed-forward network: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMLP<B: Backend> {
    /// Gate projection.
    pub gate_proj: Linear<B>,
    /// Up projection.
    pub up_proj: Linear<B>,
    /// Down projection.
    pub down_proj: Linear<B>,
}

/// One decoder layer (pre-norm attention and MLP, each with a residual).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// Feed-forward.
    pub mlp: LlamaMLP<B>,
    /// RMS norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// RMS norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// `LlamaModel`: the decoder stack without a language-model head.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings.
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// Final RMS norm.
    pub norm: RmsNorm<B>,
    rope_theta: f64,
}

/// `LlamaModel`'s output with `output_hidden_states=True`.
#[derive(Debug, Clone)]
pub struct LlamaOutput<B: Backend> {
    /// The final layer's output after the final norm.
    pub last_hidden_state: Tensor<B, 3>,
    /// `num_hidden_layers + 1` states, as transformers returns them: the embeddings, each
    /// layer's output, and for the last one the normed output (equal to `last_hidden_state`).
    pub hidden_states: Vec<Tensor<B, 3>>,
}

/// Checkpoint key of a module path: the same name, under `model.` in a `LlamaForCausalLM`
/// checkpoint (`prefixed`).
pub fn checkpoint_key(path: &str, prefixed: bool) -> String {
    if prefixed {
        format!("model.{path}")
    } else {
        path.to_string()
    }
}

/// `torch.finfo(dtype).min`, the value transformers' eager masks add for masked keys.
fn lowest(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        _ => f64::from(f32::MIN),
    }
}

fn invalid_input(reason: String) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason,
    }
}

impl<B: Backend> LlamaAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
        mask: Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let d = self.head_dim;
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, s, heads, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()), self.heads);
        let k = split(self.k_proj.forward(x.clone()), self.kv_heads);
        let v = split(self.v_proj.forward(x), self.kv_heads);
        let q = apply_rotary_emb(q, cos.clone(), sin.clone(), RotaryPairing::Halves);
        let k = apply_rotary_emb(k, cos, sin, RotaryPairing::Halves);
        // repeat_kv: query head h reads key/value head h / (heads / kv_heads).
        let rep = self.heads / self.kv_heads;
        let repeat = |t: Tensor<B, 4>| {
            if rep == 1 {
                t
            } else {
                t.unsqueeze_dim::<5>(2)
                    .expand([b, self.kv_heads, rep, s, d])
                    .reshape([b, self.heads, s, d])
            }
        };
        let o = scaled_dot_product_attention(
            q,
            repeat(k),
            repeat(v),
            Some(AttentionMask::Additive(mask)),
            None,
            false,
        );
        self.o_proj
            .forward(o.swap_dims(1, 2).reshape([b, s, self.heads * d]))
    }
}

impl<B: Backend> LlamaMLP<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(c: &LlamaConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let rope_theta = c
            .rope_theta_value()
            .map_err(|reason| Error::InvalidConfig {
                model: MODEL,
                reason,
            })?;
        let (heads, kv_heads, head_dim) =
            (c.num_attention_heads, c.key_value_heads(), c.head_dim());
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = || {
            RmsNormConfig::new(c.hidden_size)
                .with_eps(c.rms_norm_eps)
                .init(device)
        };
        let h = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: lin(h, heads * head_dim, c.attention_bias),
                    k_proj: lin(h, kv_heads * head_dim, c.attention_bias),
                    v_proj: lin(h, kv_heads * head_dim, c.attention_bias),
                    o_proj: lin(heads * head_dim, h, c.attention_bias),
                    heads,
                    kv_heads,
                    head_dim,
                },
                mlp: LlamaMLP {
                    gate_proj: lin(h, c.intermediate_size, c.mlp_bias),
                    up_proj: lin(h, c.intermediate_size, c.mlp_bias),
                    down_proj: lin(c.intermediate_size, h, c.mlp_bias),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Ok(Self {
            embed_tokens: EmbeddingConfig::new(c.vocab_size, h).init(device),
            layers,
            norm: norm(),
            rope_theta,
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
        let config: LlamaConfig = diffusers_core::config::load_config(folder.join("config.json"))?;
        let weights = Weights::from_folder(folder, WeightsName::TRANSFORMERS, variant)?;
        let prefixed = weights.contains("model.embed_tokens.weight");
        let key_map = move |p: &str| checkpoint_key(p, prefixed);
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
        // A causal LM's head, and the rotary buffers older checkpoints saved, are not used.
        let ignored = |k: &str| k == "lm_head.weight" || k.ends_with("rotary_emb.inv_freq");
        if let Some(k) = report.unexpected.iter().find(|k| !ignored(k)) {
            return Err(Error::Core(diffusers_core::Error::UnexpectedKeys {
                path: weights.origin().to_path_buf(),
                keys: vec![k.clone()],
            }));
        }
        Ok(m)
    }

    /// Number of decoder layers.
    pub fn num_hidden_layers(&self) -> usize {
        self.layers.len()
    }

    /// Encodes `[batch, seq]` token ids with transformers' `attention_mask=` (`[batch, seq]`, 1
    /// for tokens, 0 for padding) and `output_hidden_states=True`. Attention is causal; padded
    /// keys get the dtype's lowest value added to their scores, as transformers' mask does.
    /// Positions count from 0 for every row (transformers' default `position_ids`).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<LlamaOutput<B>> {
        let [b, s] = input_ids.dims();
        if b == 0 || s == 0 {
            return Err(invalid_input(format!(
                "input_ids of shape {:?} is empty",
                [b, s]
            )));
        }
        let device = input_ids.device();
        let to_i64 = |t: Tensor<B, 2, Int>, what: &str| {
            t.into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .map_err(|e| invalid_input(format!("{what}: {e:?}")))
        };
        // Out-of-range ids would index past the table.
        let vocab = self.embed_tokens.num_embeddings();
        let ids = to_i64(input_ids.clone(), "input_ids")?;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
            return Err(invalid_input(format!(
                "token id {bad} is outside the vocabulary of {vocab} (a tokenizer of another model?)"
            )));
        }
        let keep: Vec<bool> = match attention_mask {
            None => vec![true; b * s],
            Some(m) if m.dims() != [b, s] => {
                return Err(invalid_input(format!(
                    "attention_mask has shape {:?}, the input ids {:?}",
                    m.dims(),
                    [b, s]
                )));
            }
            Some(m) => to_i64(m, "attention_mask")?
                .into_iter()
                .map(|v| v != 0)
                .collect(),
        };
        let mut x = self.embed_tokens.forward(input_ids);
        let dtype = x.dtype();
        // Causal and padding mask, [b, 1, s, s], in the compute dtype.
        let low = lowest(dtype);
        let mut bias = vec![0f32; b * s * s];
        for r in 0..b {
            for q in 0..s {
                for k in 0..s {
                    if k > q || !keep[r * s + k] {
                        bias[(r * s + q) * s + k] = low as f32;
                    }
                }
            }
        }
        let mask = Tensor::<B, 4>::from_data(TensorData::new(bias, [b, 1, s, s]), (&device, dtype));
        let head_dim = self
            .layers
            .first()
            .map(|l| l.self_attn.head_dim)
            .ok_or_else(|| Error::InvalidConfig {
                model: MODEL,
                reason: "the model has no layers".into(),
            })?;
        let positions: Vec<f64> = (0..s).map(|p| p as f64).collect();
        // transformers: inv_freq and the angles in f32, `cat((freqs, freqs))` (rotate_half layout).
        let (cos, sin) = get_1d_rotary_pos_embed::<B>(
            head_dim,
            &positions,
            RopeOptions {
                theta: self.rope_theta,
                repeat_interleave_real: false,
                f64_freqs: false,
                ..RopeOptions::default()
            },
            &device,
        );
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            hidden_states.push(x.clone());
            let a = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                cos.clone(),
                sin.clone(),
                mask.clone(),
            );
            x = x + a;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        let last = self.norm.forward(x);
        hidden_states.push(last.clone());
        Ok(LlamaOutput {
            last_hidden_state: last,
            hidden_states,
        })
    }
}

/// HunyuanVideo's `DEFAULT_PROMPT_TEMPLATE["template"]`, exactly as diffusers writes it.
pub const DEFAULT_PROMPT_TEMPLATE: &str = concat!(
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: ",
    "1. The main content and theme of the video.",
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.",
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.",
    "4. background environment, light, style and atmosphere.",
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>",
);

/// HunyuanVideo's `DEFAULT_PROMPT_TEMPLATE["crop_start"]`: the template's tokens before the
/// prompt with HunyuanVideo's tokenizer.
pub const DEFAULT_CROP_START: usize = 95;

/// A prompt template as HunyuanVideo's pipeline takes it (`prompt_template=`): the text with one
/// `{}` where the prompt goes, and how many leading tokens to drop from the encoding. Reads from
/// JSON as `{"template": "...{}...", "crop_start": 95}`; without `crop_start`, it is computed
/// from the template as diffusers does ([`PromptTemplate::crop_start`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTemplate {
    /// The text, with `{}` for the prompt (`{{` and `}}` for literal braces, as Python's
    /// `str.format`).
    pub template: String,
    /// Leading tokens to drop; `None`: computed from the template.
    #[serde(default)]
    pub crop_start: Option<usize>,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self {
            template: DEFAULT_PROMPT_TEMPLATE.into(),
            crop_start: Some(DEFAULT_CROP_START),
        }
    }
}

fn template_error(reason: String) -> Error {
    Error::InvalidInput {
        model: "PromptTemplate",
        reason,
    }
}

impl PromptTemplate {
    /// Reads a template from JSON text (`origin` names it in errors) and checks it.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self> {
        let t: Self = diffusers_core::json::from_str(text, origin)?;
        t.format("")
            .map_err(|e| template_error(format!("{}: {e}", origin.display())))?;
        Ok(t)
    }

    /// Reads a template from a JSON file (the CLI's `--prompt-template FILE`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Core(diffusers_core::Error::FileNotFound {
                    path: path.to_path_buf(),
                })
            } else {
                template_error(format!("{}: {e}", path.display()))
            }
        })?;
        Self::from_json(&text, path)
    }

    /// `template.format(prompt)`: the one `{}` replaced by the prompt, `{{`/`}}` unescaped. A
    /// template without `{}` (the prompt would be dropped), with more than one, or with another
    /// replacement field is an error.
    pub fn format(&self, prompt: &str) -> Result<String> {
        let mut out = String::with_capacity(self.template.len() + prompt.len());
        let mut fields = 0;
        let mut chars = self.template.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('{', Some('{')) | ('}', Some('}')) => {
                    chars.next();
                    out.push(c);
                }
                ('{', Some('}')) => {
                    chars.next();
                    fields += 1;
                    out.push_str(prompt);
                }
                ('{' | '}', _) => {
                    return Err(template_error(format!(
                        "the prompt template has a `{c}` that is not part of `{{}}` (write `{c}{c}` for a literal brace)"
                    )));
                }
                _ => out.push(c),
            }
        }
        if fields != 1 {
            return Err(template_error(format!(
                "the prompt template must have exactly one `{{}}` where the prompt goes, it has {fields}"
            )));
        }
        Ok(out)
    }

    /// The crop: `crop_start` when given, else as diffusers computes it: the template itself
    /// (with its `{}`) tokenized with `padding="max_length"` and no `max_length`, minus 2 (the
    /// `{}` and `<|eot_id|>` tokens). transformers pads that to the tokenizer's
    /// `model_max_length` when `tokenizer_config.json` sets one, so the crop is then
    /// `model_max_length - 2` (diffusers' behaviour, reproduced; a template file should give
    /// `crop_start` with such a tokenizer).
    pub fn crop_start(&self, tokenizer: &PromptTokenizer) -> Result<usize> {
        if let Some(c) = self.crop_start {
            return Ok(c);
        }
        let len = tokenizer.encode(&self.template)?.len();
        let padded = tokenizer.model_max_length().map_or(len, |m| m.max(len));
        padded.checked_sub(2).ok_or_else(|| {
            template_error(format!(
                "the prompt template has {padded} tokens, too few to compute crop_start from"
            ))
        })
    }
}

/// Options of [`get_llama_prompt_embeds`], with diffusers' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaPromptOptions {
    /// Tokens kept after the crop (`max_sequence_length`, 256).
    pub max_sequence_length: usize,
    /// Which hidden state: `hidden_states[-(num_hidden_layers_to_skip + 1)]` (2).
    pub num_hidden_layers_to_skip: usize,
}

impl Default for LlamaPromptOptions {
    fn default() -> Self {
        Self {
            max_sequence_length: 256,
            num_hidden_layers_to_skip: 2,
        }
    }
}

/// Prompt embeddings and their mask, cropped past the template.
#[derive(Debug, Clone)]
pub struct LlamaPromptEmbeds<B: Backend> {
    /// `[batch, max_sequence_length, hidden_size]`, in the encoder's dtype.
    pub prompt_embeds: Tensor<B, 3>,
    /// `[batch, max_sequence_length]`, 1 for tokens, 0 for padding.
    pub prompt_attention_mask: Tensor<B, 2, Int>,
}

/// Token ids and attention mask of templated prompts, with the crop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaTokens {
    /// `[batch][max_sequence_length + crop_start]` ids.
    pub ids: Vec<Vec<u32>>,
    /// The same shape: 1 for tokens, 0 for padding (on the right, as HunyuanVideo's tokenizer
    /// pads).
    pub attention_mask: Vec<Vec<u32>>,
    /// Leading tokens the embeddings drop.
    pub crop_start: usize,
}

/// The tokens `_get_llama_prompt_embeds` feeds the encoder: each prompt formatted into the
/// template, tokenized to `max_sequence_length + crop_start` tokens (padding `max_length` on the
/// right with the tokenizer's pad token, truncation, attention mask).
pub fn tokenize_llama_prompts(
    tokenizer: &PromptTokenizer,
    prompts: &[&str],
    template: &PromptTemplate,
    max_sequence_length: usize,
) -> Result<LlamaTokens> {
    if max_sequence_length == 0 {
        return Err(template_error(
            "max_sequence_length must be positive".into(),
        ));
    }
    let crop_start = template.crop_start(tokenizer)?;
    let texts = prompts
        .iter()
        .map(|p| template.format(p))
        .collect::<Result<Vec<_>>>()?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let max_length = max_sequence_length
        .checked_add(crop_start)
        .ok_or_else(|| template_error(format!("crop_start {crop_start} is too large")))?;
    let ids = tokenizer.encode_padded(&texts, max_length)?.ids;
    // Right padding: the first min(tokens, max_length) positions are tokens.
    let attention_mask = texts
        .iter()
        .map(|t| {
            let n = tokenizer.encode(t)?.len().min(max_length);
            Ok((0..max_length).map(|i| u32::from(i < n)).collect())
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    Ok(LlamaTokens {
        ids,
        attention_mask,
        crop_start,
    })
}

/// diffusers' `HunyuanVideoPipeline._get_llama_prompt_embeds` (one video per prompt): the
/// prompts through the template and the tokenizer ([`tokenize_llama_prompts`]), the encoder
/// with the attention mask, `hidden_states[-(num_hidden_layers_to_skip + 1)]` (so the final
/// norm applies only when the skip is 0), then `[:, crop_start:]` of embeddings and mask.
pub fn get_llama_prompt_embeds<B: Backend>(
    encoder: &LlamaModel<B>,
    tokenizer: &PromptTokenizer,
    prompts: &[&str],
    template: &PromptTemplate,
    options: LlamaPromptOptions,
) -> Result<LlamaPromptEmbeds<B>> {
    if prompts.is_empty() {
        return Err(template_error("no prompts to encode".into()));
    }
    let tokens = tokenize_llama_prompts(tokenizer, prompts, template, options.max_sequence_length)?;
    let crop_start = tokens.crop_start;
    let device = encoder.embed_tokens.weight.lazy_device();
    let b = prompts.len();
    let s = options.max_sequence_length + crop_start;
    let flat =
        |rows: Vec<Vec<u32>>| -> Vec<i64> { rows.into_iter().flatten().map(i64::from).collect() };
    let (ids, mask) = (flat(tokens.ids), flat(tokens.attention_mask));
    if ids.len() != b * s || mask.len() != b * s {
        return Err(invalid_input(format!(
            "the tokenizer gave {} ids and {} mask values for {b} prompts of {s} tokens",
            ids.len(),
            mask.len()
        )));
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [b, s]), &device);
    let out = encoder.forward(ids, Some(mask.clone()))?;
    let n = out.hidden_states.len();
    let skip = options.num_hidden_layers_to_skip;
    let index = n.checked_sub(skip + 1).ok_or_else(|| {
        invalid_input(format!(
            "num_hidden_layers_to_skip {skip} leaves no hidden state (the encoder has {} layers)",
            n - 1
        ))
    })?;
    let embeds = out
        .hidden_states
        .into_iter()
        .nth(index)
        .ok_or_else(|| invalid_input(format!("no hidden state {index}")))?;
    let keep = s - crop_start;
    Ok(LlamaPromptEmbeds {
        prompt_embeds: embeds.narrow(1, crop_start, keep),
        prompt_attention_mask: mask.narrow(1, crop_start, keep),
    })
}
