//! The schedulers against diffusers, one test binary (with `--all-features` each test binary
//! links the CUDA backend: one binary instead of sixteen takes minutes off a cold CI build).

mod common;

mod beta_sigmas;
mod ddpm;
mod deis;
mod discrete;
mod dpmsolver_multistep;
mod dpmsolver_singlestep;
mod flow_match;
mod heun;
mod kdpm2;
mod lcm;
mod lms;
mod pndm;
mod random;
mod tcd;
mod thresholding;
mod unipc;
