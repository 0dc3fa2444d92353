//! `HunyuanVideoTransformer3DModel` against diffusers (`fixtures/transformers/hunyuan_video*`):
//! one denoiser call of a tiny HunyuanVideo text-to-video model (patch 1x2x2, guidance
//! embedding, batch 2 with the second text row padded after 4 of 7 tokens) and of one without
//! guidance, with a 2x1x1 patch and other output channels; one block of each kind.

use burn::prelude::Backend;
use burn::tensor::DType;
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_transformers::Error;
use diffusers_transformers::transformer_hunyuan_video::{
    HunyuanVideoInputs, HunyuanVideoTransformer3DModel, HunyuanVideoTransformer3DModelConfig,
    checkpoint_key,
};

/// Measured max abs error 3.7e-6 and 4.2e-7 (f32 summation order) on outputs of magnitude ~2.5.
const F32: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};

/// bf16 weights and activations against diffusers' f32 call: measured max abs 1.7e-1 and
/// 1.4e-2 on outputs of magnitude ~2.5, as diffusers' own bf16 call (1.7e-1 and 9.5e-3 off its
/// f32 call; the first case's guidance 6000 is 5984 in bf16, the pipeline casting it to the
/// transformer's dtype). Against diffusers' bf16 call: 1.6e-2 and 9.8e-3 (bf16 rounding).
const BF16: Tol = Tol {
    atol: 2.5e-1,
    rtol: 5e-2,
};

/// (case, whether it has a guidance input).
const CASES: [(&str, bool); 2] = [
    ("hunyuan_video_t2v", true),
    ("hunyuan_video_pt2_no_guidance", false),
];

/// The pipeline's dtypes: the timestep stays f32 (the latents' dtype), the rest in `dtype`.
fn inputs<B: Backend>(
    fx: &Fixture,
    case: &str,
    guidance: bool,
    dtype: DType,
    dev: &B::Device,
) -> HunyuanVideoInputs<B> {
    let t = |name: &str| format!("{case}.{name}");
    HunyuanVideoInputs {
        hidden_states: fx.tensor(&t("hidden_states"), dev, dtype),
        timestep: fx.tensor(&t("timestep"), dev, DType::F32),
        encoder_hidden_states: fx.tensor(&t("encoder_hidden_states"), dev, dtype),
        encoder_attention_mask: fx.tensor(&t("encoder_attention_mask"), dev, dtype),
        pooled_projections: fx.tensor(&t("pooled_projections"), dev, dtype),
        guidance: guidance.then(|| fx.tensor(&t("guidance"), dev, dtype)),
    }
}

fn load<B: Backend>(
    case: &str,
    dtype: DType,
    dev: &B::Device,
) -> HunyuanVideoTransformer3DModel<B> {
    let weights_dtype = (dtype != DType::F32).then_some(dtype);
    HunyuanVideoTransformer3DModel::<B>::from_folder(
        fixtures_dir().join("transformers").join(case),
        weights_dtype,
        dev,
    )
    .expect("load")
    .0
}

/// One call of both models in `dtype` on any backend, against diffusers' f32 output.
fn check_calls<B: Backend>(dev: &B::Device, dtype: DType, tol: Tol) {
    let fx = Fixture::open("transformers/hunyuan_video");
    for (case, guidance) in CASES {
        let m = load::<B>(case, dtype, dev);
        let out = m
            .forward(inputs(&fx, case, guidance, dtype, dev))
            .expect("forward");
        assert_eq!(out.dtype(), dtype);
        let shape = fx
            .tensor::<B, 5>(&format!("{case}.output"), dev, DType::F32)
            .dims();
        // f32: diffusers' f32 call; bf16: diffusers' f32 call and its own bf16 call.
        let references: &[&str] = if dtype == DType::F32 {
            &["output"]
        } else {
            &["output", "output_bf16"]
        };
        for r in references {
            let expected = fx.values(&format!("{case}.{r}"));
            let what = format!("{case} against diffusers' {r}");
            assert_close(out.clone(), &expected, Some(&shape), tol, &what);
        }
    }
}

#[test]
fn hunyuan_video_one_call_matches_diffusers() {
    check_calls::<Cpu>(&Default::default(), DType::F32, F32);
}

#[test]
fn hunyuan_video_bf16_call_runs_close_to_f32() {
    check_calls::<Cpu>(&Default::default(), DType::BF16, BF16);
}

/// CUDA f32 runs with TF32 matmuls in burn 0.21 (see `testing::TF32`).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
fn hunyuan_video_cuda_f32() {
    check_calls::<diffusers_core::backend::Cuda>(
        &Default::default(),
        DType::F32,
        diffusers_core::testing::TF32,
    );
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
fn hunyuan_video_cuda_bf16() {
    check_calls::<diffusers_core::backend::Cuda>(&Default::default(), DType::BF16, BF16);
}

#[test]
fn hunyuan_video_invalid_inputs_are_errors() {
    let fx = Fixture::open("transformers/hunyuan_video");
    let dev = Default::default();
    let m = load::<Cpu>("hunyuan_video_t2v", DType::F32, &dev);
    let good = || inputs::<Cpu>(&fx, "hunyuan_video_t2v", true, DType::F32, &dev);
    type Edit = fn(&mut HunyuanVideoInputs<Cpu>);
    let cases: [(&str, Edit); 12] = [
        ("odd height (patch 2)", |i| {
            i.hidden_states = i.hidden_states.clone().narrow(3, 0, 3)
        }),
        ("wrong channels", |i| {
            i.hidden_states = i.hidden_states.clone().narrow(1, 0, 3)
        }),
        ("wrong text width", |i| {
            i.encoder_hidden_states = i.encoder_hidden_states.clone().narrow(2, 0, 15)
        }),
        ("text batch differs", |i| {
            i.encoder_hidden_states = i.encoder_hidden_states.clone().narrow(0, 0, 1)
        }),
        ("mask shorter than the text", |i| {
            i.encoder_attention_mask = i.encoder_attention_mask.clone().narrow(1, 0, 6)
        }),
        ("mask batch differs", |i| {
            i.encoder_attention_mask = i.encoder_attention_mask.clone().narrow(0, 0, 1)
        }),
        ("mask not 0/1", |i| {
            i.encoder_attention_mask = i.encoder_attention_mask.clone() * 0.5
        }),
        ("mask row without tokens", |i| {
            i.encoder_attention_mask = i.encoder_attention_mask.clone() * 0.0
        }),
        ("wrong pooled width", |i| {
            i.pooled_projections = i.pooled_projections.clone().narrow(1, 0, 7)
        }),
        ("timestep batch differs", |i| {
            i.timestep = i.timestep.clone().narrow(0, 0, 1)
        }),
        ("guidance missing", |i| i.guidance = None),
        ("guidance batch differs", |i| {
            i.guidance = i.guidance.clone().map(|g| g.narrow(0, 0, 1))
        }),
    ];
    for (what, edit) in cases {
        let mut i = good();
        edit(&mut i);
        assert!(
            matches!(m.forward(i), Err(Error::InvalidInput { .. })),
            "{what}"
        );
    }
    // Guidance given to a model without guidance_embeds.
    let m = load::<Cpu>("hunyuan_video_pt2_no_guidance", DType::F32, &dev);
    let mut i = inputs::<Cpu>(
        &fx,
        "hunyuan_video_pt2_no_guidance",
        false,
        DType::F32,
        &dev,
    );
    i.guidance = Some(i.timestep.clone());
    assert!(matches!(m.forward(i), Err(Error::InvalidInput { .. })));
}

#[test]
fn hunyuan_video_invalid_configs_are_errors() {
    let cases: [(&str, &str); 7] = [
        (
            "rope axes not summing to the head dim",
            r#"{"rope_axes_dim": [16, 56, 48]}"#,
        ),
        ("two rope axes", r#"{"rope_axes_dim": [64, 64]}"#),
        (
            "image-to-video",
            r#"{"image_condition_type": "token_replace"}"#,
        ),
        ("zero heads", r#"{"num_attention_heads": 0}"#),
        ("zero patch", r#"{"patch_size": 0}"#),
        ("negative mlp ratio", r#"{"mlp_ratio": -1.0}"#),
        ("layer-norm qk norm", r#"{"qk_norm": "layer_norm"}"#),
    ];
    for (what, json) in cases {
        let c: HunyuanVideoTransformer3DModelConfig = serde_json::from_str(json).expect(what);
        assert!(
            matches!(
                HunyuanVideoTransformer3DModel::<Cpu>::new(&c, &Default::default()),
                Err(Error::InvalidConfig { .. })
            ),
            "{what}"
        );
    }
}

#[test]
fn real_hunyuan_video_config_gives_the_real_parameter_layout() {
    // hunyuanvideo-community/HunyuanVideo's transformer config parses, and a model built from
    // it with one block of each kind has exactly diffusers' parameter names and shapes
    // (recorded by the oracle on the meta device). No parameter is allocated: shapes are read
    // lazily.
    use diffusers_core::weights::module_shapes;
    let dir = fixtures_dir().join("real_configs");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("hunyuan_video_params.json")).expect("params"),
    )
    .expect("json");
    let mut config: HunyuanVideoTransformer3DModelConfig = diffusers_core::config::load_config(
        dir.join("hunyuanvideo").join("transformer_config.json"),
    )
    .expect("real config parses");
    assert_eq!(
        (
            config.num_layers,
            config.num_single_layers,
            config.num_attention_heads
        ),
        (20, 40, 24)
    );
    config.num_layers = 1;
    config.num_single_layers = 1;
    let model =
        HunyuanVideoTransformer3DModel::<Cpu>::new(&config, &Default::default()).expect("build");
    let key_map = |p: &str| checkpoint_key(p);
    let ours = module_shapes(&model, Some(&key_map));
    let theirs: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_value(expected["hunyuanvideo"]["params"].clone()).expect("params map");
    assert_eq!(ours, theirs);
}
