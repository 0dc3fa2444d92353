//! The README example: load one layer from a checkpoint and run it in bf16.
//! Run from the repository root: `cargo run -p diffusers-nn --example readme`.

use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::weights::{LoadOptions, Weights, load_into};
use diffusers_nn::linear::LinearConfig;

fn main() -> Result<(), diffusers_core::Error> {
    let device = Default::default();
    // A layer with lazily-initialised parameters: loading allocates each weight once.
    let layer = LinearConfig::new(4, 8).init::<Cpu>(&device);
    let weights = Weights::open("fixtures/loading/tiny/diffusion_pytorch_model.safetensors")?;
    let opts = LoadOptions {
        prefix: "proj_in.",
        allow_unexpected: true,
        dtype: Some(DType::BF16),
        ..Default::default()
    };
    let (layer, _report) = load_into(layer, &weights, opts)?;
    let y = layer.forward(Tensor::<Cpu, 2>::ones([2, 4], (&device, DType::BF16)));
    assert_eq!(y.dims(), [2, 8]);
    Ok(())
}
