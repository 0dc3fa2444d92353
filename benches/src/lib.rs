//! Benchmarks of diffusers-rs.
//!
//! The same workloads serve two harnesses:
//!
//! - the criterion benches in `benches/components.rs` (random weights and inputs, at tiny and
//!   at real widths: [`Source::Random`]);
//! - the `diffusers-bench` binary, the Rust side of `cargo xtask bench-vs-torch`: it reads the
//!   weights and inputs that `xtask/bench/torch_bench.py prepare` wrote ([`Source::Files`]), so
//!   this library and PyTorch compute on the same numbers, and prints its timings as JSON.
//!
//! A workload is prepared once ([`prepare`]: building, loading, inputs) and then run any number
//! of times ([`Prepared::run`]); each run ends with a device sync.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use diffusers_core::weights::{LoadOptions, Weights, load_into};
use diffusers_nn::attention::scaled_dot_product_attention;
use diffusers_nn::conv::Conv2dConfig;
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::GroupNormConfig;
use diffusers_pipelines::pipeline_flux::FluxCall;
use diffusers_pipelines::{DiffusionPipeline, PipelineOptions};
use diffusers_transformers::transformer_flux::{
    FluxTransformer2DModel, FluxTransformer2DModelConfig,
};
use diffusers_transformers::transformer_wan::{WanTransformer3DModel, WanTransformer3DModelConfig};
use diffusers_unets::unet_2d_blocks::{BlockArgs, CrossAttnDownBlock2D};
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusers_vae::autoencoder_kl_wan::{AutoencoderKLWan, AutoencoderKLWanConfig};
use serde_json::{Value, json};

/// The workloads compared with PyTorch on every device, in table order.
pub const WORKLOADS: &[&str] = &[
    "matmul",
    "conv_64",
    "conv_320",
    "attn_flux",
    "attn_sd",
    "groupnorm",
    "flux_double",
    "flux_single",
    "unet_down",
    "vae_decoder",
    "wan_block",
    "wan_vae_decode",
    "tiny_pipeline",
    "flux_steps",
    "flux_steps_fbc",
    "load_1gb",
    "linear_dense",
    "linear_nf4",
    "flux_double_nf4",
    "flux_double_lora",
    "flux_double_lora_fused",
];

/// Extra workloads that only make sense on a GPU: `matmul_ceiling` (an 8192³ matmul, the
/// achievable TFLOP/s) and the FLUX.1-dev transformer at 1024x1024 (4096 image + 512 text
/// tokens) with random weights and the real config: one denoising step (`flux_dev_step`, all 57
/// blocks), one double-stream block and one single-stream block.
pub const CUDA_WORKLOADS: &[&str] = &[
    "matmul_ceiling",
    "flux_dev_step",
    "flux_dev_double",
    "flux_dev_single",
];

/// Widths of a random workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Small shapes: seconds for the whole bench suite.
    Tiny,
    /// The shapes of the real models (SD 1.5, FLUX.1).
    Real,
}

/// Where a workload's weights and inputs come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Random weights (burn's lazy initialisers) and standard-normal inputs.
    Random(Scale),
    /// The folder `torch_bench.py prepare` wrote for this workload: `meta.json`,
    /// `inputs.safetensors`, and `weights.safetensors` or a diffusers model folder `model/`.
    Files(PathBuf),
}

/// A workload ready to run.
pub struct Prepared {
    run: Box<dyn FnMut() -> Result<()>>,
    /// Floating-point operations of one run, where they are counted (matmuls, convolutions,
    /// attention, the Flux blocks' linears and attention).
    pub flops: Option<f64>,
    /// Seconds spent preparing (building the modules, loading weights, reading inputs).
    pub prepare_s: f64,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("flops", &self.flops)
            .field("prepare_s", &self.prepare_s)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// Runs the workload once and waits for the device.
    pub fn run(&mut self) -> Result<()> {
        (self.run)()
    }
}

/// The peak resident memory of this process in bytes (`VmHWM` of `/proc/self/status`, and
/// what it was before a pipeline restarted it to measure one stage), where the platform
/// reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    diffusers_core::memory::host_peak_bytes()
}

/// The median of some timings (the mean of the middle two for an even count); `None` if empty.
pub fn median(times: &[f64]) -> Option<f64> {
    let mut t: Vec<f64> = times.iter().copied().filter(|x| x.is_finite()).collect();
    if t.is_empty() {
        return None;
    }
    t.sort_by(f64::total_cmp);
    let n = t.len();
    Some(if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2.0
    })
}

/// The committed tiny Flux repository (`fixtures/pipelines/tiny_flux`; `DIFFUSERS_FIXTURES`
/// moves the fixtures folder).
pub fn tiny_flux_folder() -> PathBuf {
    diffusers_core::testing::fixtures_dir().join("pipelines/tiny_flux")
}

/// What a workload reads: its folder's `meta.json` and `inputs.safetensors`, or nothing.
struct Ctx<'a, B: Backend> {
    dir: Option<&'a Path>,
    scale: Scale,
    meta: Value,
    inputs: Option<Weights>,
    dtype: DType,
    device: &'a B::Device,
}

impl<'a, B: Backend> Ctx<'a, B> {
    fn new(source: &'a Source, dtype: DType, device: &'a B::Device) -> Result<Self> {
        let (dir, scale) = match source {
            Source::Random(s) => (None, *s),
            Source::Files(d) => (Some(d.as_path()), Scale::Real),
        };
        let (meta, inputs) = match dir {
            None => (Value::Null, None),
            Some(d) => {
                let meta = match std::fs::read_to_string(d.join("meta.json")) {
                    Ok(t) => serde_json::from_str(&t)
                        .with_context(|| format!("{}/meta.json", d.display()))?,
                    Err(_) => Value::Null,
                };
                let inputs = d.join("inputs.safetensors");
                let inputs = if inputs.exists() {
                    Some(Weights::open(&inputs)?)
                } else {
                    None
                };
                (meta, inputs)
            }
        };
        Ok(Self {
            dir,
            scale,
            meta,
            inputs,
            dtype,
            device,
        })
    }

    /// A size from `meta.json`, else `tiny` or `real` for random workloads.
    fn size(&self, key: &str, tiny: usize, real: usize) -> usize {
        self.meta[key]
            .as_u64()
            .map(|v| v as usize)
            .unwrap_or(match self.scale {
                Scale::Tiny => tiny,
                Scale::Real => real,
            })
    }

    /// An input tensor: read from `inputs.safetensors`, or standard normal of `shape`.
    fn input<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let t = match &self.inputs {
            Some(w) => {
                let data = w.read(key).with_context(|| format!("input {key}"))?;
                if data.shape.len() != D {
                    bail!("input {key} has rank {}, expected {D}", data.shape.len());
                }
                Tensor::<B, D>::from_data(data, self.device)
            }
            None => Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), self.device),
        };
        Ok(t.cast(self.dtype))
    }

    /// Loads `weights.safetensors` into `module` (files mode) or keeps its random weights.
    fn load<M: Module<B>>(&self, module: M, key_map: Option<&dyn Fn(&str) -> String>) -> Result<M> {
        let Some(dir) = self.dir else {
            return Ok(module);
        };
        let weights = Weights::open(dir.join("weights.safetensors"))?;
        let (m, _) = load_into(
            module,
            &weights,
            LoadOptions {
                dtype: Some(self.dtype),
                key_map,
                ..Default::default()
            },
        )?;
        Ok(m)
    }

    fn sync(device: &B::Device) -> Result<()> {
        B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))
    }
}

/// A stack of `[dim, dim]` linear layers (`layers.N.weight`/`.bias`): the 1 GB loading workload.
#[derive(Module, Debug)]
pub struct LinearStack<B: Backend> {
    /// The layers.
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> LinearStack<B> {
    /// `n` lazily initialised `[dim, dim]` layers.
    pub fn new(n: usize, dim: usize, device: &B::Device) -> Self {
        Self {
            layers: (0..n)
                .map(|_| LinearConfig::new(dim, dim).init(device))
                .collect(),
        }
    }
}

/// Writes a safetensors file of `n` random `[dim, dim]` f32 linear layers (with biases), as
/// `torch_bench.py prepare` writes `load_1gb`.
pub fn write_linear_stack(path: &Path, n: usize, dim: usize) -> Result<()> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len * 4);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    };
    let mut data = Vec::new();
    for i in 0..n {
        data.push((
            format!("layers.{i}.weight"),
            vec![dim, dim],
            random(dim * dim),
        ));
        data.push((format!("layers.{i}.bias"), vec![dim], random(dim)));
    }
    let views = data
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path)?;
    Ok(())
}

/// A rank-16 LoRA (rank 4 at tiny widths) on every `Linear` of the double block, as PEFT
/// injects it: read from the torch side's `lora.safetensors` (diffusers/PEFT keys) when the
/// workload has a folder, else random pairs for each layer; attached unfused, or fused into the
/// weights.
fn lora_on_block<B: Backend>(
    model: &mut FluxTransformer2DModel<B>,
    dir: Option<&Path>,
    fuse: bool,
    dtype: DType,
    device: &B::Device,
) -> Result<()> {
    use diffusers_adapters::peft::{Adapter, ComponentAdapters, LoraPair};
    use diffusers_core::weights::{LayerWeights, map_layer_weights};
    use diffusers_transformers::transformer_flux::checkpoint_key;
    let key_map = |p: &str| checkpoint_key(p);
    let mut layers = std::collections::BTreeMap::new();
    match dir {
        Some(d) => {
            let converted = diffusers_adapters::lora_conversion_utils::read_lora_file(
                &d.join("lora.safetensors"),
                &diffusers_adapters::lora_conversion_utils::LoraFamily::Flux,
            )?;
            for l in converted.layers {
                let down = Tensor::<B, 2>::from_data(l.down, (device, dtype));
                let up = Tensor::<B, 2>::from_data(l.up, (device, dtype));
                let pair = LoraPair {
                    down,
                    up,
                    scaling: l.scale,
                };
                layers.insert(l.module, pair);
            }
        }
        None => {
            struct Shapes(Vec<(String, [usize; 2])>);
            impl<B: Backend> LayerWeights<B> for Shapes {
                fn select(&mut self, _: &str, key: &str, layer: &str, shape: &[usize]) -> bool {
                    if layer == "Linear" && key.starts_with("transformer_blocks.0.") {
                        let name = key.trim_end_matches(".weight").to_string();
                        self.0.push((name, [shape[0], shape[1]]));
                    }
                    false
                }
                fn update(&mut self, _: &str, w: Tensor<B, 2>) -> Tensor<B, 2> {
                    w
                }
            }
            let mut shapes = Shapes(Vec::new());
            *model = map_layer_weights(model.clone(), "", Some(&key_map), &mut shapes);
            for (name, [out, inp]) in shapes.0 {
                let rank = 4;
                let down =
                    Tensor::<B, 2>::random([rank, inp], Distribution::Normal(0.0, 0.02), device);
                let up =
                    Tensor::<B, 2>::random([out, rank], Distribution::Normal(0.0, 0.02), device);
                layers.insert(
                    name,
                    LoraPair {
                        down: down.cast(dtype),
                        up: up.cast(dtype),
                        scaling: 1.0,
                    },
                );
            }
        }
    }
    let mut adapters = ComponentAdapters::new("transformer");
    adapters.load(Adapter {
        name: "bench".into(),
        layers,
    })?;
    let report = adapters.apply(model, Some(&key_map))?;
    if !report.unmatched.is_empty() {
        bail!("LoRA layers the block lacks: {:?}", report.unmatched);
    }
    if fuse {
        adapters.fuse(model, Some(&key_map), 1.0, false)?;
        adapters.apply(model, Some(&key_map))?;
    }
    Ok(())
}

fn flux_config(c: &Ctx<'_, impl Backend>, double: bool) -> Result<FluxTransformer2DModelConfig> {
    let (heads, head_dim, axes) = match c.scale {
        Scale::Tiny => (2, 16, json!([4, 6, 6])),
        Scale::Real => (24, 128, json!([16, 56, 56])),
    };
    let cfg = json!({
        "_class_name": "FluxTransformer2DModel",
        "attention_head_dim": head_dim,
        "num_attention_heads": heads,
        "axes_dims_rope": axes,
        "guidance_embeds": false,
        "in_channels": 64,
        "joint_attention_dim": 64,
        "pooled_projection_dim": 32,
        "num_layers": usize::from(double),
        "num_single_layers": usize::from(!double),
        "patch_size": 1,
    });
    Ok(diffusers_core::config::parse_config(
        &cfg.to_string(),
        Path::new("flux_config"),
    )?)
}

/// One Wan 2.1 block: Wan2.1-T2V-1.3B's widths (12 x 128, feed-forward 8960) at real scale.
fn wan_config(c: &Ctx<'_, impl Backend>) -> Result<WanTransformer3DModelConfig> {
    let (heads, head_dim, ffn) = match c.scale {
        Scale::Tiny => (2, 12, 32),
        Scale::Real => (12, 128, 8960),
    };
    let cfg = json!({
        "_class_name": "WanTransformer3DModel",
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "ffn_dim": ffn,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 64,
        "num_layers": 1,
    });
    Ok(diffusers_core::config::parse_config(
        &cfg.to_string(),
        Path::new("wan_config"),
    )?)
}

/// FLUX.1-dev's transformer config (`fixtures/real_configs/flux1-dev`) and its token counts at
/// 1024x1024 (4096 image, 512 text), or `meta.json`'s `config`, `image_tokens` and
/// `text_tokens` (`torch_bench.py prepare --tiny` writes small ones); at tiny scale without files,
/// two heads of 16 and one block of each kind.
fn flux_dev_config(
    c: &Ctx<'_, impl Backend>,
) -> Result<(FluxTransformer2DModelConfig, usize, usize)> {
    let real = include_str!("../../fixtures/real_configs/flux1-dev/transformer_config.json");
    let cfg = match (&c.meta["config"], c.scale) {
        (Value::Object(_), _) => c.meta["config"].to_string(),
        (_, Scale::Real) => real.to_string(),
        (_, Scale::Tiny) => json!({
            "_class_name": "FluxTransformer2DModel",
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "axes_dims_rope": [4, 6, 6],
            "guidance_embeds": true,
            "in_channels": 64,
            "joint_attention_dim": 64,
            "pooled_projection_dim": 32,
            "num_layers": 1,
            "num_single_layers": 1,
        })
        .to_string(),
    };
    let cfg = diffusers_core::config::parse_config(&cfg, Path::new("flux_dev_config"))?;
    Ok((
        cfg,
        c.size("image_tokens", 64, 4096),
        c.size("text_tokens", 16, 512),
    ))
}

/// Replaces every float parameter with N(0, `std`) values in `dtype`, made on the parameter's
/// device: real-size random models without reading a file or running each layer's initialiser
/// in f32 (a step's time does not depend on the values).
struct RandomParams {
    dtype: DType,
    std: f64,
}

impl<B: Backend> burn::module::ModuleMapper<B> for RandomParams {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (shape, device) = (param.lazy_shape(), param.lazy_device());
        let t = Tensor::<B, D>::random(shape, Distribution::Normal(0.0, self.std), &device);
        burn::module::Param::initialized(param.id, t.cast(self.dtype))
    }
}

/// Wan 2.1's VAE (the real config at real scale; base_dim 8 when tiny).
fn wan_vae_config(c: &Ctx<'_, impl Backend>) -> Result<AutoencoderKLWanConfig> {
    let base = match c.scale {
        Scale::Tiny => 8,
        Scale::Real => 96,
    };
    let cfg = json!({"_class_name": "AutoencoderKLWan", "base_dim": base, "z_dim": 16});
    Ok(diffusers_core::config::parse_config(
        &cfg.to_string(),
        Path::new("wan_vae_config"),
    )?)
}

fn vae_config(c: &Ctx<'_, impl Backend>) -> Result<AutoencoderKLConfig> {
    let (channels, groups) = match c.scale {
        Scale::Tiny => (json!([32, 32]), 8),
        Scale::Real => (json!([128, 256, 512, 512]), 32),
    };
    let n = channels.as_array().map_or(0, Vec::len);
    let cfg = json!({
        "_class_name": "AutoencoderKL",
        "block_out_channels": channels,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": groups,
    });
    Ok(diffusers_core::config::parse_config(
        &cfg.to_string(),
        Path::new("vae_config"),
    )?)
}

/// A run of the model's first double-stream block (`double`) or first single-stream block on
/// `[image, text]` states (the single block takes them joined as `[text, image]`, as diffusers'
/// does), with the conditioning `temb` and the rotary `[cos, sin]`.
fn flux_block_run<B: Backend>(
    model: FluxTransformer2DModel<B>,
    double: bool,
    [x, ctx]: [Tensor<B, 3>; 2],
    temb: Tensor<B, 2>,
    [cos, sin]: [Tensor<B, 2>; 2],
    dev: B::Device,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    if double {
        let Some(block) = model.transformer_blocks.into_iter().next() else {
            bail!("the model has no double-stream block");
        };
        return Ok(Box::new(move || {
            let _out = block.forward(
                x.clone(),
                ctx.clone(),
                temb.clone(),
                cos.clone(),
                sin.clone(),
            );
            Ctx::<B>::sync(&dev)
        }));
    }
    let Some(block) = model.single_transformer_blocks.into_iter().next() else {
        bail!("the model has no single-stream block");
    };
    Ok(Box::new(move || {
        let joint = Tensor::cat(vec![ctx.clone(), x.clone()], 1);
        let _out = block.forward(joint, temb.clone(), cos.clone(), sin.clone());
        Ctx::<B>::sync(&dev)
    }))
}

/// Builds a workload by name (one of [`WORKLOADS`] or [`CUDA_WORKLOADS`]) on `device`, computing
/// in `dtype`.
pub fn prepare<B: Backend>(
    name: &str,
    source: &Source,
    dtype: DType,
    device: &B::Device,
) -> Result<Prepared> {
    let start = Instant::now();
    let c = Ctx::<B>::new(source, dtype, device)?;
    let dev = device.clone();
    let (run, flops): (Box<dyn FnMut() -> Result<()>>, Option<f64>) = match name {
        "matmul" | "matmul_ceiling" => {
            let n = if name == "matmul" {
                c.size("n", 64, 1024)
            } else {
                c.size("n", 256, 8192)
            };
            let (a, b) = if name == "matmul" {
                (c.input("a", [n, n])?, c.input("b", [n, n])?)
            } else {
                let r = |s| Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), s);
                (r(device).cast(dtype), r(device).cast(dtype))
            };
            let n = a.dims()[0] as f64;
            (
                Box::new(move || {
                    let _out = a.clone().matmul(b.clone());
                    Ctx::<B>::sync(&dev)
                }),
                Some(2.0 * n * n * n),
            )
        }
        "conv_64" | "conv_320" => {
            let ch = if name == "conv_64" {
                c.size("channels", 8, 64)
            } else {
                c.size("channels", 32, 320)
            };
            let hw = c.size("size", 16, 64);
            let x = c.input("x", [1, ch, hw, hw])?;
            let conv = c.load(
                Conv2dConfig::new(ch, ch, [3, 3])
                    .with_padding([1, 1])
                    .init::<B>(device),
                None,
            )?;
            let [b, _, h, w] = x.dims();
            let flops = 2.0 * (b * ch * ch * 9 * h * w) as f64;
            (
                Box::new(move || {
                    let _out = conv.forward(x.clone());
                    Ctx::<B>::sync(&dev)
                }),
                Some(flops),
            )
        }
        "attn_flux" | "attn_sd" => {
            let shape = if name == "attn_flux" {
                match c.scale {
                    Scale::Tiny => [1, 2, 64, 16],
                    Scale::Real => [1, 24, 1280, 128],
                }
            } else {
                match c.scale {
                    Scale::Tiny => [2, 2, 128, 8],
                    Scale::Real => [2, 8, 4096, 40],
                }
            };
            let (q, k, v) = (
                c.input("q", shape)?,
                c.input("k", shape)?,
                c.input("v", shape)?,
            );
            let [b, h, l, d] = q.dims();
            let flops = 4.0 * (b * h * l * l * d) as f64;
            (
                Box::new(move || {
                    let _out = scaled_dot_product_attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        None,
                        None,
                        false,
                    );
                    Ctx::<B>::sync(&dev)
                }),
                Some(flops),
            )
        }
        "groupnorm" => {
            let ch = c.size("channels", 32, 320);
            let groups = c.size("groups", 8, 32);
            let hw = c.size("size", 16, 64);
            let x = c.input("x", [1, ch, hw, hw])?;
            let gn = c.load(GroupNormConfig::new(groups, ch).init::<B>(device), None)?;
            (
                Box::new(move || {
                    let _out = gn.forward(x.clone());
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "linear_dense" | "linear_nf4" => {
            // A Flux MLP projection, 3072 -> 12288 over 512 tokens; NF4 packs the weight as
            // bitsandbytes does and multiplies by it without a dense copy.
            let (inp, out) = (c.size("in", 64, 3072), c.size("out", 256, 12288));
            let rows = c.size("rows", 16, 512);
            let x = c.input("x", [rows, inp])?;
            let w = c.input("w", [out, inp])?;
            let b = c.input("b", [out])?;
            let mut layer = LinearConfig::new(inp, out).init::<B>(device);
            layer.bias = Some(burn::module::Param::from_tensor(b));
            if name == "linear_nf4" {
                let values: Vec<f32> = w.into_data().convert::<f32>().into_vec()?;
                let method = diffusers_quantization::QuantMethod::parse("nf4", false)?;
                let q =
                    diffusers_quantization::QuantizedTensor::quantize(&values, out, inp, method)?;
                layer.packed = diffusers_nn::linear::QuantizedWeight::new(q);
            } else {
                layer.weight = burn::module::Param::from_tensor(w);
            }
            (
                Box::new(move || {
                    let _out = layer.forward(x.clone());
                    Ctx::<B>::sync(&dev)
                }),
                Some(2.0 * (rows * inp * out) as f64),
            )
        }
        "flux_double"
        | "flux_single"
        | "flux_double_nf4"
        | "flux_double_lora"
        | "flux_double_lora_fused" => {
            let double = name != "flux_single";
            let model = match c.dir {
                Some(d) => {
                    let load = || {
                        FluxTransformer2DModel::<B>::from_folder(
                            d.join("model"),
                            Some(dtype),
                            device,
                        )
                    };
                    if name == "flux_double_nf4" {
                        let method = diffusers_quantization::QuantMethod::parse("nf4", false)?;
                        let config = diffusers_quantization::QuantizationConfig::new(method);
                        diffusers_core::weights::with_linear_hook(
                            Some(diffusers_quantization::linear_hook(Some(config))),
                            load,
                        )?
                        .0
                    } else {
                        load()?.0
                    }
                }
                None => FluxTransformer2DModel::<B>::new(&flux_config(&c, double)?, device)?,
            };
            let mut model = model;
            if name.starts_with("flux_double_lora") {
                lora_on_block(&mut model, c.dir, name.ends_with("_fused"), dtype, device)?;
            }
            let img = c.size("image_tokens", 64, 1024);
            let txt = c.size("text_tokens", 16, 256);
            let (heads, head_dim) = match c.scale {
                Scale::Tiny => (2, 16),
                Scale::Real => (24, 128),
            };
            let dim = heads * head_dim;
            let x = c.input("x", [1, img, dim])?;
            let ctx = c.input("ctx", [1, txt, dim])?;
            let temb = c.input("temb", [1, dim])?;
            let cos = c.input("cos", [txt + img, head_dim])?;
            let sin = c.input("sin", [txt + img, head_dim])?;
            let [_, img, dim] = x.dims();
            let s = (img + ctx.dims()[1]) as f64;
            let d = dim as f64;
            // Per token 12·dim² multiply-adds in the linears (q, k, v, out and the 4x MLP in the
            // double block; q, k, v, the MLP and the fused output in the single block), plus
            // QKᵀ and PV over the joint sequence.
            let flops = 24.0 * d * d * s + 4.0 * s * s * d;
            let run = flux_block_run(model, double, [x, ctx], temb, [cos, sin], dev)?;
            (run, Some(flops))
        }
        "flux_dev_step" | "flux_dev_double" | "flux_dev_single" => {
            let (mut cfg, img, txt) = flux_dev_config(&c)?;
            let (heads, head_dim) = (cfg.num_attention_heads, cfg.attention_head_dim);
            let dim = heads * head_dim;
            let (s, d) = ((img + txt) as f64, dim as f64);
            // Per block: 24·dim² FLOPs per token in the linears (see flux_double) and QKᵀ, PV
            // over the joint sequence; the step adds the embedders and proj_out.
            let block_flops = 24.0 * d * d * s + 4.0 * s * s * d;
            match name {
                "flux_dev_double" => (cfg.num_layers, cfg.num_single_layers) = (1, 0),
                "flux_dev_single" => (cfg.num_layers, cfg.num_single_layers) = (0, 1),
                _ => {}
            }
            let mut random = RandomParams { dtype, std: 0.02 };
            let model = FluxTransformer2DModel::<B>::new(&cfg, device)?.map(&mut random);
            if name == "flux_dev_step" {
                let side = (img as f64).sqrt() as usize;
                if side * side != img {
                    bail!("flux_dev_step: image_tokens {img} is not a square number of patches");
                }
                let (inp, joint, pooled_dim) = (
                    cfg.in_channels,
                    cfg.joint_attention_dim,
                    cfg.pooled_projection_dim,
                );
                // Standard normal inputs (no inputs.safetensors for these workloads).
                let x = c.input("x", [1, img, inp])?;
                let ctx = c.input("ctx", [1, txt, joint])?;
                let pooled = c.input("pooled", [1, pooled_dim])?;
                let guidance = cfg
                    .guidance_embeds
                    .then(|| Tensor::<B, 1>::full([1], 3.5, (device, dtype)));
                let img_ids: Vec<Vec<f64>> = (0..img)
                    .map(|i| vec![0.0, (i / side) as f64, (i % side) as f64])
                    .collect();
                let txt_ids = vec![vec![0.0; 3]; txt];
                let blocks = (cfg.num_layers + cfg.num_single_layers) as f64;
                let out = cfg.out_channels.unwrap_or(inp) as f64;
                let (img_f, txt_f) = (img as f64, txt as f64);
                // The blocks, x_embedder (in -> dim) and proj_out (dim -> out) per image token,
                // context_embedder (joint -> dim) per text token.
                let flops = blocks * block_flops
                    + 2.0 * img_f * d * (inp as f64 + out)
                    + 2.0 * txt_f * d * joint as f64;
                (
                    Box::new(move || {
                        let _out = model.forward(
                            diffusers_transformers::transformer_flux::FluxInputs {
                                hidden_states: x.clone(),
                                encoder_hidden_states: ctx.clone(),
                                pooled_projections: pooled.clone(),
                                timestep: Tensor::full([1], 0.5, (&dev, dtype)),
                                guidance: guidance.clone(),
                                txt_ids: txt_ids.clone(),
                                img_ids: img_ids.clone(),
                            },
                        )?;
                        Ctx::<B>::sync(&dev)
                    }),
                    Some(flops),
                )
            } else {
                let x = c.input("x", [1, img, dim])?;
                let ctx = c.input("ctx", [1, txt, dim])?;
                let temb = c.input("temb", [1, dim])?;
                let cos = c.input("cos", [txt + img, head_dim])?;
                let sin = c.input("sin", [txt + img, head_dim])?;
                let double = name == "flux_dev_double";
                let run = flux_block_run(model, double, [x, ctx], temb, [cos, sin], dev)?;
                (run, Some(block_flops))
            }
        }
        "unet_down" => {
            let ch = c.size("channels", 32, 320);
            let hw = c.size("size", 16, 64);
            let temb_ch = c.size("temb_channels", 64, 1280);
            let cross = c.size("cross_attention_dim", 16, 768);
            let tokens = c.size("tokens", 8, 77);
            let args = BlockArgs {
                in_channels: ch,
                out_channels: ch,
                prev_output_channel: ch,
                temb_channels: temb_ch,
                num_layers: 2,
                transformer_layers: 1,
                eps: 1e-5,
                groups: c.size("groups", 8, 32),
                heads: Some(c.size("heads", 2, 8)),
                cross_attention_dim: cross,
                use_linear_projection: false,
                upcast_attention: false,
                add_sample: true,
                downsample_padding: 1,
                output_scale_factor: 1.0,
            };
            let key_map = diffusers_unets::unet_2d_condition::checkpoint_key;
            let block = c.load(
                CrossAttnDownBlock2D::<B>::new(&args, device),
                Some(&|p: &str| key_map(p)),
            )?;
            let x = c.input("x", [1, ch, hw, hw])?;
            let temb = c.input("temb", [1, temb_ch])?;
            let text = c.input("ctx", [1, tokens, cross])?;
            (
                Box::new(move || {
                    let _out = block.forward(x.clone(), temb.clone(), text.clone());
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "vae_decoder" => {
            let vae = match c.dir {
                Some(d) => AutoencoderKL::<B>::from_folder(d.join("model"), Some(dtype), device)?.0,
                None => AutoencoderKL::<B>::new(&vae_config(&c)?, device)?,
            };
            let hw = c.size("latent_size", 8, 32);
            let z = c.input("z", [1, 4, hw, hw])?;
            (
                Box::new(move || {
                    let _out = vae.decode(z.clone());
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "wan_block" => {
            let model = match c.dir {
                Some(d) => {
                    WanTransformer3DModel::<B>::from_folder(d.join("model"), Some(dtype), device)?.0
                }
                None => WanTransformer3DModel::<B>::new(&wan_config(&c)?, device)?,
            };
            let img = c.size("image_tokens", 24, 1560);
            let txt = c.size("text_tokens", 8, 512);
            let (heads, head_dim, ffn) = match c.scale {
                Scale::Tiny => (2, 12, 32),
                Scale::Real => (12, 128, 8960),
            };
            let dim = heads * head_dim;
            let x = c.input("x", [1, img, dim])?;
            let ctx = c.input("ctx", [1, txt, dim])?;
            let temb = c.input("temb", [1, 6, dim])?;
            let cos = c.input("cos", [img, head_dim])?;
            let sin = c.input("sin", [img, head_dim])?;
            let (s, t, d, f) = (img as f64, txt as f64, dim as f64, ffn as f64);
            // Multiply-adds: self-attention q, k, v, out (4·d² per image token), cross-attention
            // q, out per image token and k, v per text token (2·d² each), the feed-forward
            // (2·d·ffn per image token); QKᵀ and PV over image x image and image x text.
            let flops = 2.0 * (6.0 * d * d * s + 2.0 * d * d * t + 2.0 * d * f * s)
                + 4.0 * s * s * d
                + 4.0 * s * t * d;
            let Some(block) = model.blocks.into_iter().next() else {
                bail!("the wan_block model has no block");
            };
            (
                Box::new(move || {
                    let _out = block.forward(
                        x.clone(),
                        ctx.clone(),
                        temb.clone(),
                        cos.clone(),
                        sin.clone(),
                    );
                    Ctx::<B>::sync(&dev)
                }),
                Some(flops),
            )
        }
        "wan_vae_decode" => {
            let vae = match c.dir {
                Some(d) => {
                    AutoencoderKLWan::<B>::from_folder(d.join("model"), Some(dtype), device)?.0
                }
                None => AutoencoderKLWan::<B>::new(&wan_vae_config(&c)?, device)?,
            };
            let frames = c.size("latent_frames", 2, 2);
            let hw = c.size("latent_size", 4, 32);
            let z = c.input("z", [1, 16, frames, hw, hw])?;
            (
                Box::new(move || {
                    let _out = vae.decode(z.clone())?;
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "vae_decode_1024" | "vae_decode_1024_tiled" => {
            let mut vae = match c.dir {
                Some(d) => AutoencoderKL::<B>::from_folder(d.join("model"), Some(dtype), device)?.0,
                None => AutoencoderKL::<B>::new(&vae_config(&c)?, device)?,
            };
            if name.ends_with("_tiled") {
                vae.enable_tiling()?;
            }
            let hw = c.size("latent_size", 16, 128);
            let z = c.input("z", [1, 4, hw, hw])?;
            (
                Box::new(move || {
                    let _out = vae.decode(z.clone());
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "sd15_pipeline" | "sd15_pipeline_offload" => {
            let folder = c.meta["folder"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    diffusers_core::testing::fixtures_dir().join("pipelines/tiny_sd")
                });
            let size = c.size("size", 16, 256);
            let steps = c.size("steps", 2, 2);
            let offload = name
                .ends_with("_offload")
                .then_some(diffusers_pipelines::offload::OffloadMode::Model);
            let mut pipe = DiffusionPipeline::<B>::from_pretrained(
                &folder.to_string_lossy(),
                &PipelineOptions {
                    dtype,
                    offload,
                    ..Default::default()
                },
                device,
            )?;
            (
                Box::new(move || {
                    let _out = pipe.generate(
                        diffusers_pipelines::generate::GenerateRequest {
                            height: Some(size),
                            width: Some(size),
                            num_inference_steps: Some(steps),
                            seed: Some(42),
                            ..diffusers_pipelines::generate::GenerateRequest::new(
                                "a photo of the cat",
                            )
                        },
                        &mut |_| {},
                    )?;
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "flux_steps" | "flux_steps_fbc" => {
            // A FLUX.1-width transformer (24 x 128 heads; one double-stream and one
            // single-stream block, the fewest first-block cache takes) over a flow-matching
            // Euler step sequence, uncached or with first-block cache.
            use diffusers_nn::hooks::CacheableModel;
            let model = match c.dir {
                Some(d) => {
                    FluxTransformer2DModel::<B>::from_folder(d.join("model"), Some(dtype), device)?
                        .0
                }
                None => {
                    let mut cfg = flux_config(&c, true)?;
                    cfg.num_single_layers = 1;
                    FluxTransformer2DModel::<B>::new(&cfg, device)?
                }
            };
            let side = c.size("side", 4, 8);
            let txt = c.size("text_tokens", 8, 16);
            let steps = c.size("steps", 4, 8);
            let x0 = c.input("x", [1, side * side, 64])?;
            let ctx = c.input("ctx", [1, txt, 64])?;
            let pooled = c.input("pooled", [1, 32])?;
            let sigmas: Vec<f64> = match &c.inputs {
                Some(w) => w
                    .read("sigmas")?
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("sigmas: {e:?}"))?,
                None => (0..=steps).map(|i| 1.0 - i as f32 / steps as f32).collect(),
            }
            .into_iter()
            .map(f64::from)
            .collect();
            if name == "flux_steps_fbc" {
                let threshold = c.meta["threshold"].as_f64().unwrap_or(0.65);
                model.enable_cache(&diffusers_nn::hooks::CacheConfig::FirstBlock(
                    diffusers_nn::hooks::first_block_cache::FirstBlockCacheConfig::new(threshold),
                ))?;
            }
            let img_ids: Vec<Vec<f64>> = (0..side * side)
                .map(|i| vec![0.0, (i / side) as f64, (i % side) as f64])
                .collect();
            let txt_ids = vec![vec![0.0; 3]; txt];
            let mut reported = false;
            (
                Box::new(move || {
                    model.hooks.reset_stateful_hooks();
                    let mut x = x0.clone();
                    for i in 0..sigmas.len().saturating_sub(1) {
                        let (s, next) = (sigmas[i], sigmas[i + 1]);
                        model
                            .hooks
                            .set_context("cond", None, Some(s * 1000.0), None);
                        let v = model.forward(
                            diffusers_transformers::transformer_flux::FluxInputs {
                                hidden_states: x.clone(),
                                encoder_hidden_states: ctx.clone(),
                                pooled_projections: pooled.clone(),
                                timestep: Tensor::full([1], s as f32, (&dev, dtype)),
                                guidance: None,
                                txt_ids: txt_ids.clone(),
                                img_ids: img_ids.clone(),
                            },
                        )?;
                        x = x + v * ((next - s) as f32);
                    }
                    if let (Some(r), false) = (model.cache_report(), reported) {
                        eprintln!(
                            "flux_steps_fbc: {} of {} transformer calls computed fully",
                            r.full_calls, r.calls
                        );
                        reported = true;
                    }
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "tiny_pipeline" => {
            let folder = c.meta["folder"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_else(tiny_flux_folder);
            let steps = c.size("steps", 4, 4);
            let pipe = DiffusionPipeline::<B>::from_pretrained(
                &folder.to_string_lossy(),
                &PipelineOptions {
                    dtype,
                    ..Default::default()
                },
                device,
            )?;
            let DiffusionPipeline::Flux(mut flux) = pipe else {
                bail!("{} is not a FluxPipeline", folder.display());
            };
            (
                Box::new(move || {
                    let _out = flux.call(FluxCall {
                        height: Some(16),
                        width: Some(24),
                        num_inference_steps: steps,
                        seed: Some(42),
                        ..FluxCall::new("a photo of the cat")
                    })?;
                    Ctx::<B>::sync(&dev)
                }),
                None,
            )
        }
        "load_1gb" => {
            let layers = c.size("layers", 4, 16);
            let dim = c.size("dim", 256, 4096);
            let (path, keep) = match c.dir {
                Some(d) => (d.join("weights.safetensors"), None),
                None => {
                    let tmp = tempfile::tempdir()?;
                    let path = tmp.path().join("stack.safetensors");
                    write_linear_stack(&path, layers, dim)?;
                    (path, Some(tmp))
                }
            };
            (
                Box::new(move || {
                    let _keep = &keep;
                    let weights = Weights::open(&path)?;
                    let (stack, _) = load_into(
                        LinearStack::<B>::new(layers, dim, &dev),
                        &weights,
                        LoadOptions {
                            dtype: Some(dtype),
                            ..Default::default()
                        },
                    )?;
                    Ctx::<B>::sync(&dev)?;
                    drop(stack);
                    Ok(())
                }),
                None,
            )
        }
        other => bail!(
            "unknown workload {other:?}; known: {}",
            WORKLOADS
                .iter()
                .chain(CUDA_WORKLOADS)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Ok(Prepared {
        run,
        flops,
        prepare_s: start.elapsed().as_secs_f64(),
    })
}

/// Prepares `name`, runs it `warmup` times untimed and `iters` times timed, and returns the
/// JSON record `diffusers-bench` prints (`times_s`, `median_s`, `flops`, `peak_rss_bytes`, ...).
pub fn measure<B: Backend>(
    name: &str,
    source: &Source,
    dtype: DType,
    device: &B::Device,
    warmup: usize,
    iters: usize,
) -> Result<Value> {
    let mut w = prepare::<B>(name, source, dtype, device)?;
    for _ in 0..warmup {
        w.run()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        w.run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let median_s = median(&times);
    Ok(json!({
        "workload": name,
        "impl": "diffusers-rs",
        "dtype": format!("{dtype:?}"),
        "prepare_s": w.prepare_s,
        "times_s": times,
        "median_s": median_s,
        "flops": w.flops,
        "flops_per_s": w.flops.zip(median_s).map(|(f, t)| f / t),
        "peak_rss_bytes": peak_rss_bytes(),
        // GPU: what the allocator holds after the runs (its pools do not shrink: the peak).
        "device_reserved_bytes": diffusers_core::memory::device_memory::<B>(device)
            .map(|m| m.reserved_bytes),
    }))
}

/// Weight bytes of a FLUX.1-sized transformer (the config at `config`, built lazily: no weight is
/// allocated) dense in bf16 and with every `Linear` weight packed (NF4, NF4 with double
/// quantization, int8, fp8, GGUF Q4_0 and Q8_0); norms, biases and embeddings stay bf16 as
/// diffusers keeps them. A markdown table: bytes, the ratio to bf16, and the ideal ratio (the
/// format's bits per value over 16, scales included, as if every parameter were packed).
pub fn flux_weight_footprint(config: &Path) -> Result<String> {
    use diffusers_quantization::QuantMethod;
    use diffusers_quantization::gguf::GgmlType;
    let cfg: FluxTransformer2DModelConfig =
        serde_json::from_value(diffusers_core::json::read(config)?)?;
    let model =
        FluxTransformer2DModel::<diffusers_core::backend::Cpu>::new(&cfg, &Default::default())?;
    let shapes = diffusers_core::weights::module_shapes(&model, None);
    let (mut linear, mut other) = (Vec::new(), 0usize);
    for (k, s) in &shapes {
        if s.len() == 2 && k.ends_with(".weight") {
            linear.push((s[0], s[1]));
        } else {
            other += s.iter().product::<usize>();
        }
    }
    let params: usize = linear.iter().map(|(r, c)| r * c).sum::<usize>() + other;
    let dense = 2 * params;
    let mut rows = vec![format!(
        "| bf16 (dense) | {:.2} GB | 1.00 | 1.00 |",
        dense as f64 / 1e9
    )];
    type Bytes = Box<dyn Fn(usize, usize) -> Result<usize>>;
    let methods: Vec<(&str, Bytes, f64)> = vec![
        (
            "NF4",
            Box::new(|r, c| Ok(QuantMethod::parse("nf4", false)?.packed_bytes(r, c))),
            4.5,
        ),
        (
            "NF4 + double quant",
            Box::new(|r, c| Ok(QuantMethod::parse("nf4", true)?.packed_bytes(r, c))),
            4.127,
        ),
        (
            "int8 (per-row scale)",
            Box::new(|r, c| Ok(QuantMethod::Int8.packed_bytes(r, c))),
            8.0,
        ),
        (
            "fp8 e4m3 (per-row scale)",
            Box::new(|r, c| Ok(QuantMethod::parse("fp8", false)?.packed_bytes(r, c))),
            8.0,
        ),
        (
            "GGUF Q4_0",
            Box::new(|r, c| Ok(GgmlType::Q4_0.bytes_for(r * c)?)),
            4.5,
        ),
        (
            "GGUF Q8_0",
            Box::new(|r, c| Ok(GgmlType::Q8_0.bytes_for(r * c)?)),
            8.5,
        ),
    ];
    for (name, bytes, bits) in methods {
        let packed: usize = linear
            .iter()
            .map(|&(r, c)| bytes(r, c))
            .sum::<Result<usize>>()?;
        let total = packed + 2 * other;
        rows.push(format!(
            "| {name} | {:.2} GB | {:.3} | {:.3} |",
            total as f64 / 1e9,
            total as f64 / dense as f64,
            bits / 16.0
        ));
    }
    Ok(format!(
        "{params} parameters ({} in {} Linear weights)\n\n| weights | bytes | ratio to bf16 | ideal |\n|---|---|---|---|\n{}\n",
        params - other,
        linear.len(),
        rows.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffusers_core::backend::Cpu;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn peak_rss_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn unknown_workload_is_an_error() {
        let device = Default::default();
        let err = prepare::<Cpu>("nope", &Source::Random(Scale::Tiny), DType::F32, &device);
        assert!(err.is_err());
    }

    #[test]
    fn every_tiny_workload_runs() -> Result<()> {
        let device = Default::default();
        for name in WORKLOADS.iter().chain(CUDA_WORKLOADS) {
            let r = measure::<Cpu>(
                name,
                &Source::Random(Scale::Tiny),
                DType::F32,
                &device,
                0,
                1,
            )?;
            assert!(r["median_s"].as_f64().is_some(), "{name}: {r}");
        }
        Ok(())
    }
}
