//! Offloading (issue 17): every mode gives the image of no offloading, bit for bit on the CPU
//! (the same tensors are read from the same files), components hold no weights between their
//! turns, and each stage's memory is recorded.

use burn::tensor::Tensor;
use diffusers_core::backend::Cpu;
use diffusers_core::testing::fixtures_dir;
use diffusers_pipelines::generate::{GenerateRequest, Generated};
use diffusers_pipelines::offload::OffloadMode;
use diffusers_pipelines::pipeline_hunyuan_video::PromptTemplate;
use diffusers_pipelines::{DiffusionPipeline, PipelineOptions};

fn repo(name: &str) -> String {
    fixtures_dir()
        .join("pipelines")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn request(repo: &str) -> GenerateRequest<Cpu> {
    let base = GenerateRequest::new("a photo of the cat");
    match repo {
        "tiny_flux" => GenerateRequest {
            height: Some(16),
            width: Some(24),
            num_inference_steps: Some(2),
            max_sequence_length: Some(8),
            negative_prompt: Some("a dog".into()),
            true_cfg_scale: Some(2.0),
            seed: Some(3),
            ..base
        },
        "tiny_sd" => GenerateRequest {
            height: Some(16),
            width: Some(24),
            num_inference_steps: Some(2),
            negative_prompt: Some("a dog".into()),
            seed: Some(3),
            ..base
        },
        "tiny_wan" => GenerateRequest {
            height: Some(32),
            width: Some(32),
            num_frames: Some(5),
            num_inference_steps: Some(2),
            guidance_scale: Some(5.0),
            max_sequence_length: Some(16),
            negative_prompt: Some("a dog".into()),
            seed: Some(3),
            ..base
        },
        _ => GenerateRequest {
            height: Some(32),
            width: Some(32),
            num_frames: Some(5),
            num_inference_steps: Some(2),
            max_sequence_length: Some(8),
            prompt_template: Some(
                PromptTemplate::from_file(
                    fixtures_dir().join("pipelines/hunyuan_video_template.json"),
                )
                .expect("template"),
            ),
            seed: Some(3),
            ..base
        },
    }
}

fn values(out: Generated<Cpu>) -> Vec<f32> {
    let t: Tensor<Cpu, 1> = match out {
        Generated::Images(x) => x.flatten(0, 3),
        Generated::Video(x) => x.flatten(0, 4),
        Generated::Latents { values, .. } => values,
    };
    t.into_data().to_vec::<f32>().expect("f32")
}

fn load(repo_name: &str, offload: Option<OffloadMode>) -> DiffusionPipeline<Cpu> {
    DiffusionPipeline::<Cpu>::from_pretrained(
        &repo(repo_name),
        &PipelineOptions {
            offload,
            ..Default::default()
        },
        &Default::default(),
    )
    .expect("from_pretrained")
}

fn dense_bytes(pipe: &DiffusionPipeline<Cpu>) -> usize {
    pipe.memory_footprint()
        .iter()
        .map(|(_, f)| f.dense_bytes)
        .sum()
}

#[test]
fn every_offload_mode_gives_the_image_of_no_offload() {
    let group = |n| OffloadMode::Group {
        blocks_per_group: n,
    };
    let cases: &[(&str, &[OffloadMode])] = &[
        (
            "tiny_flux",
            &[
                OffloadMode::Model,
                OffloadMode::Sequential,
                group(1),
                group(2),
            ],
        ),
        ("tiny_sd", &[OffloadMode::Model, OffloadMode::Sequential]),
        ("tiny_wan", &[OffloadMode::Sequential, group(2)]),
        ("tiny_hunyuan_video", &[OffloadMode::Model, group(1)]),
    ];
    for (name, modes) in cases {
        let mut pipe = load(name, None);
        let expected = values(pipe.generate(request(name), &mut |_| {}).expect("generate"));
        assert!(dense_bytes(&pipe) > 0);
        for &mode in *modes {
            // Loaded for offloading: no weight is read before its component runs.
            let mut pipe = load(name, Some(mode));
            assert_eq!(dense_bytes(&pipe), 0, "{name} {mode}: weights read at load");
            let got = values(pipe.generate(request(name), &mut |_| {}).expect("generate"));
            assert!(got == expected, "{name} {mode}: the output differs");
            // Every component is released after its stage.
            assert_eq!(
                dense_bytes(&pipe),
                0,
                "{name} {mode}: weights kept after the run"
            );
            let stages: Vec<&str> = pipe.memory_stats().iter().map(|s| s.stage).collect();
            assert_eq!(
                stages,
                ["encode_prompt", "denoise", "decode"],
                "{name} {mode}"
            );
            assert!(
                pipe.memory_stats()
                    .iter()
                    .all(|s| s.peak_host_bytes.is_some() && s.device.is_none()),
                "{name} {mode}: host peaks are measured, no device on the CPU"
            );
            // A second run reads the weights again and gives the same output.
            let again = values(pipe.generate(request(name), &mut |_| {}).expect("generate"));
            assert!(again == expected, "{name} {mode}: the second run differs");
        }
        // Switched on after a normal load: the loaded weights are released at once.
        pipe.enable_offload(Some(OffloadMode::Model))
            .expect("enable_offload");
        assert_eq!(dense_bytes(&pipe), 0, "{name}: not released");
        let got = values(pipe.generate(request(name), &mut |_| {}).expect("generate"));
        assert!(
            got == expected,
            "{name}: enable_offload after loading differs"
        );
    }
}

#[test]
fn image_to_image_offloads_the_vae_between_encoding_and_decoding() {
    for name in ["tiny_flux", "tiny_sd"] {
        let image = || {
            let v: Vec<f32> = (0..3 * 16 * 24).map(|i| (i % 7) as f32 / 7.0).collect();
            Tensor::<Cpu, 1>::from_floats(v.as_slice(), &Default::default()).reshape([1, 3, 16, 24])
        };
        let req = || GenerateRequest {
            image: Some(image()),
            strength: Some(0.6),
            num_inference_steps: Some(3),
            ..request(name)
        };
        let expected = values(
            load(name, None)
                .generate(req(), &mut |_| {})
                .expect("generate"),
        );
        let mut pipe = load(name, Some(OffloadMode::Model));
        let got = values(pipe.generate(req(), &mut |_| {}).expect("generate"));
        assert!(got == expected, "{name}: img2img with offload differs");
        let stages: Vec<&str> = pipe.memory_stats().iter().map(|s| s.stage).collect();
        assert_eq!(
            stages,
            ["encode_prompt", "encode_image", "denoise", "decode"],
            "{name}"
        );
        assert_eq!(dense_bytes(&pipe), 0, "{name}: weights kept after the run");
    }
}

#[test]
fn bad_offload_options_are_one_line_errors() {
    for (mode, expected) in [
        ("group:0", "at least 1"),
        ("group:x", "at least 1"),
        ("disk", "unknown offload mode `disk`"),
    ] {
        let err = mode.parse::<OffloadMode>().expect_err(mode).to_string();
        assert!(
            err.contains(expected) && !err.contains('\n'),
            "{mode}: {err}"
        );
    }
    assert_eq!(
        "group".parse::<OffloadMode>().ok(),
        Some(OffloadMode::Group {
            blocks_per_group: 1
        })
    );
    // The UNet has no transformer blocks to group.
    let err = DiffusionPipeline::<Cpu>::from_pretrained(
        &repo("tiny_sd"),
        &PipelineOptions {
            offload: Some(OffloadMode::Group {
                blocks_per_group: 2,
            }),
            ..Default::default()
        },
        &Default::default(),
    )
    .expect_err("group offload on a UNet pipeline")
    .to_string();
    assert!(
        err.contains("no transformer blocks to offload in groups") && !err.contains('\n'),
        "{err}"
    );
    let mut pipe = load("tiny_sd", None);
    assert!(pipe.enable_group_offload(0).is_err());
}
