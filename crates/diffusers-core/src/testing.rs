//! Test support shared by every crate's parity tests: the oracle's fixtures and comparisons.
//!
//! Fixtures are `<stem>.safetensors` + `<stem>.json` pairs under `fixtures/`, written by
//! `cargo xtask fixtures`. Helpers here panic with a clear message, as tests should.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use crate::weights::{LoadOptions, Weights, load_into};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde_json::Value;

/// The committed fixtures folder (`DIFFUSERS_FIXTURES` overrides it, e.g. on another machine).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("DIFFUSERS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures")))
}

/// One fixture file: `<stem>.safetensors` + `<stem>.json` with named cases.
pub struct Fixture {
    pub weights: Weights,
    pub cases: Value,
}

impl Fixture {
    pub fn open(stem: &str) -> Self {
        let dir = fixtures_dir();
        let weights = Weights::open(dir.join(format!("{stem}.safetensors")))
            .unwrap_or_else(|e| panic!("fixture {stem}: {e}"));
        // Python's json: non-finite config values are `-Infinity` etc., as diffusers saves them.
        let json: Value = crate::json::read(&dir.join(format!("{stem}.json")))
            .unwrap_or_else(|e| panic!("fixture {stem}.json: {e}"));
        Self {
            weights,
            cases: json["cases"].clone(),
        }
    }

    pub fn case(&self, name: &str) -> &Value {
        let c = &self.cases[name];
        assert!(!c.is_null(), "no fixture case {name}");
        c
    }

    pub fn tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        device: &B::Device,
        dtype: DType,
    ) -> Tensor<B, D> {
        let data = self
            .weights
            .read(key)
            .unwrap_or_else(|e| panic!("fixture tensor {key}: {e}"));
        Tensor::from_data(data, (device, dtype))
    }

    pub fn values(&self, key: &str) -> Vec<f32> {
        self.weights
            .read(key)
            .unwrap_or_else(|e| panic!("fixture tensor {key}: {e}"))
            .convert::<f32>()
            .into_vec()
            .expect("f32 values")
    }

    /// Loads `<case>.params.<prefix>*` into a module, failing on any missing or extra key.
    pub fn load<B: Backend, M: Module<B>>(
        &self,
        module: M,
        case: &str,
        prefix: &str,
        dtype: DType,
    ) -> M {
        let prefix = format!("{case}.params.{prefix}");
        let (m, report) = load_into(
            module,
            &self.weights,
            LoadOptions {
                dtype: Some(dtype),
                prefix: &prefix,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("loading {case}: {e}"));
        assert!(report.missing.is_empty() && report.unexpected.is_empty());
        m
    }
}

/// A tolerance: `|actual - expected| <= atol + rtol * |expected|` everywhere.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

/// f32 parity, as the foundation issue requires.
pub const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

/// f32 on CUDA wherever matrix products are involved: burn 0.21's CUDA matmul (cubek-matmul 0.2)
/// stages f32 operands as TF32 (10-bit mantissa) whenever autotuning picks a tensor-core kernel
/// (`adjust_dtypes` in its `definition/blueprint.rs`), where PyTorch's default keeps f32. Measured
/// on an H200 (max abs, outputs of magnitude ~1): linear 4.3e-4, conv2d 6.4e-4, causal conv3d
/// 1.4e-3, SDPA 8.3e-4, a Flux transformer call 7.0e-4, the Flux pipeline's image 6.2e-4, the SD
/// pipeline's image 1.3e-3. Layers without matrix products stay at [`F32`] on CUDA.
pub const TF32: Tol = Tol {
    atol: 5e-3,
    rtol: 5e-3,
};

/// Compares a tensor with the expected values and returns the max absolute error.
pub fn assert_close<B: Backend, const D: usize>(
    actual: Tensor<B, D>,
    expected: &[f32],
    expected_shape: Option<&[usize]>,
    tol: Tol,
    what: &str,
) -> f32 {
    if let Some(s) = expected_shape {
        assert_eq!(actual.dims().as_slice(), s, "{what}: shape");
    }
    let a: Vec<f32> = actual
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 data");
    assert_eq!(a.len(), expected.len(), "{what}: element count");
    let mut max_abs = 0f32;
    let mut worst = None;
    for (i, (&x, &e)) in a.iter().zip(expected).enumerate() {
        let err = (x - e).abs();
        assert!(x.is_finite() == e.is_finite(), "{what}[{i}]: {x} vs {e}");
        if !err.is_nan() && err > max_abs {
            max_abs = err;
        }
        if err > tol.atol + tol.rtol * e.abs() || err.is_nan() {
            worst.get_or_insert((i, x, e, err));
        }
    }
    if let Some((i, x, e, err)) = worst {
        panic!(
            "{what}: element {i} is {x}, expected {e} (error {err:e}; max abs error {max_abs:e}; tolerance {tol:?})"
        );
    }
    eprintln!("{what}: max abs error {max_abs:e}");
    max_abs
}

/// Builds an f32 tensor from host values.
pub fn host<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// A stand-in for the Hugging Face hub on `127.0.0.1`, for testing downloads without a network:
/// it serves one folder as the model repository `repo_id` at revision `main` (commit
/// [`HubServer::COMMIT`]) through the endpoints hf-hub calls: the tree listing
/// (`GET /api/models/{id}/tree/{rev}`) and each file's `HEAD` and `GET`
/// (`/{id}/resolve/{rev}/{path}`, with the `ETag`, `X-Repo-Commit` and `Content-Length` headers the
/// hub sends). Anything else is a 404 with the hub's `X-Error-Code`. Every request is recorded.
/// [`HubServer::serve_gated`] answers 401, as the hub does for a gated repository, unless the
/// request carries the token.
pub struct HubServer {
    /// `http://127.0.0.1:PORT`, for `RepoOptions::endpoint` or `HF_ENDPOINT`.
    pub endpoint: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    addr: std::net::SocketAddr,
}

impl HubServer {
    /// The commit every file is served at.
    pub const COMMIT: &'static str = "c0ffee0000000000000000000000000000000001";

    pub fn serve(repo_id: &str, folder: &std::path::Path) -> Self {
        Self::start(repo_id, folder, None)
    }

    /// Like [`HubServer::serve`], but every request needs `Authorization: Bearer TOKEN`.
    pub fn serve_gated(repo_id: &str, folder: &std::path::Path, token: &str) -> Self {
        Self::start(repo_id, folder, Some(token.to_string()))
    }

    fn start(repo_id: &str, folder: &std::path::Path, token: Option<String>) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("address");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let (id, root) = (repo_id.to_string(), folder.to_path_buf());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (log, id, root, token) = (log.clone(), id.clone(), root.clone(), token.clone());
                std::thread::spawn(move || hub_respond(stream, &id, &root, token.as_deref(), &log));
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            requests,
            stop,
            addr,
        }
    }

    /// The requests so far, as `METHOD /path` (query strings dropped).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// `%XX` escapes decoded (hf-hub escapes each path segment).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A content hash for the served `ETag` (FNV-1a, 64 bits, hex): the cache names blobs by it.
fn hub_etag(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn hub_respond(
    mut stream: std::net::TcpStream,
    id: &str,
    root: &std::path::Path,
    token: Option<&str>,
    log: &std::sync::Mutex<Vec<String>>,
) {
    use std::io::{Read, Write};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = percent_decode(target.split('?').next().unwrap_or(""));
    log.lock().unwrap().push(format!("{method} {path}"));
    let known_rev = |rev: &str| rev == "main" || rev == HubServer::COMMIT;
    let not_found = |code: &str| {
        (
            404,
            vec![("X-Error-Code".to_string(), code.to_string())],
            Vec::new(),
        )
    };
    let authorized = token.is_none_or(|t| {
        head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {t}")
            })
        })
    });
    let (status, headers, body): (u16, Vec<(String, String)>, Vec<u8>) = if !authorized {
        let message = format!(
            "Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."
        );
        (
            401,
            vec![
                ("X-Error-Code".into(), "GatedRepo".into()),
                ("X-Error-Message".into(), message),
            ],
            Vec::new(),
        )
    } else if let Some(rest) = path.strip_prefix(&format!("/api/models/{id}/tree/")) {
        if known_rev(rest.trim_end_matches('/')) {
            // The folder's files as a local `Repo` lists them (sorted, `/`-separated).
            let files = crate::repo::Repo::open(&root.to_string_lossy(), &Default::default())
                .and_then(|r| r.list())
                .unwrap();
            let entries: Vec<Value> = files
                .iter()
                .map(|f| {
                    let bytes = std::fs::read(root.join(f)).unwrap();
                    serde_json::json!({"type": "file", "oid": hub_etag(&bytes),
                            "size": bytes.len(), "path": f})
                })
                .collect();
            let json = serde_json::to_vec(&entries).unwrap();
            (
                200,
                vec![("Content-Type".into(), "application/json".into())],
                json,
            )
        } else {
            not_found("RevisionNotFound")
        }
    } else if let Some(rest) = path.strip_prefix(&format!("/{id}/resolve/")) {
        let (rev, file) = rest.split_once('/').unwrap_or((rest, ""));
        let full = root.join(file);
        if !known_rev(rev) {
            not_found("RevisionNotFound")
        } else if file.is_empty() || file.contains("..") || !full.is_file() {
            not_found("EntryNotFound")
        } else {
            let bytes = std::fs::read(&full).unwrap();
            let headers = vec![
                ("ETag".into(), format!("\"{}\"", hub_etag(&bytes))),
                ("X-Repo-Commit".into(), HubServer::COMMIT.into()),
            ];
            (200, headers, bytes)
        }
    } else {
        not_found("RepoNotFound")
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Not Found",
        },
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
}
