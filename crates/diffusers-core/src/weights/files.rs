//! Which files hold a component's weights: formats, shards and variants, named exactly as
//! diffusers and transformers name them.

use crate::{Error, Result};

/// How a checkpoint is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `.safetensors`, always preferred.
    Safetensors,
    /// A PyTorch pickle (`.bin`).
    Pickle,
}

/// The files to read for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightPlan {
    /// A single weight file.
    Single(String),
    /// An index (`*.index*.json`) whose `weight_map` names the shards.
    Sharded(String),
}

impl WeightPlan {
    /// The file to fetch first.
    pub fn file(&self) -> &str {
        match self {
            WeightPlan::Single(f) | WeightPlan::Sharded(f) => f,
        }
    }
}

/// Base names of a component's weight files.
#[derive(Debug, Clone, Copy)]
pub struct WeightsName<'a> {
    /// Base name of the safetensors file: `diffusion_pytorch_model` (diffusers), `model` (transformers).
    pub safetensors: &'a str,
    /// Base name of the pickle file: `diffusion_pytorch_model` (diffusers), `pytorch_model` (transformers).
    pub pickle: &'a str,
}

impl WeightsName<'static> {
    /// The names diffusers models use.
    pub const DIFFUSERS: Self = Self {
        safetensors: "diffusion_pytorch_model",
        pickle: "diffusion_pytorch_model",
    };
    /// The names transformers models use.
    pub const TRANSFORMERS: Self = Self {
        safetensors: "model",
        pickle: "pytorch_model",
    };
}

/// Inserts a variant as diffusers' `_add_variant` does: before the last extension.
///
/// ```
/// use diffusers_core::weights::variant_name;
/// assert_eq!(variant_name("diffusion_pytorch_model.safetensors", Some("fp16")), "diffusion_pytorch_model.fp16.safetensors");
/// assert_eq!(variant_name("model.safetensors.index.json", Some("fp16")), "model.safetensors.index.fp16.json");
/// assert_eq!(variant_name("model.safetensors", None), "model.safetensors");
/// ```
pub fn variant_name(file: &str, variant: Option<&str>) -> String {
    match (variant, file.rsplit_once('.')) {
        (Some(v), Some((stem, ext))) => format!("{stem}.{v}.{ext}"),
        _ => file.to_string(),
    }
}

fn candidates(name: WeightsName<'_>, variant: Option<&str>) -> Vec<(WeightPlan, WeightFormat)> {
    let mut out = Vec::new();
    for (base, ext, fmt) in [
        (name.safetensors, "safetensors", WeightFormat::Safetensors),
        (name.pickle, "bin", WeightFormat::Pickle),
    ] {
        let single = format!("{base}.{ext}");
        let index = format!("{base}.{ext}.index.json");
        match variant {
            Some(v) => {
                out.push((WeightPlan::Single(variant_name(&single, Some(v))), fmt));
                out.push((WeightPlan::Sharded(variant_name(&index, Some(v))), fmt));
                // Legacy form: `model.safetensors.fp16.index.json`.
                out.push((
                    WeightPlan::Sharded(format!("{base}.{ext}.{v}.index.json")),
                    fmt,
                ));
            }
            None => {
                out.push((WeightPlan::Single(single), fmt));
                out.push((WeightPlan::Sharded(index), fmt));
            }
        }
    }
    out
}

/// Chooses the weight files of a component from the names present in its folder.
///
/// Safetensors is preferred over pickle whenever both exist. With a variant, the variant's
/// files are used; if the folder has none, the default files are used with a warning, as
/// diffusers does.
pub fn resolve_weight_files(
    available: &[String],
    dir: &str,
    name: WeightsName<'_>,
    variant: Option<&str>,
) -> Result<(WeightPlan, WeightFormat)> {
    let has = |f: &str| available.iter().any(|a| a == f);
    let mut looked = Vec::new();
    if variant.is_some() {
        for (plan, fmt) in candidates(name, variant) {
            if has(plan.file()) {
                return Ok((plan, fmt));
            }
            looked.push(plan.file().to_string());
        }
    }
    for (plan, fmt) in candidates(name, None) {
        if has(plan.file()) {
            if let Some(v) = variant {
                tracing::warn!(
                    "{dir}: no `{v}` variant of the weights; loading the default {} instead",
                    plan.file()
                );
            }
            return Ok((plan, fmt));
        }
        looked.push(plan.file().to_string());
    }
    // `name.V.safetensors`, `name.safetensors.index.V.json` and the pickle forms: variant V.
    let mut variants: Vec<String> = available
        .iter()
        .filter_map(|f| {
            [name.safetensors, name.pickle].iter().find_map(|base| {
                let rest = f.strip_prefix(base)?.strip_prefix('.')?;
                let v = rest
                    .strip_suffix(".safetensors")
                    .or_else(|| rest.strip_suffix(".bin"))
                    .or_else(|| {
                        rest.strip_prefix("safetensors.index.")?
                            .strip_suffix(".json")
                    })
                    .or_else(|| rest.strip_prefix("bin.index.")?.strip_suffix(".json"))?;
                // Shards (`name.fp16-00001-of-00002.safetensors`) name their variant first.
                let v = v.split('-').next().unwrap_or(v);
                (!v.is_empty() && !v.contains('.')).then(|| v.to_string())
            })
        })
        .collect();
    variants.sort();
    variants.dedup();
    Err(Error::NoWeights {
        dir: dir.to_string(),
        name: name.safetensors.to_string(),
        candidates: looked.join(", "),
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pick(
        avail: &[&str],
        name: WeightsName<'_>,
        variant: Option<&str>,
    ) -> Result<(WeightPlan, WeightFormat)> {
        resolve_weight_files(&names(avail), "c", name, variant)
    }

    #[test]
    fn prefers_safetensors() {
        let avail = [
            "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.safetensors",
            "config.json",
        ];
        let (plan, fmt) = pick(&avail, WeightsName::DIFFUSERS, None).expect("plan");
        assert_eq!(
            plan,
            WeightPlan::Single("diffusion_pytorch_model.safetensors".into())
        );
        assert_eq!(fmt, WeightFormat::Safetensors);
        let (plan, fmt) =
            pick(&["pytorch_model.bin"], WeightsName::TRANSFORMERS, None).expect("plan");
        assert_eq!(
            (plan.file(), fmt),
            ("pytorch_model.bin", WeightFormat::Pickle)
        );
    }

    #[test]
    fn variants_as_diffusers_names_them() {
        let avail = [
            "model.safetensors",
            "model.fp16-00001-of-00002.safetensors",
            "model.fp16-00002-of-00002.safetensors",
            "model.safetensors.index.fp16.json",
            "model.bf16.safetensors",
        ];
        let t = WeightsName::TRANSFORMERS;
        assert_eq!(
            pick(&avail, t, Some("fp16")).expect("fp16").0,
            WeightPlan::Sharded("model.safetensors.index.fp16.json".into())
        );
        assert_eq!(
            pick(&avail, t, Some("bf16")).expect("bf16").0,
            WeightPlan::Single("model.bf16.safetensors".into())
        );
        assert_eq!(
            pick(&avail, t, None).expect("none").0,
            WeightPlan::Single("model.safetensors".into())
        );
        // Legacy index form.
        let legacy = [
            "model.safetensors.fp16.index.json",
            "model-00001-of-00001.fp16.safetensors",
        ];
        assert_eq!(
            pick(&legacy, t, Some("fp16")).expect("legacy").0,
            WeightPlan::Sharded("model.safetensors.fp16.index.json".into())
        );
        // Non-variant sharded.
        let sharded = [
            "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model-00001-of-00002.safetensors",
        ];
        assert_eq!(
            pick(&sharded, WeightsName::DIFFUSERS, None)
                .expect("sharded")
                .0,
            WeightPlan::Sharded(sharded[0].into())
        );
    }

    #[test]
    fn nothing_found_lists_candidates() {
        match pick(&["config.json"], WeightsName::DIFFUSERS, None) {
            Err(Error::NoWeights {
                candidates,
                variants,
                ..
            }) => {
                assert!(candidates.contains("diffusion_pytorch_model.safetensors"));
                assert!(candidates.contains("diffusion_pytorch_model.bin"));
                assert!(variants.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_found_names_the_variants_present() {
        let avail = [
            "config.json",
            "diffusion_pytorch_model.fp16.safetensors",
            "diffusion_pytorch_model.safetensors.index.bf16.json",
            "diffusion_pytorch_model.bf16-00001-of-00002.safetensors",
            "diffusion_pytorch_model.non_ema.bin",
            "other.fp32.safetensors",
        ];
        let e = pick(&avail, WeightsName::DIFFUSERS, None).expect_err("no default weights");
        let msg = e.to_string();
        match e {
            Error::NoWeights { variants, .. } => assert_eq!(variants, ["bf16", "fp16", "non_ema"]),
            other => panic!("{other:?}"),
        }
        assert!(msg.contains("variant(s) bf16, fp16, non_ema"), "{msg}");
    }
}
