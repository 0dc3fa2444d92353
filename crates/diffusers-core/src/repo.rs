//! Repositories in the diffusers layout: a local folder, or a hub id resolved through `hf-hub`
//! with its cache, honouring `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE`.
//!
//! Only the files a component needs are fetched: [`Repo::weights`] lists the component's
//! folder, picks one format and variant, and fetches that file (or the index and its shards).

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hf_hub::HFRepositorySync;
use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::repository::RepoTreeEntry;
use hf_hub::{HFClient, HFError, RepoTypeModel};

use crate::config::{Config, load_config};
use crate::weights::files::{WeightPlan, WeightsName, resolve_weight_files};
use crate::weights::{Weights, read_shard_index};
use crate::{Error, Result};

/// How to open a repository.
#[derive(Debug, Clone, Default)]
pub struct RepoOptions {
    /// Git revision (branch, tag or commit) of a hub repository; `main` by default.
    pub revision: Option<String>,
    /// Never touch the network. `None` reads `HF_HUB_OFFLINE` (hf-hub itself ignores it).
    pub offline: Option<bool>,
    /// The hub cache folder. `None`: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Access token; `None` lets hf-hub read `HF_TOKEN` or the token file.
    pub token: Option<String>,
    /// Hub endpoint; `None` lets hf-hub read `HF_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Told the bytes of every file fetched from the hub as they arrive (nothing for files
    /// already in the cache or in a local folder).
    pub progress: Option<DownloadProgress>,
}

/// One file's download, as [`DownloadProgress`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Download<'a> {
    /// The file's path in the repository.
    pub file: &'a str,
    /// Bytes received so far.
    pub bytes: u64,
    /// The file's size as the hub announced it (0 when it did not).
    pub total: u64,
}

/// A download progress callback for [`RepoOptions::progress`].
///
/// It is called from the download's worker threads, so it must be `Send + Sync` and must not
/// block (drawing a progress bar is fine).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use diffusers_core::repo::{DownloadProgress, RepoOptions};
///
/// let received = Arc::new(AtomicU64::new(0));
/// let seen = received.clone();
/// let opts = RepoOptions {
///     progress: Some(DownloadProgress::new(move |d| seen.store(d.bytes, Ordering::Relaxed))),
///     ..Default::default()
/// };
/// # let _ = opts;
/// ```
#[derive(Clone)]
pub struct DownloadProgress(Arc<dyn Fn(Download<'_>) + Send + Sync>);

impl DownloadProgress {
    /// Wraps a callback.
    pub fn new(f: impl Fn(Download<'_>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for DownloadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownloadProgress")
    }
}

/// Turns hf-hub's events for one file into [`Download`]s (hf-hub's types stay out of our API).
struct FileProgress {
    file: String,
    report: DownloadProgress,
}

impl ProgressHandler for FileProgress {
    fn on_progress(&self, event: &ProgressEvent) {
        let (bytes, total) = match event {
            ProgressEvent::Download(DownloadEvent::Start { total_bytes, .. }) => (0, *total_bytes),
            ProgressEvent::Download(DownloadEvent::Progress { files }) => {
                match files.iter().find(|f| f.filename == self.file) {
                    Some(f) => (f.bytes_completed, f.total_bytes),
                    None => return,
                }
            }
            ProgressEvent::Download(DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            }) => (*bytes_completed, *total_bytes),
            _ => return,
        };
        (self.report.0)(Download {
            file: &self.file,
            bytes,
            total,
        });
    }
}

/// huggingface_hub's reading of a boolean environment variable (`1`, `ON`, `YES`, `TRUE`).
fn truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

fn env_truthy(name: &str) -> bool {
    truthy(std::env::var(name).ok().as_deref())
}

/// The hub cache folder as huggingface_hub computes it.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) =
        std::env::var_os("HF_HUB_CACHE").or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE"))
    {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_default()
                        .join(".cache")
                });
            base.join("huggingface")
        });
    home.join("hub")
}

/// Whether `id` is a syntactically valid hub id (`org/name`).
pub fn is_hub_id(id: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(id.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

struct HubRepo {
    id: String,
    revision: String,
    offline: bool,
    cache_dir: PathBuf,
    repo: HFRepositorySync<RepoTypeModel>,
    listing: OnceCell<Vec<String>>,
    progress: Option<DownloadProgress>,
}

impl HubRepo {
    fn error(&self, file: &str, e: HFError) -> Error {
        hub_error(&self.id, &self.revision, file, &self.cache_dir, e)
    }
}

/// hf-hub's error as ours: a file missing from the offline cache, access refused (with what to
/// do about it), or the client's message with the repository, revision and file.
fn hub_error(repo: &str, revision: &str, file: &str, cache: &Path, e: HFError) -> Error {
    let (repo, file) = (repo.to_string(), file.to_string());
    match e {
        HFError::LocalEntryNotFound { .. } => Error::NotInOfflineCache {
            repo,
            file,
            cache: cache.to_path_buf(),
        },
        // hf-hub maps 401/403 to these for files, and to a plain HTTP error for listings.
        e @ (HFError::AuthRequired { .. } | HFError::Forbidden { .. }) => Error::HubAccess {
            repo,
            file,
            reason: e.to_string(),
        },
        HFError::Http { ref context } if matches!(context.status.as_u16(), 401 | 403) => {
            Error::HubAccess {
                repo,
                file,
                reason: e.to_string(),
            }
        }
        e => Error::Hub {
            repo,
            revision: revision.to_string(),
            file,
            reason: e.to_string(),
        },
    }
}

enum Kind {
    Local(PathBuf),
    Hub(Box<HubRepo>),
}

/// A model repository in the diffusers (or transformers) layout.
pub struct Repo {
    kind: Kind,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo({})", self.name())
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}

impl Repo {
    /// Opens a local folder, or else a hub repository id.
    ///
    /// ```no_run
    /// use diffusers_core::repo::{Repo, RepoOptions};
    /// let repo = Repo::open("black-forest-labs/FLUX.1-schnell", &RepoOptions::default())?;
    /// let config = repo.get("transformer/config.json")?;
    /// # Ok::<(), diffusers_core::Error>(())
    /// ```
    pub fn open(id_or_dir: &str, opts: &RepoOptions) -> Result<Self> {
        let as_path = Path::new(id_or_dir);
        if as_path.is_dir() {
            return Ok(Self {
                kind: Kind::Local(as_path.to_path_buf()),
            });
        }
        if !is_hub_id(id_or_dir) {
            return Err(Error::InvalidRepoId {
                id: id_or_dir.to_string(),
            });
        }
        let offline = opts.offline.unwrap_or_else(|| env_truthy("HF_HUB_OFFLINE"));
        let cache_dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let revision = opts.revision.clone().unwrap_or_else(|| "main".into());
        let hub_err = |e: HFError| hub_error(id_or_dir, &revision, "*", &cache_dir, e);
        let mut builder = HFClient::builder().cache_dir(&cache_dir);
        if let Some(t) = &opts.token {
            builder = builder.token(t.clone());
        }
        if let Some(e) = &opts.endpoint {
            builder = builder.endpoint(e.clone());
        }
        let client = builder.build_sync().map_err(hub_err)?;
        let (org, name) = id_or_dir.split_once('/').unwrap_or_default();
        let repo = client.model(org, name);
        Ok(Self {
            kind: Kind::Hub(Box::new(HubRepo {
                id: id_or_dir.to_string(),
                revision,
                offline,
                cache_dir,
                repo,
                listing: OnceCell::new(),
                progress: opts.progress.clone(),
            })),
        })
    }

    /// The folder path or hub id.
    pub fn name(&self) -> String {
        match &self.kind {
            Kind::Local(p) => p.display().to_string(),
            Kind::Hub(h) => h.id.clone(),
        }
    }

    /// The folder of a local repository (`None` for a hub one).
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local(p) => Some(p),
            Kind::Hub(_) => None,
        }
    }

    /// Whether this is a hub repository in offline mode.
    pub fn is_offline(&self) -> bool {
        matches!(&self.kind, Kind::Hub(h) if h.offline)
    }

    /// Every file in the repository, as `/`-separated relative paths, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        match &self.kind {
            Kind::Local(root) => {
                let mut out = Vec::new();
                walk(root, root, &mut out)?;
                out.sort();
                Ok(out)
            }
            Kind::Hub(h) => {
                if let Some(l) = h.listing.get() {
                    return Ok(l.clone());
                }
                let listing = if h.offline {
                    let folder = h
                        .cache_dir
                        .join(format!("models--{}", h.id.replace('/', "--")));
                    let commit = if h.revision.len() == 40
                        && h.revision.chars().all(|c| c.is_ascii_hexdigit())
                    {
                        h.revision.clone()
                    } else {
                        let r = folder.join("refs").join(&h.revision);
                        std::fs::read_to_string(&r)
                            .map_err(|_| Error::NotInOfflineCache {
                                repo: h.id.clone(),
                                file: format!("refs/{}", h.revision),
                                cache: h.cache_dir.clone(),
                            })?
                            .trim()
                            .to_string()
                    };
                    let snap = folder.join("snapshots").join(commit);
                    let mut out = Vec::new();
                    walk(&snap, &snap, &mut out)?;
                    out
                } else {
                    h.repo
                        .list_tree()
                        .revision(h.revision.clone())
                        .recursive(true)
                        .send()
                        .map_err(|e| h.error("*", e))?
                        .into_iter()
                        .filter_map(|e| match e {
                            RepoTreeEntry::File { path, .. } => Some(path),
                            _ => None,
                        })
                        .collect()
                };
                let mut listing = listing;
                listing.sort();
                Ok(h.listing.get_or_init(|| listing).clone())
            }
        }
    }

    /// The file names directly inside `subfolder` (`""` for the root).
    pub fn list_dir(&self, subfolder: &str) -> Result<Vec<String>> {
        let prefix = if subfolder.is_empty() {
            String::new()
        } else {
            format!("{}/", subfolder.trim_end_matches('/'))
        };
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|f| f.strip_prefix(&prefix).map(str::to_string))
            .filter(|f| !f.contains('/'))
            .collect())
    }

    /// Whether the repository has this file (from the listing; fetches nothing).
    pub fn has(&self, file: &str) -> Result<bool> {
        Ok(self.list()?.iter().any(|f| f == file))
    }

    /// The local path of one file, fetching it into the cache if needed (never in offline mode).
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        match &self.kind {
            Kind::Local(root) => {
                let p = root.join(file);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::FileNotFound { path: p })
                }
            }
            Kind::Hub(h) => h
                .repo
                .download_file()
                .filename(file)
                .revision(h.revision.clone())
                .local_files_only(h.offline)
                .maybe_progress(h.progress.clone().map(|report| FileProgress {
                    file: file.to_string(),
                    report,
                }))
                .send()
                .map_err(|e| h.error(file, e)),
        }
    }

    /// Reads a config file from the repository.
    pub fn config<C: Config>(&self, file: &str) -> Result<C> {
        load_config(self.get(file)?)
    }

    /// Fetches only the weight files of one component (one format, one variant) and returns
    /// their local paths: the single file, or the index followed by its shards.
    pub fn weight_files(
        &self,
        subfolder: &str,
        name: WeightsName<'_>,
        variant: Option<&str>,
    ) -> Result<Vec<PathBuf>> {
        let available = self.list_dir(subfolder)?;
        let dir = if subfolder.is_empty() {
            self.name()
        } else {
            format!("{}/{subfolder}", self.name())
        };
        let (plan, _format) = resolve_weight_files(&available, &dir, name, variant)?;
        let join = |f: &str| {
            if subfolder.is_empty() {
                f.to_string()
            } else {
                format!("{}/{f}", subfolder.trim_end_matches('/'))
            }
        };
        match plan {
            WeightPlan::Single(f) => Ok(vec![self.get(&join(&f))?]),
            WeightPlan::Sharded(index) => {
                let index_path = self.get(&join(&index))?;
                let (shards, _) = read_shard_index(&index_path)?;
                let mut out = vec![index_path];
                for s in shards {
                    // Fetched so that hub shards land next to the index in the snapshot.
                    self.get(&join(&s))?;
                }
                out.shrink_to_fit();
                Ok(out)
            }
        }
    }

    /// Opens one component's weights (see [`Repo::weight_files`]).
    pub fn weights(
        &self,
        subfolder: &str,
        name: WeightsName<'_>,
        variant: Option<&str>,
    ) -> Result<Weights> {
        Weights::open_all(&self.weight_files(subfolder, name, variant)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_values_as_huggingface_hub_reads_them() {
        for v in ["1", "ON", "yes", "True"] {
            assert!(truthy(Some(v)), "{v}");
        }
        for v in ["0", "off", "", "no"] {
            assert!(!truthy(Some(v)), "{v}");
        }
        assert!(!truthy(None));
    }

    #[test]
    fn hub_ids() {
        assert!(is_hub_id("black-forest-labs/FLUX.1-dev"));
        assert!(!is_hub_id("flux"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("../x"));
        assert!(!is_hub_id("a/.."));
    }
}
