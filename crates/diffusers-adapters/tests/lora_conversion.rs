//! LoRA files in every layout against diffusers' conversion (oracle stage `lora`): for each
//! fixture file, the layers we read equal, key for key, the lora_A/lora_B that PEFT holds in each
//! layer after diffusers' `load_lora_weights`, and our scale equals PEFT's `scaling`; then the
//! files and corruptions that must be errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use diffusers_adapters::Error;
use diffusers_adapters::lora_conversion_utils::{
    LoraFamily, LoraFormat, convert_lora_state_dict, read_lora_file,
};
use diffusers_core::testing::{Fixture, fixtures_dir};
use diffusers_core::weights::SafetensorsFile;

const SDXL: LoraFamily = LoraFamily::StableDiffusionXl {
    layers_per_block: 1,
};

/// (fixture case = file stem, family, expected layout).
const FILES: &[(&str, LoraFamily, LoraFormat)] = &[
    ("flux_peft", LoraFamily::Flux, LoraFormat::Peft),
    ("flux_peft_b", LoraFamily::Flux, LoraFormat::Peft),
    ("flux_kohya", LoraFamily::Flux, LoraFormat::KohyaFlux),
    ("flux_bfl", LoraFamily::Flux, LoraFormat::BflFlux),
    ("flux_xlabs", LoraFamily::Flux, LoraFormat::XLabsFlux),
    ("sd_peft", LoraFamily::StableDiffusion, LoraFormat::Peft),
    ("sd_kohya", LoraFamily::StableDiffusion, LoraFormat::Kohya),
    (
        "sd_kohya_conv",
        LoraFamily::StableDiffusion,
        LoraFormat::Kohya,
    ),
    ("sdxl_kohya", SDXL, LoraFormat::Kohya),
];

/// The converted values are diffusers' to the bit: renames and row splits copy values, and the
/// kohya Flux folding multiplies by the same f32 factors PyTorch uses (measured max abs 0 on
/// every file, so the comparison is exact).
const VALUE_TOL: f32 = 0.0;

fn lora_file(stem: &str) -> PathBuf {
    fixtures_dir()
        .join("lora")
        .join(format!("{stem}.safetensors"))
}

#[test]
fn files_convert_as_diffusers_loads_them() {
    let fx = Fixture::open("lora/lora");
    for (case, family, format) in FILES {
        let converted =
            read_lora_file(&lora_file(case), family).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(converted.format, *format, "{case}");
        let scalings = fx.case(case)["scalings"]
            .as_object()
            .unwrap_or_else(|| panic!("{case}: no scalings"));
        let ours: Vec<String> = converted
            .layers
            .iter()
            .map(|l| format!("{}.{}", l.component, l.module))
            .collect();
        let mut theirs: Vec<String> = scalings.keys().cloned().collect();
        theirs.sort();
        assert_eq!(ours, theirs, "{case}: converted layers");
        let mut worst = 0.0f32;
        for layer in &converted.layers {
            let name = format!("{}.{}", layer.component, layer.module);
            for (ours, which) in [(&layer.down, "lora_A"), (&layer.up, "lora_B")] {
                let key = format!("{case}.layers.{name}.{which}.weight");
                let info = fx.weights.info(&key).unwrap_or_else(|| panic!("no {key}"));
                assert_eq!(ours.shape.to_vec(), info.shape, "{key}: shape");
                let expected = fx.values(&key);
                let actual = ours.to_vec::<f32>().expect("f32 layer");
                for (a, e) in actual.iter().zip(&expected) {
                    worst = worst.max((a - e).abs());
                }
            }
            let want = scalings[&name].as_f64().expect("scaling");
            assert!(
                (layer.scale - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{case}: {name}: scale {} vs PEFT's {want}",
                layer.scale
            );
        }
        assert!(worst <= VALUE_TOL, "{case}: max abs {worst}");
        eprintln!(
            "{case}: {} layers, max abs {worst:e}",
            converted.layers.len()
        );
    }
}

/// All tensors of a fixture file, and its header metadata.
fn tensors_of(stem: &str) -> (BTreeMap<String, TensorData>, BTreeMap<String, String>) {
    let file = SafetensorsFile::open(lora_file(stem)).expect("fixture");
    let tensors = file
        .keys()
        .map(|k| (k.to_string(), file.read(k).expect("tensor")))
        .collect();
    (tensors, file.metadata().clone())
}

/// A minimal safetensors writer (f32 tensors), for corrupted copies in a tempdir.
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, TensorData>) {
    let mut header = serde_json::Map::new();
    let mut bytes = Vec::new();
    for (k, t) in tensors {
        let values = t.clone().convert::<f32>().to_vec::<f32>().expect("f32");
        let start = bytes.len();
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape.to_vec(), "data_offsets": [start, bytes.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes);
    std::fs::write(path, out).expect("write");
}

fn expect_err(
    what: &str,
    result: Result<diffusers_adapters::lora_conversion_utils::ConvertedLora, Error>,
    check: impl Fn(&Error) -> bool,
    needles: &[&str],
) {
    let err = match result {
        Ok(c) => panic!(
            "{what}: converted {} layers, expected an error",
            c.layers.len()
        ),
        Err(e) => e,
    };
    assert!(check(&err), "{what}: wrong error {err:?}");
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "{what}: `{msg}` lacks `{n}`");
    }
}

#[test]
fn errors_name_what_does_not_fit() {
    let dir = tempfile::tempdir().expect("tempdir");

    // DoRA: refused, naming both kinds of magnitude keys (diffusers drops dora_scale with a
    // warning).
    expect_err(
        "flux_dora",
        read_lora_file(&lora_file("flux_dora"), &LoraFamily::Flux),
        |e| matches!(e, Error::Dora { keys, .. } if keys.len() == 2),
        &["DoRA", "to_k.dora_scale", "to_q.lora_magnitude_vector"],
    );

    // A LoRA for another family.
    let other_family: &[(&str, LoraFamily, &str)] = &[
        ("sd_kohya", LoraFamily::Flux, "lora_unet_down_blocks_0"),
        ("sd_peft", LoraFamily::Flux, "unet.down_blocks"),
        (
            "flux_kohya",
            LoraFamily::StableDiffusion,
            "lora_unet_double_blocks_0",
        ),
        ("flux_peft", SDXL, "transformer.single_transformer_blocks"),
    ];
    for (stem, family, needle) in other_family {
        expect_err(
            &format!("{stem} as {family}"),
            read_lora_file(&lora_file(stem), family),
            |e| matches!(e, Error::UnmatchedKeys { .. }),
            &[needle, "match no layer"],
        );
    }
    expect_err(
        "flux_xlabs as SD",
        read_lora_file(&lora_file("flux_xlabs"), &LoraFamily::StableDiffusion),
        |e| matches!(e, Error::UnknownFormat { .. }),
        &["not a LoRA file", "Stable Diffusion"],
    );

    // An extra key in each layout: never dropped silently.
    for (stem, family, extra) in [
        (
            "flux_peft",
            LoraFamily::Flux,
            "transformer.transformer_blocks.0.attn.norm_q.weight",
        ),
        (
            "flux_kohya",
            LoraFamily::Flux,
            "lora_unet_final_layer_unknown.lora_down.weight",
        ),
        (
            "flux_bfl",
            LoraFamily::Flux,
            "text_encoders.t5xxl.transformer.encoder.block.0.lora_down.weight",
        ),
        (
            "flux_xlabs",
            LoraFamily::Flux,
            "double_blocks.0.processor.mlp_lora.down.weight",
        ),
        (
            "sd_kohya",
            LoraFamily::StableDiffusion,
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        ),
        (
            "sdxl_kohya",
            SDXL,
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        ),
    ] {
        let (mut tensors, metadata) = tensors_of(stem);
        tensors.insert(extra.to_string(), TensorData::new(vec![0.5f32; 8], [2, 4]));
        let path = dir.path().join(format!("{stem}_extra.safetensors"));
        write_safetensors(&path, &tensors);
        // (written without the metadata: the PEFT file then takes its scale from the default)
        let from_file = read_lora_file(&path, &family);
        expect_err(
            &format!("{stem} + {extra}"),
            from_file,
            |e| matches!(e, Error::UnmatchedKeys { .. }),
            &[extra],
        );
        let in_memory = convert_lora_state_dict(&path, tensors, &metadata, &family);
        expect_err(
            &format!("{stem} + {extra} (metadata)"),
            in_memory,
            |e| matches!(e, Error::UnmatchedKeys { .. }),
            &[extra],
        );
    }

    // A rank mismatch between down and up, written to a file.
    let (mut tensors, _) = tensors_of("flux_kohya");
    tensors.insert(
        "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight".into(),
        TensorData::new(vec![0.0f32; 128 * 3], [128, 3]),
    );
    let path = dir.path().join("rank.safetensors");
    write_safetensors(&path, &tensors);
    expect_err(
        "rank mismatch",
        read_lora_file(&path, &LoraFamily::Flux),
        |e| matches!(e, Error::Shape { .. }),
        &[
            "lora_unet_double_blocks_0_img_mlp_0",
            "rank mismatch",
            "[4, 32]",
            "[128, 3]",
        ],
    );
    // The adapter metadata's rank disagreeing with the tensors.
    let (tensors, mut metadata) = tensors_of("flux_peft_b");
    let raw =
        metadata["lora_adapter_metadata"].replace("\"transformer.r\": 2", "\"transformer.r\": 5");
    assert_ne!(
        raw, metadata["lora_adapter_metadata"],
        "metadata layout changed"
    );
    metadata.insert("lora_adapter_metadata".into(), raw);
    expect_err(
        "metadata rank",
        convert_lora_state_dict(&path, tensors, &metadata, &LoraFamily::Flux),
        |e| matches!(e, Error::Shape { .. }),
        &["metadata gives rank 5", "rank 2"],
    );

    // Truncated files: every cut of the header, and cuts through the data, are errors, never
    // panics.
    let bytes = std::fs::read(lora_file("flux_xlabs")).expect("fixture");
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize + 8;
    let cuts: Vec<usize> = (0..header.min(bytes.len()))
        .step_by(7)
        .chain([header + 1, bytes.len() / 2, bytes.len() - 1])
        .collect();
    let path = dir.path().join("truncated.safetensors");
    for cut in cuts {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        assert!(
            read_lora_file(&path, &LoraFamily::Flux).is_err(),
            "a file cut at {cut} of {} bytes was read",
            bytes.len()
        );
    }
    // Not a LoRA at all: a model checkpoint.
    let model =
        fixtures_dir().join("pipelines/tiny_flux/transformer/diffusion_pytorch_model.safetensors");
    expect_err(
        "a transformer checkpoint",
        read_lora_file(&model, &LoraFamily::Flux),
        |e| matches!(e, Error::UnknownFormat { .. }),
        &["not a LoRA file", "Flux"],
    );
}
