//! `DPMSolverSinglestepScheduler` against diffusers (`fixtures/schedulers/dpmsolver_singlestep.*`):
//! orders 1-3 with diffusers' order lists, midpoint and Heun, DPM-Solver, DPM-Solver++ and its SDE
//! form, karras and flow sigmas, v-prediction; one scheduler loaded from the config file diffusers
//! saved (`lambda_min_clipped: -Infinity`).

use crate::common;

use diffusers_core::testing::{Fixture, Tol};

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
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/dpmsolver_singlestep");
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
        let mut s = common::from_case(&c, "DPMSolverSinglestepScheduler")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = if c["gen_seed"].is_null() {
            STEP
        } else {
            STOCHASTIC
        };
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, tol, &mut |_| {});
    }
}
