//! The backends parity tests run on.

pub use diffusers_core::testing::*;

/// Runs a parity check on every backend and dtype the build has:
/// `flex` f32 and bf16 always; CUDA f32 and bf16 as ignored tests when the `cuda` feature is on
/// (run them with `--ignored` on a machine with a GPU). CUDA f32 is checked at `cuda_f32`
/// (default: the f32 tolerance); layers built on matrix products give `TF32` there.
#[macro_export]
macro_rules! parity_tests {
    ($name:ident, $check:ident, bf16 = $bf16:expr) => {
        parity_tests!($name, $check, bf16 = $bf16, cuda_f32 = common::F32);
    };
    ($name:ident, $check:ident, bf16 = $bf16:expr, cuda_f32 = $cuda_f32:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn flex_f32() {
                $check::<diffusers_core::backend::Cpu>(
                    &Default::default(),
                    burn::tensor::DType::F32,
                    common::F32,
                );
            }
            #[test]
            fn flex_bf16() {
                $check::<diffusers_core::backend::Cpu>(
                    &Default::default(),
                    burn::tensor::DType::BF16,
                    $bf16,
                );
            }
            #[cfg(feature = "cuda")]
            #[test]
            #[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
            fn cuda_f32() {
                $check::<diffusers_core::backend::Cuda>(
                    &Default::default(),
                    burn::tensor::DType::F32,
                    $cuda_f32,
                );
            }
            #[cfg(feature = "cuda")]
            #[test]
            #[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
            fn cuda_bf16() {
                $check::<diffusers_core::backend::Cuda>(
                    &Default::default(),
                    burn::tensor::DType::BF16,
                    $bf16,
                );
            }
            /// The same check on burn's fused CUDA backend (`backend::CudaFused`): the
            /// layer-by-layer reproduction of burn 0.21's wrong fused results (burn #5122).
            /// Expected to fail where fusion is wrong; passing everywhere means a burn release
            /// fixed it and `backend::Cuda` may use fusion again.
            #[cfg(feature = "cuda")]
            #[test]
            #[ignore = "burn fusion reproduction; needs a CUDA GPU"]
            fn cuda_fused_f32() {
                $check::<diffusers_core::backend::CudaFused>(
                    &Default::default(),
                    burn::tensor::DType::F32,
                    $cuda_f32,
                );
            }
        }
    };
}
