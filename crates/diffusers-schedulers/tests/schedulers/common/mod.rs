//! A whole denoising loop checked against the oracle's record of it.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close};
use diffusers_schedulers::{
    NoiseSource, RecordedNoise, Scheduler, TimestepOptions, TorchGenerator, scale_model_input_nd,
    step_nd,
};

pub fn opts(v: &serde_json::Value) -> TimestepOptions {
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| a.iter().map(|x| x.as_f64().expect("number")).collect())
    };
    TimestepOptions {
        num_inference_steps: v["num_inference_steps"].as_u64().map(|n| n as usize),
        timesteps: list("timesteps"),
        sigmas: list("sigmas"),
        mu: v["mu"].as_f64(),
        strength: v["strength"].as_f64(),
    }
}

/// The scheduler of a recorded case: from the `scheduler_config.json` diffusers saved (the case
/// names its folder under `saved`), else from the case's config as `from_config` builds it.
pub fn from_case(
    case: &serde_json::Value,
    class: &str,
) -> diffusers_schedulers::Result<Box<dyn Scheduler<Cpu>>> {
    match case["saved"].as_str() {
        Some(folder) => {
            let path = diffusers_core::testing::fixtures_dir()
                .join(folder)
                .join("scheduler_config.json");
            let config: serde_json::Map<String, serde_json::Value> =
                diffusers_core::json::read(&path)?;
            diffusers_schedulers::from_config(&config, None)
        }
        None => diffusers_schedulers::from_config(
            case["config"].as_object().expect("config"),
            Some(class),
        ),
    }
}

pub fn host(values: &[f64]) -> Tensor<Cpu, 1> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v.clone(), [v.len()]), &Default::default())
}

/// Runs `set_timesteps` and the recorded loop; `schedule_tol` bounds timesteps and sigmas,
/// `step_tol` every step's sample.
pub fn check_loop(
    fx: &Fixture,
    name: &str,
    s: &mut dyn Scheduler<Cpu>,
    schedule_tol: Tol,
    step_tol: Tol,
    per_step: &mut dyn FnMut(&mut dyn Scheduler<Cpu>),
) {
    let c = fx.case(name).clone();
    s.set_timesteps(&opts(&c["set_timesteps"]))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let ts = s.timesteps().to_vec();
    assert_close(
        host(&ts),
        &fx.values(&format!("{name}.timesteps")),
        None,
        schedule_tol,
        &format!("{name}.timesteps"),
    );
    if let Some(sig) = s.sigmas() {
        assert_close(
            host(&sig),
            &fx.values(&format!("{name}.sigmas")),
            None,
            schedule_tol,
            &format!("{name}.sigmas"),
        );
    }
    let init = c["init_noise_sigma"].as_f64().expect("init sigma");
    assert!(
        ((s.init_noise_sigma() - init) / init).abs() < 1e-6,
        "{name}: init_noise_sigma {} vs {init}",
        s.init_noise_sigma()
    );
    let dev = Default::default();
    if fx.weights.contains(&format!("{name}.add_noise")) {
        let clean: Tensor<Cpu, 4> = fx.tensor(&format!("{name}.clean"), &dev, DType::F32);
        let noise: Tensor<Cpu, 4> = fx.tensor(&format!("{name}.noise"), &dev, DType::F32);
        let dims = clean.dims();
        let flat = |t: Tensor<Cpu, 4>| t.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
        let t1 = ts[1.min(ts.len() - 1)];
        let noisy = s
            .add_noise(flat(clean), flat(noise), t1)
            .unwrap_or_else(|e| panic!("{name}: add_noise: {e}"));
        assert_close(
            noisy,
            &fx.values(&format!("{name}.add_noise")),
            None,
            step_tol,
            &format!("{name}.add_noise"),
        );
    }
    run_steps(
        fx,
        name,
        s,
        &ts,
        step_tol,
        c["gen_seed"]
            .as_u64()
            .map(|seed| Noise::Generator(Box::new(TorchGenerator::new(seed)))),
        per_step,
    );
    // Stochastic schedulers again, with the noise diffusers drew, recorded by the oracle: this
    // isolates the scheduler arithmetic from the generator's last-bit differences.
    let draws = c["noise_draws"].as_u64().unwrap_or(0) as usize;
    if draws > 0 {
        let recorded = (0..draws)
            .map(|k| fx.values(&format!("{name}.noise_draw_{k}")))
            .collect();
        s.set_timesteps(&opts(&c["set_timesteps"]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = Tol {
            atol: 5e-6,
            rtol: 2e-5,
        };
        run_steps(
            fx,
            name,
            s,
            &ts,
            tol,
            Some(Noise::Recorded(RecordedNoise(recorded))),
            per_step,
        );
    }
}

enum Noise {
    Generator(Box<TorchGenerator>),
    Recorded(RecordedNoise),
}

fn run_steps(
    fx: &Fixture,
    name: &str,
    s: &mut dyn Scheduler<Cpu>,
    ts: &[f64],
    step_tol: Tol,
    mut noise: Option<Noise>,
    per_step: &mut dyn FnMut(&mut dyn Scheduler<Cpu>),
) {
    let dev = Default::default();
    let mut sample: Tensor<Cpu, 4> = fx.tensor(&format!("{name}.sample"), &dev, DType::F32);
    for (i, &t) in ts.iter().enumerate() {
        per_step(s);
        let scaled_key = format!("{name}.scaled_{i}");
        if fx.weights.contains(&scaled_key) {
            let scaled = scale_model_input_nd(s, sample.clone(), t)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_close(scaled, &fx.values(&scaled_key), None, step_tol, &scaled_key);
        }
        let mo: Tensor<Cpu, 4> = fx.tensor(&format!("{name}.model_output_{i}"), &dev, DType::F32);
        let noise = noise.as_mut().map(|n| match n {
            Noise::Generator(g) => g.as_mut() as &mut dyn NoiseSource,
            Noise::Recorded(r) => r as &mut dyn NoiseSource,
        });
        sample =
            step_nd(s, mo, t, sample, noise).unwrap_or_else(|e| panic!("{name} step {i}: {e}"));
        assert_close(
            sample.clone(),
            &fx.values(&format!("{name}.prev_{i}")),
            None,
            step_tol,
            &format!("{name}.prev_{i}"),
        );
    }
}
