//! Parity of every diffusers-nn layer with PyTorch/diffusers, on the oracle's fixtures
//! (`fixtures/nn/layers.*`, written by `cargo xtask fixtures`).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{Fixture, Tol, assert_close};
use diffusers_nn::activation::{self, GegluConfig, GeluApproximate, GeluConfig};
use diffusers_nn::attention::{AttentionMask, scaled_dot_product_attention};
use diffusers_nn::conv::{Conv2dConfig, Conv3dConfig};
use diffusers_nn::embeddings::{
    RopeOptions, RotaryPairing, apply_rotary_emb, get_1d_rotary_pos_embed, get_timestep_embedding,
    multi_axis_rotary_pos_embed,
};
use diffusers_nn::linear::LinearConfig;
use diffusers_nn::norm::{GroupNormConfig, LayerNormConfig, RmsNormConfig};
use diffusers_nn::pad::PadMode;
use serde_json::Value;

/// bf16 keeps 8 bits of mantissa: inputs and weights are rounded to bf16, so a layer's output
/// differs from the f32 reference by a few bf16 ulps of its magnitude. Measured max abs errors
/// are printed by each test (`--nocapture`); these bounds are about 2x the largest seen.
const BF16: Tol = Tol {
    atol: 4e-2,
    rtol: 2e-2,
};
const BF16_CONV: Tol = Tol {
    atol: 8e-2,
    rtol: 3e-2,
};

fn fx() -> Fixture {
    Fixture::open("nn/layers")
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("integer") as usize
}

fn arr<const N: usize>(v: &Value) -> [usize; N] {
    match v {
        Value::Array(a) => std::array::from_fn(|i| usize_of(&a[i])),
        other => [usize_of(other); N],
    }
}

fn expected(fx: &Fixture, key: &str) -> Vec<f32> {
    fx.values(key)
}

fn shape_of(fx: &Fixture, key: &str) -> Vec<usize> {
    fx.weights.info(key).expect("fixture key").shape.clone()
}

fn check_linear<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in ["linear_bias", "linear_nobias"] {
        let c = fx.case(case);
        let m = LinearConfig::new(usize_of(&c["in_features"]), usize_of(&c["out_features"]))
            .with_bias(c["bias"].as_bool().unwrap_or(true))
            .init::<B>(dev);
        let m = fx.load(m, case, "", dtype);
        let y = m.forward(fx.tensor::<B, 3>(&format!("{case}.input"), dev, dtype));
        let key = format!("{case}.output");
        assert_close(
            y,
            &expected(&fx, &key),
            Some(&shape_of(&fx, &key)),
            tol,
            case,
        );
    }
}
parity_tests!(linear, check_linear, bf16 = BF16, cuda_f32 = common::TF32);

fn check_conv2d<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in ["conv2d_k3", "conv2d_k3_s2", "conv2d_k1"] {
        let c = fx.case(case);
        let k = usize_of(&c["kernel_size"]);
        let s = usize_of(&c["stride"]);
        let p = usize_of(&c["padding"]);
        let m = Conv2dConfig::new(
            usize_of(&c["in_channels"]),
            usize_of(&c["out_channels"]),
            [k, k],
        )
        .with_stride([s, s])
        .with_padding([p, p])
        .init::<B>(dev);
        let m = fx.load(m, case, "", dtype);
        let y = m.forward(fx.tensor::<B, 4>(&format!("{case}.input"), dev, dtype));
        let key = format!("{case}.output");
        assert_close(
            y,
            &expected(&fx, &key),
            Some(&shape_of(&fx, &key)),
            tol,
            case,
        );
    }
}
parity_tests!(
    conv2d,
    check_conv2d,
    bf16 = BF16_CONV,
    cuda_f32 = common::TF32
);

fn check_conv3d<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in [
        "conv3d_k3",
        "conv3d_causal_wan",
        "conv3d_causal_hunyuan",
        "conv3d_t3_s2",
    ] {
        let c = fx.case(case);
        let mode = match c["pad_mode"].as_str() {
            Some("replicate") => PadMode::Replicate,
            _ => PadMode::Zeros,
        };
        let m = Conv3dConfig::new(
            usize_of(&c["in_channels"]),
            usize_of(&c["out_channels"]),
            arr::<3>(&c["kernel_size"]),
        )
        .with_stride(arr::<3>(&c["stride"]))
        .with_padding(arr::<6>(&c["padding"]))
        .with_pad_mode(mode)
        .init::<B>(dev);
        let prefix = c["params_prefix"].as_str().unwrap_or("");
        let m = fx.load(m, case, prefix, dtype);
        let y = m.forward(fx.tensor::<B, 5>(&format!("{case}.input"), dev, dtype));
        let key = format!("{case}.output");
        assert_close(
            y,
            &expected(&fx, &key),
            Some(&shape_of(&fx, &key)),
            tol,
            case,
        );
    }
}
parity_tests!(
    conv3d,
    check_conv3d,
    bf16 = BF16_CONV,
    cuda_f32 = common::TF32
);

fn check_group_norm<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    let c = fx.case("group_norm");
    let m = GroupNormConfig::new(usize_of(&c["num_groups"]), usize_of(&c["num_channels"]))
        .with_eps(c["eps"].as_f64().unwrap_or(1e-5))
        .init::<B>(dev);
    let m = fx.load(m, "group_norm", "", dtype);
    let x = fx.tensor::<B, 4>("group_norm.input", dev, dtype);
    // The input kept alive (shared storage, as a resnet keeps it for the residual) takes the
    // CPU kernel's out-of-place path; the last use of it, the in-place one.
    let y_shared = m.forward(x.clone());
    assert_close(
        y_shared,
        &expected(&fx, "group_norm.output"),
        None,
        tol,
        "group_norm (shared input)",
    );
    let y = m.forward(x);
    assert_close(
        y,
        &expected(&fx, "group_norm.output"),
        None,
        tol,
        "group_norm",
    );

    let c = fx.case("group_norm_5d_noaffine");
    let m = GroupNormConfig::new(usize_of(&c["num_groups"]), usize_of(&c["num_channels"]))
        .with_eps(c["eps"].as_f64().unwrap_or(1e-5))
        .with_affine(false)
        .init::<B>(dev);
    let m = fx.load(m, "group_norm_5d_noaffine", "", dtype);
    let y = m.forward(fx.tensor::<B, 5>("group_norm_5d_noaffine.input", dev, dtype));
    assert_close(
        y,
        &expected(&fx, "group_norm_5d_noaffine.output"),
        None,
        tol,
        "group_norm_5d_noaffine",
    );
}
parity_tests!(group_norm, check_group_norm, bf16 = BF16);

fn check_layer_norm<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in ["layer_norm", "layer_norm_noaffine"] {
        let c = fx.case(case);
        let m = LayerNormConfig::new(usize_of(&c["dim"]))
            .with_eps(c["eps"].as_f64().unwrap_or(1e-5))
            .with_elementwise_affine(c["elementwise_affine"].as_bool().unwrap_or(true))
            .with_bias(c["bias"].as_bool().unwrap_or(true))
            .init::<B>(dev);
        let m = fx.load(m, case, "", dtype);
        let y = m.forward(fx.tensor::<B, 3>(&format!("{case}.input"), dev, dtype));
        assert_close(
            y,
            &expected(&fx, &format!("{case}.output")),
            None,
            tol,
            case,
        );
    }
}
parity_tests!(layer_norm, check_layer_norm, bf16 = BF16);

fn check_rms_norm<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in ["rms_norm", "rms_norm_noaffine"] {
        let c = fx.case(case);
        let m = RmsNormConfig::new(usize_of(&c["dim"]))
            .with_eps(c["eps"].as_f64().unwrap_or(1e-6))
            .with_elementwise_affine(c["elementwise_affine"].as_bool().unwrap_or(true))
            .init::<B>(dev);
        let m = fx.load(m, case, "", dtype);
        let y = m.forward(fx.tensor::<B, 3>(&format!("{case}.input"), dev, dtype));
        assert_close(
            y,
            &expected(&fx, &format!("{case}.output")),
            None,
            tol,
            case,
        );
    }
}
parity_tests!(rms_norm, check_rms_norm, bf16 = BF16);

fn check_activations<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in ["act_silu", "act_gelu", "act_gelu_tanh", "act_quick_gelu"] {
        let x = fx.tensor::<B, 2>(&format!("{case}.input"), dev, dtype);
        let y = match fx.case(case)["fn"].as_str() {
            Some("silu") => activation::silu(x),
            Some("gelu") => activation::gelu(x),
            Some("gelu_tanh") => activation::gelu_tanh(x),
            Some("quick_gelu") => activation::quick_gelu(x),
            other => panic!("unknown activation {other:?}"),
        };
        assert_close(
            y,
            &expected(&fx, &format!("{case}.output")),
            None,
            tol,
            case,
        );
    }
    let c = fx.case("gelu_proj_tanh");
    let m = GeluConfig::new(usize_of(&c["dim_in"]), usize_of(&c["dim_out"]))
        .with_approximate(GeluApproximate::Tanh)
        .init::<B>(dev);
    let m = fx.load(m, "gelu_proj_tanh", "", dtype);
    let y = m.forward(fx.tensor::<B, 3>("gelu_proj_tanh.input", dev, dtype));
    assert_close(
        y,
        &expected(&fx, "gelu_proj_tanh.output"),
        None,
        tol,
        "gelu_proj_tanh",
    );
    let c = fx.case("geglu");
    let m = GegluConfig::new(usize_of(&c["dim_in"]), usize_of(&c["dim_out"])).init::<B>(dev);
    let m = fx.load(m, "geglu", "", dtype);
    let y = m.forward(fx.tensor::<B, 3>("geglu.input", dev, dtype));
    assert_close(y, &expected(&fx, "geglu.output"), None, tol, "geglu");
}
parity_tests!(
    activations,
    check_activations,
    bf16 = BF16,
    cuda_f32 = common::TF32
);

fn check_attention<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in [
        "sdpa",
        "sdpa_scale",
        "sdpa_bool_mask",
        "sdpa_additive_mask",
        "sdpa_causal",
    ] {
        let c = fx.case(case);
        let q = fx.tensor::<B, 4>(&format!("{case}.q"), dev, dtype);
        let k = fx.tensor::<B, 4>(&format!("{case}.k"), dev, dtype);
        let v = fx.tensor::<B, 4>(&format!("{case}.v"), dev, dtype);
        let mask = match c["mask"].as_str() {
            Some("bool") => Some(AttentionMask::Keep(
                fx.tensor::<B, 4>(&format!("{case}.mask"), dev, DType::F32)
                    .greater_elem(0.5),
            )),
            Some("additive") => Some(AttentionMask::Additive(fx.tensor::<B, 4>(
                &format!("{case}.mask"),
                dev,
                dtype,
            ))),
            _ => None,
        };
        let y = scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            c["scale"].as_f64(),
            c["causal"].as_bool().unwrap_or(false),
        );
        assert_close(
            y,
            &expected(&fx, &format!("{case}.output")),
            None,
            tol,
            case,
        );
    }
}
parity_tests!(
    attention,
    check_attention,
    bf16 = BF16,
    cuda_f32 = common::TF32
);

/// Timestep embeddings are computed in f32 whatever the model's dtype (as diffusers does): the
/// bf16 run feeds bf16 timesteps and must match diffusers' f32 result for those, at f32 tolerance.
fn check_timestep_embedding<B: Backend>(dev: &B::Device, dtype: DType, _tol: Tol) {
    let fx = fx();
    for case in ["temb_default", "temb_sd", "temb_flux", "temb_odd"] {
        let c = fx.case(case);
        let mut t = fx.tensor::<B, 1>(&format!("{case}.timesteps"), dev, DType::F32);
        if case == "temb_flux" {
            t = t / 1000.0;
        }
        let t = t.cast(dtype);
        let y = get_timestep_embedding(
            t,
            usize_of(&c["embedding_dim"]),
            c["flip_sin_to_cos"].as_bool().unwrap_or(false),
            c["downscale_freq_shift"].as_f64().unwrap_or(1.0),
            c["scale"].as_f64().unwrap_or(1.0),
            c["max_period"].as_f64().unwrap_or(10000.0),
        );
        // The embedding is computed in f32 from the (rounded) timesteps, as diffusers does.
        let key = if dtype == DType::F32 {
            "output"
        } else {
            "output_from_bf16"
        };
        assert_close(
            y,
            &expected(&fx, &format!("{case}.{key}")),
            None,
            common::F32,
            case,
        );
    }
}
parity_tests!(timestep_embedding, check_timestep_embedding, bf16 = BF16);

fn check_rope<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = fx();
    for case in [
        "rope_interleave",
        "rope_concat",
        "rope_ntk_linear",
        "rope_f64",
    ] {
        let c = fx.case(case);
        let pos: Vec<f64> = fx
            .values(&format!("{case}.pos"))
            .into_iter()
            .map(f64::from)
            .collect();
        let opts = RopeOptions {
            theta: c["theta"].as_f64().unwrap_or(10000.0),
            linear_factor: c["linear_factor"].as_f64().unwrap_or(1.0),
            ntk_factor: c["ntk_factor"].as_f64().unwrap_or(1.0),
            repeat_interleave_real: c["repeat_interleave_real"].as_bool().unwrap_or(true),
            f64_freqs: c["freqs_dtype"].as_str() == Some("float64"),
        };
        let (cos, sin) = get_1d_rotary_pos_embed::<B>(usize_of(&c["dim"]), &pos, opts, dev);
        assert_close(
            cos,
            &expected(&fx, &format!("{case}.cos")),
            None,
            common::F32,
            &format!("{case}.cos"),
        );
        assert_close(
            sin,
            &expected(&fx, &format!("{case}.sin")),
            None,
            common::F32,
            &format!("{case}.sin"),
        );
    }
    let c = fx.case("rope_flux");
    let ids_flat = fx.values("rope_flux.ids");
    let ids: Vec<Vec<f64>> = ids_flat
        .chunks(3)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let axes: Vec<usize> = c["axes_dim"]
        .as_array()
        .expect("axes")
        .iter()
        .map(usize_of)
        .collect();
    let (cos, sin) =
        multi_axis_rotary_pos_embed::<B>(&ids, &axes, c["theta"].as_f64().unwrap_or(10000.0), dev);
    assert_close(
        cos,
        &expected(&fx, "rope_flux.cos"),
        None,
        common::F32,
        "rope_flux.cos",
    );
    assert_close(
        sin,
        &expected(&fx, "rope_flux.sin"),
        None,
        common::F32,
        "rope_flux.sin",
    );
    for (case, pairing) in [
        ("rope_apply_flux", RotaryPairing::Interleaved),
        ("rope_apply_unbind2", RotaryPairing::Halves),
    ] {
        let x = fx.tensor::<B, 4>(&format!("{case}.x"), dev, dtype);
        let cos = fx.tensor::<B, 2>(&format!("{case}.cos"), dev, DType::F32);
        let sin = fx.tensor::<B, 2>(&format!("{case}.sin"), dev, DType::F32);
        let y = apply_rotary_emb(x, cos, sin, pairing);
        assert_eq!(y.dtype(), dtype);
        assert_close(
            y,
            &expected(&fx, &format!("{case}.output")),
            None,
            tol,
            case,
        );
    }
}
parity_tests!(rope, check_rope, bf16 = BF16);

/// A quantized `Linear` (packed slot filled, dense weight never loaded) against the same layer
/// with the dequantized weight loaded dense: the host kernel's tiles (64 output rows; 150 rows
/// make two full tiles and a partial one), 3-D inputs, a transposed (non-contiguous) input and
/// a bf16 input. Both sides multiply the same f32 values; the tolerance is f32 summation order
/// over 96 products on values of O(10) (a bound, not a measured error: the test passes under it).
#[test]
fn quantized_linear_equals_its_dequantized_dense_layer() {
    use burn::module::Param;
    use diffusers_core::backend::Cpu;
    use diffusers_nn::footprint::memory_footprint;
    use diffusers_nn::linear::{LinearConfig, QuantizedWeight};
    use diffusers_quantization::{QuantMethod, QuantizedTensor};

    let dev = Default::default();
    let (inp, out) = (96, 150);
    let w: Vec<f32> = (0..inp * out)
        .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.3)
        .collect();
    let bias: Vec<f32> = (0..out).map(|i| i as f32 * 0.01).collect();
    for method in ["nf4", "fp4", "int8", "fp8"] {
        let q = QuantizedTensor::quantize(
            &w,
            out,
            inp,
            QuantMethod::parse(method, method == "fp4").expect("method"),
        )
        .expect("quantize");
        let dq = q.to_f32().expect("dequantize");
        let mut packed = LinearConfig::new(inp, out).init::<Cpu>(&dev);
        packed.packed = QuantizedWeight::new(q.clone());
        packed.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias.clone(), [out]),
            &dev,
        )));
        let mut dense = LinearConfig::new(inp, out).init::<Cpu>(&dev);
        dense.weight = Param::from_tensor(Tensor::from_data(TensorData::new(dq, [out, inp]), &dev));
        dense.bias = packed.bias.clone();
        assert!(packed.is_quantized() && !dense.is_quantized());
        let fp = memory_footprint(&packed);
        assert_eq!(fp.packed_bytes, q.nbytes(), "{method}");
        assert_eq!(fp.dense_bytes, 4 * out, "{method}: only the bias is dense");

        let x = Tensor::<Cpu, 3>::from_data(
            TensorData::new(
                (0..2 * 5 * inp)
                    .map(|i| ((i % 13) as f32 - 6.0) * 0.25)
                    .collect::<Vec<_>>(),
                [2, 5, inp],
            ),
            &dev,
        );
        let check = |a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>, tol: f32, what: &str| {
            let (a, b) = (
                a.into_data().convert::<f32>(),
                b.into_data().convert::<f32>(),
            );
            let (a, b): (Vec<f32>, Vec<f32>) = (a.into_vec().expect("a"), b.into_vec().expect("b"));
            let err = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(err <= tol, "{method} {what}: {err}");
        };
        check(
            packed.forward(x.clone()),
            dense.forward(x.clone()),
            1e-5,
            "f32",
        );
        // A transposed view: not contiguous.
        let xt = x.clone().swap_dims(0, 1).swap_dims(0, 1);
        let xt2: Tensor<Cpu, 3> = Tensor::<Cpu, 3>::from_data(x.clone().into_data(), &dev)
            .reshape([5, 2, inp])
            .swap_dims(0, 1);
        check(
            packed.forward(xt2.clone()),
            dense.forward(xt2),
            1e-5,
            "strided",
        );
        check(packed.forward(xt), dense.forward(x.clone()), 1e-5, "view");
        // bf16 in, bf16 out (computed in f32 from the packed weight, rounded once).
        let xb = x.clone().cast(DType::BF16);
        let yb = packed.forward(xb.clone());
        assert_eq!(yb.dtype(), DType::BF16);
        check(yb, dense.forward(xb.cast(DType::F32)), 4e-2, "bf16");
    }
}
