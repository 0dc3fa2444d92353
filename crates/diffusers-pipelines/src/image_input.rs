//! Image inputs of the img2img pipelines: PNG files to `[1, 3, h, w]` tensors in `[0, 1]`, and the
//! parts of diffusers' `VaeImageProcessor.preprocess` and img2img `prepare_latents` /
//! `get_timesteps` the Stable Diffusion img2img pipelines share.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_schedulers::{Generators, Scheduler, TorchGenerator, randn_tensor};
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};

use crate::Result;
use crate::image_processor::read_png;
use crate::pipeline_stable_diffusion::{invalid, set_timesteps};

/// Reads an 8-bit PNG (RGB, RGBA, grey) as a `[1, 3, height, width]` f32 tensor in `[0, 1]`
/// (`pixels / 255`), the layout of diffusers' `image=` tensors.
pub fn load_image<B: Backend>(path: impl AsRef<Path>, device: &B::Device) -> Result<Tensor<B, 4>> {
    let (w, h, rgb) = read_png(path)?;
    let (w, h) = (w as usize, h as usize);
    let values: Vec<f32> = rgb.iter().map(|&p| p as f32 / 255.0).collect();
    let hwc = Tensor::<B, 3>::from_data(TensorData::new(values, [h, w, 3]), (device, DType::F32));
    Ok(hwc.permute([2, 0, 1]).unsqueeze_dim(0))
}

/// diffusers' `VaeImageProcessor.preprocess` for a `[b, 3, h, w]` tensor: values in `[0, 1]`
/// mapped to `[-1, 1]` (a tensor with negative values is taken as already normalised, as
/// diffusers does, with a warning). diffusers resizes sizes that are not multiples of the VAE
/// factor; here they are an error (resize the image first). A 4-channel tensor is taken as
/// latents and returned as is.
pub fn preprocess<B: Backend>(
    image: Tensor<B, 4>,
    vae_scale_factor: usize,
    latent_channels: usize,
    pipeline: &'static str,
) -> Result<Tensor<B, 4>> {
    let [b, c, h, w] = image.dims();
    if c == latent_channels {
        return Ok(image);
    }
    if c != 3 || b == 0 {
        return Err(invalid(
            pipeline,
            format!(
                "image must be [batch, 3, height, width] in [0, 1] (or latents with {latent_channels} channels), got {:?}",
                image.dims()
            ),
        ));
    }
    let f = vae_scale_factor.max(8);
    if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
        return Err(invalid(
            pipeline,
            format!(
                "image size {h}x{w} is not a multiple of {f}: resize it first (diffusers would resize it to {}x{})",
                h - h % vae_scale_factor,
                w - w % vae_scale_factor
            ),
        ));
    }
    let image = image.cast(DType::F32);
    let min = image.clone().min().into_scalar().elem::<f32>();
    if min < 0.0 {
        tracing::warn!(
            "{pipeline}: the image has values below 0: taken as already in [-1, 1], not normalised"
        );
        return Ok(image);
    }
    Ok(image * 2.0 - 1.0)
}

/// `set_timesteps(num_inference_steps)` then diffusers' `get_timesteps`: the last
/// `int(num_inference_steps * strength)` steps, the scheduler's begin index set to the first.
pub(crate) fn img2img_timesteps<B: Backend>(
    scheduler: &mut dyn Scheduler<B>,
    num_inference_steps: usize,
    strength: f64,
    pipeline: &'static str,
) -> Result<Vec<f64>> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(invalid(
            pipeline,
            format!("strength must be in [0, 1], got {strength}"),
        ));
    }
    set_timesteps(scheduler, num_inference_steps, None, None, pipeline)?;
    let n = num_inference_steps;
    let init = ((n as f64 * strength) as usize).min(n);
    let start = (n - init) * scheduler.order();
    let all = scheduler.timesteps();
    if init == 0 || start >= all.len() {
        return Err(invalid(
            pipeline,
            format!(
                "strength {strength} with {n} steps leaves no denoising step (int(steps * strength) = {init})"
            ),
        ));
    }
    let timesteps = all[start..].to_vec();
    scheduler.set_begin_index(start);
    Ok(timesteps)
}

/// diffusers' img2img `prepare_latents`: the image encoded by the VAE in `vae_dtype` (the
/// posterior sampled with the generator, `retrieve_latents(sample_mode="sample")`), times
/// `scaling_factor`, repeated (`torch.cat`) to `batch`, then noised to `timestep` with the
/// generator's next draw (`scheduler.add_noise`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn img2img_latents<B: Backend>(
    vae: &AutoencoderKL<B>,
    vae_config: &AutoencoderKLConfig,
    vae_dtype: DType,
    image: Tensor<B, 4>,
    batch: usize,
    dtype: DType,
    generator: &mut TorchGenerator,
    scheduler: &dyn Scheduler<B>,
    timestep: f64,
    pipeline: &'static str,
) -> Result<Tensor<B, 4>> {
    let device = image.device();
    let image = image.cast(dtype);
    let init = if image.dims()[1] == vae_config.latent_channels {
        image
    } else {
        let posterior = vae.encode(image.cast(vae_dtype))?;
        let noise = randn_tensor::<B, 4>(
            posterior.mean.dims(),
            Generators::One(generator),
            &device,
            vae_dtype,
        )?;
        posterior.sample_with(noise).cast(dtype) * vae_config.scaling_factor as f32
    };
    let n = init.dims()[0];
    let init = if batch == n {
        init
    } else if batch > n && batch.is_multiple_of(n) {
        Tensor::cat(vec![init; batch / n], 0)
    } else {
        return Err(invalid(
            pipeline,
            format!("cannot duplicate image of batch size {n} to {batch} text prompts"),
        ));
    };
    let dims = init.dims();
    let noise = randn_tensor::<B, 4>(dims, Generators::One(generator), &device, dtype)?;
    let feat = dims[1] * dims[2] * dims[3];
    let noised = scheduler.add_noise(
        init.reshape([dims[0], feat]),
        noise.reshape([dims[0], feat]),
        timestep,
    )?;
    Ok(noised.reshape(dims).cast(dtype))
}
