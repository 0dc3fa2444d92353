//! Quantizing while loading, and loading pre-quantized checkpoints: the
//! [`LinearHook`](diffusers_core::weights::LinearHook) a pipeline installs around a component's
//! load (`diffusers_core::weights::with_linear_hook`).
//!
//! For each `Linear` weight the loader is about to read, the hook
//! - loads a bitsandbytes 4-bit weight saved by diffusers as it lies (keys `weight`,
//!   `weight.absmax`, `weight.quant_map`, `weight.nested_absmax`, `weight.nested_quant_map`,
//!   `weight.quant_state.bitsandbytes__nf4|fp4`), whatever the configuration;
//! - else, when quantizing, reads the dense tensor (one tensor at a time, out of the mmap),
//!   packs it and drops the dense copy, unless the module is one diffusers would not convert;
//! - else leaves the weight to the loader (dense).

use std::sync::Arc;

use burn::tensor::DType;
use diffusers_core::weights::{HookDecision, LinearHook, Weights};
use serde::Deserialize;

use crate::bnb_4bit::{Absmax, Bnb4bit, Bnb4bitType};
use crate::packed::{Packed, QuantMethod, QuantizedTensor, stash};

/// What to quantize a component's `Linear` weights to.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig {
    /// The format.
    pub method: QuantMethod,
    /// Modules left dense, matched as diffusers' `_replace_with_bnb_linear` matches
    /// `modules_to_not_convert` (a module's own name, a path equal to an entry, or a path
    /// containing `entry + "."`); the model's `_keep_in_fp32_modules` belong here.
    pub modules_to_not_convert: Vec<String>,
}

impl QuantizationConfig {
    /// Every `Linear` of the component, in `method`.
    pub fn new(method: QuantMethod) -> Self {
        QuantizationConfig {
            method,
            modules_to_not_convert: Vec::new(),
        }
    }

    /// Whether the module at `path` (dotted, without `.weight`) is quantized.
    pub fn converts(&self, path: &str) -> bool {
        let leaf = path.rsplit('.').next().unwrap_or(path);
        !self
            .modules_to_not_convert
            .iter()
            .any(|k| k == leaf || k == path || path.contains(&format!("{k}.")))
    }
}

/// diffusers' `BitsAndBytesConfig` as a component's config.json stores it
/// (`quantization_config`), the fields this crate reads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BitsAndBytesConfig {
    /// `"bitsandbytes"`.
    pub quant_method: String,
    /// 4-bit weights.
    pub load_in_4bit: bool,
    /// LLM.int8 weights (not supported: an error).
    pub load_in_8bit: bool,
    /// `"nf4"` or `"fp4"` (diffusers' default `"fp4"`).
    pub bnb_4bit_quant_type: String,
    /// Double quantization.
    pub bnb_4bit_use_double_quant: bool,
    /// The compute dtype (`"float32"`, `"bfloat16"`, `"float16"`).
    pub bnb_4bit_compute_dtype: Option<String>,
    /// Modules left dense.
    pub llm_int8_skip_modules: Option<Vec<String>>,
}

impl Default for BitsAndBytesConfig {
    fn default() -> Self {
        BitsAndBytesConfig {
            quant_method: "bitsandbytes".into(),
            load_in_4bit: false,
            load_in_8bit: false,
            bnb_4bit_quant_type: "fp4".into(),
            bnb_4bit_use_double_quant: false,
            bnb_4bit_compute_dtype: None,
            llm_int8_skip_modules: None,
        }
    }
}

impl BitsAndBytesConfig {
    /// The `quantization_config` of a component's config.json, if it has one.
    pub fn from_component_config(config: &serde_json::Value) -> crate::Result<Option<Self>> {
        let Some(q) = config.get("quantization_config") else {
            return Ok(None);
        };
        let c: BitsAndBytesConfig = serde_json::from_value(q.clone())
            .map_err(|e| crate::Error::Invalid(format!("quantization_config: {e}")))?;
        if c.quant_method != "bitsandbytes" {
            return Err(crate::Error::Invalid(format!(
                "quantization_config: quant_method `{}` is not supported (bitsandbytes 4-bit is; \
                 GGUF loads with --transformer FILE.gguf)",
                c.quant_method
            )));
        }
        if c.load_in_8bit || !c.load_in_4bit {
            return Err(crate::Error::Invalid(
                "quantization_config: only bitsandbytes 4-bit (load_in_4bit) checkpoints are \
                 supported, not LLM.int8 (load_in_8bit)"
                    .into(),
            ));
        }
        Ok(Some(c))
    }

    /// The compute dtype, if named.
    pub fn compute_dtype(&self) -> Option<DType> {
        match self.bnb_4bit_compute_dtype.as_deref() {
            Some("float32") => Some(DType::F32),
            Some("bfloat16") => Some(DType::BF16),
            Some("float16") => Some(DType::F16),
            _ => None,
        }
    }
}

/// The load hook for a component: `config` quantizes dense weights (None loads them dense);
/// pre-quantized bitsandbytes weights load packed either way.
pub fn linear_hook(config: Option<QuantizationConfig>) -> LinearHook {
    Arc::new(move |key: &str, shape: &[usize], weights: &Weights| {
        decide(config.as_ref(), key, shape, weights).map_err(|e| e.to_string())
    })
}

fn decide(
    config: Option<&QuantizationConfig>,
    key: &str,
    shape: &[usize],
    weights: &Weights,
) -> crate::Result<HookDecision> {
    let &[rows, cols] = shape else {
        return Ok(HookDecision::Dense);
    };
    if let Some(state_key) = bnb_state_key(key, weights) {
        let (q, keys) = read_bnb_4bit(key, &state_key, rows, cols, weights)?;
        stash(q)?;
        return Ok(HookDecision::Taken(keys));
    }
    let Some(config) = config else {
        return Ok(HookDecision::Dense);
    };
    let path = key.strip_suffix(".weight").unwrap_or(key);
    if !config.converts(path) || weights.info(key).is_none() {
        return Ok(HookDecision::Dense);
    }
    let info = weights.info(key).expect("checked above");
    if info.shape != shape {
        return Err(crate::Error::Invalid(format!(
            "stored shape {:?}, the model expects {shape:?}",
            info.shape
        )));
    }
    let data = weights.read(key)?.convert::<f32>();
    let x: Vec<f32> = data
        .into_vec()
        .map_err(|e| crate::Error::Invalid(format!("{e:?}")))?;
    stash(QuantizedTensor::quantize(&x, rows, cols, config.method)?)?;
    Ok(HookDecision::Taken(vec![key.to_string()]))
}

/// The `weight.quant_state.bitsandbytes__*` key of a pre-quantized weight, if any.
fn bnb_state_key(key: &str, weights: &Weights) -> Option<String> {
    ["nf4", "fp4"]
        .iter()
        .map(|t| format!("{key}.quant_state.bitsandbytes__{t}"))
        .find(|k| weights.info(k).is_some())
        .or_else(|| {
            // absmax without a state: reported as a missing key by read_bnb_4bit.
            weights
                .info(&format!("{key}.absmax"))
                .map(|_| format!("{key}.quant_state.bitsandbytes__nf4"))
        })
}

#[derive(Deserialize)]
struct QuantStateJson {
    quant_type: String,
    blocksize: usize,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_offset: Option<f32>,
}

fn read_bnb_4bit(
    key: &str,
    state_key: &str,
    rows: usize,
    cols: usize,
    weights: &Weights,
) -> crate::Result<(QuantizedTensor, Vec<String>)> {
    let missing = |m: &str| crate::Error::MissingQuantState {
        path: weights.origin().to_path_buf(),
        key: key.to_string(),
        method: "bitsandbytes 4-bit".into(),
        missing: m.to_string(),
    };
    let get = |k: &str| -> crate::Result<burn::tensor::TensorData> {
        if weights.info(k).is_none() {
            return Err(missing(k));
        }
        Ok(weights.read(k)?)
    };
    let bytes = |k: &str| -> crate::Result<Vec<u8>> {
        get(k)?
            .into_vec::<u8>()
            .map_err(|e| crate::Error::Invalid(format!("`{k}`: expected uint8 ({e:?})")))
    };
    let floats = |k: &str| -> crate::Result<Vec<f32>> {
        get(k)?
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| crate::Error::Invalid(format!("`{k}`: {e:?}")))
    };
    let state: QuantStateJson = serde_json::from_slice(&bytes(state_key)?)
        .map_err(|e| crate::Error::Invalid(format!("`{state_key}`: {e}")))?;
    if state.shape != [rows, cols] {
        return Err(crate::Error::Invalid(format!(
            "`{key}` was quantized with shape {:?}, the model expects [{rows}, {cols}]",
            state.shape
        )));
    }
    let quant_type = Bnb4bitType::parse(&state.quant_type)?;
    let (absmax_k, map_k) = (format!("{key}.absmax"), format!("{key}.quant_map"));
    let data = bytes(key)?;
    let quant_map = floats(&map_k)?;
    if quant_map.as_slice() != quant_type.code() {
        return Err(crate::Error::Invalid(format!(
            "`{map_k}` is not bitsandbytes' {} code",
            quant_type.name()
        )));
    }
    let mut keys = vec![
        key.to_string(),
        state_key.to_string(),
        absmax_k.clone(),
        map_k,
    ];
    let absmax = match (state.nested_blocksize, state.nested_offset) {
        (Some(nested_blocksize), Some(offset)) => {
            let (na, nm) = (
                format!("{key}.nested_absmax"),
                format!("{key}.nested_quant_map"),
            );
            let a = Absmax::Nested {
                q: bytes(&absmax_k)?,
                nested_absmax: floats(&na)?,
                code: floats(&nm)?,
                nested_blocksize,
                offset,
            };
            keys.extend([na, nm]);
            a
        }
        _ => Absmax::Plain(floats(&absmax_k)?),
    };
    let q = QuantizedTensor::from_packed(
        rows,
        cols,
        Packed::Bnb4bit(Bnb4bit {
            quant_type,
            blocksize: state.blocksize,
            numel: rows * cols,
            data,
            absmax,
        }),
    )
    .map_err(|e| crate::Error::Invalid(format!("`{key}`: {e}")))?;
    Ok((q, keys))
}
