//! burn 0.21's fusion computes wrong values (burn #5122), reproduced on the CPU through burn's
//! wgpu backend on lavapipe: the same expressions on `flex` (the reference), on the unfused
//! `CubeBackend<WgpuRuntime>` and on the fused `Wgpu`. Measured here (2026-11-29, Mesa 22.3.6
//! lavapipe): unfused, every case is within 1.5e-7 of flex; fused, with a one-column `w2`, the
//! three cases that end in an element-wise op (tanh, `* 3`) are off by 0.7 to 1.1, and the plain
//! matmul (case 2) is right; with a four-column `w2` every case is right. So a matmul with a
//! one-column output whose result feeds an element-wise op fused after it is computed wrong. On
//! CUDA the same fusion layer put the tiny Flux transformer call 1.1e-1 off; the pipelines use the
//! unfused backend (`diffusers_core::backend::Cuda`).
use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::backend::{Flex, Wgpu};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;

type Unfused = CubeBackend<WgpuRuntime, f32, i32, u32>;

fn t<B: Backend>(v: &[f32], s: [usize; 2], dev: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), s), dev)
}

/// `x`: `[5, 64]`; `w1`: `[64, 9]`; `w2`: `[9, width]`.
fn case<B: Backend>(
    k: usize,
    x: &[f32],
    w1: &[f32],
    w2: &[f32],
    width: usize,
    dev: &B::Device,
) -> Vec<f32> {
    let (x, w1, w2) = (
        t::<B>(x, [5, 64], dev),
        t::<B>(w1, [64, 9], dev),
        t::<B>(w2, [9, width], dev),
    );
    let y = match k {
        // The MLP tail: relu(x w1) w2, then tanh.
        0 => relu(x.matmul(w1)).matmul(w2).tanh(),
        // A view of x as the input, then a scale.
        1 => x.narrow(1, 0, 9).matmul(w2) * 3.0,
        // The same without the trailing element-wise op.
        2 => x.narrow(1, 0, 9).matmul(w2),
        // A contiguous input.
        3 => {
            (x.narrow(1, 0, 9) * 1.0)
                .into_data()
                .to_vec::<f32>()
                .map(|v| t::<B>(&v, [5, 9], dev))
                .unwrap()
                .matmul(w2)
                * 3.0
        }
        _ => unreachable!(),
    };
    y.into_data().to_vec::<f32>().expect("f32")
}

fn main() {
    let cpu = Default::default();
    let r = |s: [usize; 2]| {
        Tensor::<Flex, 2>::random(s, Distribution::Normal(0.0, 0.3), &cpu)
            .into_data()
            .to_vec::<f32>()
            .expect("f32")
    };
    let (x, w1) = (r([5, 64]), r([64, 9]));
    let dev = WgpuDevice::default();
    let names = [
        "relu(x w1) w2, tanh",
        "x[:, :9] w2 * 3",
        "x[:, :9] w2",
        "contiguous(x[:, :9]) w2 * 3",
    ];
    for width in [1, 4] {
        let w2 = r([9, width]);
        for (k, name) in names.iter().enumerate() {
            let want = case::<Flex>(k, &x, &w1, &w2, width, &cpu);
            let err = |a: &[f32]| {
                a.iter()
                    .zip(&want)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max)
            };
            let unfused = err(&case::<Unfused>(k, &x, &w1, &w2, width, &dev));
            let fused = err(&case::<Wgpu>(k, &x, &w1, &w2, width, &dev));
            println!(
                "case {k} ({name}), w2 [9, {width}]: max abs vs flex: unfused {unfused:.2e}, fused {fused:.2e}"
            );
        }
    }
}
