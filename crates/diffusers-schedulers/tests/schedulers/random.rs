//! The torch-compatible generator against `torch.randn` and diffusers' `randn_tensor`
//! (`fixtures/schedulers/random.*`).

use burn::tensor::DType;
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close};
use diffusers_schedulers::{Generators, HalfType, TorchGenerator, randn_tensor};

/// Small tensors (under 16 elements) are drawn through f64 exactly as torch does: bit-equal.
/// Larger f32 tensors: torch's AVX2 kernel approximates log/sin/cos (`avx_mathfun`), the host
/// libm is exact to an ulp: measured differences are up to 1.5e-6 on values of magnitude ~4.
const LARGE_F32: Tol = Tol {
    atol: 2e-6,
    rtol: 1e-6,
};
const EXACT: Tol = Tol {
    atol: 0.0,
    rtol: 0.0,
};

fn seed_of(c: &serde_json::Value) -> u64 {
    c["seed"].as_u64().expect("seed")
}

#[test]
fn randn_matches_torch() {
    let fx = Fixture::open("schedulers/random");
    let cases = fx.cases.as_object().expect("cases").clone();
    let mut checked = 0;
    for (name, c) in cases.iter().filter(|(_, c)| c["kind"] == "randn") {
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect();
        let n: usize = shape.iter().product();
        let mut g = TorchGenerator::new(seed_of(c));
        let half = match c["dtype"].as_str() {
            Some("bfloat16") => Some(HalfType::BF16),
            Some("float16") => Some(HalfType::F16),
            _ => None,
        };
        let (first, second): (Vec<f32>, Vec<f32>) = if let Some(h) = half {
            (g.randn_half(n, h), g.randn_half(3, h))
        } else if c["dtype"] == "float64" {
            let a = g.randn_f64(n).into_iter().map(|v| v as f32).collect();
            let b = g.randn_f64(3).into_iter().map(|v| v as f32).collect();
            (a, b)
        } else {
            (g.randn(n), g.randn(3))
        };
        // f64 values are compared after rounding to f32 (the fixture stores f32).
        let tol = if n >= 16 && c["dtype"] == "float32" {
            LARGE_F32
        } else {
            EXACT
        };
        let dev = Default::default();
        let t = |v: Vec<f32>| {
            burn::tensor::Tensor::<Cpu, 1>::from_data(
                burn::tensor::TensorData::new(v.clone(), [v.len()]),
                &dev,
            )
        };
        assert_close(
            t(first),
            &fx.values(&format!("{name}.first")),
            None,
            tol,
            &format!("{name}.first"),
        );
        // After a large draw the stream continues with fresh uniforms: exact again.
        assert_close(
            t(second),
            &fx.values(&format!("{name}.second")),
            None,
            EXACT,
            &format!("{name}.second"),
        );
        checked += 1;
    }
    // bf16/f16 draws go through the same path as torch (scalar libm), so they are exact too.
    assert_eq!(checked, 96);
}

#[test]
fn randn_tensor_matches_diffusers() {
    let fx = Fixture::open("schedulers/random");
    let dev = Default::default();
    let mut gens = [TorchGenerator::new(7), TorchGenerator::new(8)];
    let t = randn_tensor::<Cpu, 4>(
        [2, 4, 3, 3],
        Generators::PerSample(&mut gens),
        &dev,
        DType::F32,
    )
    .expect("randn");
    assert_close(
        t,
        &fx.values("randn_tensor_per_sample.output"),
        None,
        LARGE_F32,
        "per-sample",
    );
    let mut gens = [TorchGenerator::new(7), TorchGenerator::new(8)];
    let t = randn_tensor::<Cpu, 4>(
        [2, 4, 3, 3],
        Generators::PerSample(&mut gens),
        &dev,
        DType::BF16,
    )
    .expect("randn");
    assert_eq!(t.dtype(), DType::BF16);
    assert_close(
        t,
        &fx.values("randn_tensor_per_sample_bf16.output"),
        None,
        EXACT,
        "per-sample bf16",
    );
    let mut g = TorchGenerator::new(9);
    let t = randn_tensor::<Cpu, 4>([2, 4, 3, 3], Generators::One(&mut g), &dev, DType::F32)
        .expect("randn");
    assert_close(
        t,
        &fx.values("randn_tensor_single.output"),
        None,
        LARGE_F32,
        "single",
    );
    let mut one = [TorchGenerator::new(1)];
    assert!(matches!(
        randn_tensor::<Cpu, 4>(
            [2, 4, 3, 3],
            Generators::PerSample(&mut one),
            &dev,
            DType::F32
        ),
        Err(diffusers_schedulers::Error::GeneratorCount {
            generators: 1,
            batch: 2
        })
    ));
}

/// A recorded noise source that runs out, or whose next tensor is not the size a step asks
/// for, makes that step an error: before, it handed out zeros and the step computed a wrong
/// sample silently. One row per stochastic scheduler, each run through a 3-step loop.
#[test]
fn recorded_noise_that_does_not_fit_is_an_error() {
    use burn::tensor::Tensor;
    use diffusers_schedulers::{Error, RecordedNoise, TimestepOptions, from_json, step_nd};

    let configs = [
        r#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#,
        r#"{"_class_name": "DDPMScheduler"}"#,
        r#"{"_class_name": "KDPM2AncestralDiscreteScheduler"}"#,
        r#"{"_class_name": "LCMScheduler"}"#,
        r#"{"_class_name": "TCDScheduler"}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#,
        r#"{"_class_name": "DPMSolverSinglestepScheduler", "algorithm_type": "sde-dpmsolver++"}"#,
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": true}"#,
    ];
    let device = Default::default();
    for config in configs {
        let run = |recorded: Vec<Vec<f32>>| {
            let mut s = from_json::<Cpu>(config).unwrap_or_else(|e| panic!("{config}: {e}"));
            s.set_timesteps(&TimestepOptions::steps(3))
                .unwrap_or_else(|e| panic!("{config}: {e}"));
            // The whole loop: KDPM2-ancestral draws at its second-order half-steps only.
            let mut sample = Tensor::<Cpu, 4>::ones([1, 2, 2, 2], &device);
            let mut noise = RecordedNoise(recorded.into());
            for t in s.timesteps().to_vec() {
                sample = step_nd(
                    s.as_mut(),
                    sample.clone() * 0.1,
                    t,
                    sample,
                    Some(&mut noise),
                )?;
            }
            Ok::<_, Error>(sample)
        };
        for (what, recorded) in [
            ("empty", vec![]),
            ("too small", vec![vec![0.5; 7]]),
            ("too large", vec![vec![0.5; 9]]),
        ] {
            match run(recorded) {
                Err(Error::Noise { reason }) => assert!(reason.contains('8'), "{config}: {reason}"),
                other => {
                    panic!("{config}, {what} recorded noise: expected Error::Noise, got {other:?}")
                }
            }
        }
        // Draws of the right size are used as they are.
        run(vec![vec![0.5; 8]; 8]).unwrap_or_else(|e| panic!("{config}: {e}"));
    }
}
