//! LoRA on every pipeline (diffusers' `loaders/lora_pipeline.py` and `lora_base.py`):
//! `load_lora_weights`, `set_adapters` (with per-component weights), `enable_lora`/
//! `disable_lora`, `delete_adapters`, `unload_lora_weights`, `fuse_lora`/`unfuse_lora`.
//!
//! A pipeline takes part by implementing one method, [`LoraLoader::lora_parts`], which lists
//! the components that take adapters (diffusers' `_lora_loadable_modules`) with the checkpoint
//! key map of each model; the rest is shared. The file formats are read by
//! `diffusers_adapters::lora_conversion_utils`, the adapters attach to the models' layers through
//! `diffusers_adapters::peft`.
//!
//! ```no_run
//! use diffusers_core::backend::Cpu;
//! use diffusers_pipelines::lora_pipeline::{AdapterWeight, LoraLoader, LoraOptions};
//! use diffusers_pipelines::pipeline_flux::FluxPipeline;
//!
//! let mut pipe = FluxPipeline::<Cpu>::from_folder("FLUX.1-dev", burn::tensor::DType::F32, &Default::default())?;
//! pipe.load_lora_weights("pixel.safetensors", &LoraOptions::named("pixel"))?;
//! pipe.load_lora_weights("toy.safetensors", &LoraOptions::named("toy"))?;
//! pipe.set_adapters(&[("pixel", AdapterWeight::All(0.7)), ("toy", AdapterWeight::All(0.5))])?;
//! # Ok::<(), diffusers_pipelines::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_adapters::lora_conversion_utils::{LoraFamily, LoraFormat, read_lora_file};
use diffusers_adapters::peft::{Adapter, ComponentAdapters, LayerHost, LoraPair};
use diffusers_core::repo::{Repo, RepoOptions};
use diffusers_core::weights::{Weights, WeightsName};

use crate::{Error, Result};

/// Options of [`LoraLoader::load_lora_weights`].
#[derive(Debug, Clone, Default)]
pub struct LoraOptions {
    /// The adapter's name (diffusers' `adapter_name`; `default_N` when not given).
    pub adapter_name: Option<String>,
    /// The file inside a folder or hub repository (`weight_name`; the repository's only
    /// `.safetensors` file when not given).
    pub weight_name: Option<String>,
    /// Load what fits and report the rest (layers the model lacks, components the pipeline
    /// lacks) instead of failing.
    pub allow_partial: bool,
}

impl LoraOptions {
    /// Options naming the adapter.
    pub fn named(name: &str) -> Self {
        LoraOptions {
            adapter_name: Some(name.to_string()),
            ..Default::default()
        }
    }
}

/// What [`LoraLoader::load_lora_weights`] did.
#[derive(Debug, Clone)]
pub struct LoraLoadReport {
    /// The adapter's name.
    pub adapter: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The layout the file was written in.
    pub format: LoraFormat,
    /// Layers it touched, per component.
    pub layers: BTreeMap<String, usize>,
    /// What [`LoraOptions::allow_partial`] let it skip (`component.layer`).
    pub skipped: Vec<String>,
}

impl LoraLoadReport {
    /// Layers touched in all components.
    pub fn total_layers(&self) -> usize {
        self.layers.values().sum()
    }
}

/// An adapter's weight in [`LoraLoader::set_adapters`]: one for every component, or one per
/// component (components not named get 1, as diffusers).
#[derive(Debug, Clone)]
pub enum AdapterWeight {
    /// The same weight everywhere.
    All(f64),
    /// A weight per component name.
    PerComponent(BTreeMap<String, f64>),
}

/// The adapters a pipeline holds, per component, and where its components' files are (for
/// [`LoraLoader::unfuse_lora`], which reads the touched weights again).
#[derive(Debug, Clone, Default)]
pub struct LoraState<B: Backend> {
    folder: Option<PathBuf>,
    variant: Option<String>,
    components: BTreeMap<String, ComponentAdapters<B>>,
    loaded: usize,
}

impl<B: Backend> LoraState<B> {
    /// No adapters, for a pipeline loaded from `folder` with weights of `variant`.
    pub fn new(folder: &Path, variant: Option<&str>) -> Self {
        LoraState {
            folder: Some(folder.to_path_buf()),
            variant: variant.map(str::to_string),
            components: BTreeMap::new(),
            loaded: 0,
        }
    }
}

/// Module path -> key in a component's file, given the file (see
/// [`LoraComponent::file_key_map`]).
pub type FileKeyMap<'a> = Box<dyn Fn(&Weights, &str) -> String + 'a>;

/// One component that takes adapters.
pub struct LoraComponent<'a, B: Backend> {
    /// Its name in the pipeline (`transformer`, `unet`, `text_encoder`, `text_encoder_2`).
    pub name: &'static str,
    /// The model.
    pub model: &'a mut dyn LayerHost<B>,
    /// Module path -> diffusers' name of the parameter (the model crate's `checkpoint_key`).
    pub key_map: Box<dyn Fn(&str) -> String + 'a>,
    /// The component's weight files (diffusers' or transformers' names).
    pub files: WeightsName<'static>,
    /// Module path -> key in the component's own file (the map its loader used, which may
    /// depend on the file).
    pub file_key_map: FileKeyMap<'a>,
    /// Whether some of its weights are quantized (adapters then cannot be fused).
    pub quantized: bool,
}

/// What a pipeline lends [`LoraLoader`]: its adapter state and its LoRA components.
pub struct LoraParts<'a, B: Backend> {
    /// The adapter state.
    pub state: &'a mut LoraState<B>,
    /// The model family LoRA files are read for.
    pub family: LoraFamily,
    /// The dtype the models compute in (adapters are held in it).
    pub dtype: DType,
    /// The device the models are on.
    pub device: B::Device,
    /// The components that take adapters (those the pipeline has).
    pub components: Vec<LoraComponent<'a, B>>,
    /// The components `fuse_lora` fuses by default (diffusers' `components=` default).
    pub default_fuse: &'static [&'static str],
}

fn lora_error(e: diffusers_adapters::Error) -> Error {
    Error::Lora(e.to_string())
}

/// The file a LoRA source names: a file, or a file inside a folder or hub repository.
fn resolve_lora_file(source: &str, weight_name: Option<&str>) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let repo = Repo::open(source, &RepoOptions::default())?;
    let name = match weight_name {
        Some(n) => n.to_string(),
        None => {
            let files: Vec<String> = repo
                .list()?
                .into_iter()
                .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
                .collect();
            match files.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(Error::Lora(format!(
                        "{source}: no .safetensors LoRA file (give its weight_name)"
                    )));
                }
                many => {
                    return Err(Error::Lora(format!(
                        "{source}: several .safetensors files ({}): give the weight_name",
                        many.join(", ")
                    )));
                }
            }
        }
    };
    Ok(repo.get(&name)?)
}

/// A tensor of a converted LoRA as the 2-D matrix adapters hold (`[rows, rest]`).
fn matrix<B: Backend>(
    data: burn::tensor::TensorData,
    dtype: DType,
    device: &B::Device,
) -> std::result::Result<Tensor<B, 2>, String> {
    let shape = data.shape.to_vec();
    let rows = *shape.first().ok_or("a 0-d LoRA tensor")?;
    let rest: usize = shape[1..].iter().product();
    let t = match shape.len() {
        2 => Tensor::<B, 2>::from_data(data, (device, dtype)),
        4 => Tensor::<B, 4>::from_data(data, (device, dtype)).reshape([rows, rest]),
        n => return Err(format!("a {n}-d LoRA tensor {shape:?}")),
    };
    Ok(t)
}

/// LoRA adapters on a pipeline: implement [`lora_parts`](Self::lora_parts), get the rest.
pub trait LoraLoader<B: Backend> {
    /// The pipeline's adapter state and LoRA components.
    fn lora_parts(&mut self) -> LoraParts<'_, B>;

    /// diffusers' `load_lora_weights`: reads a LoRA file (a file, or `weight_name` in a folder
    /// or hub repository) in any layout `lora_conversion_utils` knows, adds it as a named
    /// adapter to each component it has layers for, and makes it the active adapter there.
    /// Layers or components that do not fit are an error naming them (and nothing is loaded),
    /// unless [`LoraOptions::allow_partial`].
    fn load_lora_weights(&mut self, source: &str, options: &LoraOptions) -> Result<LoraLoadReport> {
        let path = resolve_lora_file(source, options.weight_name.as_deref())?;
        let family = self.lora_parts().family;
        let converted = read_lora_file(&path, &family).map_err(lora_error)?;
        let name = options.adapter_name.clone().unwrap_or_else(|| {
            let loaded = self.lora_parts().state.loaded;
            format!("default_{loaded}")
        });
        let result = attach_new(self.lora_parts(), &path, converted, &name, options);
        if result.is_err() {
            // Nothing of a failed load stays: components already given the adapter drop it.
            let parts = self.lora_parts();
            for c in parts.components {
                if let Some(adapters) = parts.state.components.get_mut(c.name)
                    && adapters.contains(&name)
                {
                    let _ = adapters.delete(&name);
                    let _ = adapters.apply(c.model, Some(&*c.key_map));
                }
            }
        }
        result
    }

    /// The loaded adapters per component (diffusers' `get_list_adapters`).
    fn get_list_adapters(&mut self) -> BTreeMap<String, Vec<String>> {
        let parts = self.lora_parts();
        parts
            .state
            .components
            .iter()
            .filter(|(_, a)| !a.names().is_empty())
            .map(|(c, a)| {
                (
                    c.clone(),
                    a.names().into_iter().map(str::to_string).collect(),
                )
            })
            .collect()
    }

    /// diffusers' `set_adapters`: these adapters active with these weights in every component
    /// that has them (an adapter no component has is an error).
    fn set_adapters(&mut self, adapters: &[(&str, AdapterWeight)]) -> Result<()> {
        let parts = self.lora_parts();
        for (name, _) in adapters {
            if !parts.state.components.values().any(|c| c.contains(name)) {
                return Err(Error::Lora(format!("no adapter named `{name}` is loaded")));
            }
        }
        for c in parts.components {
            let Some(state) = parts.state.components.get_mut(c.name) else {
                continue;
            };
            let active: Vec<(String, f64)> = adapters
                .iter()
                .filter(|(n, _)| state.contains(n))
                .map(|(n, w)| {
                    let w = match w {
                        AdapterWeight::All(w) => *w,
                        AdapterWeight::PerComponent(m) => m.get(c.name).copied().unwrap_or(1.0),
                    };
                    (n.to_string(), w)
                })
                .collect();
            state.set_adapters(&active).map_err(lora_error)?;
            state
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
        Ok(())
    }

    /// diffusers' `disable_lora`: every component computes without its adapters.
    fn disable_lora(&mut self) -> Result<()> {
        set_enabled(self.lora_parts(), false)
    }

    /// diffusers' `enable_lora`: undoes [`disable_lora`](Self::disable_lora).
    fn enable_lora(&mut self) -> Result<()> {
        set_enabled(self.lora_parts(), true)
    }

    /// diffusers' `delete_adapters`: drops these adapters from every component.
    fn delete_adapters(&mut self, names: &[&str]) -> Result<()> {
        let parts = self.lora_parts();
        for name in names {
            if !parts.state.components.values().any(|c| c.contains(name)) {
                return Err(Error::Lora(format!("no adapter named `{name}` is loaded")));
            }
        }
        for c in parts.components {
            let Some(state) = parts.state.components.get_mut(c.name) else {
                continue;
            };
            for name in names {
                if state.contains(name) {
                    state.delete(name).map_err(lora_error)?;
                }
            }
            state
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
        Ok(())
    }

    /// diffusers' `unload_lora_weights`: every adapter dropped and every layer back to its
    /// plain computation (fused updates, as in diffusers, stay in the weights: unfuse first).
    fn unload_lora_weights(&mut self) -> Result<()> {
        let parts = self.lora_parts();
        for c in parts.components {
            parts.state.components.remove(c.name);
            ComponentAdapters::<B>::new(c.name)
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
        Ok(())
    }

    /// diffusers' `fuse_lora(lora_scale=...)` on the pipeline's default components (Flux: the
    /// transformer; SD: the UNet and text encoder; SDXL: the UNet and both text encoders; the
    /// video pipelines: the transformer); returns the layers fused.
    fn fuse_lora(&mut self, lora_scale: f64) -> Result<usize> {
        let components: Vec<&'static str> = {
            let parts = self.lora_parts();
            parts
                .default_fuse
                .iter()
                .filter(|c| parts.components.iter().any(|p| p.name == **c))
                .copied()
                .collect()
        };
        self.fuse_lora_components(&components, lora_scale)
    }

    /// diffusers' `fuse_lora(components=..., lora_scale=...)`: the active adapters' updates
    /// times `lora_scale` folded into the weights of these components (the others keep theirs
    /// unfused); returns the layers fused.
    fn fuse_lora_components(&mut self, components: &[&str], lora_scale: f64) -> Result<usize> {
        let parts = self.lora_parts();
        if let Some(c) = components
            .iter()
            .find(|c| !parts.components.iter().any(|p| p.name == **c))
        {
            return Err(Error::Lora(format!(
                "no component `{c}` takes adapters here (it has {})",
                parts
                    .components
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut fused = 0;
        for c in parts.components {
            if !components.contains(&c.name) {
                continue;
            }
            let Some(state) = parts.state.components.get_mut(c.name) else {
                continue;
            };
            fused += state
                .fuse(c.model, Some(&*c.key_map), lora_scale, c.quantized)
                .map_err(lora_error)?;
            state
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
        Ok(fused)
    }

    /// diffusers' `unfuse_lora`: the fused weights read again from the components' files (the
    /// originals bit for bit), and the adapters attached unfused again; returns the layers
    /// restored.
    fn unfuse_lora(&mut self) -> Result<usize> {
        let parts = self.lora_parts();
        let mut restored = 0;
        for c in parts.components {
            let Some(state) = parts.state.components.get_mut(c.name) else {
                continue;
            };
            if !state.is_fused() {
                continue;
            }
            let folder = parts.state.folder.as_ref().ok_or_else(|| {
                Error::Lora("the pipeline was not loaded from files: cannot unfuse".into())
            })?;
            let weights =
                Weights::from_folder(folder.join(c.name), c.files, parts.state.variant.as_deref())?;
            let key_map = |p: &str| (c.file_key_map)(&weights, p);
            let dtype = (parts.dtype != DType::F32).then_some(parts.dtype);
            restored += state
                .unfuse(c.model, &weights, Some(&key_map), dtype)
                .map_err(lora_error)?;
            state
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
        Ok(restored)
    }
}

/// Adds the converted LoRA as adapter `name` to the components it has layers for and attaches
/// it (see [`LoraLoader::load_lora_weights`]); on an error the caller removes what was added.
fn attach_new<B: Backend>(
    parts: LoraParts<'_, B>,
    path: &Path,
    converted: diffusers_adapters::lora_conversion_utils::ConvertedLora,
    name: &str,
    options: &LoraOptions,
) -> Result<LoraLoadReport> {
    if parts.state.components.values().any(|c| c.contains(name)) {
        return Err(Error::Lora(format!(
            "an adapter named `{name}` is already loaded"
        )));
    }
    let mut by_component: BTreeMap<String, BTreeMap<String, LoraPair<B>>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for layer in converted.layers {
        if !parts.components.iter().any(|c| c.name == layer.component) {
            skipped.push(format!("{}.{}", layer.component, layer.module));
            continue;
        }
        let shape_error = |reason: String| {
            Error::Lora(format!(
                "{}: `{}.{}`: {reason}",
                path.display(),
                layer.component,
                layer.module
            ))
        };
        let down = matrix::<B>(layer.down, parts.dtype, &parts.device).map_err(shape_error)?;
        let up = matrix::<B>(layer.up, parts.dtype, &parts.device).map_err(shape_error)?;
        by_component.entry(layer.component).or_default().insert(
            layer.module,
            LoraPair {
                down,
                up,
                scaling: layer.scale,
            },
        );
    }
    if !skipped.is_empty() && !options.allow_partial {
        return Err(Error::Lora(format!(
            "{}: the pipeline has no component for {} LoRA layers: {}",
            path.display(),
            skipped.len(),
            skipped
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut layers = BTreeMap::new();
    for c in parts.components {
        let Some(pairs) = by_component.remove(c.name) else {
            continue;
        };
        let adapters = parts
            .state
            .components
            .entry(c.name.to_string())
            .or_insert_with(|| ComponentAdapters::new(c.name));
        adapters
            .load(Adapter {
                name: name.to_string(),
                layers: pairs,
            })
            .map_err(lora_error)?;
        let mut report = adapters
            .apply(c.model, Some(&*c.key_map))
            .map_err(lora_error)?;
        if !report.unmatched.is_empty() {
            if !options.allow_partial {
                return Err(Error::Lora(format!(
                    "{}: {} LoRA layers match no layer of the {}: {}",
                    path.display(),
                    report.unmatched.len(),
                    c.name,
                    report
                        .unmatched
                        .iter()
                        .take(8)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            adapters.prune(name, &report.unmatched);
            skipped.extend(report.unmatched.iter().map(|l| format!("{}.{l}", c.name)));
            report = adapters
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
        layers.insert(
            c.name.to_string(),
            report.touched.get(name).copied().unwrap_or(0),
        );
    }
    parts.state.loaded += 1;
    Ok(LoraLoadReport {
        adapter: name.to_string(),
        path: path.to_path_buf(),
        format: converted.format,
        layers,
        skipped,
    })
}

fn set_enabled<B: Backend>(parts: LoraParts<'_, B>, enabled: bool) -> Result<()> {
    for c in parts.components {
        if let Some(state) = parts.state.components.get_mut(c.name) {
            state.set_enabled(enabled);
            state
                .apply(c.model, Some(&*c.key_map))
                .map_err(lora_error)?;
        }
    }
    Ok(())
}

/// A component that takes adapters, for a pipeline's [`LoraLoader::lora_parts`].
fn component<'a, B: Backend, M: burn::module::Module<B>>(
    name: &'static str,
    model: &'a mut M,
    key_map: impl Fn(&str) -> String + 'a,
    files: WeightsName<'static>,
    file_key_map: impl Fn(&Weights, &str) -> String + 'a,
) -> LoraComponent<'a, B> {
    let quantized = diffusers_nn::footprint::memory_footprint(model).packed_bytes > 0;
    LoraComponent {
        name,
        model,
        key_map: Box::new(key_map),
        files,
        file_key_map: Box::new(file_key_map),
        quantized,
    }
}

/// A CLIP text encoder (`CLIPTextModel` or `CLIPTextModelWithProjection`): adapters name its
/// layers as transformers' modules do (`text_model.encoder.layers.0.self_attn.q_proj`), while
/// its file may store them without the `text_model.` prefix (transformers 5).
fn clip_component<'a, B: Backend, M: burn::module::Module<B>>(
    name: &'static str,
    model: &'a mut M,
) -> LoraComponent<'a, B> {
    use diffusers_text_encoders::clip::checkpoint_key;
    component(
        name,
        model,
        |p| checkpoint_key(p, true),
        WeightsName::TRANSFORMERS,
        |w, p| {
            checkpoint_key(
                p,
                w.contains("text_model.embeddings.token_embedding.weight"),
            )
        },
    )
}

/// The denoiser: its loader's own checkpoint key map, in diffusers' file names.
fn denoiser<'a, B: Backend, M: burn::module::Module<B>>(
    name: &'static str,
    model: &'a mut M,
    key_map: fn(&str) -> String,
) -> LoraComponent<'a, B> {
    component(name, model, key_map, WeightsName::DIFFUSERS, move |_, p| {
        key_map(p)
    })
}

impl<B: Backend> LoraLoader<B> for crate::pipeline_flux::FluxPipeline<B> {
    /// diffusers' `FluxLoraLoaderMixin`: the transformer and the CLIP text encoder.
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        let (dtype, device) = (self.dtype(), self.device().clone());
        let mut components = vec![denoiser(
            "transformer",
            &mut self.transformer,
            diffusers_transformers::transformer_flux::checkpoint_key,
        )];
        if let Some(te) = self.text_encoder.as_mut() {
            components.push(clip_component("text_encoder", te));
        }
        LoraParts {
            state: &mut self.lora,
            family: LoraFamily::Flux,
            dtype,
            device,
            components,
            default_fuse: &["transformer"],
        }
    }
}

impl<B: Backend> LoraLoader<B> for crate::pipeline_stable_diffusion::StableDiffusionPipeline<B> {
    /// diffusers' `StableDiffusionLoraLoaderMixin`: the UNet and the text encoder.
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        let (dtype, device) = (self.dtype(), self.device().clone());
        LoraParts {
            state: &mut self.lora,
            family: LoraFamily::StableDiffusion,
            dtype,
            device,
            components: vec![
                denoiser(
                    "unet",
                    &mut self.unet,
                    diffusers_unets::unet_2d_condition::checkpoint_key,
                ),
                clip_component("text_encoder", &mut self.text_encoder),
            ],
            default_fuse: &["unet", "text_encoder"],
        }
    }
}

impl<B: Backend> LoraLoader<B>
    for crate::pipeline_stable_diffusion_xl::StableDiffusionXLPipeline<B>
{
    /// diffusers' `StableDiffusionXLLoraLoaderMixin`: the UNet and both text encoders.
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        let (dtype, device) = (self.dtype(), self.device().clone());
        // diffusers reads it as one number (SDXL's configs have one).
        let layers_per_block = match &self.unet_config.layers_per_block {
            diffusers_unets::unet_2d_condition::OneOrMany::One(n) => *n,
            diffusers_unets::unet_2d_condition::OneOrMany::Many(v) => {
                v.first().copied().unwrap_or_default()
            }
        };
        let mut components = vec![denoiser(
            "unet",
            &mut self.unet,
            diffusers_unets::unet_2d_condition::checkpoint_key,
        )];
        if let Some(te) = self.text_encoder.as_mut() {
            components.push(clip_component("text_encoder", te));
        }
        components.push(clip_component("text_encoder_2", &mut self.text_encoder_2));
        LoraParts {
            state: &mut self.lora,
            family: LoraFamily::StableDiffusionXl { layers_per_block },
            dtype,
            device,
            components,
            default_fuse: &["unet", "text_encoder", "text_encoder_2"],
        }
    }
}

impl<B: Backend> LoraLoader<B> for crate::pipeline_wan::WanPipeline<B> {
    /// diffusers' `WanLoraLoaderMixin`: the transformer (diffusers/PEFT layout).
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        let (dtype, device) = (self.dtype(), self.device().clone());
        LoraParts {
            state: &mut self.lora,
            family: LoraFamily::Wan,
            dtype,
            device,
            components: vec![denoiser(
                "transformer",
                &mut self.transformer,
                diffusers_transformers::transformer_wan::checkpoint_key,
            )],
            default_fuse: &["transformer"],
        }
    }
}

impl<B: Backend> LoraLoader<B> for crate::pipeline_hunyuan_video::HunyuanVideoPipeline<B> {
    /// diffusers' `HunyuanVideoLoraLoaderMixin`: the transformer (diffusers/PEFT layout).
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        let (dtype, device) = (self.dtype(), self.device().clone());
        LoraParts {
            state: &mut self.lora,
            family: LoraFamily::HunyuanVideo,
            dtype,
            device,
            components: vec![denoiser(
                "transformer",
                &mut self.transformer,
                diffusers_transformers::transformer_hunyuan_video::checkpoint_key,
            )],
            default_fuse: &["transformer"],
        }
    }
}

impl<B: Backend> LoraLoader<B> for crate::pipeline_flux_img2img::FluxImg2ImgPipeline<B> {
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        self.pipe.lora_parts()
    }
}

impl<B: Backend> LoraLoader<B>
    for crate::pipeline_stable_diffusion_img2img::StableDiffusionImg2ImgPipeline<B>
{
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        self.pipe.lora_parts()
    }
}

impl<B: Backend> LoraLoader<B>
    for crate::pipeline_stable_diffusion_xl_img2img::StableDiffusionXLImg2ImgPipeline<B>
{
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        self.pipe.lora_parts()
    }
}

impl<B: Backend> LoraLoader<B> for crate::pipeline_utils::DiffusionPipeline<B> {
    fn lora_parts(&mut self) -> LoraParts<'_, B> {
        use crate::pipeline_utils::DiffusionPipeline as P;
        match self {
            P::Flux(p) => p.lora_parts(),
            P::StableDiffusion(p) => p.lora_parts(),
            P::StableDiffusionXL(p) => p.lora_parts(),
            P::Wan(p) => p.lora_parts(),
            P::HunyuanVideo(p) => p.lora_parts(),
        }
    }
}
