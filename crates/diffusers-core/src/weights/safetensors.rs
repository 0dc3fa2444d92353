//! Memory-mapped safetensors files, parsed with checks that name the file and key in every error.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use serde::Deserialize;

use super::TensorInfo;
use crate::{Error, Result};

/// The largest header accepted, as in the `safetensors` crate (100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// One safetensors file, memory-mapped: tensors are copied out one at a time, on demand.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    entries: BTreeMap<String, (TensorInfo, (usize, usize))>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Maps a safetensors dtype name to burn's dtype, or `None` when it is not a float type.
pub(crate) fn float_dtype(name: &str) -> Option<DType> {
    match name {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        "F64" => Some(DType::F64),
        _ => None,
    }
}

fn dtype_size(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Opens and validates a safetensors file without reading its tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the mapping is read-only. Like every mmap-based loader (safetensors, candle,
        // burn-store) this assumes the file is not truncated by another process while mapped.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self> {
        let file_len = mmap.len() as u64;
        if file_len < 8 {
            return Err(Error::Truncated {
                path,
                reason: format!("{file_len} bytes, shorter than the 8-byte header length"),
            });
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&mmap[..8]);
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge {
                path,
                header_len,
                limit: MAX_HEADER_LEN,
            });
        }
        if 8 + header_len > file_len {
            return Err(Error::HeaderBeyondFile {
                path,
                header_len,
                file_len,
            });
        }
        let data_start = 8 + header_len as usize;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&mmap[8..data_start]).map_err(|e| {
                Error::InvalidSafetensors {
                    path: path.clone(),
                    reason: format!("header is not a JSON object: {e}"),
                }
            })?;
        let data_len = mmap.len() - data_start;
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (key, value) in header {
            if key == "__metadata__" {
                metadata =
                    serde_json::from_value(value).map_err(|e| Error::InvalidSafetensors {
                        path: path.clone(),
                        reason: format!("__metadata__ is not a string map: {e}"),
                    })?;
                continue;
            }
            let raw: RawEntry =
                serde_json::from_value(value).map_err(|e| Error::InvalidSafetensors {
                    path: path.clone(),
                    reason: format!("entry `{key}`: {e}"),
                })?;
            let (start, end) = raw.data_offsets;
            if end > data_len {
                return Err(Error::Truncated {
                    path,
                    reason: format!(
                        "tensor `{key}` ends at byte {end} of the data section, which holds {data_len} bytes"
                    ),
                });
            }
            let numel = raw
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| Error::InvalidSafetensors {
                    path: path.clone(),
                    reason: format!("tensor `{key}`: shape {:?} overflows", raw.shape),
                })?;
            let expected = dtype_size(&raw.dtype).and_then(|s| s.checked_mul(numel));
            if start > end || expected.is_some_and(|n| n != end - start) {
                return Err(Error::InvalidSafetensors {
                    path,
                    reason: format!(
                        "tensor `{key}`: offsets {start}..{end} do not fit dtype {} and shape {:?}",
                        raw.dtype, raw.shape
                    ),
                });
            }
            let info = TensorInfo {
                dtype: raw.dtype,
                shape: raw.shape,
                file: path.clone(),
            };
            entries.insert(key, (info, (start, end)));
        }
        Ok(Self {
            path,
            mmap,
            data_start,
            entries,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names in this file, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Dtype and shape of one tensor.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.entries.get(key).map(|(i, _)| i)
    }

    /// Reads one tensor, in its stored dtype. On Unix this is [`read_unmapped`]: the file's
    /// pages never join the process's resident memory, so loading a component holds its
    /// tensors once, not also the pages they were copied from.
    ///
    /// [`read_unmapped`]: Self::read_unmapped
    pub fn read(&self, key: &str) -> Result<TensorData> {
        if cfg!(unix) {
            return self.read_unmapped(key);
        }
        self.read_mapped(key)
    }

    /// Copies one tensor out of the mapping, in its stored dtype.
    pub fn read_mapped(&self, key: &str) -> Result<TensorData> {
        let (info, (start, end), dtype) = self.entry(key)?;
        let src = &self.mmap[self.data_start + start..self.data_start + end];
        let bytes = match dtype.size() {
            8 => copy_out::<u64>(src),
            4 => copy_out::<u32>(src),
            2 => copy_out::<u16>(src),
            _ => copy_out::<u8>(src),
        };
        Ok(TensorData::from_bytes(bytes, info.shape.clone(), dtype))
    }

    /// Reads one tensor with positioned reads of the file instead of through the mapping, so
    /// its pages never count in this process's resident memory (only in the page cache):
    /// offloading re-reads weights this way while their copies are resident.
    pub fn read_unmapped(&self, key: &str) -> Result<TensorData> {
        #[cfg(unix)]
        {
            let (info, (start, end), dtype) = self.entry(key)?;
            let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let offset = (self.data_start + start) as u64;
            let len = end - start;
            let bytes = match dtype.size() {
                8 => pread_out::<u64>(&file, offset, len),
                4 => pread_out::<u32>(&file, offset, len),
                2 => pread_out::<u16>(&file, offset, len),
                _ => pread_out::<u8>(&file, offset, len),
            }
            .map_err(|e| Error::io(&self.path, e))?;
            Ok(TensorData::from_bytes(bytes, info.shape.clone(), dtype))
        }
        #[cfg(not(unix))]
        self.read_mapped(key)
    }

    /// A tensor's info, data range and burn dtype (floats, and the byte types packed weights
    /// are stored in).
    fn entry(&self, key: &str) -> Result<(&TensorInfo, (usize, usize), DType)> {
        let (info, range) = self.entries.get(key).ok_or_else(|| Error::MissingKeys {
            path: self.path.clone(),
            keys: vec![key.to_string()],
        })?;
        let byte_dtype = match info.dtype.as_str() {
            "U8" => Some(DType::U8),
            "I8" => Some(DType::I8),
            _ => None,
        };
        let dtype =
            float_dtype(&info.dtype)
                .or(byte_dtype)
                .ok_or_else(|| Error::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: info.dtype.clone(),
                })?;
        Ok((info, *range, dtype))
    }
}

/// Reads `len` bytes at `offset` of `file` into a new buffer of `T`s (aligned for the dtype).
#[cfg(unix)]
fn pread_out<T: bytemuck::Pod + Send + Sync>(
    file: &File,
    offset: u64,
    len: usize,
) -> std::io::Result<burn::tensor::Bytes> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    const PIECE: usize = 1 << 20;
    // Zeroed allocation: fresh zero pages from the OS, touched first by the reads.
    let mut dst = vec![T::zeroed(); len / size_of::<T>()];
    let dst_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut dst);
    if len < 4 * PIECE {
        file.read_exact_at(dst_bytes, offset)?;
    } else {
        // Large tensors in 1 MiB pieces on rayon's pool (as `copy_out`), so the copies out of
        // the page cache and the page faults of the buffer are spread over every core.
        dst_bytes
            .par_chunks_mut(PIECE)
            .enumerate()
            .try_for_each(|(i, d)| file.read_exact_at(d, offset + (i * PIECE) as u64))?;
    }
    Ok(burn::tensor::Bytes::from_elems(dst))
}

/// Copies `src` (a region of the mapping) into a new buffer of `T`s (the tensor's element
/// size, so the buffer is aligned for its dtype: burn's `from_bytes_vec` would copy a byte
/// vector a second time, on one thread, to align it); large tensors in 1 MiB pieces on
/// rayon's pool, so the page faults of both the mapping and the fresh buffer, and the copy
/// itself, are spread over every core (one thread moved about 1 GB/s). `src.len()` is a
/// multiple of `T`'s size (the header's shape times the dtype's size).
fn copy_out<T: bytemuck::Pod + Send + Sync>(src: &[u8]) -> burn::tensor::Bytes {
    use rayon::prelude::*;
    const PIECE: usize = 1 << 20;
    if !src.len().is_multiple_of(size_of::<T>()) {
        // Not reached: the header's sizes were checked against the dtype when opening.
        return burn::tensor::Bytes::from_bytes_vec(src.to_vec());
    }
    // Zeroed allocation: fresh zero pages from the OS, touched first by the copy.
    let mut dst = vec![T::zeroed(); src.len() / size_of::<T>()];
    let dst_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut dst);
    if src.len() < 4 * PIECE {
        dst_bytes.copy_from_slice(src);
    } else {
        dst_bytes
            .par_chunks_mut(PIECE)
            .zip(src.par_chunks(PIECE))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
    burn::tensor::Bytes::from_elems(dst)
}
