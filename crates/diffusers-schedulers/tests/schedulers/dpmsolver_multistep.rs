//! `DPMSolverMultistepScheduler` against diffusers (`fixtures/schedulers/dpmsolver_multistep.*`):
//! orders 1-3, midpoint and Heun, DPM-Solver++ and its SDE form, karras/exponential/Lu/flow
//! sigmas, `final_sigmas_type`, `lower_order_final`, `euler_at_final`, clipped lambdas.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{Error, from_config};

const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
/// Multistep updates combine up to three model outputs with coefficients from f32 `log`/`exp`.
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 1e-5,
};
const STOCHASTIC: Tol = Tol {
    atol: 2e-5,
    rtol: 1e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/dpmsolver_multistep");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 15);
    for name in names {
        let c = fx.case(&name).clone();
        let mut s = common::from_case(&c, "DPMSolverMultistepScheduler")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = if c["gen_seed"].is_null() {
            STEP
        } else {
            STOCHASTIC
        };
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, tol, &mut |_| {});
    }
}

#[test]
fn invalid_configurations() {
    let map = |j: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).expect("json")
    };
    let build = |j: &str| from_config::<Cpu>(&map(j), Some("DPMSolverMultistepScheduler"));
    assert!(matches!(
        build(r#"{"solver_order": 4}"#),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        build(r#"{"algorithm_type": "dpmsolver"}"#),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        build(r#"{"algorithm_type": "unknown"}"#),
        Err(Error::Core(diffusers_core::Error::JsonValue { .. }))
    ));
    assert!(matches!(
        build(r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#),
        Err(Error::ConflictingOptions { .. })
    ));
    // Non-finite values as Python writes them: `-Infinity` is lambda_min_clipped's default; NaN
    // or +Infinity there, or any of them where a finite number is needed, is an error naming
    // the key; a clip above every timestep is an error at set_timesteps, not an underflow.
    let from_text = |j: &str| diffusers_schedulers::from_json::<Cpu>(j);
    let class = r#""_class_name": "DPMSolverMultistepScheduler""#;
    from_text(&format!("{{{class}, \"lambda_min_clipped\": -Infinity}}")).expect("-Infinity");
    for word in ["NaN", "Infinity"] {
        match from_text(&format!("{{{class}, \"lambda_min_clipped\": {word}}}")) {
            Err(e @ Error::InvalidConfig { .. }) => {
                assert!(e.to_string().contains("`lambda_min_clipped` is"), "{e}")
            }
            Err(other) => panic!("{word}: {other}"),
            Ok(_) => panic!("{word}: accepted"),
        }
    }
    for (json, key) in [
        (r#""beta_end": NaN"#, "beta_end"),
        (r#""solver_order": Infinity"#, "solver_order"),
        (r#""flow_shift": -Infinity"#, "flow_shift"),
    ] {
        match from_text(&format!("{{{class}, {json}}}")) {
            Err(Error::Core(e @ diffusers_core::Error::NonFinite { .. })) => {
                assert!(e.to_string().contains(&format!("`{key}` is")), "{e}")
            }
            Err(other) => panic!("{json}: {other}"),
            Ok(_) => panic!("{json}: accepted"),
        }
    }
    let mut s = from_text(&format!("{{{class}, \"lambda_min_clipped\": 100}}")).expect("100");
    assert!(matches!(
        s.set_timesteps(&diffusers_schedulers::TimestepOptions::steps(4)),
        Err(Error::InvalidConfig { .. })
    ));

    let mut s = build("{}").expect("default");
    let mu = diffusers_schedulers::TimestepOptions {
        num_inference_steps: Some(4),
        mu: Some(0.5),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&mu),
        Err(Error::ConflictingOptions { .. })
    ));
    let custom = diffusers_schedulers::TimestepOptions {
        sigmas: Some(vec![1.0, 0.0]),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&custom),
        Err(Error::CustomScheduleUnsupported { .. })
    ));
}
