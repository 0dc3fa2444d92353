//! Weight, config and repository loading: the happy paths on the oracle's hub-layout fixtures
//! (`fixtures/loading`), and every error path with its typed error naming file and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Initializer, Module, Param};
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::backend::Cpu;
use diffusers_core::config::{ConfigMeta, load_config};
use diffusers_core::repo::{Repo, RepoOptions};
use diffusers_core::weights::files::WeightsName;
use diffusers_core::weights::{LoadOptions, Weights, load_into};
use diffusers_core::{Error, config::Config};
use serde::{Deserialize, Serialize};

fn fixtures() -> PathBuf {
    std::env::var_os("DIFFUSERS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures")))
        .join("loading")
}

#[derive(Module, Debug)]
struct Lin<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Option<Param<Tensor<B, 1>>>,
}

#[derive(Module, Debug)]
struct Norm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    bias: Param<Tensor<B, 1>>,
}

/// The oracle's `Tiny` module, key for key.
#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    proj_in: Lin<B>,
    blocks: Vec<Lin<B>>,
    norm: Norm<B>,
    proj_out: Lin<B>,
}

fn lin(i: usize, o: usize, bias: bool) -> Lin<Cpu> {
    let d = Default::default();
    Lin {
        weight: Initializer::Zeros.init([o, i], &d),
        bias: bias.then(|| Initializer::Zeros.init([o], &d)),
    }
}

fn tiny() -> Tiny<Cpu> {
    let d = Default::default();
    Tiny {
        proj_in: lin(4, 8, true),
        blocks: vec![lin(8, 8, true), lin(8, 8, true)],
        norm: Norm {
            weight: Initializer::Ones.init([8], &d),
            bias: Initializer::Zeros.init([8], &d),
        },
        proj_out: lin(8, 4, false),
    }
}

fn expected() -> BTreeMap<String, Vec<f32>> {
    let w = Weights::open(fixtures().join("expected.safetensors")).expect("expected fixture");
    w.keys()
        .map(|k| {
            let v = w
                .read(k)
                .expect("read")
                .convert::<f32>()
                .into_vec()
                .expect("f32");
            (k.trim_start_matches("expected.").to_string(), v)
        })
        .collect()
}

fn values(t: Tensor<Cpu, 2>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32")
}

fn check_tiny(m: &Tiny<Cpu>, rtol: f32) {
    let exp = expected();
    let got = values(m.blocks[1].weight.val());
    for (a, e) in got.iter().zip(&exp["blocks.1.weight"]) {
        assert!((a - e).abs() <= rtol * e.abs() + 1e-12, "{a} vs {e}");
    }
    let got = values(m.proj_out.weight.val());
    for (a, e) in got.iter().zip(&exp["proj_out.weight"]) {
        assert!((a - e).abs() <= rtol * e.abs() + 1e-12, "{a} vs {e}");
    }
}

#[test]
fn safetensors_loads_into_module_exactly() {
    let w =
        Weights::open(fixtures().join("tiny/diffusion_pytorch_model.safetensors")).expect("open");
    let (m, report) = load_into(tiny(), &w, LoadOptions::default()).expect("load");
    assert_eq!(report.loaded, 9);
    check_tiny(&m, 0.0);
}

#[test]
fn pickle_checkpoint_loads_exactly() {
    let w = Weights::open(fixtures().join("tiny/diffusion_pytorch_model.bin")).expect("open .bin");
    let (m, _) = load_into(tiny(), &w, LoadOptions::default()).expect("load");
    check_tiny(&m, 0.0);
}

#[test]
fn bf16_variant_converts_to_compute_dtype() {
    let repo =
        Repo::open(fixtures().to_str().expect("utf8"), &RepoOptions::default()).expect("repo");
    let files = repo
        .weight_files("tiny", WeightsName::DIFFUSERS, Some("bf16"))
        .expect("files");
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("tiny/diffusion_pytorch_model.bf16.safetensors"));
    let w = Weights::open_all(&files).expect("open");
    assert_eq!(w.info("proj_in.weight").expect("info").dtype, "BF16");
    let opts = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let (m, _) = load_into(tiny(), &w, opts).expect("load");
    assert_eq!(m.proj_in.weight.val().dtype(), DType::F32);
    check_tiny(&m, 1.0 / 128.0);
}

#[test]
fn sharded_fp16_variant_fetches_only_index_and_shards() {
    let repo =
        Repo::open(fixtures().to_str().expect("utf8"), &RepoOptions::default()).expect("repo");
    let files = repo
        .weight_files("tiny", WeightsName::DIFFUSERS, Some("fp16"))
        .expect("files");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["diffusion_pytorch_model.safetensors.index.fp16.json"]
    );
    let w = repo
        .weights("tiny", WeightsName::DIFFUSERS, Some("fp16"))
        .expect("weights");
    assert_eq!(w.keys().count(), 9);
    let (m, _) = load_into(
        tiny(),
        &w,
        LoadOptions {
            dtype: Some(DType::BF16),
            ..Default::default()
        },
    )
    .expect("load");
    assert_eq!(m.blocks[0].weight.val().dtype(), DType::BF16);
    check_tiny(&m, 1.0 / 128.0);
}

#[test]
fn safetensors_preferred_over_pickle() {
    let repo =
        Repo::open(fixtures().to_str().expect("utf8"), &RepoOptions::default()).expect("repo");
    let files = repo
        .weight_files("tiny", WeightsName::DIFFUSERS, None)
        .expect("files");
    assert!(
        files[0].ends_with("tiny/diffusion_pytorch_model.safetensors"),
        "{files:?}"
    );
    // An absent variant falls back to the default files, as diffusers does.
    let files = repo
        .weight_files("tiny", WeightsName::DIFFUSERS, Some("fp8"))
        .expect("fallback");
    assert!(
        files[0].ends_with("tiny/diffusion_pytorch_model.safetensors"),
        "{files:?}"
    );
}

#[derive(Debug, Serialize, Deserialize)]
struct TinyConfig {
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default)]
    hidden: usize,
    #[serde(default = "one")]
    num_blocks: usize,
    #[serde(default)]
    dropout: f64,
    #[serde(flatten)]
    meta: ConfigMeta,
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
impl Config for TinyConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }
}

#[test]
fn config_keeps_unknown_keys_and_reads_meta() {
    let c: TinyConfig = load_config(fixtures().join("tiny/config.json")).expect("config");
    assert_eq!(
        (c.in_channels, c.hidden, c.num_blocks, c.dropout),
        (4, 8, 2, 0.0)
    );
    assert_eq!(c.meta.class_name.as_deref(), Some("TinyModel"));
    assert!(c.meta.diffusers_version.is_some());
    assert_eq!(
        c.meta.extra.get("future_option"),
        Some(&serde_json::Value::Bool(true))
    );
    // `_class_name` is never required, and defaults apply.
    let c: TinyConfig =
        diffusers_core::config::parse_config("{}", Path::new("mem")).expect("empty");
    assert_eq!((c.in_channels, c.num_blocks), (4, 1));
    assert!(c.meta.class_name.is_none());
}

// ---------------------------------------------------------------- error paths

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn safetensors_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).expect("json");
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn one_lin(i: usize, o: usize) -> Lin<Cpu> {
    lin(i, o, true)
}

#[test]
fn missing_file_is_named() {
    let d = tmp();
    let p = d.path().join("nope.safetensors");
    match Weights::open(&p) {
        Err(Error::FileNotFound { path }) => assert_eq!(path, p),
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_safetensors() {
    let d = tmp();
    let full = safetensors_bytes(&[("weight", "F32", vec![2, 3], f32_bytes(6))]);
    let p = write(d.path(), "cut.safetensors", &full[..full.len() - 5]);
    match Weights::open(&p) {
        Err(e @ Error::Truncated { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("cut.safetensors") && msg.contains("`weight`"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let p = write(d.path(), "tiny.safetensors", &[1, 2, 3]);
    assert!(matches!(Weights::open(&p), Err(Error::Truncated { .. })));
}

#[test]
fn header_length_beyond_file() {
    let d = tmp();
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    let p = write(d.path(), "beyond.safetensors", &bytes);
    match Weights::open(&p) {
        Err(Error::HeaderBeyondFile {
            path,
            header_len,
            file_len,
        }) => {
            assert_eq!((path, header_len, file_len), (p, 1000, 10));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_header() {
    let d = tmp();
    let mut bytes = (200_000_000u64).to_le_bytes().to_vec();
    bytes.extend(b"{}");
    let p = write(d.path(), "huge.safetensors", &bytes);
    assert!(matches!(Weights::open(&p), Err(Error::HeaderTooLarge { path, .. }) if path == p));
}

#[test]
fn malformed_safetensors_header() {
    let d = tmp();
    let mut bytes = 5u64.to_le_bytes().to_vec();
    bytes.extend(b"{oops");
    let p = write(d.path(), "bad.safetensors", &bytes);
    assert!(matches!(Weights::open(&p), Err(Error::InvalidSafetensors { path, .. }) if path == p));
}

#[test]
fn wrong_shape_names_file_and_key() {
    let d = tmp();
    let p = write(
        d.path(),
        "shape.safetensors",
        &safetensors_bytes(&[
            ("weight", "F32", vec![3, 2], f32_bytes(6)),
            ("bias", "F32", vec![3], f32_bytes(3)),
        ]),
    );
    let w = Weights::open(&p).expect("open");
    match load_into(one_lin(3, 2), &w, LoadOptions::default()) {
        Err(Error::ShapeMismatch {
            path,
            key,
            expected,
            found,
        }) => {
            assert_eq!((path, key.as_str()), (p, "weight"));
            assert_eq!((expected, found), (vec![2, 3], vec![3, 2]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_and_unexpected_keys() {
    let d = tmp();
    let p = write(
        d.path(),
        "keys.safetensors",
        &safetensors_bytes(&[
            ("weight", "F32", vec![2, 3], f32_bytes(6)),
            ("extra.weight", "F32", vec![1], f32_bytes(1)),
        ]),
    );
    let w = Weights::open(&p).expect("open");
    match load_into(one_lin(3, 2), &w, LoadOptions::default()) {
        Err(e @ Error::MissingKeys { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("keys.safetensors") && msg.contains("bias"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let opts = LoadOptions {
        allow_missing: true,
        ..Default::default()
    };
    match load_into(one_lin(3, 2), &w, opts) {
        Err(Error::UnexpectedKeys { path, keys }) => {
            assert_eq!((path, keys), (p.clone(), vec!["extra.weight".to_string()]));
        }
        other => panic!("{other:?}"),
    }
    let opts = LoadOptions {
        allow_missing: true,
        allow_unexpected: true,
        ..Default::default()
    };
    let (_, report) = load_into(one_lin(3, 2), &w, opts).expect("opted in");
    assert_eq!(report.missing, ["bias"]);
    assert_eq!(report.unexpected, ["extra.weight"]);
}

#[test]
fn unsupported_dtype() {
    let d = tmp();
    let p = write(
        d.path(),
        "ints.safetensors",
        &safetensors_bytes(&[
            ("weight", "I64", vec![2, 3], vec![0; 48]),
            ("bias", "F32", vec![2], f32_bytes(2)),
        ]),
    );
    let w = Weights::open(&p).expect("open");
    match load_into(one_lin(3, 2), &w, LoadOptions::default()) {
        Err(Error::UnsupportedDtype { path, key, dtype }) => {
            assert_eq!((path, key.as_str(), dtype.as_str()), (p, "weight", "I64"));
        }
        other => panic!("{other:?}"),
    }
}

/// Python's `json` writes `NaN`, `Infinity` and `-Infinity` (diffusers' `save_config` does, for
/// any non-finite value): they are read where the config keeps them (an unknown key here), and a
/// non-finite value where the config needs a number is an error naming the key.
#[test]
fn config_json_as_python_writes_it() {
    let d = tmp();
    let p = write(
        d.path(),
        "config.json",
        b"{\"in_channels\": 4, \"future_clip\": -Infinity, \"future\": [NaN, Infinity]}",
    );
    let c: TinyConfig = load_config(&p).expect("python json");
    assert_eq!(c.meta.extra["future_clip"], "-Infinity");
    assert_eq!(
        c.meta.extra["future"],
        serde_json::json!(["NaN", "Infinity"])
    );
    for (json, key, word) in [
        (&b"{\"dropout\": NaN}"[..], "dropout", "NaN"),
        (
            &b"{\"in_channels\": Infinity}"[..],
            "in_channels",
            "Infinity",
        ),
    ] {
        let p = write(d.path(), "config.json", json);
        match load_config::<TinyConfig>(&p) {
            Err(e @ Error::NonFinite { .. }) => assert_eq!(
                e.to_string(),
                format!(
                    "{}: `{key}` is {word}, and this config needs a finite number there",
                    p.display()
                )
            ),
            other => panic!("{key}: {other:?}"),
        }
    }
    // Other type errors name the key.
    let p = write(d.path(), "config.json", b"{\"hidden\": \"wide\"}");
    match load_config::<TinyConfig>(&p) {
        Err(e @ Error::JsonValue { .. }) => assert!(e.to_string().contains("`hidden`"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_config_json() {
    let d = tmp();
    let p = write(d.path(), "config.json", b"{\"in_channels\": 4,");
    match load_config::<TinyConfig>(&p) {
        Err(e @ Error::Json { .. }) => assert!(e.to_string().contains("config.json"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pickle_with_more_than_tensors_is_refused() {
    let p = fixtures().join("evil.bin");
    match Weights::open(&p) {
        Err(e @ Error::UnsafePickle { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("evil.bin") && msg.contains("builtin__.print"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_shard_key_is_named() {
    let d = tmp();
    write(
        d.path(),
        "a.safetensors",
        &safetensors_bytes(&[("weight", "F32", vec![2], f32_bytes(2))]),
    );
    let idx = write(
        d.path(),
        "model.safetensors.index.json",
        br#"{"weight_map": {"weight": "a.safetensors", "bias": "a.safetensors"}}"#,
    );
    match Weights::open_all(&[idx]) {
        Err(Error::KeyNotInShard { key, path }) => {
            assert_eq!(key, "bias");
            assert!(path.ends_with("a.safetensors"));
        }
        other => panic!("{other:?}"),
    }
}

/// Lays the fixtures out exactly as the hub cache does: `models--org--name/refs/main`,
/// `blobs/<hash>`, `snapshots/<sha>/<file>` symlinked to the blobs.
fn hub_cache(root: &Path) -> String {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = root.join("models--tiny-org--tiny-model");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::create_dir_all(repo.join("blobs")).expect("blobs");
    std::fs::write(repo.join("refs/main"), sha).expect("ref");
    let snap = repo.join("snapshots").join(sha);
    for entry in std::fs::read_dir(fixtures().join("tiny")).expect("fixtures") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let blob = repo
            .join("blobs")
            .join(format!("blob-{}", name.to_string_lossy()));
        std::fs::copy(entry.path(), &blob).expect("copy");
        std::fs::create_dir_all(snap.join("tiny")).expect("snap");
        std::os::unix::fs::symlink(&blob, snap.join("tiny").join(&name)).expect("link");
    }
    sha.to_string()
}

#[test]
fn offline_hub_cache_resolves_through_hf_hub() {
    let d = tmp();
    hub_cache(d.path());
    let opts = RepoOptions {
        offline: Some(true),
        cache_dir: Some(d.path().to_path_buf()),
        ..Default::default()
    };
    let repo = Repo::open("tiny-org/tiny-model", &opts).expect("open");
    assert!(repo.is_offline());
    let files = repo
        .weight_files("tiny", WeightsName::DIFFUSERS, Some("bf16"))
        .expect("files");
    assert!(
        files[0].ends_with("tiny/diffusion_pytorch_model.bf16.safetensors"),
        "{files:?}"
    );
    let w = repo
        .weights("tiny", WeightsName::DIFFUSERS, None)
        .expect("weights");
    let (m, _) = load_into(tiny(), &w, LoadOptions::default()).expect("load");
    check_tiny(&m, 0.0);
    let c: TinyConfig = repo.config("tiny/config.json").expect("config");
    assert_eq!(c.hidden, 8);
}

#[test]
fn hub_id_not_in_offline_cache() {
    let d = tmp();
    hub_cache(d.path());
    let opts = RepoOptions {
        offline: Some(true),
        cache_dir: Some(d.path().to_path_buf()),
        ..Default::default()
    };
    let repo = Repo::open("tiny-org/tiny-model", &opts).expect("open");
    match repo.get("tiny/absent.json") {
        Err(Error::NotInOfflineCache { repo, file, .. }) => {
            assert_eq!(
                (repo.as_str(), file.as_str()),
                ("tiny-org/tiny-model", "tiny/absent.json")
            );
        }
        other => panic!("{other:?}"),
    }
    let other = Repo::open("someone/not-cached", &opts).expect("open");
    assert!(matches!(other.list(), Err(Error::NotInOfflineCache { .. })));
    assert!(matches!(
        other.get("model_index.json"),
        Err(Error::NotInOfflineCache { .. })
    ));
}

#[test]
fn invalid_repo_id() {
    assert!(matches!(
        Repo::open("not a repo", &RepoOptions::default()),
        Err(Error::InvalidRepoId { .. })
    ));
    assert!(matches!(
        Repo::open("../x/y/z", &RepoOptions::default()),
        Err(Error::InvalidRepoId { .. })
    ));
}

/// The online path through hf-hub, against a local stand-in for the hub: listing, fetching only
/// the chosen weights (one file; an index and its shards), byte progress, the cache layout the
/// Python `huggingface_hub` uses, then the same files offline with no request, and the errors.
#[test]
fn hub_download_through_a_local_server() {
    use diffusers_core::repo::DownloadProgress;
    use diffusers_core::testing::HubServer;
    use std::sync::{Arc, Mutex};

    let cache = tmp();
    let server = HubServer::serve("tiny-org/tiny-model", &fixtures());
    let seen: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::default();
    let record = seen.clone();
    let opts = RepoOptions {
        offline: Some(false),
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(server.endpoint.clone()),
        progress: Some(DownloadProgress::new(move |d| {
            record
                .lock()
                .expect("progress lock")
                .push((d.file.to_string(), d.bytes, d.total));
        })),
        ..Default::default()
    };
    let repo = Repo::open("tiny-org/tiny-model", &opts).expect("open");
    assert!(!repo.is_offline());
    assert!(repo.has("tiny/config.json").expect("listing"));
    assert!(repo.list_dir("tiny").expect("listing").len() >= 7);

    let w = repo
        .weights("tiny", WeightsName::DIFFUSERS, None)
        .expect("weights");
    let (m, _) = load_into(tiny(), &w, LoadOptions::default()).expect("load");
    check_tiny(&m, 0.0);
    let c: TinyConfig = repo.config("tiny/config.json").expect("config");
    assert_eq!(c.hidden, 8);

    // Only the chosen format's file was downloaded, not the variants or the pickle.
    let gets: Vec<String> = server
        .requests()
        .into_iter()
        .filter_map(|r| r.strip_prefix("GET ").map(str::to_string))
        .filter(|r| !r.starts_with("/api/"))
        .collect();
    let resolve = |f: &str| format!("/tiny-org/tiny-model/resolve/main/tiny/{f}");
    assert_eq!(
        gets,
        [
            resolve("diffusion_pytorch_model.safetensors"),
            resolve("config.json")
        ]
    );

    // Progress ends at the file's size, for each downloaded file.
    let size = std::fs::metadata(fixtures().join("tiny/diffusion_pytorch_model.safetensors"))
        .expect("size")
        .len();
    let last = seen
        .lock()
        .expect("progress lock")
        .iter()
        .rev()
        .find(|(f, _, _)| f == "tiny/diffusion_pytorch_model.safetensors")
        .cloned();
    assert_eq!(
        last,
        Some((
            "tiny/diffusion_pytorch_model.safetensors".to_string(),
            size,
            size
        ))
    );

    // An index and its shards (the shards next to the index in the snapshot).
    let files = repo
        .weight_files("tiny", WeightsName::DIFFUSERS, Some("fp16"))
        .expect("sharded");
    assert!(
        files.len() == 1
            && files[0].ends_with("diffusion_pytorch_model.safetensors.index.fp16.json"),
        "{files:?}"
    );
    let w = repo
        .weights("tiny", WeightsName::DIFFUSERS, Some("fp16"))
        .expect("sharded weights");
    let (m, _) = load_into(tiny(), &w, LoadOptions::default()).expect("load fp16");
    check_tiny(&m, 1.0 / 1024.0);

    // The cache is laid out as huggingface_hub lays it out.
    let folder = cache.path().join("models--tiny-org--tiny-model");
    let commit = std::fs::read_to_string(folder.join("refs/main")).expect("refs/main");
    assert_eq!(commit.trim(), HubServer::COMMIT);
    let snap = folder.join("snapshots").join(HubServer::COMMIT);
    assert!(
        snap.join("tiny/diffusion_pytorch_model.safetensors")
            .is_file()
    );
    assert!(
        snap.join("tiny/diffusion_pytorch_model.fp16-00002-of-00002.safetensors")
            .is_file()
    );
    assert!(
        !snap
            .join("tiny/diffusion_pytorch_model.bf16.safetensors")
            .exists()
    );

    // Offline: the same files from the cache, no request at all.
    let before = server.requests().len();
    let offline = Repo::open(
        "tiny-org/tiny-model",
        &RepoOptions {
            offline: Some(true),
            endpoint: Some(server.endpoint.clone()),
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
    )
    .expect("open offline");
    let w = offline
        .weights("tiny", WeightsName::DIFFUSERS, None)
        .expect("offline weights");
    let (m, _) = load_into(tiny(), &w, LoadOptions::default()).expect("load");
    check_tiny(&m, 0.0);
    assert_eq!(server.requests().len(), before);

    // A file the repository lacks and a revision it lacks are errors naming them.
    match repo.get("tiny/absent.json") {
        Err(e @ Error::Hub { .. }) => assert!(e.to_string().contains("tiny/absent.json"), "{e}"),
        other => panic!("{other:?}"),
    }
    let branch = Repo::open(
        "tiny-org/tiny-model",
        &RepoOptions {
            revision: Some("no-such-branch".into()),
            ..opts.clone()
        },
    )
    .expect("open");
    match branch.list() {
        Err(e @ Error::Hub { .. }) => assert!(e.to_string().contains("@no-such-branch"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// A gated repository: without the right token every request is refused with what to do about
/// it; with it, the weights load.
#[test]
fn gated_hub_repository_needs_a_token() {
    use diffusers_core::testing::HubServer;
    let cache = tmp();
    let server = HubServer::serve_gated("tiny-org/gated", &fixtures(), "hf_right");
    let opts = |token: &str| RepoOptions {
        offline: Some(false),
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(server.endpoint.clone()),
        token: Some(token.into()),
        ..Default::default()
    };
    let refused = Repo::open("tiny-org/gated", &opts("hf_wrong")).expect("open");
    match refused.get("tiny/config.json") {
        Err(e @ Error::HubAccess { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("tiny/config.json") && m.contains("HF_TOKEN"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    match refused.list() {
        Err(Error::HubAccess { .. }) => {}
        other => panic!("{other:?}"),
    }
    let repo = Repo::open("tiny-org/gated", &opts("hf_right")).expect("open");
    let w = repo
        .weights("tiny", WeightsName::DIFFUSERS, None)
        .expect("weights with the token");
    let (m, _) = load_into(tiny(), &w, LoadOptions::default()).expect("load");
    check_tiny(&m, 0.0);
}
