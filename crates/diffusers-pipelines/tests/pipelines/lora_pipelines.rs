//! LoRA adapters on the tiny Flux, SD 1.x and SDXL pipelines against diffusers 0.42.1 with PEFT
//! (`fixtures/lora/*`, oracle stage `lora`): every file layout loaded with `load_lora_weights`
//! gives diffusers' image; two adapters mixed with `set_adapters`, per-component weights,
//! `fuse_lora` then `unfuse_lora` (the weights come back bit-equal, where diffusers keeps a
//! residue of up to 6e-8), disabling, enabling and deleting adapters; and the errors: DoRA files,
//! a LoRA for another model family, layers the model lacks (with and without partial loading), a
//! truncated file, unknown adapter names, fusing into quantized weights.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::Backend;
use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, fixtures_dir};
use diffusers_pipelines::Error;
use diffusers_pipelines::lora_pipeline::{AdapterWeight, LoraLoader, LoraOptions};
use diffusers_pipelines::pipeline_flux::{FluxCall, FluxPipeline, OutputType};
use diffusers_pipelines::pipeline_stable_diffusion::{
    StableDiffusionCall, StableDiffusionPipeline,
};
use diffusers_pipelines::pipeline_stable_diffusion_xl::{
    StableDiffusionXLCall, StableDiffusionXLPipeline,
};

/// Images in `[0, 1]` after 3 steps of the tiny pipelines: diffusers' own f32 results, as every
/// pipeline test. The LoRAs move the images by 0.08..0.55 (`max_abs_change_vs_base` in the
/// fixture JSON), so this tolerance cannot pass with an adapter missing or misapplied.
const IMAGE: f32 = 1e-4;

fn fixture() -> Fixture {
    Fixture::open("lora/lora")
}

fn lora_file(name: &str) -> String {
    fixtures_dir()
        .join(format!("lora/{name}.safetensors"))
        .to_string_lossy()
        .into_owned()
}

fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flux() -> FluxPipeline<Cpu> {
    FluxPipeline::from_folder(
        fixtures_dir().join("pipelines/tiny_flux"),
        DType::F32,
        &Default::default(),
    )
    .expect("load flux")
}

fn flux_image(pipe: &mut FluxPipeline<Cpu>, fx: &Fixture) -> Vec<f32> {
    let call = FluxCall {
        height: Some(16),
        width: Some(24),
        num_inference_steps: 3,
        guidance_scale: 3.5,
        max_sequence_length: 8,
        latents: Some(fx.tensor("flux_base.latents", &Default::default(), DType::F32)),
        output_type: OutputType::Array,
        ..FluxCall::new("a photo of the cat")
    };
    values(pipe.call(call).expect("flux call").array().expect("images"))
}

fn sd() -> StableDiffusionPipeline<Cpu> {
    StableDiffusionPipeline::from_folder(
        fixtures_dir().join("pipelines/tiny_sd"),
        DType::F32,
        &Default::default(),
    )
    .expect("load sd")
}

fn sd_image(pipe: &mut StableDiffusionPipeline<Cpu>, fx: &Fixture) -> Vec<f32> {
    let call = StableDiffusionCall {
        negative_prompt: Some(vec!["the red dog".into()]),
        height: Some(16),
        width: Some(24),
        num_inference_steps: 3,
        guidance_scale: 7.5,
        latents: Some(fx.tensor("sd_base.latents", &Default::default(), DType::F32)),
        ..StableDiffusionCall::new("a photo of the cat")
    };
    values(pipe.call(call).expect("sd call").array().expect("images"))
}

fn sdxl() -> StableDiffusionXLPipeline<Cpu> {
    StableDiffusionXLPipeline::from_folder(
        fixtures_dir().join("pipelines/tiny_sdxl"),
        DType::F32,
        &Default::default(),
    )
    .expect("load sdxl")
}

fn sdxl_image(pipe: &mut StableDiffusionXLPipeline<Cpu>, fx: &Fixture) -> Vec<f32> {
    let call = StableDiffusionXLCall {
        negative_prompt: Some(vec!["the red dog".into()]),
        height: Some(16),
        width: Some(24),
        num_inference_steps: 3,
        guidance_scale: 7.5,
        latents: Some(fx.tensor("sdxl_base.latents", &Default::default(), DType::F32)),
        ..StableDiffusionXLCall::new("a photo of the cat")
    };
    values(pipe.call(call).expect("sdxl call").array().expect("images"))
}

/// The number of layers diffusers put an adapter on (its PEFT scalings).
fn layer_count(fx: &Fixture, case: &str) -> usize {
    fx.case(case)["scalings"]
        .as_object()
        .map_or(0, serde_json::Map::len)
}

/// The same, in one component.
fn component_layer_count(fx: &Fixture, case: &str, component: &str) -> usize {
    fx.case(case)["scalings"].as_object().map_or(0, |m| {
        m.keys()
            .filter(|k| k.starts_with(&format!("{component}.")))
            .count()
    })
}

#[test]
fn every_layout_gives_diffusers_image() {
    let fx = fixture();
    let flux_base = flux_image(&mut flux(), &fx);
    assert!(max_diff(&flux_base, &fx.values("flux_base.image")) <= IMAGE);
    for case in [
        "flux_peft",
        "flux_peft_b",
        "flux_kohya",
        "flux_bfl",
        "flux_xlabs",
    ] {
        let mut pipe = flux();
        let report = pipe
            .load_lora_weights(&lora_file(case), &LoraOptions::named(case))
            .expect(case);
        assert_eq!(report.total_layers(), layer_count(&fx, case), "{case}");
        let img = flux_image(&mut pipe, &fx);
        let err = max_diff(&img, &fx.values(&format!("{case}.image")));
        assert!(err <= IMAGE, "{case}: {err} from diffusers");
        assert!(max_diff(&img, &flux_base) > 1e-2, "{case}: no effect");
    }
    for case in ["sd_peft", "sd_kohya", "sd_kohya_conv"] {
        let mut pipe = sd();
        let report = pipe
            .load_lora_weights(&lora_file(case), &LoraOptions::named(case))
            .expect(case);
        assert_eq!(report.total_layers(), layer_count(&fx, case), "{case}");
        let err = max_diff(
            &sd_image(&mut pipe, &fx),
            &fx.values(&format!("{case}.image")),
        );
        assert!(err <= IMAGE, "{case}: {err} from diffusers");
    }
    let mut pipe = sdxl();
    let report = pipe
        .load_lora_weights(&lora_file("sdxl_kohya"), &LoraOptions::named("sdxl_kohya"))
        .expect("sdxl_kohya");
    assert_eq!(report.total_layers(), layer_count(&fx, "sdxl_kohya"));
    let err = max_diff(&sdxl_image(&mut pipe, &fx), &fx.values("sdxl_kohya.image"));
    assert!(err <= IMAGE, "sdxl_kohya: {err} from diffusers");
}

#[test]
fn adapters_mix_with_weights() {
    let fx = fixture();
    let mut pipe = flux();
    pipe.load_lora_weights(&lora_file("flux_peft"), &LoraOptions::named("a"))
        .expect("a");
    pipe.load_lora_weights(&lora_file("flux_kohya"), &LoraOptions::named("b"))
        .expect("b");
    pipe.set_adapters(&[
        ("a", AdapterWeight::All(0.7)),
        ("b", AdapterWeight::All(0.5)),
    ])
    .expect("set_adapters");
    let err = max_diff(&flux_image(&mut pipe, &fx), &fx.values("flux_two.image"));
    assert!(err <= IMAGE, "two adapters: {err}");
    let listed = pipe.get_list_adapters();
    assert_eq!(listed["transformer"], ["a", "b"]);

    let mut pipe = sd();
    pipe.load_lora_weights(&lora_file("sd_peft"), &LoraOptions::named("sd_peft"))
        .expect("sd_peft");
    let weights = [("unet".to_string(), 0.6), ("text_encoder".to_string(), 1.2)];
    pipe.set_adapters(&[("sd_peft", AdapterWeight::PerComponent(weights.into()))])
        .expect("set_adapters");
    let err = max_diff(
        &sd_image(&mut pipe, &fx),
        &fx.values("sd_component_weights.image"),
    );
    assert!(err <= IMAGE, "per-component weights: {err}");
}

/// Every float parameter's values, by module path.
fn parameters<B: Backend, M: Module<B>>(m: &M) -> Vec<(String, Vec<f32>)> {
    struct Collect(Vec<String>, Vec<(String, Vec<f32>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p
                .val()
                .into_data()
                .convert::<f32>()
                .into_vec()
                .expect("f32");
            self.1.push((self.0.join("."), v));
        }
    }
    let mut c = Collect(Vec::new(), Vec::new());
    m.visit(&mut c);
    c.1
}

#[test]
fn fuse_then_unfuse_restores_the_weights_bit_equal() {
    let fx = fixture();
    let mut pipe = flux();
    let base = flux_image(&mut pipe, &fx);
    let before = parameters(&pipe.transformer);
    pipe.load_lora_weights(&lora_file("flux_peft"), &LoraOptions::named("flux_peft"))
        .expect("load");
    // Flux fuses the transformer by default; the text encoder's adapter stays unfused.
    let fused = pipe.fuse_lora(0.8).expect("fuse");
    assert_eq!(
        fused,
        component_layer_count(&fx, "flux_peft", "transformer"),
        "the transformer layers of flux_peft"
    );
    let err = max_diff(&flux_image(&mut pipe, &fx), &fx.values("flux_fused.image"));
    assert!(err <= IMAGE, "fused: {err} from diffusers");
    let changed = parameters(&pipe.transformer)
        .iter()
        .zip(&before)
        .filter(|(a, b)| a.1 != b.1)
        .count();
    assert_eq!(changed, fused, "fusing changes exactly the fused weights");
    assert!(
        pipe.set_adapters(&[("flux_peft", AdapterWeight::All(0.5))])
            .is_err(),
        "no adapter changes while fused"
    );

    let restored = pipe.unfuse_lora().expect("unfuse");
    assert_eq!(restored, fused);
    let after = parameters(&pipe.transformer);
    for ((path, a), (_, b)) in after.iter().zip(&before) {
        assert!(a == b, "{path} not restored bit for bit");
    }
    // Unfused again: the adapter applies as loaded (weight 1).
    let err = max_diff(&flux_image(&mut pipe, &fx), &fx.values("flux_peft.image"));
    assert!(err <= IMAGE, "unfused: {err}");
    pipe.unload_lora_weights().expect("unload");
    assert_eq!(
        flux_image(&mut pipe, &fx),
        base,
        "unloaded: the base image exactly"
    );
    let err = max_diff(&base, &fx.values("flux_fused.unloaded_image"));
    assert!(err <= IMAGE, "diffusers' unloaded image: {err}");
}

#[test]
fn disable_enable_and_delete() {
    let fx = fixture();
    let mut pipe = flux();
    let base = flux_image(&mut pipe, &fx);
    pipe.load_lora_weights(&lora_file("flux_peft"), &LoraOptions::named("p"))
        .expect("load");
    let with = flux_image(&mut pipe, &fx);
    pipe.disable_lora().expect("disable");
    assert_eq!(
        flux_image(&mut pipe, &fx),
        base,
        "disabled: the base image exactly"
    );
    pipe.enable_lora().expect("enable");
    assert_eq!(flux_image(&mut pipe, &fx), with, "enabled again");
    pipe.delete_adapters(&["p"]).expect("delete");
    assert_eq!(flux_image(&mut pipe, &fx), base, "deleted");
    assert!(pipe.get_list_adapters().is_empty());
    assert!(matches!(pipe.delete_adapters(&["p"]), Err(Error::Lora(_))));
}

fn lora_err(result: Result<impl std::fmt::Debug, Error>, want: &str, why: &str) {
    match result {
        Err(Error::Lora(msg)) => assert!(msg.contains(want), "{why}: `{msg}` lacks `{want}`"),
        other => panic!("{why}: {other:?}"),
    }
}

#[test]
fn bad_lora_files_and_calls_are_errors() {
    let fx = fixture();
    let mut pipe = flux();
    let base = flux_image(&mut pipe, &fx);
    lora_err(
        pipe.load_lora_weights(&lora_file("flux_dora"), &LoraOptions::default()),
        "DoRA",
        "a DoRA file",
    );
    lora_err(
        pipe.load_lora_weights(&lora_file("sdxl_kohya"), &LoraOptions::default()),
        "match no layer",
        "an SDXL LoRA on Flux",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(lora_file("flux_peft")).expect("read");
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    assert!(
        pipe.load_lora_weights(&truncated.to_string_lossy(), &LoraOptions::default())
            .is_err(),
        "a truncated file"
    );
    lora_err(
        pipe.set_adapters(&[("nope", AdapterWeight::All(1.0))]),
        "nope",
        "an unknown adapter",
    );

    // A layer the tiny transformer lacks (block 7): an error naming it, nothing loaded; with
    // partial loading, the rest loads and the layer is reported.
    let mut tensors = safetensors_tensors(&bytes);
    let moved: Tensors = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("transformer.transformer_blocks.0.attn.to_q."))
        .map(|(k, v)| {
            let k = k.replace("transformer_blocks.0.", "transformer_blocks.7.");
            (k, v.clone())
        })
        .collect();
    tensors.extend(moved);
    let extra = dir.path().join("extra.safetensors");
    // The header's adapter metadata (lora_alpha) goes along.
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    write_safetensors(&extra, &tensors, header.metadata().clone());
    let extra = extra.to_string_lossy().into_owned();
    lora_err(
        pipe.load_lora_weights(&extra, &LoraOptions::named("x")),
        "transformer_blocks.7.attn.to_q",
        "a layer the model lacks",
    );
    assert!(pipe.get_list_adapters().is_empty(), "nothing of it loaded");
    assert_eq!(flux_image(&mut pipe, &fx), base);
    let report = pipe
        .load_lora_weights(
            &extra,
            &LoraOptions {
                allow_partial: true,
                ..LoraOptions::named("x")
            },
        )
        .expect("partial");
    assert_eq!(
        report.skipped,
        ["transformer.transformer_blocks.7.attn.to_q"]
    );
    let err = max_diff(&flux_image(&mut pipe, &fx), &fx.values("flux_peft.image"));
    assert!(err <= IMAGE, "partial load: {err}");
    lora_err(
        pipe.load_lora_weights(&lora_file("flux_peft"), &LoraOptions::named("x")),
        "already loaded",
        "a name taken",
    );

    // A pair whose shapes do not fit its layer (lora_A of to_q one input wider): an error naming
    // the layer, nothing loaded.
    let mut pipe = flux();
    let mut tensors = safetensors_tensors(&bytes);
    for (k, (shape, data)) in tensors.iter_mut() {
        if k == "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" {
            let [r, i] = [shape[0], shape[1]];
            *shape = vec![r, i + 1];
            *data = vec![0.01; r * (i + 1)];
        }
    }
    let wide = dir.path().join("wide.safetensors");
    write_safetensors(&wide, &tensors, header.metadata().clone());
    lora_err(
        pipe.load_lora_weights(&wide.to_string_lossy(), &LoraOptions::named("w")),
        "transformer_blocks.0.attn.to_q",
        "a shape that does not fit",
    );
    assert!(pipe.get_list_adapters().is_empty());

    // A Flux LoRA read for Stable Diffusion: not a layout the SD loader knows.
    let mut sd = sd();
    assert!(
        sd.load_lora_weights(&lora_file("flux_peft"), &LoraOptions::default())
            .is_err(),
        "a Flux LoRA on SD"
    );

    // A folder holding several files needs the weight_name; with it, the file loads.
    let folder = fixtures_dir().join("lora");
    let folder = folder.to_string_lossy();
    lora_err(
        pipe.load_lora_weights(&folder, &LoraOptions::default()),
        "weight_name",
        "a folder of several LoRA files",
    );
    let report = pipe
        .load_lora_weights(
            &folder,
            &LoraOptions {
                weight_name: Some("flux_peft.safetensors".into()),
                ..LoraOptions::default()
            },
        )
        .expect("weight_name in a folder");
    assert_eq!(report.adapter, "default_0");
    let err = max_diff(&flux_image(&mut pipe, &fx), &fx.values("flux_peft.image"));
    assert!(err <= IMAGE, "from a folder: {err}");
}

#[test]
fn adapters_work_unfused_on_a_quantized_transformer() {
    use diffusers_pipelines::quantization::{PipelineQuantizationConfig, QuantMethod};
    use diffusers_pipelines::{DiffusionPipeline, PipelineOptions};
    let fx = fixture();
    let opts = PipelineOptions {
        quantization: Some(PipelineQuantizationConfig::new(
            QuantMethod::parse("nf4", false).expect("nf4"),
        )),
        ..Default::default()
    };
    let mut pipe = DiffusionPipeline::<Cpu>::from_pretrained(
        &fixtures_dir().join("pipelines/tiny_flux").to_string_lossy(),
        &opts,
        &Default::default(),
    )
    .expect("quantized pipeline");
    let report = pipe
        .load_lora_weights(&lora_file("flux_peft"), &LoraOptions::named("q"))
        .expect("load on quantized");
    assert_eq!(
        report.layers["transformer"],
        component_layer_count(&fixture(), "flux_peft", "transformer")
    );
    lora_err(pipe.fuse_lora(1.0), "quantized", "fusing into NF4 weights");
    let DiffusionPipeline::Flux(p) = &mut pipe else {
        panic!("not flux")
    };
    let image = flux_image(p, &fx);
    // diffusers + bitsandbytes 0.50.2 (NF4 on CPU, f32 compute) + PEFT's LoRA on Linear4bit
    // (`fixtures/lora/lora_quantized.*`).
    let q = Fixture::open("lora/lora_quantized");
    let err = max_diff(&image, &q.values("flux_nf4.image"));
    assert!(err <= IMAGE, "NF4 + LoRA: {err} from diffusers");
    assert!(
        max_diff(&image, &q.values("flux_nf4.base_image")) > 1e-2,
        "the adapter shows on the quantized base"
    );
}

/// A file's f32 tensors: name, shape and values.
pub(crate) type Tensors = Vec<(String, (Vec<usize>, Vec<f32>))>;

/// A safetensors file's f32 tensors.
fn safetensors_tensors(bytes: &[u8]) -> Tensors {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let data: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (k, (v.shape().to_vec(), data))
        })
        .collect()
}

/// Writes `tensors` as an f32 safetensors file (the stage dumps of `flux_pipeline` too).
pub(crate) fn write_safetensors(
    path: &std::path::Path,
    tensors: &Tensors,
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, (_, data))| data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, (shape, _)), b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .expect("view");
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).expect("write");
}

/// The video pipelines take diffusers/PEFT LoRAs on their transformers
/// (`fixtures/lora/lora_video.*`, oracle stage `lora_video`: r=2, alpha 3 on the attention and
/// feed-forward Linears of the tiny Wan and HunyuanVideo transformers): the frames after
/// `load_lora_weights` equal diffusers' within 1e-4, as many layers as PEFT wrapped.
#[test]
fn video_pipelines_take_adapters() {
    use diffusers_pipelines::pipeline_hunyuan_video::{
        HunyuanVideoCall, HunyuanVideoPipeline, PromptTemplate,
    };
    use diffusers_pipelines::pipeline_wan::{WanCall, WanPipeline};
    let fx = Fixture::open("lora/lora_video");
    let dev = Default::default();
    let latents = |case: &str| -> Tensor<Cpu, 5> {
        let file = fx.case(case)["latents"].as_str().expect("latents file");
        let weights =
            diffusers_core::weights::Weights::open(fixtures_dir().join(file)).expect("latents");
        Tensor::from_data(weights.read("latents").expect("read latents"), &dev)
    };
    let layers = |case: &str| fx.case(case)["layers"].as_u64().expect("layers") as usize;

    let mut wan = WanPipeline::<Cpu>::from_folder(
        fixtures_dir().join("pipelines/tiny_wan"),
        DType::F32,
        &dev,
    )
    .expect("wan");
    let report = wan
        .load_lora_weights(&lora_file("wan_peft"), &LoraOptions::named("wan"))
        .expect("wan lora");
    assert_eq!(report.total_layers(), layers("wan_peft"));
    let frames = wan
        .call(WanCall {
            negative_prompt: Some(vec!["the cat with a hat".into()]),
            height: 32,
            width: 32,
            num_frames: 5,
            num_inference_steps: 3,
            guidance_scale: 5.0,
            max_sequence_length: 16,
            latents: Some(latents("wan_peft")),
            ..WanCall::new("a red dog in the snow")
        })
        .expect("wan call")
        .frames
        .expect("frames");
    let err = max_diff(&values(frames), &fx.values("wan_peft.frames"));
    assert!(err <= IMAGE, "wan + LoRA: {err} from diffusers");

    let mut hv = HunyuanVideoPipeline::<Cpu>::from_folder(
        fixtures_dir().join("pipelines/tiny_hunyuan_video"),
        DType::F32,
        &dev,
    )
    .expect("hunyuan video");
    let report = hv
        .load_lora_weights(&lora_file("hunyuan_video_peft"), &LoraOptions::named("hv"))
        .expect("hunyuan video lora");
    assert_eq!(report.total_layers(), layers("hunyuan_video_peft"));
    let template =
        PromptTemplate::from_file(fixtures_dir().join("pipelines/hunyuan_video_template.json"))
            .expect("template");
    let frames = hv
        .call(HunyuanVideoCall {
            height: 32,
            width: 32,
            num_frames: 5,
            num_inference_steps: 3,
            guidance_scale: 6.0,
            max_sequence_length: 8,
            prompt_template: Some(template),
            latents: Some(latents("hunyuan_video_peft")),
            ..HunyuanVideoCall::new("a red dog in the snow")
        })
        .expect("hunyuan video call")
        .frames
        .expect("frames");
    let err = max_diff(&values(frames), &fx.values("hunyuan_video_peft.frames"));
    assert!(err <= IMAGE, "hunyuan video + LoRA: {err} from diffusers");
}
