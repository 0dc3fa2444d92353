//! A FLUX.1 transformer from one `.gguf` file, as diffusers'
//! `FluxTransformer2DModel.from_single_file(path, config=<pipeline>, subfolder="transformer",
//! quantization_config=GGUFQuantizationConfig(...))` (`loaders/single_file_model.py`).
//!
//! The file's keys are in the BFL / ComfyUI layout; [`convert_flux_transformer_checkpoint_to_diffusers`]
//! says which diffusers parameter each tensor (or block of rows of it) becomes. `Linear` weights
//! stored in a quantized GGML type stay packed, their rows of whole blocks split and swapped as
//! the plan says, and reach the layers through a
//! [`LinearHook`](diffusers_core::weights::LinearHook) (diffusers' `GGUFLinear`, which
//! dequantizes in its forward); F32, F16 and BF16 tensors, biases and norm scales are converted
//! to the pipeline dtype and loaded from an in-memory [`Weights`] by the normal loader. The
//! config comes from the pipeline folder's `transformer/config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::weights::{
    HookDecision, LinearHook, LoadOptions, Weights, load_into, with_linear_hook,
};
use diffusers_quantization::gguf::GgufFile;
use diffusers_quantization::packed::{Packed, QuantizedTensor, stash, take_stashed};
use diffusers_transformers::single_file_utils::convert_flux_transformer_checkpoint_to_diffusers;
use diffusers_transformers::transformer_flux::{
    FluxTransformer2DModel, FluxTransformer2DModelConfig, checkpoint_key,
};

use crate::{Error, Result};

fn error(path: &Path, reason: impl Into<String>) -> Error {
    Error::SingleFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads a FLUX.1 transformer from the single-file GGUF `file` with the config in
/// `config_folder/config.json` (a pipeline's `transformer/`), dense tensors in `dtype` (their
/// stored dtype, F32 for quantized ones, when `None`).
///
/// Errors name the file: a tensor the plan does not know, a diffusers parameter no tensor
/// provides (all of them listed), a shape that does not fit the model, a GGML type the reader
/// does not support.
pub fn load_flux_transformer_gguf<B: Backend>(
    file: &Path,
    config_folder: &Path,
    dtype: Option<DType>,
    device: &B::Device,
) -> Result<(FluxTransformer2DModel<B>, FluxTransformer2DModelConfig)> {
    let config: FluxTransformer2DModelConfig =
        diffusers_core::config::load_config(config_folder.join("config.json"))?;
    let gguf = GgufFile::open(file).map_err(|e| error(file, e.to_string()))?;
    let infos: Vec<(String, Vec<usize>)> = gguf
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let plans = convert_flux_transformer_checkpoint_to_diffusers(&infos, &config)
        .map_err(|e| error(file, e.to_string()))?;
    let mut dense: BTreeMap<String, TensorData> = BTreeMap::new();
    let mut packed: BTreeMap<String, QuantizedTensor> = BTreeMap::new();
    for plan in &plans {
        let info = gguf
            .info(&plan.source)
            .ok_or_else(|| error(file, format!("no tensor `{}`", plan.source)))?;
        let rows = info.shape.first().copied().unwrap_or(1);
        let inner: Vec<usize> = info.shape.iter().skip(1).copied().collect();
        if info.ggml_type.is_quantized() && info.shape.len() == 2 {
            let bytes = gguf
                .tensor_bytes(&plan.source)
                .map_err(|e| error(file, e.to_string()))?;
            let row_bytes = bytes.len() / rows.max(1);
            for part in &plan.parts {
                let mut data = Vec::with_capacity(part.len() * row_bytes);
                for r in &part.rows {
                    data.extend_from_slice(&bytes[r.start * row_bytes..r.end * row_bytes]);
                }
                let q = QuantizedTensor::from_packed(
                    part.len(),
                    info.row_len(),
                    Packed::Gguf {
                        ty: info.ggml_type,
                        data,
                    },
                )
                .map_err(|e| error(file, format!("`{}`: {e}", plan.source)))?;
                packed.insert(part.key.clone(), q);
            }
        } else {
            let values = gguf
                .dequantize(&plan.source)
                .map_err(|e| error(file, e.to_string()))?;
            let row_len = values.len() / rows.max(1);
            for part in &plan.parts {
                let mut v = Vec::with_capacity(part.len() * row_len);
                for r in &part.rows {
                    v.extend_from_slice(&values[r.start * row_len..r.end * row_len]);
                }
                let shape: Vec<usize> = std::iter::once(part.len()).chain(inner.clone()).collect();
                let mut data = TensorData::new(v, shape);
                if let Some(d) = dtype.filter(|d| *d != DType::F32) {
                    data = data.convert_dtype(d);
                }
                dense.insert(part.key.clone(), data);
            }
        }
    }
    let n_packed = packed.len();
    tracing::info!(
        "{}: {} tensors, {n_packed} Linear weights packed ({}), {} dense",
        file.display(),
        plans.len(),
        packed_types(&packed),
        dense.len()
    );
    let packed = Arc::new(Mutex::new(packed));
    let hook = gguf_hook(packed.clone());
    let weights = Weights::from_tensors(file.to_path_buf(), dense);
    let key_map = |p: &str| checkpoint_key(p);
    let loaded = with_linear_hook(Some(hook), || {
        load_into(
            FluxTransformer2DModel::<B>::new(&config, device)?,
            &weights,
            LoadOptions {
                dtype,
                key_map: Some(&key_map),
                ..Default::default()
            },
        )
        .map_err(Error::from)
    });
    // A stash left over means a packed weight no Linear took: never silently dropped.
    let leftover_stash = take_stashed().is_some();
    let (model, _) = loaded.map_err(|e| match e {
        Error::Core(diffusers_core::Error::MissingKeys { keys, .. }) => error(
            file,
            format!(
                "no tensor provides these parameters of FluxTransformer2DModel: {}",
                keys.join(", ")
            ),
        ),
        Error::Core(diffusers_core::Error::UnexpectedKeys { keys, .. }) => error(
            file,
            format!("tensors no parameter takes: {}", keys.join(", ")),
        ),
        other => other,
    })?;
    let left: Vec<String> = packed
        .lock()
        .map_err(|_| error(file, "the packed weights' lock was poisoned"))?
        .keys()
        .cloned()
        .collect();
    if !left.is_empty() || leftover_stash {
        return Err(error(
            file,
            format!(
                "packed weights no Linear took: {}",
                if left.is_empty() {
                    "one stashed weight".to_string()
                } else {
                    left.join(", ")
                }
            ),
        ));
    }
    Ok((model, config))
}

/// The packed types and how many weights of each (`Q8_0 x12, Q4_0 x3`).
fn packed_types(packed: &BTreeMap<String, QuantizedTensor>) -> String {
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for q in packed.values() {
        *n.entry(q.format()).or_default() += 1;
    }
    n.iter()
        .map(|(t, c)| format!("{t} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The hook that hands each `Linear` its packed weight (by diffusers key), checking its shape;
/// a weight with none loads dense from the in-memory weights.
fn gguf_hook(packed: Arc<Mutex<BTreeMap<String, QuantizedTensor>>>) -> LinearHook {
    Arc::new(move |key: &str, shape: &[usize], _weights: &Weights| {
        let q = packed
            .lock()
            .map_err(|_| "the packed weights' lock was poisoned".to_string())?
            .remove(key);
        let Some(q) = q else {
            return Ok(HookDecision::Dense);
        };
        if q.shape().as_slice() != shape {
            return Err(format!(
                "stored shape {:?} (after conversion), the model expects {shape:?}",
                q.shape()
            ));
        }
        stash(q).map_err(|e| e.to_string())?;
        Ok(HookDecision::Taken(Vec::new()))
    })
}

/// Where a `transformer_file` option points: a local file, or `owner/repo/path/file.gguf` on
/// the hub (fetched through the hub cache).
pub fn resolve_transformer_file(
    file: &str,
    repo: &diffusers_core::repo::RepoOptions,
) -> Result<PathBuf> {
    let local = Path::new(file);
    if local.is_file() {
        return Ok(local.to_path_buf());
    }
    // A path into a local folder that exists is a missing file, not a hub id.
    if local
        .parent()
        .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir())
    {
        return Err(error(local, "no such file"));
    }
    let mut parts = file.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(name), Some(path))
            if !owner.is_empty() && !name.is_empty() && !path.is_empty() && !local.exists() =>
        {
            let id = format!("{owner}/{name}");
            if !diffusers_core::repo::is_hub_id(&id) {
                return Err(error(local, "no such file"));
            }
            Ok(diffusers_core::repo::Repo::open(&id, repo)?.get(path)?)
        }
        _ => Err(error(local, "no such file")),
    }
}
