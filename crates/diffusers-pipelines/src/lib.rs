//! # diffusers-pipelines
//!
//! Pipelines that compose the model crates, as diffusers' `pipelines/`:
//!
//! - [`DiffusionPipeline::from_pretrained`]: reads `model_index.json` from a folder or a hub
//!   repository and builds the pipeline its `_class_name` names (a clear error for classes not
//!   supported yet);
//! - [`generate::GenerateRequest`] into [`DiffusionPipeline::generate`]: one
//!   pipeline-agnostic request (prompt, size, frames, steps, guidance, seed or latents, output
//!   type, progress events) for every pipeline;
//! - [`model_index::ModelIndex`]: `model_index.json` (the only crate that reads it), with
//!   optional `[null, null]` components;
//! - [`pipeline_flux::FluxPipeline`]: FLUX.1 text-to-image: prompt encoding with CLIP and T5,
//!   latent packing, image ids, `mu` from the sequence length, guidance, explicit latents or a
//!   torch seed, images per prompt, per-step callbacks, array/latent outputs;
//! - [`pipeline_wan::WanPipeline`]: Wan 2.1 text-to-video: UMT5 prompt encoding, flow-matching
//!   denoising with classifier-free guidance, `AutoencoderKLWan` decoding to `[batch, frames,
//!   height, width, 3]` frames;
//! - [`pipeline_hunyuan_video::HunyuanVideoPipeline`]: HunyuanVideo text-to-video: Llama states
//!   under a prompt template, CLIP's pooled embedding, embedded guidance (and true CFG with a
//!   negative prompt), `AutoencoderKLHunyuanVideo` decoding;
//! - [`single_file`]: a FLUX.1 transformer from one GGUF file (BFL / ComfyUI keys, quantized
//!   `Linear` weights kept packed), as diffusers' `from_single_file`;
//! - [`image_processor`]: `[0, 1]` arrays, 8-bit pixels and PNG files;
//! - [`export_utils`]: a video's frames to an H.264 MP4, an animated GIF or a folder of PNGs,
//!   as diffusers' `export_to_video` and `export_to_gif`.
//!
//! ```
//! use burn::tensor::DType;
//! use diffusers_core::backend::Cpu;
//! use diffusers_pipelines::pipeline_flux::{FluxCall, FluxPipeline};
//! let dir = diffusers_core::testing::fixtures_dir().join("pipelines/tiny_flux");
//! let mut pipe = FluxPipeline::<Cpu>::from_folder(dir, DType::F32, &Default::default())?;
//! let out = pipe.call(FluxCall {
//!     height: Some(16),
//!     width: Some(16),
//!     num_inference_steps: 2,
//!     max_sequence_length: 8,
//!     seed: Some(0),
//!     ..FluxCall::new("a photo of a cat")
//! })?;
//! assert_eq!(out.images[0].dims(), [16, 16, 3]);
//! # Ok::<(), diffusers_pipelines::Error>(())
//! ```

mod error;
pub mod export_utils;
pub mod generate;
pub mod image_input;
pub mod image_processor;
pub mod lora_pipeline;
pub mod model_index;
pub mod offload;
pub mod pipeline_flux;
pub mod pipeline_flux_img2img;
pub mod pipeline_hunyuan_video;
pub mod pipeline_stable_diffusion;
pub mod pipeline_stable_diffusion_img2img;
pub mod pipeline_stable_diffusion_xl;
pub mod pipeline_stable_diffusion_xl_img2img;
pub mod pipeline_utils;
pub mod pipeline_wan;
pub mod quantization;
pub mod single_file;

pub use error::{Error, Result};
pub use pipeline_utils::{DiffusionPipeline, LoadEvent, PipelineOptions, SUPPORTED_PIPELINES};
