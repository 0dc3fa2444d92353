//! `FlowMatchEulerDiscreteScheduler` against diffusers (`fixtures/schedulers/flow_match.*`):
//! timesteps, sigmas and every step of a whole denoising loop, for each recorded config.

use crate::common;

use burn::prelude::*;
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{
    Error, FlowMatchEulerDiscreteScheduler, Scheduler, TimestepOptions, calculate_shift,
};

const EXACT: Tol = Tol {
    atol: 0.0,
    rtol: 0.0,
};
const F32: Tol = Tol {
    atol: 1e-6,
    rtol: 1e-5,
};
/// The stochastic case draws fresh noise each step from the torch-compatible generator.
const STOCHASTIC: Tol = Tol {
    atol: 3e-6,
    rtol: 1e-5,
};

#[test]
fn whole_loops_match_diffusers() {
    let fx = Fixture::open("schedulers/flow_match");
    let cases = fx.cases.as_object().expect("cases").clone();
    let mut n = 0;
    for (name, c) in cases.iter().filter(|(_, c)| c["kind"] == "scheduler") {
        let mut s = FlowMatchEulerDiscreteScheduler::new(
            serde_json::from_value(c["config"].clone()).expect("config"),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Schedules are exact (same f32 values).
        let tol = if c["gen_seed"].is_null() {
            F32
        } else {
            STOCHASTIC
        };
        common::check_loop(&fx, name, &mut s, EXACT, tol, &mut |_| {});
        n += 1;
    }
    assert_eq!(n, 10);
}

#[test]
fn invalid_configs_and_calls() {
    let conflict = FlowMatchEulerDiscreteScheduler::from_json(
        r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#,
    );
    assert!(matches!(conflict, Err(Error::ConflictingOptions { .. })));
    let mut s = FlowMatchEulerDiscreteScheduler::from_json(r#"{"use_dynamic_shifting": true}"#)
        .expect("config");
    assert!(matches!(
        Scheduler::<Cpu>::set_timesteps(&mut s, &TimestepOptions::steps(4)),
        Err(Error::MissingMu { .. })
    ));
    let mut s = FlowMatchEulerDiscreteScheduler::from_json("{}").expect("config");
    assert!(matches!(
        Scheduler::<Cpu>::set_timesteps(&mut s, &TimestepOptions::steps(0)),
        Err(Error::ZeroSteps { .. })
    ));
    let bad = TimestepOptions {
        sigmas: Some(vec![1.0, 0.5]),
        timesteps: Some(vec![1000.0]),
        ..Default::default()
    };
    assert!(matches!(
        Scheduler::<Cpu>::set_timesteps(&mut s, &bad),
        Err(Error::ConflictingOptions { .. })
    ));
    assert!(matches!(
        FlowMatchEulerDiscreteScheduler::from_json("{\"shift\": \"x\"}"),
        Err(Error::Core(diffusers_core::Error::JsonValue { .. }))
    ));
    // A step before set_timesteps' schedule, or past its end, is an error, not a panic.
    Scheduler::<Cpu>::set_timesteps(&mut s, &TimestepOptions::steps(2)).expect("set");
    let x = Tensor::<Cpu, 2>::zeros([1, 4], &Default::default());
    assert!(matches!(
        Scheduler::<Cpu>::step(&mut s, x.clone(), 123.0, x.clone(), None),
        Err(Error::InvalidStep { .. })
    ));
    let ts = Scheduler::<Cpu>::timesteps(&s).to_vec();
    for &t in &ts {
        Scheduler::<Cpu>::step(&mut s, x.clone(), t, x.clone(), None).expect("step");
    }
    assert!(matches!(
        Scheduler::<Cpu>::step(&mut s, x.clone(), ts[1], x, None),
        Err(Error::InvalidStep { .. })
    ));
}

#[test]
fn calculate_shift_matches_flux_pipeline() {
    let fx = Fixture::open("schedulers/flow_match");
    let cases = fx.cases.as_object().expect("cases");
    let mut n = 0;
    for c in cases.values().filter(|c| c["kind"] == "calculate_shift") {
        let u = |k: &str| c[k].as_u64().expect("int") as usize;
        let f = |k: &str| c[k].as_f64().expect("float");
        let mu = calculate_shift(
            u("image_seq_len"),
            u("base_seq_len"),
            u("max_seq_len"),
            f("base_shift"),
            f("max_shift"),
        );
        assert!((mu - f("mu")).abs() <= 1e-12, "{mu} vs {}", f("mu"));
        n += 1;
    }
    assert_eq!(n, 5);
}
