//! Pipeline-level quantization, as diffusers' `PipelineQuantizationConfig`
//! (`quantizers/pipe_quant_config.py`): one method for the components it names, applied while
//! each component loads (every `Linear` weight is packed as it comes out of the checkpoint; no
//! dense copy of a quantized component is ever held). A component saved pre-quantized by
//! diffusers (bitsandbytes 4-bit, `quantization_config` in its config.json) loads packed with
//! or without a configuration.

use std::cell::RefCell;
use std::path::Path;

use diffusers_core::weights::with_linear_hook;
use diffusers_quantization::{BitsAndBytesConfig, linear_hook};
pub use diffusers_quantization::{QuantMethod, QuantizationConfig};

use crate::{Error, Result};

/// What to quantize while loading a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineQuantizationConfig {
    /// The format (`nf4`, `fp4` with or without double quantization, `int8`, `fp8`).
    pub method: QuantMethod,
    /// The components to quantize, by their model_index.json names (`transformer`,
    /// `text_encoder_2`, `unet`, ...). Empty means the denoiser only.
    pub components_to_quantize: Vec<String>,
}

impl PipelineQuantizationConfig {
    /// `method` for the denoiser (`transformer` or `unet`) only.
    pub fn new(method: QuantMethod) -> Self {
        PipelineQuantizationConfig {
            method,
            components_to_quantize: Vec::new(),
        }
    }

    /// The components this configuration quantizes in a pipeline whose model_index.json names
    /// `components`; a name that is not among them is an error listing them.
    pub fn resolve(&self, components: &[String]) -> Result<Vec<String>> {
        if self.components_to_quantize.is_empty() {
            return Ok(components
                .iter()
                .filter(|c| *c == "transformer" || *c == "unet")
                .cloned()
                .collect());
        }
        if let Some(bad) = self
            .components_to_quantize
            .iter()
            .find(|c| !components.contains(c))
        {
            return Err(Error::Quantization(format!(
                "components_to_quantize names `{bad}`, which the pipeline does not have (it has: {})",
                components.join(", ")
            )));
        }
        Ok(self.components_to_quantize.clone())
    }
}

thread_local! {
    /// The method and the resolved component names of the pipeline being loaded.
    static ACTIVE: RefCell<Option<(QuantMethod, Vec<String>)>> = const { RefCell::new(None) };
}

/// Runs a pipeline load with `config` (already resolved to component names) in effect for
/// [`load_component`].
pub(crate) fn with_quantization<R>(
    config: Option<(QuantMethod, Vec<String>)>,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(Option<(QuantMethod, Vec<String>)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            ACTIVE.with(|a| *a.borrow_mut() = prev);
        }
    }
    let prev = ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), config));
    let _restore = Restore(prev);
    f()
}

/// Modules diffusers keeps in full precision when quantizing a model of this class
/// (`_keep_in_fp32_modules`, which its quantizers add to `modules_to_not_convert`).
fn keep_in_fp32_modules(class: &str) -> &'static [&'static str] {
    match class {
        "WanTransformer3DModel" => &[
            "rope",
            "time_embedder",
            "scale_shift_table",
            "norm1",
            "norm2",
            "norm3",
        ],
        _ => &[],
    }
}

/// Loads the component in `folder/name` with `load`, quantizing its `Linear` weights when the
/// active configuration names it, and reading pre-quantized weights when its config.json says
/// it was saved quantized.
pub(crate) fn load_component<T, E>(
    folder: &Path,
    name: &str,
    load: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T>
where
    Error: From<E>,
{
    let config_path = folder.join(name).join("config.json");
    let config: Option<serde_json::Value> = config_path
        .is_file()
        .then(|| diffusers_core::json::read(&config_path))
        .transpose()?;
    let prequantized = match &config {
        Some(c) => BitsAndBytesConfig::from_component_config(c)
            .map_err(|e| Error::Quantization(format!("{}: {e}", config_path.display())))?,
        None => None,
    };
    let method = ACTIVE.with(|a| {
        a.borrow()
            .as_ref()
            .filter(|(_, names)| names.iter().any(|n| n == name))
            .map(|(m, _)| *m)
    });
    if method.is_none() && prequantized.is_none() {
        return Ok(load()?);
    }
    let class = config
        .as_ref()
        .and_then(|c| c.get("_class_name"))
        .and_then(|c| c.as_str())
        .unwrap_or_default();
    let quantize = method.map(|method| {
        let mut q = QuantizationConfig::new(method);
        q.modules_to_not_convert = keep_in_fp32_modules(class)
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(skip) = prequantized
            .as_ref()
            .and_then(|p| p.llm_int8_skip_modules.clone())
        {
            q.modules_to_not_convert.extend(skip);
        }
        q
    });
    match (&quantize, &prequantized) {
        (Some(q), _) => tracing::info!("{name}: quantizing Linear weights to {}", q.method.name()),
        (None, Some(p)) => tracing::info!(
            "{name}: pre-quantized bitsandbytes 4-bit ({})",
            p.bnb_4bit_quant_type
        ),
        _ => {}
    }
    let loaded = with_linear_hook(Some(linear_hook(quantize)), load);
    // A stash left over means a hook packed a weight no Linear took: never silently dropped.
    if diffusers_quantization::packed::take_stashed().is_some() {
        return Err(Error::Quantization(format!(
            "{}: a quantized weight was not taken by its layer",
            folder.join(name).display()
        )));
    }
    Ok(loaded?)
}
