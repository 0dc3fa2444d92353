//! Dynamic thresholding (`thresholding=True`) against diffusers in every scheduler that has it
//! (`fixtures/schedulers/beta_sigmas.*`).

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::from_config;

const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 2e-5,
};
const STOCHASTIC: Tol = Tol {
    atol: 2e-5,
    rtol: 2e-5,
};

#[test]
fn beta_sigma_loops_match_diffusers() {
    let fx = Fixture::open("schedulers/beta_sigmas");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 7);
    for name in names {
        let c = fx.case(&name).clone();
        let config = c["config"].as_object().expect("config").clone();
        let mut s = from_config::<Cpu>(&config, c["class"].as_str())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = if c["gen_seed"].is_null() {
            STEP
        } else {
            STOCHASTIC
        };
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, tol, &mut |_| {});
    }
}
