//! LoRA files in every common layout read into one list of low-rank pairs named by diffusers'
//! module paths: diffusers' `loaders/lora_conversion_utils.py`, the format detection of
//! `loaders/lora_pipeline.py` (`FluxLoraLoaderMixin.lora_state_dict`,
//! `StableDiffusionLoraLoaderMixin.lora_state_dict`, the SDXL mixin) and the per-module scale
//! PEFT ends up with (`utils/peft_utils.py`'s `get_peft_kwargs`, PEFT's
//! `scaling = lora_alpha / r`).
//!
//! Layouts ([`LoraFormat`]):
//! - diffusers/PEFT: `transformer.…lora_A.weight`/`lora_B.weight` (`unet.…`, `text_encoder.…`,
//!   `text_encoder_2.…`), the header's `lora_adapter_metadata` (the `LoraConfig` of each
//!   component: `r`, `lora_alpha`, `rank_pattern`, `alpha_pattern`, `use_rslora`) or `.alpha`
//!   keys giving the scale;
//! - kohya/sd-scripts for SD 1.x/2.x and SDXL (`lora_unet_…lora_down.weight`, `lora_up`,
//!   `alpha`; `lora_te_`, `lora_te1_`, `lora_te2_`; SDXL's SGM block names renumbered with the
//!   UNet's `layers_per_block`): the scale is `alpha / rank` per module;
//! - kohya Flux and BFL/ComfyUI Flux (`diffusion_model.double_blocks.0.img_attn.qkv…`): alpha /
//!   rank folded into lora_A and lora_B as diffusers folds it (`scale_down`, `scale_up`), so the
//!   scale is 1; fused qkv and `linear1` split into the diffusers layers;
//! - XLabs Flux (`double_blocks.0.processor.qkv_lora1.down.weight`): no alphas, scale 1.
//!
//! Where this reader differs from diffusers 0.42.1, it is never silent:
//! - keys diffusers drops (a LoRA's `dora_scale`, ComfyUI's `t5xxl`, `position_embedding`,
//!   `diff_b`, norm `diff` and `text_projection` keys, leftovers it logs as unsupported) are
//!   [`Error::Dora`] or [`Error::UnmatchedKeys`];
//! - kohya Flux's non-block layers (`img_in`, `txt_in`, `time_in`, `vector_in`, `guidance_in`,
//!   `final_layer`) are converted by diffusers to keys without the `transformer.` prefix, which
//!   its loader then ignores; here they are applied to the transformer (`final_layer`'s
//!   adaLN modulation with BFL's shift/scale halves swapped, as diffusers' conversion does, and
//!   every one with its alpha / rank);
//! - kohya SD: every module keeps its own `alpha / rank`; diffusers gives the attention and text
//!   encoder layers the file's most common alpha instead (its alpha_pattern keys for them match
//!   no module; PEFT warns), so the two agree whenever diffusers loads the file without warning;
//! - the fused qkv/linear1 split always copies lora_A to each part (diffusers' "sparse" branch,
//!   taken when lora_B is block-diagonal, chunks lora_A instead: the same product);
//! - values are computed in f32 (diffusers computes a kohya Flux file's folded scale in the
//!   file's dtype: for f16/bf16 files the folded values differ by that dtype's rounding);
//! - kohya Flux blocks are read for any block index (diffusers stops at FLUX.1's 19 double and
//!   38 single blocks) and `linear1` is split with the width its lora_A gives (diffusers
//!   hard-codes FLUX.1's 3072/12288);
//! - SD 1.x/2.x files in SGM block names (`input_blocks`) are unmatched keys (diffusers renumbers
//!   them with the UNet config; only [`LoraFamily::StableDiffusionXl`] carries it here).
//!
//! Layer shapes are not checked against a model here: that is the attach code's work
//! ([`crate::peft`]). A down/up pair whose ranks differ is [`Error::Shape`].

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{DType, TensorData};
use diffusers_core::weights::SafetensorsFile;
use serde_json::Value;

use crate::{Error, Result};

/// The model family a LoRA file is read for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoraFamily {
    /// FLUX.1 (`FluxLoraLoaderMixin`): a transformer and a CLIP text encoder.
    Flux,
    /// Stable Diffusion 1.x/2.x (`StableDiffusionLoraLoaderMixin`): a UNet and a CLIP text
    /// encoder.
    StableDiffusion,
    /// Stable Diffusion XL (`StableDiffusionXLLoraLoaderMixin`): a UNet and two CLIP text
    /// encoders.
    StableDiffusionXl {
        /// The UNet's `layers_per_block`, which `_maybe_map_sgm_blocks_to_diffusers` needs to
        /// renumber SGM block names (`input_blocks.4` -> `down_blocks.1`).
        layers_per_block: usize,
    },
    /// Wan 2.1 (`WanLoraLoaderMixin`): the transformer, in the diffusers/PEFT layout (the
    /// original Wan and musubi layouts are not read here).
    Wan,
    /// HunyuanVideo (`HunyuanVideoLoraLoaderMixin`): the transformer, in the diffusers/PEFT
    /// layout (the original HunyuanVideo layout is not read here).
    HunyuanVideo,
}

impl LoraFamily {
    /// The components a LoRA of this family may carry, as diffusers' key prefixes.
    pub fn components(&self) -> &'static [&'static str] {
        match self {
            Self::Flux => &["transformer", "text_encoder"],
            Self::StableDiffusion => &["unet", "text_encoder"],
            Self::StableDiffusionXl { .. } => &["unet", "text_encoder", "text_encoder_2"],
            Self::Wan | Self::HunyuanVideo => &["transformer"],
        }
    }
}

impl std::fmt::Display for LoraFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flux => "Flux",
            Self::StableDiffusion => "Stable Diffusion",
            Self::StableDiffusionXl { .. } => "Stable Diffusion XL",
            Self::Wan => "Wan",
            Self::HunyuanVideo => "HunyuanVideo",
        })
    }
}

/// The layout a file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// diffusers/PEFT: `{component}.{module}.lora_A.weight` / `lora_B.weight`.
    Peft,
    /// kohya/sd-scripts for SD and SDXL: `lora_unet_…`, `lora_te_…` with `lora_down`/`lora_up`/
    /// `alpha`.
    Kohya,
    /// kohya/sd-scripts for Flux: `lora_unet_double_blocks_N_…`, `lora_unet_single_blocks_N_…`.
    KohyaFlux,
    /// BFL/ComfyUI names for Flux: `diffusion_model.double_blocks.N.…lora_down.weight`.
    BflFlux,
    /// XLabs' Flux LoRAs: `double_blocks.N.processor.qkv_lora1.down.weight`.
    XLabsFlux,
}

/// One low-rank pair for one layer, in diffusers' names.
#[derive(Debug, Clone)]
pub struct LoraLayerWeights {
    /// "transformer", "unet", "text_encoder" or "text_encoder_2".
    pub component: String,
    /// The module path inside the component, as diffusers names it
    /// ("transformer_blocks.0.attn.to_q", "text_model.encoder.layers.0.self_attn.q_proj",
    /// "down_blocks.0.attentions.0.proj_in"). Text encoder modules always start with
    /// `text_model.` (as LoRA files and CLIP checkpoints spell them).
    pub module: String,
    /// lora_A / lora_down: `[rank, in]` (a Conv2d's: `[rank, in, kh, kw]`), f32.
    pub down: TensorData,
    /// lora_B / lora_up: `[out, rank]` (a Conv2d's: `[out, rank, 1, 1]`), f32.
    pub up: TensorData,
    /// What multiplies `up @ down` at adapter weight 1, as PEFT computes it (`lora_alpha / r`
    /// from the metadata, the alphas or the default), after any scale diffusers folds into
    /// down/up itself (kohya Flux: `scale_down`/`scale_up`).
    pub scale: f64,
}

impl LoraLayerWeights {
    /// The rank (lora_A's first dimension).
    pub fn rank(&self) -> usize {
        self.down.shape.first().copied().unwrap_or(0)
    }
}

/// A LoRA file converted to diffusers' names.
#[derive(Debug, Clone)]
pub struct ConvertedLora {
    /// The layout it was written in.
    pub format: LoraFormat,
    /// One pair per layer, sorted by component and module.
    pub layers: Vec<LoraLayerWeights>,
}

/// Reads a LoRA safetensors file (the header's `__metadata__` carries diffusers' adapter
/// metadata) and converts it.
pub fn read_lora_file(path: &Path, family: &LoraFamily) -> Result<ConvertedLora> {
    let file = SafetensorsFile::open(path)?;
    let mut tensors = BTreeMap::new();
    for key in file.keys() {
        tensors.insert(key.to_string(), file.read(key)?);
    }
    convert_lora_state_dict(path, tensors, file.metadata(), family)
}

/// The conversion itself on in-memory tensors (key -> TensorData) and the header metadata.
pub fn convert_lora_state_dict(
    path: &Path,
    tensors: BTreeMap<String, TensorData>,
    metadata: &BTreeMap<String, String>,
    family: &LoraFamily,
) -> Result<ConvertedLora> {
    let dora: Vec<String> = tensors
        .keys()
        .filter(|k| k.contains("dora_scale") || k.contains("lora_magnitude_vector"))
        .cloned()
        .collect();
    if !dora.is_empty() {
        return Err(Error::Dora {
            path: path.to_path_buf(),
            keys: dora,
        });
    }
    let keys: Vec<String> = tensors.keys().cloned().collect();
    let format = detect_format(&keys, family).ok_or_else(|| Error::UnknownFormat {
        path: path.to_path_buf(),
        family: family.to_string(),
        keys: keys.clone(),
    })?;
    let mut cx = Conversion {
        path,
        tensors,
        out: BTreeMap::new(),
        unmatched: Vec::new(),
    };
    match format {
        LoraFormat::Peft => cx.peft(metadata, family)?,
        LoraFormat::Kohya => cx.kohya_sd(family)?,
        LoraFormat::KohyaFlux | LoraFormat::BflFlux => cx.kohya_flux()?,
        LoraFormat::XLabsFlux => cx.xlabs()?,
    }
    cx.unmatched.extend(cx.tensors.keys().cloned());
    if !cx.unmatched.is_empty() {
        cx.unmatched.sort();
        return Err(Error::UnmatchedKeys {
            path: path.to_path_buf(),
            keys: cx.unmatched,
        });
    }
    if cx.out.is_empty() {
        return Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            family: family.to_string(),
            keys,
        });
    }
    Ok(ConvertedLora {
        format,
        layers: cx.out.into_values().collect(),
    })
}

/// The layout, detected from the keys in the order diffusers' `lora_state_dict` checks them.
fn detect_format(keys: &[String], family: &LoraFamily) -> Option<LoraFormat> {
    let any = |f: &dyn Fn(&str) -> bool| keys.iter().any(|k| f(k));
    match family {
        LoraFamily::Flux => {
            if any(&|k| k.contains(".lora_down.weight")) {
                if any(&|k| k.starts_with("transformer.")) {
                    // diffusers keeps the `transformer.` keys of such a file, renamed to PEFT's.
                    Some(LoraFormat::Peft)
                } else if any(&|k| k.starts_with("lora_transformer_")) {
                    // The "mixture" layout (`lora_transformer_…`) is not read here.
                    None
                } else if any(&|k| {
                    k.starts_with("diffusion_model.") || k.starts_with("text_encoders.")
                }) {
                    Some(LoraFormat::BflFlux)
                } else {
                    Some(LoraFormat::KohyaFlux)
                }
            } else if any(&|k| k.contains("processor")) {
                Some(LoraFormat::XLabsFlux)
            } else if any(&|k| k.contains("query_norm.scale") || k.contains("base_model")) {
                // BFL control LoRAs and fal's Kontext layout: not read here.
                None
            } else if any(&|k| k.contains(".lora_A.") || k.contains(".lora_B.")) {
                Some(LoraFormat::Peft)
            } else {
                None
            }
        }
        LoraFamily::Wan | LoraFamily::HunyuanVideo => any(&|k| {
            k.starts_with("transformer.") && (k.contains(".lora_A.") || k.contains(".lora_B."))
        })
        .then_some(LoraFormat::Peft),
        LoraFamily::StableDiffusion | LoraFamily::StableDiffusionXl { .. } => {
            let kohya = ["lora_te_", "lora_unet_", "lora_te1_", "lora_te2_"];
            if !keys.is_empty() && keys.iter().all(|k| kohya.iter().any(|p| k.starts_with(p))) {
                Some(LoraFormat::Kohya)
            } else if any(&|k| {
                family
                    .components()
                    .iter()
                    .any(|c| k.starts_with(&format!("{c}.")))
                    && (k.contains(".lora_A.")
                        || k.contains(".lora_B.")
                        || k.contains(".lora_linear_layer."))
            }) {
                Some(LoraFormat::Peft)
            } else {
                None
            }
        }
    }
}

/// A tensor on the host in f32.
struct Host {
    data: Vec<f32>,
    shape: Vec<usize>,
}

impl Host {
    fn into_data(self) -> TensorData {
        TensorData::new(self.data, self.shape)
    }

    fn scaled(mut self, s: f32) -> Self {
        for v in &mut self.data {
            *v *= s;
        }
        self
    }

    /// Rows `[start, start + n)` of the first dimension.
    fn rows(&self, start: usize, n: usize) -> Self {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = n;
        Self {
            data: self.data[start * row..(start + n) * row].to_vec(),
            shape,
        }
    }

    fn clone_host(&self) -> Self {
        Self {
            data: self.data.clone(),
            shape: self.shape.clone(),
        }
    }
}

/// Diffusers' `scale_down`/`scale_up` split of `alpha / rank` (kohya Flux), as f32 factors.
fn fold_scale(alpha: f64, rank: usize) -> (f32, f32) {
    let scale = alpha / rank as f64;
    let (mut down, mut up) = (scale, 1.0f64);
    // Bounded: the loop doubles `down` towards `up`, which it halves.
    let mut guard = 0;
    while down * 2.0 < up && guard < 2100 {
        down *= 2.0;
        up /= 2.0;
        guard += 1;
    }
    (down as f32, up as f32)
}

/// The value that occurs most often, the first of them on a tie (Python's
/// `Counter.most_common()[0]`).
fn most_common(values: &[f64]) -> Option<f64> {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for &v in values {
        match counts.iter_mut().find(|(x, _)| x.to_bits() == v.to_bits()) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.iter().find(|(_, n)| *n == best).map(|(v, _)| *v)
}

/// PEFT's `get_pattern_key`: the first pattern `p` for which `(.*\.)?(p)$` matches the module
/// (a leading `^` anchors the pattern at the start; other regex syntax is taken literally).
fn pattern_value<'a>(patterns: &'a [(String, f64)], module: &str) -> Option<&'a f64> {
    patterns.iter().find_map(|(p, v)| {
        let hit = match p.strip_prefix('^') {
            Some(anchored) => module == anchored,
            None => module == p || module.ends_with(&format!(".{p}")),
        };
        hit.then_some(v)
    })
}

/// A kohya Flux block's layer name (`img_attn_qkv`) -> diffusers' modules and, for `linear1`,
/// how many parts are as wide as the input.
type BlockTable = dyn Fn(&str) -> Option<(Vec<&'static str>, Option<usize>)>;

/// One component's `LoraConfig` from the adapter metadata.
struct PeftConfig {
    r: f64,
    lora_alpha: f64,
    rank_pattern: Vec<(String, f64)>,
    alpha_pattern: Vec<(String, f64)>,
    use_rslora: bool,
}

struct Conversion<'a> {
    path: &'a Path,
    tensors: BTreeMap<String, TensorData>,
    /// (component, module) -> layer.
    out: BTreeMap<(String, String), LoraLayerWeights>,
    unmatched: Vec<String>,
}

impl Conversion<'_> {
    fn shape_err(&self, module: &str, reason: String) -> Error {
        Error::Shape {
            path: self.path.to_path_buf(),
            module: module.to_string(),
            reason,
        }
    }

    /// A tensor as f32 on the host (float tensors only).
    fn host(&self, key: &str, data: TensorData) -> Result<Host> {
        if !matches!(
            data.dtype,
            DType::F64 | DType::F32 | DType::F16 | DType::BF16
        ) {
            return Err(Error::Invalid(format!(
                "{}: `{key}` is {:?}, not a float tensor",
                self.path.display(),
                data.dtype
            )));
        }
        let shape = data.shape.to_vec();
        let data = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("{}: `{key}`: {e:?}", self.path.display())))?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(self.shape_err(key, format!("{} values for shape {shape:?}", data.len())));
        }
        Ok(Host { data, shape })
    }

    fn take(&mut self, key: &str) -> Result<Option<Host>> {
        match self.tensors.remove(key) {
            Some(d) => self.host(key, d).map(Some),
            None => Ok(None),
        }
    }

    /// A scalar (an alpha).
    fn take_scalar(&mut self, key: &str) -> Result<Option<f64>> {
        let Some(h) = self.take(key)? else {
            return Ok(None);
        };
        match h.data.as_slice() {
            [v] => Ok(Some(f64::from(*v))),
            _ => Err(self.shape_err(
                key,
                format!("an alpha of shape {:?} (one value expected)", h.shape),
            )),
        }
    }

    /// Takes `{base}{down}` and `{base}{up}`; an orphan of the two is left for the unmatched
    /// keys.
    fn take_pair(&mut self, base: &str, down: &str, up: &str) -> Result<Option<(Host, Host)>> {
        let (dk, uk) = (format!("{base}{down}"), format!("{base}{up}"));
        if !(self.tensors.contains_key(&dk) && self.tensors.contains_key(&uk)) {
            return Ok(None);
        }
        let (Some(d), Some(u)) = (self.take(&dk)?, self.take(&uk)?) else {
            return Ok(None);
        };
        self.check_pair(base, &d, &u)?;
        Ok(Some((d, u)))
    }

    /// lora_A `[r, in]` / `[r, in, kh, kw]` and lora_B `[out, r]` / `[out, r, 1, 1]`.
    fn check_pair(&self, module: &str, down: &Host, up: &Host) -> Result<()> {
        let (ds, us) = (&down.shape, &up.shape);
        if !matches!(ds.len(), 2 | 4) || us.len() != ds.len() {
            return Err(self.shape_err(
                module,
                format!(
                    "lora_down/lora_A {ds:?} and lora_up/lora_B {us:?} are not a 2-D or 4-D pair"
                ),
            ));
        }
        if ds[0] == 0 || us[1] != ds[0] {
            return Err(self.shape_err(
                module,
                format!("rank mismatch: lora_down/lora_A {ds:?} has rank {}, lora_up/lora_B {us:?} has {}", ds[0], us[1]),
            ));
        }
        if us.len() == 4 && us[2..] != [1, 1] {
            return Err(self.shape_err(
                module,
                format!("lora_up/lora_B {us:?} is not a 1x1 convolution"),
            ));
        }
        Ok(())
    }

    fn push(
        &mut self,
        component: &str,
        module: &str,
        down: Host,
        up: Host,
        scale: f64,
    ) -> Result<()> {
        let key = (component.to_string(), module.to_string());
        if self.out.contains_key(&key) {
            return Err(Error::Invalid(format!(
                "{}: two LoRA pairs for `{component}.{module}`",
                self.path.display()
            )));
        }
        self.out.insert(
            key,
            LoraLayerWeights {
                component: component.to_string(),
                module: module.to_string(),
                down: down.into_data(),
                up: up.into_data(),
                scale,
            },
        );
        Ok(())
    }

    /// A fused layer split by rows of lora_B (lora_A copied to each part).
    fn push_split(
        &mut self,
        component: &str,
        label: &str,
        modules: &[String],
        dims: &[usize],
        down: Host,
        up: Host,
    ) -> Result<()> {
        if dims.iter().sum::<usize>() != up.shape[0] || dims.contains(&0) {
            return Err(self.shape_err(
                label,
                format!("lora_up {:?} does not split into {dims:?} rows", up.shape),
            ));
        }
        let mut start = 0;
        for (m, &n) in modules.iter().zip(dims) {
            // (every split layer here has its scale folded in or none: 1)
            self.push(component, m, down.clone_host(), up.rows(start, n), 1.0)?;
            start += n;
        }
        Ok(())
    }

    // ---- diffusers / PEFT --------------------------------------------------------------------

    fn peft(&mut self, metadata: &BTreeMap<String, String>, family: &LoraFamily) -> Result<()> {
        let configs = self.peft_configs(metadata)?;
        // (component, module) -> (down key, up key); alphas per component in key order.
        let suffixes = [
            (".lora_A.weight", ".lora_B.weight"),
            (".lora_down.weight", ".lora_up.weight"),
            (
                ".lora_linear_layer.down.weight",
                ".lora_linear_layer.up.weight",
            ),
        ];
        let mut pairs: Vec<(String, String, String, &str, &str)> = Vec::new();
        let mut alphas: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        let keys: Vec<String> = self.tensors.keys().cloned().collect();
        for key in &keys {
            let Some((component, rest)) = family
                .components()
                .iter()
                .find_map(|c| key.strip_prefix(&format!("{c}.")).map(|r| (*c, r)))
            else {
                continue;
            };
            if let Some(module) = rest.strip_suffix(".alpha") {
                let module = normalize_module(component, module);
                if let Some(a) = self.take_scalar(key)? {
                    alphas
                        .entry(component.to_string())
                        .or_default()
                        .push((module, a));
                }
                continue;
            }
            for &(d, u) in &suffixes {
                if let Some(module) = rest.strip_suffix(d) {
                    pairs.push((
                        component.to_string(),
                        module.to_string(),
                        format!("{component}.{module}"),
                        d,
                        u,
                    ));
                }
            }
        }
        for (component, module, base, d, u) in pairs {
            let Some((down, up)) = self.take_pair(&base, d, u)? else {
                continue;
            };
            let module = normalize_module(&component, &module);
            let rank = down.shape[0];
            let scale = match configs.get(&component) {
                Some(cfg) => {
                    let label = format!("{component}.{module}");
                    // PEFT matches patterns on the model's own module names; a transformers 5
                    // CLIP model's have no `text_model.` level.
                    let bare = module.strip_prefix("text_model.");
                    let find = |p: &[(String, f64)]| {
                        pattern_value(p, &module)
                            .or_else(|| bare.and_then(|b| pattern_value(p, b)))
                            .copied()
                    };
                    let r = find(&cfg.rank_pattern).unwrap_or(cfg.r);
                    let alpha = find(&cfg.alpha_pattern).unwrap_or(cfg.lora_alpha);
                    if r != rank as f64 {
                        return Err(self.shape_err(
                            &label,
                            format!(
                                "the adapter metadata gives rank {r}, the tensors have rank {rank}"
                            ),
                        ));
                    }
                    if cfg.use_rslora {
                        alpha / r.sqrt()
                    } else {
                        alpha / r
                    }
                }
                None => match alphas.get(&component) {
                    Some(list) if !list.is_empty() => {
                        let values: Vec<f64> = list.iter().map(|(_, a)| *a).collect();
                        let default = most_common(&values).unwrap_or(rank as f64);
                        let alpha = list
                            .iter()
                            .find(|(m, _)| *m == module)
                            .map_or(default, |(_, a)| *a);
                        alpha / rank as f64
                    }
                    _ => 1.0,
                },
            };
            self.push(&component, &module, down, up, scale)?;
        }
        Ok(())
    }

    /// diffusers' `lora_adapter_metadata`: `{component}.{LoraConfig field}` -> value.
    fn peft_configs(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, PeftConfig>> {
        let mut out = BTreeMap::new();
        let Some(raw) = metadata.get("lora_adapter_metadata") else {
            return Ok(out);
        };
        let bad = |what: String| {
            Error::Invalid(format!(
                "{}: lora_adapter_metadata: {what}",
                self.path.display()
            ))
        };
        let json: Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let Value::Object(map) = json else {
            return Err(bad("not a JSON object".into()));
        };
        let mut components: Vec<String> = Vec::new();
        for key in map.keys() {
            if let Some((c, _)) = key.split_once('.')
                && !components.iter().any(|x| x == c)
            {
                components.push(c.to_string());
            }
        }
        for c in components {
            let get = |field: &str| map.get(&format!("{c}.{field}"));
            let number = |field: &str, default: f64| -> Result<f64> {
                match get(field) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => v
                        .as_f64()
                        .ok_or_else(|| bad(format!("`{c}.{field}` is {v}, not a number"))),
                }
            };
            let patterns = |field: &str| -> Result<Vec<(String, f64)>> {
                match get(field) {
                    None | Some(Value::Null) => Ok(Vec::new()),
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| {
                            v.as_f64().map(|x| (k.clone(), x)).ok_or_else(|| {
                                bad(format!("`{c}.{field}.{k}` is {v}, not a number"))
                            })
                        })
                        .collect(),
                    Some(v) => Err(bad(format!("`{c}.{field}` is {v}, not an object"))),
                }
            };
            // LoraConfig's defaults: r = 8, lora_alpha = 8.
            let cfg = PeftConfig {
                r: number("r", 8.0)?,
                lora_alpha: number("lora_alpha", 8.0)?,
                rank_pattern: patterns("rank_pattern")?,
                alpha_pattern: patterns("alpha_pattern")?,
                use_rslora: matches!(get("use_rslora"), Some(Value::Bool(true))),
            };
            if cfg.r <= 0.0 {
                return Err(bad(format!("`{c}.r` is {}", cfg.r)));
            }
            out.insert(c, cfg);
        }
        Ok(out)
    }

    // ---- kohya SD / SDXL ---------------------------------------------------------------------

    fn kohya_sd(&mut self, family: &LoraFamily) -> Result<()> {
        if let LoraFamily::StableDiffusionXl { layers_per_block } = family {
            self.map_sgm_blocks(*layers_per_block);
        }
        let downs: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.ends_with(".lora_down.weight"))
            .cloned()
            .collect();
        // (component, module, down, up, alpha) in key order (diffusers' network_alphas order).
        let mut found: Vec<(String, String, Host, Host, Option<f64>)> = Vec::new();
        for key in downs {
            let Some(lora_name) = key.strip_suffix(".lora_down.weight") else {
                continue;
            };
            let lora_name = lora_name.to_string();
            let target = if let Some(rest) = lora_name.strip_prefix("lora_unet_") {
                unet_module(rest).map(|m| ("unet", m))
            } else if let Some(rest) = lora_name
                .strip_prefix("lora_te_")
                .or_else(|| lora_name.strip_prefix("lora_te1_"))
            {
                text_encoder_module(rest).map(|m| ("text_encoder", m))
            } else if let Some(rest) = lora_name.strip_prefix("lora_te2_") {
                match family {
                    LoraFamily::StableDiffusionXl { .. } => {
                        text_encoder_module(rest).map(|m| ("text_encoder_2", m))
                    }
                    _ => None,
                }
            } else {
                None
            };
            let Some((component, module)) = target else {
                continue;
            };
            let Some((down, up)) =
                self.take_pair(&lora_name, ".lora_down.weight", ".lora_up.weight")?
            else {
                continue;
            };
            let alpha = self.take_scalar(&format!("{lora_name}.alpha"))?;
            found.push((component.to_string(), module, down, up, alpha));
        }
        // Per component, a module without an alpha gets the most common alpha of the others
        // (get_peft_kwargs' lora_alpha); a component without alphas has scale 1.
        let mut defaults: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (c, _, _, _, a) in &found {
            if let Some(a) = a {
                defaults.entry(c.clone()).or_default().push(*a);
            }
        }
        for (component, module, down, up, alpha) in found {
            let rank = down.shape[0] as f64;
            let scale =
                match alpha.or_else(|| defaults.get(&component).and_then(|v| most_common(v))) {
                    Some(a) => a / rank,
                    None => 1.0,
                };
            self.push(&component, &module, down, up, scale)?;
        }
        Ok(())
    }

    /// `_maybe_map_sgm_blocks_to_diffusers` (delimiter `_`, block id at index 4 of the key split
    /// on `_`).
    fn map_sgm_blocks(&mut self, layers_per_block: usize) {
        let sgm = ["input_blocks", "middle_block", "output_blocks"];
        let not_sgm = ["down_blocks", "mid_block", "up_blocks"];
        let keys: Vec<String> = self.tensors.keys().cloned().collect();
        let is_sgm = |k: &str| sgm.iter().any(|p| k.contains(p));
        let has_sgm = keys.iter().any(|k| is_sgm(k));
        if !has_sgm {
            return;
        }
        if keys
            .iter()
            .any(|k| !is_sgm(k) && not_sgm.iter().any(|p| k.contains(p)))
        {
            // diffusers drops the SGM keys of a file that has both namings.
            for k in keys.iter().filter(|k| is_sgm(k)) {
                self.tensors.remove(k);
                self.unmatched.push(k.clone());
            }
            return;
        }
        let inner = ["resnets", "attentions", "upsamplers"];
        let per = layers_per_block + 1;
        for key in keys {
            if key.contains("text") || !is_sgm(&key) || key.contains("input_blocks_0_0") {
                continue;
            }
            let parts: Vec<&str> = key.split('_').collect();
            let id = parts.get(4).and_then(|s| s.parse::<usize>().ok());
            let new_key = id.and_then(|i| {
                let join = |head: &[&str], mid: Vec<String>, tail: &[&str]| {
                    let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
                    v.extend(mid);
                    v.extend(tail.iter().map(|s| s.to_string()));
                    v.join("_")
                };
                let inner_id = parts.get(5).and_then(|s| s.parse::<usize>().ok());
                if key.contains("input_blocks") {
                    if i == 0 {
                        return None;
                    }
                    let (block, layer) = ((i - 1) / per, (i - 1) % per);
                    let op = key.contains("op");
                    let inner_key = if op {
                        "downsamplers"
                    } else {
                        *inner.get(inner_id?)?
                    };
                    let layer = if op { 0 } else { layer };
                    Some(join(
                        &parts[..4],
                        vec![block.to_string(), inner_key.to_string(), layer.to_string()],
                        parts.get(6..)?,
                    ))
                } else if key.contains("middle_block") {
                    let part = match i {
                        0 => ["resnets", "0"],
                        1 => ["attentions", "0"],
                        2 => ["resnets", "1"],
                        _ => return None,
                    };
                    Some(join(
                        &parts[..4],
                        part.iter().map(|s| s.to_string()).collect(),
                        parts.get(5..)?,
                    ))
                } else {
                    let (block, layer) = (i / per, i % per);
                    let inner_id = inner_id?;
                    let inner_key = inner.get(inner_id)?;
                    let layer = if inner_id < 2 { layer } else { 0 };
                    Some(join(
                        &parts[..4],
                        vec![block.to_string(), inner_key.to_string(), layer.to_string()],
                        parts.get(6..)?,
                    ))
                }
            });
            match new_key {
                Some(n) if !self.tensors.contains_key(&n) => {
                    if let Some(v) = self.tensors.remove(&key) {
                        self.tensors.insert(n, v);
                    }
                }
                _ => {
                    self.tensors.remove(&key);
                    self.unmatched.push(key);
                }
            }
        }
    }

    // ---- kohya / BFL Flux --------------------------------------------------------------------

    fn kohya_flux(&mut self) -> Result<()> {
        self.comfyui_names();
        let keys: Vec<String> = self.tensors.keys().cloned().collect();
        let double = |rest: &str| -> Option<(Vec<&'static str>, Option<usize>)> {
            Some(match rest {
                "img_attn_proj" => (vec!["attn.to_out.0"], None),
                "img_attn_qkv" => (vec!["attn.to_q", "attn.to_k", "attn.to_v"], None),
                "img_mlp_0" => (vec!["ff.net.0.proj"], None),
                "img_mlp_2" => (vec!["ff.net.2"], None),
                "img_mod_lin" => (vec!["norm1.linear"], None),
                "txt_attn_proj" => (vec!["attn.to_add_out"], None),
                "txt_attn_qkv" => (
                    vec!["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                    None,
                ),
                "txt_mlp_0" => (vec!["ff_context.net.0.proj"], None),
                "txt_mlp_2" => (vec!["ff_context.net.2"], None),
                "txt_mod_lin" => (vec!["norm1_context.linear"], None),
                _ => return None,
            })
        };
        let single = |rest: &str| -> Option<(Vec<&'static str>, Option<usize>)> {
            Some(match rest {
                "linear1" => (
                    vec!["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
                    Some(3),
                ),
                "linear2" => (vec!["proj_out"], None),
                "modulation_lin" => (vec!["norm.linear"], None),
                _ => return None,
            })
        };
        let other = |name: &str| -> Option<&'static str> {
            Some(match name {
                "guidance_in_in_layer" => "time_text_embed.guidance_embedder.linear_1",
                "guidance_in_out_layer" => "time_text_embed.guidance_embedder.linear_2",
                "img_in" => "x_embedder",
                "txt_in" => "context_embedder",
                "time_in_in_layer" => "time_text_embed.timestep_embedder.linear_1",
                "time_in_out_layer" => "time_text_embed.timestep_embedder.linear_2",
                "vector_in_in_layer" => "time_text_embed.text_embedder.linear_1",
                "vector_in_out_layer" => "time_text_embed.text_embedder.linear_2",
                "final_layer_adaLN_modulation_1" => "norm_out.linear",
                "final_layer_linear" => "proj_out",
                _ => return None,
            })
        };
        for key in keys {
            let Some(lora_name) = key.strip_suffix(".lora_down.weight") else {
                continue;
            };
            let lora_name = lora_name.to_string();
            // (component, modules, split: Some(n) = first n parts as wide as the input, the
            // rest of lora_B in the last), swap shift/scale halves of lora_B.
            let target: Option<(&str, Vec<String>, Option<usize>, bool)> =
                if let Some(rest) = lora_name.strip_prefix("lora_unet_") {
                    let block = |prefix: &str, table: &BlockTable, root: &str| {
                        let r = rest.strip_prefix(prefix)?;
                        let (i, tail) = r.split_once('_')?;
                        let i: usize = i.parse().ok()?;
                        let (mods, split) = table(tail)?;
                        Some((
                            "transformer",
                            mods.iter()
                                .map(|m| format!("{root}.{i}.{m}"))
                                .collect::<Vec<_>>(),
                            split,
                            false,
                        ))
                    };
                    block("double_blocks_", &double, "transformer_blocks")
                        .or_else(|| block("single_blocks_", &single, "single_transformer_blocks"))
                        .or_else(|| {
                            other(rest).map(|m| {
                                (
                                    "transformer",
                                    vec![m.to_string()],
                                    None,
                                    rest == "final_layer_adaLN_modulation_1",
                                )
                            })
                        })
                } else if let Some(rest) = lora_name
                    .strip_prefix("lora_te_")
                    .or_else(|| lora_name.strip_prefix("lora_te1_"))
                {
                    text_encoder_module(rest).map(|m| ("text_encoder", vec![m], None, false))
                } else {
                    None
                };
            let Some((component, modules, split, swap)) = target else {
                continue;
            };
            let Some((down, up)) =
                self.take_pair(&lora_name, ".lora_down.weight", ".lora_up.weight")?
            else {
                continue;
            };
            let rank = down.shape[0];
            let alpha = self
                .take_scalar(&format!("{lora_name}.alpha"))?
                .unwrap_or(rank as f64);
            if !(alpha.is_finite() && alpha >= 0.0) {
                return Err(Error::Invalid(format!(
                    "{}: `{lora_name}.alpha` is {alpha}",
                    self.path.display()
                )));
            }
            let (sd, su) = fold_scale(alpha, rank);
            let (down, mut up) = (down.scaled(sd), up.scaled(su));
            if swap {
                up = self.swap_halves(&lora_name, up)?;
            }
            if modules.len() == 1 {
                self.push(component, &modules[0], down, up, 1.0)?;
            } else {
                let rows = up.shape[0];
                let dims = match split {
                    // linear1: q, k, v as wide as the block's input, the MLP's rows after them.
                    Some(n) => {
                        let width = down.shape[1];
                        let rest = rows.saturating_sub(n * width);
                        let mut d = vec![width; n];
                        d.push(rest);
                        d
                    }
                    None => {
                        let n = modules.len();
                        if !rows.is_multiple_of(n) {
                            return Err(self.shape_err(
                                &lora_name,
                                format!(
                                    "lora_up {:?} does not split into {n} equal parts",
                                    up.shape
                                ),
                            ));
                        }
                        vec![rows / n; n]
                    }
                };
                self.push_split(component, &lora_name, &modules, &dims, down, up)?;
            }
        }
        Ok(())
    }

    /// `swap_scale_shift`: BFL's final modulation is (shift, scale), diffusers' (scale, shift).
    fn swap_halves(&self, label: &str, up: Host) -> Result<Host> {
        let rows = up.shape[0];
        if !rows.is_multiple_of(2) {
            return Err(self.shape_err(
                label,
                format!("lora_up {:?} has an odd number of rows", up.shape),
            ));
        }
        let (a, b) = (up.rows(0, rows / 2), up.rows(rows / 2, rows / 2));
        let mut data = b.data;
        data.extend(a.data);
        Ok(Host {
            data,
            shape: up.shape,
        })
    }

    /// ComfyUI/BFL names to sd-scripts ones (`diffusion_model.` -> `lora_unet_`,
    /// `text_encoders.clip_l.transformer.` -> `lora_te_`, dots before `lora_down`/`lora_up`/
    /// `alpha` to underscores); the keys diffusers filters out here are unmatched.
    fn comfyui_names(&mut self) {
        let keys: Vec<String> = self.tensors.keys().cloned().collect();
        let has_alpha = keys.iter().any(|k| k.contains("alpha"));
        for key in keys {
            let renamed = key
                .replace("diffusion_model.", "lora_unet_")
                .replace("text_encoders.clip_l.transformer.", "lora_te_");
            let dropped = renamed.contains("position_embedding")
                || renamed.starts_with("text_encoders.t5xxl.transformer.")
                || renamed.contains(".diff_b")
                || (renamed.contains(".norm") && renamed.contains(".diff"))
                || !["lora_unet_", "lora_te_", "lora_te1_"]
                    .iter()
                    .any(|p| renamed.starts_with(p));
            let Some(value) = self.tensors.remove(&key) else {
                continue;
            };
            let mut subs = vec!["lora_down", "lora_up"];
            if has_alpha {
                subs.push("alpha");
            }
            let renamed = custom_replace(&renamed, &subs);
            if dropped || renamed.contains("text_projection") || self.tensors.contains_key(&renamed)
            {
                self.unmatched.push(key);
            } else {
                self.tensors.insert(renamed, value);
            }
        }
    }

    // ---- XLabs Flux ----------------------------------------------------------------------------

    fn xlabs(&mut self) -> Result<()> {
        let keys: Vec<String> = self.tensors.keys().cloned().collect();
        for key in keys {
            let Some(base) = key.strip_suffix(".down.weight") else {
                continue;
            };
            let name = base.strip_prefix("diffusion_model.").unwrap_or(base);
            let parse = |prefix: &str| -> Option<(usize, &str)> {
                let (i, proc_) = name.strip_prefix(prefix)?.split_once(".processor.")?;
                Some((i.parse().ok()?, proc_))
            };
            let modules: Option<Vec<String>> = if let Some((i, p)) = parse("double_blocks.") {
                let b = format!("transformer_blocks.{i}");
                match p {
                    "proj_lora1" => Some(vec![format!("{b}.attn.to_out.0")]),
                    "proj_lora2" => Some(vec![format!("{b}.attn.to_add_out")]),
                    "qkv_lora1" => Some(
                        ["to_q", "to_k", "to_v"]
                            .iter()
                            .map(|m| format!("{b}.attn.{m}"))
                            .collect(),
                    ),
                    "qkv_lora2" => Some(
                        ["add_q_proj", "add_k_proj", "add_v_proj"]
                            .iter()
                            .map(|m| format!("{b}.attn.{m}"))
                            .collect(),
                    ),
                    _ => None,
                }
            } else if let Some((i, p)) = parse("single_blocks.") {
                let b = format!("single_transformer_blocks.{i}");
                match p {
                    "proj_lora" => Some(vec![format!("{b}.proj_out")]),
                    "qkv_lora" => Some(
                        ["to_q", "to_k", "to_v"]
                            .iter()
                            .map(|m| format!("{b}.attn.{m}"))
                            .collect(),
                    ),
                    _ => None,
                }
            } else {
                None
            };
            let Some(modules) = modules else {
                continue;
            };
            let base = base.to_string();
            let Some((down, up)) = self.take_pair(&base, ".down.weight", ".up.weight")? else {
                continue;
            };
            if modules.len() == 1 {
                self.push("transformer", &modules[0], down, up, 1.0)?;
            } else {
                let rows = up.shape[0];
                if !rows.is_multiple_of(3) {
                    return Err(self.shape_err(
                        &base,
                        format!("lora up {:?} does not split into q, k, v", up.shape),
                    ));
                }
                self.push_split("transformer", &base, &modules, &[rows / 3; 3], down, up)?;
            }
        }
        Ok(())
    }
}

/// Text encoder modules as `text_model.…` (a transformers 5 CLIP model's own names lack that
/// level).
fn normalize_module(component: &str, module: &str) -> String {
    if component.starts_with("text_encoder")
        && ["encoder.", "embeddings.", "final_layer_norm"]
            .iter()
            .any(|p| module.starts_with(p))
    {
        format!("text_model.{module}")
    } else {
        module.to_string()
    }
}

/// diffusers' `_custom_replace`: dots to underscores up to the first of `subs` (and the dot
/// before it).
fn custom_replace(key: &str, subs: &[&str]) -> String {
    match subs.iter().filter_map(|s| key.find(s)).min() {
        Some(start) => {
            let boundary = if start > 0 && key.as_bytes()[start - 1] == b'.' {
                start - 1
            } else {
                start
            };
            format!("{}{}", key[..boundary].replace('.', "_"), &key[boundary..])
        }
        None => key.replace('.', "_"),
    }
}

/// A kohya text encoder name (after `lora_te_`/`lora_te1_`/`lora_te2_`) as diffusers' module
/// (`_convert_text_encoder_lora_key`, then the old-format-to-PEFT renames).
fn text_encoder_module(rest: &str) -> Option<String> {
    let mut s = rest.replace('_', ".");
    for (a, b) in [
        ("text.model", "text_model"),
        ("self.attn", "self_attn"),
        ("q.proj", "q_proj"),
        ("k.proj", "k_proj"),
        ("v.proj", "v_proj"),
        ("out.proj", "out_proj"),
        ("text.projection", "text_projection"),
    ] {
        s = s.replace(a, b);
    }
    (s.starts_with("text_model.") || s == "text_projection").then_some(s)
}

/// A kohya UNet name (after `lora_unet_`) as diffusers' module: `_convert_unet_lora_key` on
/// `{name}.lora.down.weight`, then `convert_unet_state_dict_to_peft`'s renames.
fn unet_module(rest: &str) -> Option<String> {
    let mut s = format!("{}.lora.down.weight", rest.replace('_', "."));
    for (a, b) in [
        ("input.blocks.0.0", "conv_in"),
        ("out.2", "conv_out"),
        ("input.blocks", "down_blocks"),
        ("down.blocks", "down_blocks"),
        ("middle.block", "mid_block"),
        ("mid.block", "mid_block"),
        ("output.blocks", "up_blocks"),
        ("up.blocks", "up_blocks"),
        ("transformer.blocks", "transformer_blocks"),
        ("to.q.lora", "to_q_lora"),
        ("to.k.lora", "to_k_lora"),
        ("to.v.lora", "to_v_lora"),
        ("to.out.0.lora", "to_out_lora"),
        ("proj.in", "proj_in"),
        ("proj.out", "proj_out"),
        ("emb.layers", "time_emb_proj"),
        ("conv.in", "conv_in"),
        ("conv.out", "conv_out"),
        ("time.embed.0", "time_embedding.linear_1"),
        ("time.embed.2", "time_embedding.linear_2"),
        ("label.emb.0.0", "add_embedding.linear_1"),
        ("label.emb.0.2", "add_embedding.linear_2"),
        ("time.embedding.linear.1", "time_embedding.linear_1"),
        ("time.embedding.linear.2", "time_embedding.linear_2"),
    ] {
        s = s.replace(a, b);
    }
    if s.contains("emb") && !s.contains("time.emb.proj") {
        s = strip_last_index(&s);
    }
    if s.contains(".in.") {
        s = s.replace("in.layers.2", "conv1");
    }
    if s.contains(".out.") {
        s = s.replace("out.layers.3", "conv2");
    }
    if s.contains("downsamplers") || s.contains("upsamplers") {
        s = s.replace("op", "conv");
    }
    if s.contains("skip") {
        s = s.replace("skip.connection", "conv_shortcut");
    }
    s = s.replace("time.emb.proj", "time_emb_proj");
    s = s.replace("conv.shortcut", "conv_shortcut");
    // (diffusers inserts `.processor` after attn1/attn2 here; the PEFT conversion removes it.)
    for (a, b) in [
        (".to_out_lora.down", ".to_out.0.lora_A"),
        (".to_q_lora.down", ".to_q.lora_A"),
        (".to_k_lora.down", ".to_k.lora_A"),
        (".to_v_lora.down", ".to_v.lora_A"),
        (".lora.down", ".lora_A"),
    ] {
        if s.contains(a) {
            s = s.replace(a, b);
            break;
        }
    }
    let module = s.strip_suffix(".lora_A.weight")?;
    let roots = [
        "down_blocks.",
        "mid_block.",
        "up_blocks.",
        "conv_in",
        "conv_out",
        "conv_norm_out",
        "time_embedding.",
        "add_embedding.",
    ];
    roots
        .iter()
        .any(|r| module.starts_with(r))
        .then(|| module.to_string())
}

/// `re.sub(r"\.\d+(?=\D*$)", "", s, count=1)`: drops the last `.N` if only non-digits follow.
fn strip_last_index(s: &str) -> String {
    let b = s.as_bytes();
    let Some(last) = b.iter().rposition(u8::is_ascii_digit) else {
        return s.to_string();
    };
    let mut start = last;
    while start > 0 && b[start - 1].is_ascii_digit() {
        start -= 1;
    }
    if start > 0 && b[start - 1] == b'.' {
        format!("{}{}", &s[..start - 1], &s[last + 1..])
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_renames() {
        let cases = [
            (
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                Some("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
            ),
            (
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
                Some("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
            ),
            (
                "mid_block_attentions_0_proj_in",
                Some("mid_block.attentions.0.proj_in"),
            ),
            (
                "up_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj",
                Some("up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj"),
            ),
            (
                "down_blocks_0_resnets_0_time_emb_proj",
                Some("down_blocks.0.resnets.0.time_emb_proj"),
            ),
            ("double_blocks_0_img_attn_qkv", None),
        ];
        for (name, want) in cases {
            assert_eq!(unet_module(name).as_deref(), want, "{name}");
        }
        assert_eq!(
            text_encoder_module("text_model_encoder_layers_0_self_attn_out_proj").as_deref(),
            Some("text_model.encoder.layers.0.self_attn.out_proj")
        );
        assert_eq!(
            custom_replace(
                "lora_unet_double_blocks.0.img_attn.qkv.lora_down.weight",
                &["lora_down", "lora_up"]
            ),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"
        );
        assert_eq!(strip_last_index("a.emb.3.lora"), "a.emb.lora");
        assert_eq!(fold_scale(1.0, 4), (0.5, 0.5));
        assert_eq!(fold_scale(8.0, 4), (2.0, 1.0));
        assert_eq!(most_common(&[1.0, 2.0, 2.0, 1.0]), Some(1.0));
    }
}
