//! The persistent kernel cache of the CUDA backend.
//!
//! burn 0.21's CUDA runtime (CubeCL 0.10) compiles every kernel with NVRTC the first time a
//! process launches it, and chooses among kernel variants by timing them (autotuning). Both cost
//! minutes per process at real model sizes. CubeCL can keep the compiled PTX and the autotune
//! choices on disk, but its compilation cache is off by default. [`init_kernel_cache`] turns both
//! on in one folder before the first CUDA client exists, so a second process on the same machine
//! loads its kernels instead of compiling them.
//!
//! The folder comes from [`KernelCache::from_env`]: `DIFFUSERS_KERNEL_CACHE` names it, `off`
//! (or `0`, `false`, `none`) leaves CubeCL's defaults alone (no compilation cache: what a
//! benchmark of a cold start wants), and without the variable it is
//! `$XDG_CACHE_HOME/diffusers-rs/kernels` (`~/.cache/diffusers-rs/kernels`).
//!
//! The compiled kernels are for this machine's GPU architecture: a folder shared between
//! machines with different GPUs (a network home folder) should be set per machine.
//!
//! ```
//! use diffusers_core::backend::kernel_cache::{KernelCache, init_kernel_cache};
//!
//! // An application calls this once, before it creates its first CUDA tensor.
//! let cache = KernelCache::parse(Some("off"), None);
//! assert_eq!(cache, KernelCache::Off);
//! let status = init_kernel_cache(&cache);
//! assert!(status.dir().is_none());
//! ```

use std::path::{Path, PathBuf};

/// The environment variable naming the kernel cache folder (or `off`).
pub const ENV_VAR: &str = "DIFFUSERS_KERNEL_CACHE";

/// Where the CUDA kernels and autotune results are kept between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCache {
    /// No persistent compilation cache (CubeCL's defaults).
    Off,
    /// Compiled kernels and autotune results in this folder.
    Dir(PathBuf),
}

impl KernelCache {
    /// The cache `DIFFUSERS_KERNEL_CACHE` asks for, or the per-user default folder.
    pub fn from_env() -> Self {
        let value = std::env::var_os(ENV_VAR).map(|v| v.to_string_lossy().into_owned());
        Self::parse(value.as_deref(), default_dir())
    }

    /// The cache a value of `DIFFUSERS_KERNEL_CACHE` asks for: `off`, `0`, `false`, `none` or
    /// an empty value turn it off, anything else is a folder; without a value, `default`
    /// (off when there is none).
    ///
    /// ```
    /// use std::path::PathBuf;
    /// use diffusers_core::backend::kernel_cache::KernelCache;
    ///
    /// let home = Some(PathBuf::from("/home/me/.cache/diffusers-rs/kernels"));
    /// assert_eq!(KernelCache::parse(None, home.clone()), KernelCache::Dir(home.unwrap()));
    /// assert_eq!(KernelCache::parse(Some("/scratch/k"), None), KernelCache::Dir("/scratch/k".into()));
    /// assert_eq!(KernelCache::parse(Some("OFF"), None), KernelCache::Off);
    /// ```
    pub fn parse(value: Option<&str>, default: Option<PathBuf>) -> Self {
        match value.map(str::trim) {
            None => default.map_or(Self::Off, Self::Dir),
            Some("") => Self::Off,
            Some(v)
                if ["off", "0", "false", "none"]
                    .iter()
                    .any(|o| v.eq_ignore_ascii_case(o)) =>
            {
                Self::Off
            }
            Some(v) => Self::Dir(PathBuf::from(v)),
        }
    }
}

/// `$XDG_CACHE_HOME/diffusers-rs/kernels`, or `$HOME/.cache/diffusers-rs/kernels`; `None`
/// when neither variable is set to an absolute path.
pub fn default_dir() -> Option<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("diffusers-rs").join("kernels"))
}

/// What [`init_kernel_cache`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCacheStatus {
    /// Kernels and autotune results are kept in this folder.
    Enabled(PathBuf),
    /// The cache was asked off; CubeCL's defaults apply.
    Off,
    /// This build has no CUDA backend: nothing to cache.
    NotCompiled,
    /// CubeCL's configuration was already read (a CUDA client exists, or another call came
    /// first): it cannot change in this process.
    TooLate,
    /// The folder could not be created; the process runs without the cache.
    Unavailable {
        /// The folder.
        dir: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
}

impl KernelCacheStatus {
    /// The folder in use, when the cache is on.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Self::Enabled(d) => Some(d),
            _ => None,
        }
    }
}

/// Turns on CubeCL's persistent compilation cache and points its autotune cache at the same
/// folder (`<dir>/cubecl`), keeping every other setting CubeCL would read (a `cubecl.toml`,
/// `CUBECL_*` variables). Call it once, before the first CUDA tensor; later calls, and calls
/// after a CUDA client was created, change nothing and say [`KernelCacheStatus::TooLate`].
/// Never fails: a folder that cannot be created is reported and the process goes on without it.
pub fn init_kernel_cache(cache: &KernelCache) -> KernelCacheStatus {
    let KernelCache::Dir(dir) = cache else {
        return KernelCacheStatus::Off;
    };
    if !cfg!(feature = "cuda") {
        return KernelCacheStatus::NotCompiled;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        let status = KernelCacheStatus::Unavailable {
            dir: dir.clone(),
            reason: e.to_string(),
        };
        tracing::warn!(
            "kernel cache {}: {e}; kernels will be compiled",
            dir.display()
        );
        return status;
    }
    configure(dir)
}

#[cfg(feature = "cuda")]
fn configure(dir: &Path) -> KernelCacheStatus {
    use burn_cubecl::cubecl::config::cache::CacheConfig;
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    use std::sync::Arc;

    let mut state = CubeClRuntimeConfig::storage().lock();
    if state.is_some() {
        return KernelCacheStatus::TooLate;
    }
    // What `CubeClRuntimeConfig::get` would have read, with the two cache locations set.
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    let root = dir.join("cubecl");
    config.compilation.cache = Some(CacheConfig::File(root.clone()));
    config.autotune.cache = CacheConfig::File(root);
    *state = Some(Arc::new(config));
    tracing::debug!("kernel cache in {}", dir.display());
    KernelCacheStatus::Enabled(dir.to_path_buf())
}

#[cfg(not(feature = "cuda"))]
fn configure(_dir: &Path) -> KernelCacheStatus {
    KernelCacheStatus::NotCompiled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_the_variable() {
        let d = Some(PathBuf::from("/c/k"));
        assert_eq!(
            KernelCache::parse(None, d.clone()),
            KernelCache::Dir("/c/k".into())
        );
        assert_eq!(KernelCache::parse(None, None), KernelCache::Off);
        for off in ["off", "0", "false", "None", "", "  "] {
            assert_eq!(
                KernelCache::parse(Some(off), d.clone()),
                KernelCache::Off,
                "{off:?}"
            );
        }
        assert_eq!(
            KernelCache::parse(Some(" rel/dir "), d),
            KernelCache::Dir("rel/dir".into())
        );
    }

    /// One test for the whole sequence: CubeCL's configuration is set once per process.
    #[test]
    fn init_sets_cubecl_config_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        assert_eq!(init_kernel_cache(&KernelCache::Off), KernelCacheStatus::Off);
        let status = init_kernel_cache(&KernelCache::Dir(dir.clone()));
        if !cfg!(feature = "cuda") {
            assert_eq!(status, KernelCacheStatus::NotCompiled);
            return;
        }
        assert_eq!(status, KernelCacheStatus::Enabled(dir.clone()));
        assert!(dir.is_dir());
        #[cfg(feature = "cuda")]
        {
            use burn_cubecl::cubecl::config::cache::CacheConfig;
            use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
            let config = CubeClRuntimeConfig::get();
            let root = dir.join("cubecl");
            assert!(matches!(&config.compilation.cache, Some(CacheConfig::File(p)) if *p == root));
            assert!(matches!(&config.autotune.cache, CacheConfig::File(p) if *p == root));
        }
        // A second call cannot change what CubeCL already holds.
        let other = tmp.path().join("other");
        assert_eq!(
            init_kernel_cache(&KernelCache::Dir(other)),
            KernelCacheStatus::TooLate
        );
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let status = init_kernel_cache(&KernelCache::Dir(file.join("sub")));
        if cfg!(feature = "cuda") {
            assert!(
                matches!(status, KernelCacheStatus::Unavailable { .. }),
                "{status:?}"
            );
        } else {
            assert_eq!(status, KernelCacheStatus::NotCompiled);
        }
    }
}
