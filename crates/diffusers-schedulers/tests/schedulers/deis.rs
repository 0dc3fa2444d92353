//! `DEISMultistepScheduler` against diffusers (`fixtures/schedulers/deis.*`): log-rho updates
//! of orders 1-3, v-prediction, karras and flow sigmas.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::from_config;

const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
/// Third-order coefficients combine f32 logarithms of ratios of sigmas.
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 2e-5,
};
/// Stock diffusers computes those logarithms with numpy's SIMD float32 `log`, which is not
/// always correctly rounded; in the 20-step third-order run the cancellation turns that last
/// bit into up to 1.5e-4 on samples of magnitude 63 (measured: the oracle's
/// `deis_order3_20_exact_log` case, diffusers with correctly rounded logs, differs from stock
/// diffusers by exactly that, and this crate matches it at `STEP`).
const NUMPY_LOG: Tol = Tol {
    atol: 2e-4,
    rtol: 2e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/deis");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 6);
    for name in names {
        let config = fx.case(&name)["config"]
            .as_object()
            .expect("config")
            .clone();
        let mut s = from_config::<Cpu>(&config, Some("DEISMultistepScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Third-order runs against stock diffusers inherit numpy's float32 log rounding.
        let tol = if name.starts_with("deis_order3") && !name.ends_with("exact_log") {
            NUMPY_LOG
        } else {
            STEP
        };
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, tol, &mut |_| {});
    }
}
