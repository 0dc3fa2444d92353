//! The pipelines against diffusers, one test binary: each integration test file was its own
//! binary, each compiling the whole pipeline stack again for the CPU and CUDA backends and
//! linking the CUDA backend; as modules of one binary they share that work (CI's build time).

mod cache;
mod export_video;
mod flux_pipeline;
mod lora_pipelines;
mod offload;
mod sd_pipelines;
mod video_pipelines;
