//! diffusers' `loaders/single_file_utils.py` for the transformers of this crate: which diffusers
//! parameter each tensor of an original single-file checkpoint becomes.
//!
//! [`convert_flux_transformer_checkpoint_to_diffusers`] is diffusers' function of that name as a
//! pure key and row plan (no tensor is touched): for each tensor of a FLUX.1 checkpoint in Black
//! Forest Labs' layout (the one ComfyUI and city96's GGUF files use, with or without the
//! `model.diffusion_model.` prefix), the diffusers keys it becomes and which rows (of its first
//! dimension) each takes: the fused `img_attn.qkv` / `txt_attn.qkv` split in three, the single
//! blocks' `linear1` split into q, k, v and the MLP input, and the final layer's modulation with
//! its two halves swapped (`swap_scale_shift`: BFL stores `[shift; scale]`, diffusers'
//! `AdaLayerNormContinuous` reads `[scale; shift]`). A loader applies it to dense or packed
//! tensors alike (a packed row is a whole number of blocks).
//!
//! diffusers hard-codes FLUX.1's `inner_dim` 3072 for the `linear1` split; here it comes from the
//! config (`num_attention_heads * attention_head_dim`, the MLP `4 * inner_dim`), so any size loads.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::transformer_flux::FluxTransformer2DModelConfig;
use crate::{Error, Result};

const MODEL: &str = "FluxTransformer2DModel";

/// The prefix ComfyUI checkpoints put before every key (diffusers strips it).
pub const COMFY_PREFIX: &str = "model.diffusion_model.";

/// One diffusers parameter made from (part of) a single-file tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPart {
    /// The diffusers key (`transformer_blocks.0.attn.to_q.weight`).
    pub key: String,
    /// The source rows (first dimension) it takes, concatenated in this order: one range, or two
    /// for `swap_scale_shift`.
    pub rows: Vec<Range<usize>>,
}

impl TensorPart {
    /// The number of rows the diffusers parameter has.
    pub fn len(&self) -> usize {
        self.rows.iter().map(ExactSizeIterator::len).sum()
    }

    /// Whether it takes no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one single-file tensor becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    /// The key in the single file (with its prefix, if it had one).
    pub source: String,
    /// The diffusers parameters, each a set of the source's rows.
    pub parts: Vec<TensorPart>,
}

/// One row range as a part's rows.
fn one(r: Range<usize>) -> Vec<Range<usize>> {
    std::iter::once(r).collect()
}

fn whole(key: String, rows: usize) -> Vec<TensorPart> {
    vec![TensorPart {
        key,
        rows: one(0..rows),
    }]
}

fn split(keys: &[String], sizes: &[usize]) -> Vec<TensorPart> {
    let mut start = 0;
    keys.iter()
        .zip(sizes)
        .map(|(k, &n)| {
            let p = TensorPart {
                key: k.clone(),
                rows: one(start..start + n),
            };
            start += n;
            p
        })
        .collect()
}

/// The diffusers key of a BFL key that is only renamed (no split, no swap), if it is one.
fn renamed(k: &str) -> Option<String> {
    const TOP: &[(&str, &str)] = &[
        (
            "time_in.in_layer",
            "time_text_embed.timestep_embedder.linear_1",
        ),
        (
            "time_in.out_layer",
            "time_text_embed.timestep_embedder.linear_2",
        ),
        (
            "vector_in.in_layer",
            "time_text_embed.text_embedder.linear_1",
        ),
        (
            "vector_in.out_layer",
            "time_text_embed.text_embedder.linear_2",
        ),
        (
            "guidance_in.in_layer",
            "time_text_embed.guidance_embedder.linear_1",
        ),
        (
            "guidance_in.out_layer",
            "time_text_embed.guidance_embedder.linear_2",
        ),
        ("txt_in", "context_embedder"),
        ("img_in", "x_embedder"),
        ("final_layer.linear", "proj_out"),
    ];
    const DOUBLE: &[(&str, &str)] = &[
        ("img_mod.lin.weight", "norm1.linear.weight"),
        ("img_mod.lin.bias", "norm1.linear.bias"),
        ("txt_mod.lin.weight", "norm1_context.linear.weight"),
        ("txt_mod.lin.bias", "norm1_context.linear.bias"),
        ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
        ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
        ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
        ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
        ("img_mlp.0.weight", "ff.net.0.proj.weight"),
        ("img_mlp.0.bias", "ff.net.0.proj.bias"),
        ("img_mlp.2.weight", "ff.net.2.weight"),
        ("img_mlp.2.bias", "ff.net.2.bias"),
        ("txt_mlp.0.weight", "ff_context.net.0.proj.weight"),
        ("txt_mlp.0.bias", "ff_context.net.0.proj.bias"),
        ("txt_mlp.2.weight", "ff_context.net.2.weight"),
        ("txt_mlp.2.bias", "ff_context.net.2.bias"),
        ("img_attn.proj.weight", "attn.to_out.0.weight"),
        ("img_attn.proj.bias", "attn.to_out.0.bias"),
        ("txt_attn.proj.weight", "attn.to_add_out.weight"),
        ("txt_attn.proj.bias", "attn.to_add_out.bias"),
    ];
    const SINGLE: &[(&str, &str)] = &[
        ("modulation.lin.weight", "norm.linear.weight"),
        ("modulation.lin.bias", "norm.linear.bias"),
        ("norm.query_norm.scale", "attn.norm_q.weight"),
        ("norm.key_norm.scale", "attn.norm_k.weight"),
        ("linear2.weight", "proj_out.weight"),
        ("linear2.bias", "proj_out.bias"),
    ];
    let (module, param) = k.rsplit_once('.')?;
    if let Some((_, d)) = TOP.iter().find(|(b, _)| *b == module) {
        return (param == "weight" || param == "bias").then(|| format!("{d}.{param}"));
    }
    let (block, i, rest) = block_key(k)?;
    let (table, prefix) = match block {
        "double_blocks" => (DOUBLE, "transformer_blocks"),
        _ => (SINGLE, "single_transformer_blocks"),
    };
    table
        .iter()
        .find(|(b, _)| *b == rest)
        .map(|(_, d)| format!("{prefix}.{i}.{d}"))
}

/// `("double_blocks" | "single_blocks", index, rest)` of a block key.
fn block_key(k: &str) -> Option<(&str, usize, &str)> {
    let (block, tail) = k.split_once('.')?;
    if block != "double_blocks" && block != "single_blocks" {
        return None;
    }
    let (i, rest) = tail.split_once('.')?;
    let i: usize = i.parse().ok()?;
    Some((block, i, rest))
}

/// diffusers' `convert_flux_transformer_checkpoint_to_diffusers` as a plan: for each
/// `(key, shape)` of a BFL-layout FLUX.1 checkpoint, the diffusers parameters it becomes.
///
/// Errors (one line each, naming the key): a key that is not a FLUX.1 transformer tensor (or a
/// block index the config does not have), and a fused tensor whose first dimension does not
/// match the config (`img_attn.qkv` must have `3 * inner_dim` rows, `linear1`
/// `3 * inner_dim + 4 * inner_dim`, the final modulation an even count). Every other shape is
/// checked by the loader against the model's.
pub fn convert_flux_transformer_checkpoint_to_diffusers(
    tensors: &[(String, Vec<usize>)],
    config: &FluxTransformer2DModelConfig,
) -> Result<Vec<TensorPlan>> {
    let dim = config.num_attention_heads * config.attention_head_dim;
    let mlp = 4 * dim;
    let bad = |reason: String| Error::InvalidInput {
        model: MODEL,
        reason,
    };
    let mut plans = Vec::with_capacity(tensors.len());
    let mut seen = BTreeMap::new();
    for (source, shape) in tensors {
        let k = source.strip_prefix(COMFY_PREFIX).unwrap_or(source);
        if let Some(first) = seen.insert(k.to_string(), source.clone()) {
            return Err(bad(format!(
                "`{source}` and `{first}` are the same tensor (one with the `{COMFY_PREFIX}` prefix)"
            )));
        }
        let rows = shape.first().copied().unwrap_or(1);
        let unknown = || {
            bad(format!(
                "`{source}` is not a tensor of a FLUX.1 transformer in the BFL / ComfyUI layout"
            ))
        };
        if let Some((block, i, _)) = block_key(k) {
            let n = match block {
                "double_blocks" => config.num_layers,
                _ => config.num_single_layers,
            };
            if i >= n {
                return Err(bad(format!(
                    "`{source}`: block {i} of {block}, but the config has {n} \
                     (num_layers {}, num_single_layers {})",
                    config.num_layers, config.num_single_layers
                )));
            }
        }
        let expect_rows = |want: usize, what: &str| {
            if rows == want {
                Ok(())
            } else {
                Err(bad(format!(
                    "`{source}` has shape {shape:?}: {what} needs {want} rows for inner dim {dim}"
                )))
            }
        };
        let parts = if let Some(d) = renamed(k) {
            whole(d, rows)
        } else if let Some(param) = k.strip_prefix("final_layer.adaLN_modulation.1.") {
            if param != "weight" && param != "bias" {
                return Err(unknown());
            }
            expect_rows(2 * dim, "the final layer's modulation (shift, scale)")?;
            vec![TensorPart {
                key: format!("norm_out.linear.{param}"),
                rows: vec![dim..2 * dim, 0..dim],
            }]
        } else {
            let Some((block, i, rest)) = block_key(k) else {
                return Err(unknown());
            };
            let (stream, param) = rest.rsplit_once('.').ok_or_else(unknown)?;
            if param != "weight" && param != "bias" {
                return Err(unknown());
            }
            match (block, stream) {
                ("double_blocks", "img_attn.qkv" | "txt_attn.qkv") => {
                    expect_rows(3 * dim, "fused q, k, v")?;
                    let b = format!("transformer_blocks.{i}.attn");
                    let keys: Vec<String> = if stream == "img_attn.qkv" {
                        ["to_q", "to_k", "to_v"]
                            .iter()
                            .map(|n| format!("{b}.{n}.{param}"))
                            .collect()
                    } else {
                        ["add_q_proj", "add_k_proj", "add_v_proj"]
                            .iter()
                            .map(|n| format!("{b}.{n}.{param}"))
                            .collect()
                    };
                    split(&keys, &[dim, dim, dim])
                }
                ("single_blocks", "linear1") => {
                    expect_rows(3 * dim + mlp, "fused q, k, v and the MLP input")?;
                    let b = format!("single_transformer_blocks.{i}");
                    let keys = [
                        format!("{b}.attn.to_q.{param}"),
                        format!("{b}.attn.to_k.{param}"),
                        format!("{b}.attn.to_v.{param}"),
                        format!("{b}.proj_mlp.{param}"),
                    ];
                    split(&keys, &[dim, dim, dim, mlp])
                }
                _ => return Err(unknown()),
            }
        };
        plans.push(TensorPlan {
            source: source.clone(),
            parts,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use diffusers_core::backend::Cpu;
    use diffusers_core::weights::module_shapes;

    use crate::transformer_flux::{FluxTransformer2DModel, checkpoint_key};

    /// The tiny pipeline fixture's transformer config (2 heads of 16, one block of each kind).
    fn tiny() -> FluxTransformer2DModelConfig {
        serde_json::from_str(
            r#"{"attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "guidance_embeds": true,
                "in_channels": 16, "joint_attention_dim": 12, "num_attention_heads": 2,
                "num_layers": 1, "num_single_layers": 1, "pooled_projection_dim": 10}"#,
        )
        .expect("config")
    }

    /// The tiny config's BFL key set with shapes, as the GGUF fixture stores it (`[rows, cols]`
    /// weights, `[rows]` biases and norm scales).
    fn bfl_tensors(prefix: &str) -> Vec<(String, Vec<usize>)> {
        let (d, h) = (32, 16);
        let mut v: Vec<(&str, Vec<usize>)> = vec![
            ("img_in.weight", vec![d, 16]),
            ("img_in.bias", vec![d]),
            ("txt_in.weight", vec![d, 12]),
            ("txt_in.bias", vec![d]),
            ("final_layer.linear.weight", vec![16, d]),
            ("final_layer.linear.bias", vec![16]),
            ("final_layer.adaLN_modulation.1.weight", vec![2 * d, d]),
            ("final_layer.adaLN_modulation.1.bias", vec![2 * d]),
        ];
        for (m, i) in [("time_in", 256), ("guidance_in", 256), ("vector_in", 10)] {
            for (l, inp) in [("in_layer", i), ("out_layer", d)] {
                v.push((leak(format!("{m}.{l}.weight")), vec![d, inp]));
                v.push((leak(format!("{m}.{l}.bias")), vec![d]));
            }
        }
        for s in ["img", "txt"] {
            for (m, r, c) in [
                ("mod.lin", 6 * d, d),
                ("attn.qkv", 3 * d, d),
                ("attn.proj", d, d),
                ("mlp.0", 4 * d, d),
                ("mlp.2", d, 4 * d),
            ] {
                v.push((leak(format!("double_blocks.0.{s}_{m}.weight")), vec![r, c]));
                v.push((leak(format!("double_blocks.0.{s}_{m}.bias")), vec![r]));
            }
            for n in ["query_norm", "key_norm"] {
                v.push((
                    leak(format!("double_blocks.0.{s}_attn.norm.{n}.scale")),
                    vec![h],
                ));
            }
        }
        for (m, r, c) in [
            ("modulation.lin", 3 * d, d),
            ("linear1", 7 * d, d),
            ("linear2", d, 5 * d),
        ] {
            v.push((leak(format!("single_blocks.0.{m}.weight")), vec![r, c]));
            v.push((leak(format!("single_blocks.0.{m}.bias")), vec![r]));
        }
        for n in ["query_norm", "key_norm"] {
            v.push((leak(format!("single_blocks.0.norm.{n}.scale")), vec![h]));
        }
        v.into_iter()
            .map(|(k, s)| (format!("{prefix}{k}"), s))
            .collect()
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    /// Every parameter of the tiny model, by diffusers key, is made exactly once, from rows that
    /// tile its source, and has the model's first dimension; with and without ComfyUI's prefix.
    #[test]
    fn tiny_flux_key_set_covers_the_model() {
        let config = tiny();
        let model =
            FluxTransformer2DModel::<Cpu>::new(&config, &Default::default()).expect("model");
        let key_map = |p: &str| checkpoint_key(p);
        let shapes = module_shapes(&model, Some(&key_map));
        for prefix in ["", COMFY_PREFIX] {
            let tensors = bfl_tensors(prefix);
            let plans =
                convert_flux_transformer_checkpoint_to_diffusers(&tensors, &config).expect("plan");
            let mut made = BTreeSet::new();
            for (plan, (source, shape)) in plans.iter().zip(&tensors) {
                assert_eq!(&plan.source, source);
                let mut covered = vec![0usize; shape[0]];
                for part in &plan.parts {
                    assert!(made.insert(part.key.clone()), "{} made twice", part.key);
                    let want = shapes.get(&part.key).unwrap_or_else(|| {
                        panic!("{source} -> {}: not a model parameter", part.key)
                    });
                    assert_eq!(part.len(), want[0], "{source} -> {}", part.key);
                    assert_eq!(&shape[1..], &want[1..], "{source} -> {}", part.key);
                    for r in part.rows.iter().cloned().flatten() {
                        covered[r] += 1;
                    }
                }
                assert!(
                    covered.iter().all(|&c| c == 1),
                    "{source}: rows {covered:?}"
                );
            }
            let all: BTreeSet<String> = shapes.keys().cloned().collect();
            assert_eq!(made, all, "prefix `{prefix}`");
        }
    }

    /// The splits and the swap, row for row (diffusers' `torch.chunk(qkv, 3)`,
    /// `torch.split(linear1, (dim, dim, dim, 4 * dim))` and `swap_scale_shift`).
    #[test]
    fn splits_and_swap_take_diffusers_rows() {
        let config = tiny();
        let plans = convert_flux_transformer_checkpoint_to_diffusers(&bfl_tensors(""), &config)
            .expect("plan");
        let find = |s: &str| {
            plans
                .iter()
                .find(|p| p.source == s)
                .unwrap_or_else(|| panic!("{s}"))
                .parts
                .iter()
                .map(|p| (p.key.as_str(), p.rows.clone()))
                .collect::<Vec<_>>()
        };
        type Parts = Vec<(&'static str, Vec<Range<usize>>)>;
        let cases: &[(&str, Parts)] = &[
            (
                "double_blocks.0.txt_attn.qkv.weight",
                vec![
                    ("transformer_blocks.0.attn.add_q_proj.weight", one(0..32)),
                    ("transformer_blocks.0.attn.add_k_proj.weight", one(32..64)),
                    ("transformer_blocks.0.attn.add_v_proj.weight", one(64..96)),
                ],
            ),
            (
                "single_blocks.0.linear1.bias",
                vec![
                    ("single_transformer_blocks.0.attn.to_q.bias", one(0..32)),
                    ("single_transformer_blocks.0.attn.to_k.bias", one(32..64)),
                    ("single_transformer_blocks.0.attn.to_v.bias", one(64..96)),
                    ("single_transformer_blocks.0.proj_mlp.bias", one(96..224)),
                ],
            ),
            (
                "final_layer.adaLN_modulation.1.weight",
                vec![("norm_out.linear.weight", vec![32..64, 0..32])],
            ),
            (
                "double_blocks.0.img_attn.norm.key_norm.scale",
                vec![("transformer_blocks.0.attn.norm_k.weight", one(0..16))],
            ),
        ];
        for (source, want) in cases {
            assert_eq!(&find(source), want, "{source}");
        }
    }

    /// Keys and shapes the plan refuses, each with the words that say why.
    #[test]
    fn refuses_unknown_keys_and_wrong_fused_shapes() {
        let config = tiny();
        let cases: &[(&str, Vec<usize>, &[&str])] = &[
            (
                "double_blocks.0.img_attn.lora_up.weight",
                vec![3, 32],
                &["not a tensor", "lora_up"],
            ),
            ("vae.decoder.conv_in.weight", vec![3], &["not a tensor"]),
            (
                "double_blocks.1.img_mod.lin.weight",
                vec![192, 32],
                &["block 1", "num_layers 1"],
            ),
            (
                "single_blocks.0.linear1.weight",
                vec![96, 32],
                &["[96, 32]", "224 rows"],
            ),
            ("double_blocks.0.img_attn.qkv.bias", vec![64], &["96 rows"]),
            (
                "final_layer.adaLN_modulation.1.bias",
                vec![63],
                &["64 rows"],
            ),
            ("img_in.scale", vec![32], &["not a tensor"]),
        ];
        for (key, shape, words) in cases {
            let err = convert_flux_transformer_checkpoint_to_diffusers(
                &[(key.to_string(), shape.clone())],
                &config,
            )
            .expect_err(key)
            .to_string();
            for w in *words {
                assert!(err.contains(w), "{key}: `{err}` lacks `{w}`");
            }
        }
        let dup = [
            ("img_in.bias".to_string(), vec![32]),
            (format!("{COMFY_PREFIX}img_in.bias"), vec![32]),
        ];
        let err = convert_flux_transformer_checkpoint_to_diffusers(&dup, &config)
            .expect_err("duplicate")
            .to_string();
        assert!(err.contains("same tensor"), "{err}");
    }
}
