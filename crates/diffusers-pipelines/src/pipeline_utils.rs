//! `DiffusionPipeline::from_pretrained` (diffusers' `pipelines/pipeline_utils.py`): reads
//! `model_index.json` from a local folder or a hub repository and builds the pipeline its
//! `_class_name` names.

use diffusers_nn::footprint::{Footprint, memory_footprint};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::repo::{Repo, RepoOptions};
use diffusers_core::weights::WeightsName;

use crate::model_index::ModelIndex;
use crate::pipeline_flux::FluxPipeline;
use crate::pipeline_hunyuan_video::HunyuanVideoPipeline;
use crate::pipeline_stable_diffusion::StableDiffusionPipeline;
use crate::pipeline_stable_diffusion_xl::StableDiffusionXLPipeline;
use crate::pipeline_wan::WanPipeline;
use crate::{Error, Result};

/// The pipeline classes [`DiffusionPipeline::from_pretrained`] builds (an img2img class builds
/// the pipeline with the same components; its img2img form wraps it).
pub const SUPPORTED_PIPELINES: &[&str] = &[
    "FluxPipeline",
    "FluxImg2ImgPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "WanPipeline",
    "HunyuanVideoPipeline",
];

/// The most values one tensor of a request may hold (`i32::MAX`, 8 GiB in f32): a guard against
/// runaway sizes and counts (a typo'd width, a huge `num_images_per_prompt`), which no device
/// could run anyway (the VAE decoder's activations are tens of times the images') and which
/// would otherwise end in an allocation failure or the out-of-memory killer, not an error.
pub const MAX_TENSOR_VALUES: usize = i32::MAX as usize;

/// Refuses a request that would give a NaN image or an allocation no device can make: every
/// scale must be finite, and every tensor (named, with its shape) at most [`MAX_TENSOR_VALUES`].
pub(crate) fn check_request(
    pipeline: &'static str,
    scales: &[(&str, f64)],
    tensors: &[(&str, &[usize])],
) -> Result<()> {
    let invalid = |reason: String| Error::InvalidArgument { pipeline, reason };
    if let Some((name, v)) = scales.iter().find(|(_, v)| !v.is_finite()) {
        return Err(invalid(format!("{name} must be a finite number, got {v}")));
    }
    for (name, dims) in tensors {
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.is_none_or(|n| n > MAX_TENSOR_VALUES) {
            let n = n.map_or("2^64 or more".into(), |n| n.to_string());
            return Err(invalid(format!(
                "{name} {dims:?} would hold {n} values, more than the {MAX_TENSOR_VALUES} one \
                 tensor may hold: lower num_images_per_prompt, height or width"
            )));
        }
    }
    Ok(())
}

/// Options of [`DiffusionPipeline::from_pretrained`].
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Hub revision, cache, offline mode, token, endpoint.
    pub repo: RepoOptions,
    /// The dtype weights are converted to and the pipeline computes in (`torch_dtype`).
    pub dtype: DType,
    /// The weights variant (`fp16` for `*.fp16.safetensors`), as diffusers' `variant=`: only
    /// those files are fetched and loaded (a model without them loads its default files, with a
    /// warning).
    pub variant: Option<String>,
    /// Quantize components while loading (`quantization_config=PipelineQuantizationConfig(...)`).
    pub quantization: Option<crate::quantization::PipelineQuantizationConfig>,
    /// The denoiser from one single-file checkpoint instead of the repository's `transformer/`
    /// weights (diffusers' `FluxTransformer2DModel.from_single_file(file, config=repo,
    /// subfolder="transformer")` passed as `transformer=`): a local `.gguf` path or
    /// `owner/repo/file.gguf` on the hub. Only `FluxPipeline` takes one.
    pub transformer_file: Option<String>,
    /// Offload components between their turns (see [`crate::offload`]): loaded this way, the
    /// pipeline reads no weights until each component runs.
    pub offload: Option<crate::offload::OffloadMode>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            repo: RepoOptions::default(),
            dtype: DType::F32,
            variant: None,
            quantization: None,
            transformer_file: None,
            offload: None,
        }
    }
}

/// What [`DiffusionPipeline::from_pretrained_with_progress`] reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadEvent {
    /// A file is being fetched from the hub (or found in its cache).
    Fetching(String),
    /// A file is ready (downloaded or already cached).
    Fetched(String),
    /// The pipeline's models are being built and their weights loaded.
    Loading(String),
}

/// A pipeline built from a repository's `model_index.json`.
#[derive(Debug)]
#[non_exhaustive]
pub enum DiffusionPipeline<B: Backend> {
    /// `FluxPipeline` (and `FluxImg2ImgPipeline` repositories).
    Flux(Box<FluxPipeline<B>>),
    /// `StableDiffusionPipeline` (SD 1.x and 2.x; and `StableDiffusionImg2ImgPipeline`).
    StableDiffusion(Box<StableDiffusionPipeline<B>>),
    /// `StableDiffusionXLPipeline` (and `StableDiffusionXLImg2ImgPipeline`).
    StableDiffusionXL(Box<StableDiffusionXLPipeline<B>>),
    /// `WanPipeline` (Wan 2.1 text-to-video).
    Wan(Box<WanPipeline<B>>),
    /// `HunyuanVideoPipeline` (HunyuanVideo text-to-video).
    HunyuanVideo(Box<HunyuanVideoPipeline<B>>),
}

fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".bin")
        || name.ends_with(".ckpt")
        || name.ends_with(".pt")
        || name.ends_with(".pth")
        || name.ends_with(".gguf")
        || name.ends_with(".msgpack")
        || name.ends_with(".h5")
        || name.ends_with(".onnx")
        || (name.contains(".index") && name.ends_with(".json"))
}

/// Fetches what the pipeline needs from a hub repository (`model_index.json`, each non-null
/// component's configs and tokenizer files, one format of its weights) and returns the local
/// folder (the snapshot) that holds them. A local folder is returned as is.
fn fetch(
    repo: &Repo,
    variant: Option<&str>,
    progress: &mut dyn FnMut(LoadEvent),
) -> Result<(PathBuf, ModelIndex)> {
    if let Some(dir) = repo.local_dir() {
        let index = ModelIndex::load(dir.join("model_index.json"))?;
        return Ok((dir.to_path_buf(), index));
    }
    fn get(repo: &Repo, file: &str, progress: &mut dyn FnMut(LoadEvent)) -> Result<PathBuf> {
        progress(LoadEvent::Fetching(file.to_string()));
        let p = repo.get(file)?;
        progress(LoadEvent::Fetched(file.to_string()));
        Ok(p)
    }
    let index_path = get(repo, "model_index.json", progress)?;
    let root = index_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let index = ModelIndex::load(&index_path)?;
    if !SUPPORTED_PIPELINES.contains(&index.class_name.as_str()) {
        return Err(unsupported(&repo.name(), &index.class_name));
    }
    for (name, component) in &index.components {
        let Some(component) = component else { continue };
        let files = repo.list_dir(name)?;
        if files.is_empty() {
            return Err(Error::MissingComponent {
                path: format!("{}/{name}", repo.name()),
                component: name.clone(),
            });
        }
        for f in files.iter().filter(|f| !is_weight_file(f)) {
            get(repo, &format!("{name}/{f}"), progress)?;
        }
        let names = match component.library.as_str() {
            "transformers" => WeightsName::TRANSFORMERS,
            _ => WeightsName::DIFFUSERS,
        };
        if files.iter().any(|f| is_weight_file(f)) {
            progress(LoadEvent::Fetching(format!("{name}/ weights")));
            repo.weight_files(name, names, variant)?;
            progress(LoadEvent::Fetched(format!("{name}/ weights")));
        }
    }
    Ok((root, index))
}

fn unsupported(repo: &str, class: &str) -> Error {
    Error::Unsupported {
        path: repo.to_string(),
        reason: format!(
            "pipeline class `{class}` is not supported yet (supported: {})",
            SUPPORTED_PIPELINES.join(", ")
        ),
    }
}

impl<B: Backend> DiffusionPipeline<B> {
    /// Reads `model_index.json` from a local folder or a hub id (fetching only what the pipeline
    /// needs, honouring `HF_HUB_OFFLINE` and the hub cache) and builds the pipeline its
    /// `_class_name` names.
    ///
    /// ```
    /// use diffusers_core::backend::Cpu;
    /// use diffusers_pipelines::{DiffusionPipeline, PipelineOptions};
    /// let dir = diffusers_core::testing::fixtures_dir().join("pipelines/tiny_flux");
    /// let pipe = DiffusionPipeline::<Cpu>::from_pretrained(
    ///     &dir.to_string_lossy(),
    ///     &PipelineOptions::default(),
    ///     &Default::default(),
    /// )?;
    /// assert_eq!(pipe.class_name(), "FluxPipeline");
    /// # Ok::<(), diffusers_pipelines::Error>(())
    /// ```
    pub fn from_pretrained(
        repo_or_dir: &str,
        opts: &PipelineOptions,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_pretrained_with_progress(repo_or_dir, opts, device, &mut |_| {})
    }

    /// [`DiffusionPipeline::from_pretrained`], reporting each file fetched and each stage.
    pub fn from_pretrained_with_progress(
        repo_or_dir: &str,
        opts: &PipelineOptions,
        device: &B::Device,
        progress: &mut dyn FnMut(LoadEvent),
    ) -> Result<Self> {
        let repo = Repo::open(repo_or_dir, &opts.repo)?;
        let variant = opts.variant.as_deref();
        let (root, index) = fetch(&repo, variant, progress)?;
        progress(LoadEvent::Loading(index.class_name.clone()));
        let transformer_file = opts
            .transformer_file
            .as_deref()
            .map(|f| crate::single_file::resolve_transformer_file(f, &opts.repo))
            .transpose()?;
        let quantization = match &opts.quantization {
            Some(q) => {
                let names: Vec<String> = (index.components.iter())
                    .filter(|(_, c)| c.is_some())
                    .map(|(n, _)| n.clone())
                    .collect();
                Some((q.method, q.resolve(&names)?))
            }
            None => None,
        };
        if let (Some(_), Some((_, names))) = (&transformer_file, &quantization)
            && names.iter().any(|n| n == "transformer")
        {
            return Err(Error::Quantization(
                "the transformer comes from a single file (already quantized GGUF): leave it \
                 out of components_to_quantize"
                    .into(),
            ));
        }
        let mut pipe = crate::quantization::with_quantization(quantization, || {
            crate::offload::with_deferred_loading(opts.offload.is_some(), || {
                Self::from_folder_class(
                    repo_or_dir,
                    &root,
                    &index.class_name,
                    variant,
                    transformer_file.as_deref(),
                    opts,
                    device,
                )
            })
        })?;
        if opts.offload.is_some() {
            pipe.enable_offload(opts.offload)?;
        }
        Ok(pipe)
    }

    /// Keeps each component's weights in its files between its turns, as diffusers'
    /// `enable_model_cpu_offload()` ([`OffloadMode::Model`](crate::offload::OffloadMode)),
    /// `enable_sequential_cpu_offload()` (`Sequential`) and `enable_group_offload(...)`
    /// (`Group`); `None` stops. The images are the same (bit for bit on the CPU).
    pub fn enable_offload(&mut self, mode: Option<crate::offload::OffloadMode>) -> Result<()> {
        match self {
            Self::Flux(p) => p.enable_offload(mode),
            Self::StableDiffusion(p) => p.enable_offload(mode),
            Self::StableDiffusionXL(p) => p.enable_offload(mode),
            Self::Wan(p) => p.enable_offload(mode),
            Self::HunyuanVideo(p) => p.enable_offload(mode),
        }
    }

    /// diffusers' `enable_model_cpu_offload()`.
    pub fn enable_model_cpu_offload(&mut self) -> Result<()> {
        self.enable_offload(Some(crate::offload::OffloadMode::Model))
    }

    /// diffusers' `enable_sequential_cpu_offload()`.
    pub fn enable_sequential_cpu_offload(&mut self) -> Result<()> {
        self.enable_offload(Some(crate::offload::OffloadMode::Sequential))
    }

    /// diffusers' `enable_group_offload(onload_device, offload_type="block_level",
    /// num_blocks_per_group=blocks_per_group, use_stream=True)` on the denoiser (the other
    /// components offloaded whole). On the UNet pipelines the denoiser offloads whole.
    pub fn enable_group_offload(&mut self, blocks_per_group: usize) -> Result<()> {
        let mode: crate::offload::OffloadMode = format!("group:{blocks_per_group}").parse()?;
        self.enable_offload(Some(mode))
    }

    /// The peak host memory (and, on GPU backends, the device allocator's usage) of each stage
    /// of the last run: `encode_prompt`, `encode_image` (image-to-image), `denoise`, `decode`.
    pub fn memory_stats(&self) -> Vec<crate::offload::StageMemory> {
        match self {
            Self::Flux(p) => p.memory_stats(),
            Self::StableDiffusion(p) => p.memory_stats(),
            Self::StableDiffusionXL(p) => p.memory_stats(),
            Self::Wan(p) => p.memory_stats(),
            Self::HunyuanVideo(p) => p.memory_stats(),
        }
    }

    fn from_folder_class(
        repo_or_dir: &str,
        root: &std::path::Path,
        class_name: &str,
        variant: Option<&str>,
        transformer_file: Option<&Path>,
        opts: &PipelineOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let is_flux = matches!(class_name, "FluxPipeline" | "FluxImg2ImgPipeline");
        if let (Some(file), false) = (transformer_file, is_flux) {
            return Err(Error::Unsupported {
                path: repo_or_dir.to_string(),
                reason: format!(
                    "only FluxPipeline takes a single-file transformer ({} given for a {class_name})",
                    file.display()
                ),
            });
        }
        match class_name {
            "FluxPipeline" | "FluxImg2ImgPipeline" => Ok(Self::Flux(Box::new(
                FluxPipeline::from_folder_with_transformer_file(
                    root,
                    variant,
                    transformer_file,
                    opts.dtype,
                    device,
                )?,
            ))),
            "StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline" => Ok(
                Self::StableDiffusion(Box::new(StableDiffusionPipeline::from_folder_variant(
                    root, variant, opts.dtype, device,
                )?)),
            ),
            "StableDiffusionXLPipeline" | "StableDiffusionXLImg2ImgPipeline" => Ok(
                Self::StableDiffusionXL(Box::new(StableDiffusionXLPipeline::from_folder_variant(
                    root, variant, opts.dtype, device,
                )?)),
            ),
            "WanPipeline" => Ok(Self::Wan(Box::new(WanPipeline::from_folder_variant(
                root, variant, opts.dtype, device,
            )?))),
            "HunyuanVideoPipeline" => Ok(Self::HunyuanVideo(Box::new(
                HunyuanVideoPipeline::from_folder_variant(root, variant, opts.dtype, device)?,
            ))),
            other => Err(unsupported(repo_or_dir, other)),
        }
    }

    /// diffusers' `pipe.vae.enable_tiling()`: the VAE encodes and decodes in overlapping tiles
    /// blended as diffusers blends them (AutoencoderKL: tiles of the config's `sample_size`;
    /// HunyuanVideo's VAE: 256x256 pixels, on top of its framewise passes; Wan's VAE: 256x256
    /// pixels every 192, each tile through its own feature cache).
    pub fn enable_vae_tiling(&mut self) -> Result<()> {
        match self {
            Self::Flux(p) => p.vae.enable_tiling()?,
            Self::StableDiffusion(p) => p.vae.enable_tiling()?,
            Self::StableDiffusionXL(p) => p.vae.enable_tiling()?,
            Self::HunyuanVideo(p) => p.vae.enable_tiling(),
            Self::Wan(p) => p.vae.enable_tiling()?,
        }
        Ok(())
    }

    /// diffusers' `pipe.vae.enable_slicing()`: a batch goes through the VAE one element at a
    /// time (the same output, less memory at once).
    pub fn enable_vae_slicing(&mut self) {
        match self {
            Self::Flux(p) => p.vae.enable_slicing(),
            Self::StableDiffusion(p) => p.vae.enable_slicing(),
            Self::StableDiffusionXL(p) => p.vae.enable_slicing(),
            Self::HunyuanVideo(p) => p.vae.enable_slicing(),
            Self::Wan(p) => p.vae.enable_slicing(),
        }
    }

    /// The bytes each component's weights hold (dense parameters plus packed quantized
    /// weights), by model_index.json name (diffusers' `memory_footprint()` per component).
    pub fn memory_footprint(&self) -> Vec<(&'static str, Footprint)> {
        let mut v = Vec::new();
        let mut add = |name: &'static str, f: Option<Footprint>| {
            if let Some(f) = f {
                v.push((name, f));
            }
        };
        match self {
            Self::Flux(p) => {
                add("transformer", Some(memory_footprint(&p.transformer)));
                add(
                    "text_encoder",
                    p.text_encoder.as_ref().map(memory_footprint),
                );
                add(
                    "text_encoder_2",
                    p.text_encoder_2.as_ref().map(memory_footprint),
                );
                add("vae", Some(memory_footprint(&p.vae)));
            }
            Self::StableDiffusion(p) => {
                add("unet", Some(memory_footprint(&p.unet)));
                add("text_encoder", Some(memory_footprint(&p.text_encoder)));
                add("vae", Some(memory_footprint(&p.vae)));
            }
            Self::StableDiffusionXL(p) => {
                add("unet", Some(memory_footprint(&p.unet)));
                add(
                    "text_encoder",
                    p.text_encoder.as_ref().map(memory_footprint),
                );
                add("text_encoder_2", Some(memory_footprint(&p.text_encoder_2)));
                add("vae", Some(memory_footprint(&p.vae)));
            }
            Self::Wan(p) => {
                add("transformer", Some(memory_footprint(&p.transformer)));
                add(
                    "text_encoder",
                    p.text_encoder.as_ref().map(memory_footprint),
                );
                add("vae", Some(memory_footprint(&p.vae)));
            }
            Self::HunyuanVideo(p) => {
                add("transformer", Some(memory_footprint(&p.transformer)));
                add("text_encoder", Some(memory_footprint(&p.text_encoder)));
                add("text_encoder_2", Some(memory_footprint(&p.text_encoder_2)));
                add("vae", Some(memory_footprint(&p.vae)));
            }
        }
        v
    }

    /// The diffusers class name of the pipeline.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::Flux(_) => "FluxPipeline",
            Self::StableDiffusion(_) => "StableDiffusionPipeline",
            Self::StableDiffusionXL(_) => "StableDiffusionXLPipeline",
            Self::Wan(_) => "WanPipeline",
            Self::HunyuanVideo(_) => "HunyuanVideoPipeline",
        }
    }
}

/// Step caches (diffusers' `pipe.transformer.enable_cache(config)`).
impl<B: Backend> DiffusionPipeline<B> {
    /// Enables a step cache on the pipeline's transformer (Flux, Wan, HunyuanVideo). The UNet
    /// pipelines have none: no diffusers 0.42.1 UNet takes `enable_cache`.
    pub fn enable_cache(&mut self, config: &diffusers_nn::hooks::CacheConfig) -> Result<()> {
        match self {
            Self::Flux(p) => p.enable_cache(config),
            Self::Wan(p) => p.enable_cache(config),
            Self::HunyuanVideo(p) => p.enable_cache(config),
            Self::StableDiffusion(_) | Self::StableDiffusionXL(_) => Err(Error::InvalidArgument {
                pipeline: self.class_name(),
                reason: "no cache method applies to the UNet pipelines".into(),
            }),
        }
    }

    /// Removes the step cache; returns whether one was enabled.
    pub fn disable_cache(&mut self) -> bool {
        match self {
            Self::Flux(p) => p.disable_cache(),
            Self::Wan(p) => p.disable_cache(),
            Self::HunyuanVideo(p) => p.disable_cache(),
            Self::StableDiffusion(_) | Self::StableDiffusionXL(_) => false,
        }
    }

    /// What the step cache did in the last run (`None` without a cache).
    pub fn cache_report(&self) -> Option<diffusers_nn::hooks::CacheReport> {
        match self {
            Self::Flux(p) => p.cache_report(),
            Self::Wan(p) => p.cache_report(),
            Self::HunyuanVideo(p) => p.cache_report(),
            Self::StableDiffusion(_) | Self::StableDiffusionXL(_) => None,
        }
    }
}
