//! PyTorch pickle checkpoints (`.bin`, `.pt`, `.ckpt`), read without executing any code.
//!
//! Two layers of defence: [`scan_pickle`] walks the pickle opcodes and refuses any global
//! outside an allow-list of tensor-rebuilding functions and storage types (the same idea as
//! torch's `weights_only=True` unpickler); then burn-store's pure-Rust reader, which never runs
//! Python, extracts the tensors lazily.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use burn_store::TensorSnapshot;
use burn_store::pytorch::PytorchReader;

use super::TensorInfo;
use crate::{Error, Result};

/// Globals a state-dict pickle may reference: everything else is refused.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "Size"),
];

fn global_allowed(module: &str, name: &str) -> bool {
    (module == "torch" && name.ends_with("Storage"))
        || ALLOWED_GLOBALS
            .iter()
            .any(|(m, n)| *m == module && *n == name)
}

/// Walks a pickle stream and refuses globals outside the allow-list, and opcodes that
/// reach the extension registry. Returns the reason for a refusal.
pub fn scan_pickle(data: &[u8]) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    // Strings recently pushed, for STACK_GLOBAL (protocol 4), and strings in the memo.
    let mut recent: Vec<Option<String>> = Vec::new();
    let mut memo: HashMap<u64, Option<String>> = HashMap::new();
    let mut memo_count = 0u64;
    let take = |pos: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                format!(
                    "pickle stream ends inside an opcode argument at byte {}",
                    *pos
                )
            })?;
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64);
    let line = |pos: &mut usize| -> std::result::Result<String, String> {
        let rest = &data[*pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("pickle stream ends inside a text argument")?;
        *pos += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    };
    loop {
        let op = *take(&mut pos, 1)?.first().ok_or("empty")?;
        let mut pushed: Option<Option<String>> = None;
        match op {
            b'.' => return Ok(()),
            // No argument.
            b'(' | b'0' | b'1' | b'2' | b'N' | b'R' | b'a' | b'b' | b'd' | b'}' | b'e' | b'l'
            | b']' | b's' | b't' | b')' | b'u' | b'Q' | 0x88 | 0x89 | 0x85 | 0x86 | 0x87 | 0x81
            | 0x92 | 0x8f | 0x90 | 0x91 | 0x97 | 0x98 => {
                pushed = Some(None);
            }
            b'o' => return Err("OBJ opcode instantiates an arbitrary class".into()),
            0x82..=0x84 => return Err("EXT opcodes reach the copyreg extension registry".into()),
            0x94 => {
                // MEMOIZE: stores the top of the stack.
                memo.insert(memo_count, recent.last().cloned().flatten());
                memo_count += 1;
            }
            b'K' | b'C' | b'U' | 0x8c | 0x8a => {
                let n = if op == b'K' {
                    1
                } else {
                    take(&mut pos, 1)?[0] as usize
                };
                let s = take(&mut pos, n)?;
                pushed = Some(if op == 0x8c || op == b'U' {
                    Some(String::from_utf8_lossy(s).into_owned())
                } else {
                    None
                });
            }
            b'h' | b'j' => {
                let idx = le(take(&mut pos, if op == b'h' { 1 } else { 4 })?);
                pushed = Some(memo.get(&idx).cloned().flatten());
            }
            b'q' | b'r' => {
                let idx = le(take(&mut pos, if op == b'q' { 1 } else { 4 })?);
                memo.insert(idx, recent.last().cloned().flatten());
            }
            0x80 => {
                take(&mut pos, 1)?;
            }
            b'M' => {
                take(&mut pos, 2)?;
                pushed = Some(None);
            }
            b'J' => {
                take(&mut pos, 4)?;
                pushed = Some(None);
            }
            b'X' | b'T' | b'B' | 0x8b => {
                let n = le(take(&mut pos, 4)?) as usize;
                let s = take(&mut pos, n)?;
                pushed = Some(if op == b'X' || op == b'T' {
                    Some(String::from_utf8_lossy(s).into_owned())
                } else {
                    None
                });
            }
            b'G' => {
                take(&mut pos, 8)?;
                pushed = Some(None);
            }
            0x95 => {
                take(&mut pos, 8)?;
            }
            0x8d | 0x8e | 0x96 => {
                let n = le(take(&mut pos, 8)?) as usize;
                let s = take(&mut pos, n)?;
                pushed = Some((op == 0x8d).then(|| String::from_utf8_lossy(s).into_owned()));
            }
            b'I' | b'L' | b'F' | b'P' => {
                line(&mut pos)?;
                pushed = Some(None);
            }
            b'S' | b'V' => {
                let s = line(&mut pos)?;
                pushed = Some(Some(s.trim_matches(|c| c == '\'' || c == '"').to_string()));
            }
            b'g' => {
                let idx: u64 = line(&mut pos)?
                    .trim()
                    .parse()
                    .map_err(|_| "bad GET index")?;
                pushed = Some(memo.get(&idx).cloned().flatten());
            }
            b'p' => {
                let idx: u64 = line(&mut pos)?
                    .trim()
                    .parse()
                    .map_err(|_| "bad PUT index")?;
                memo.insert(idx, recent.last().cloned().flatten());
            }
            b'c' | b'i' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                if op == b'i' || !global_allowed(&module, &name) {
                    return Err(format!(
                        "it references `{module}.{name}`, which is not a tensor or plain container"
                    ));
                }
                pushed = Some(None);
            }
            0x93 => {
                let n = recent.len();
                let (module, name) = match (n >= 2).then(|| (&recent[n - 2], &recent[n - 1])) {
                    Some((Some(m), Some(nm))) => (m.clone(), nm.clone()),
                    _ => return Err("STACK_GLOBAL with a computed name".into()),
                };
                if !global_allowed(&module, &name) {
                    return Err(format!(
                        "it references `{module}.{name}`, which is not a tensor or plain container"
                    ));
                }
                pushed = Some(None);
            }
            other => {
                return Err(format!(
                    "unknown pickle opcode 0x{other:02x} at byte {}",
                    pos - 1
                ));
            }
        }
        if let Some(p) = pushed {
            recent.push(p);
            if recent.len() > 64 {
                recent.remove(0);
            }
        }
    }
}

/// A PyTorch checkpoint whose pickle passed [`scan_pickle`]; tensors are read lazily.
pub struct PickleFile {
    path: PathBuf,
    tensors: BTreeMap<String, (TensorInfo, TensorSnapshot)>,
}

impl std::fmt::Debug for PickleFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickleFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn dtype_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "F32".into(),
        DType::F16 => "F16".into(),
        DType::BF16 => "BF16".into(),
        DType::F64 => "F64".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

impl PickleFile {
    /// Opens a zip-format PyTorch checkpoint (torch >= 1.6), refusing anything but tensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| Error::Pickle {
            path: path.clone(),
            reason: format!(
                "not a zip-format checkpoint ({e}); legacy pre-1.6 checkpoints are not supported"
            ),
        })?;
        let pkl_name = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl"))
            .map(str::to_string)
            .ok_or_else(|| Error::Pickle {
                path: path.clone(),
                reason: "archive has no data.pkl".into(),
            })?;
        let mut pkl = Vec::new();
        archive
            .by_name(&pkl_name)
            .map_err(|e| Error::Pickle {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .read_to_end(&mut pkl)
            .map_err(|e| Error::io(&path, e))?;
        scan_pickle(&pkl).map_err(|reason| Error::UnsafePickle {
            path: path.clone(),
            reason,
        })?;
        let reader = PytorchReader::new(&path).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("Unsupported Python type") {
                Error::UnsafePickle {
                    path: path.clone(),
                    reason,
                }
            } else {
                Error::Pickle {
                    path: path.clone(),
                    reason,
                }
            }
        })?;
        let tensors = reader
            .into_tensors()
            .into_iter()
            .map(|(k, snap)| {
                let info = TensorInfo {
                    dtype: dtype_name(snap.dtype),
                    shape: snap.shape.to_vec(),
                    file: path.clone(),
                };
                (k, (info, snap))
            })
            .collect();
        Ok(Self { path, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Dtype and shape of one tensor.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key).map(|(i, _)| i)
    }

    /// Reads one tensor in its stored dtype.
    pub fn read(&self, key: &str) -> Result<TensorData> {
        let (info, snap) = self.tensors.get(key).ok_or_else(|| Error::MissingKeys {
            path: self.path.clone(),
            keys: vec![key.to_string()],
        })?;
        if super::safetensors::float_dtype(&info.dtype).is_none() {
            return Err(Error::UnsupportedDtype {
                path: self.path.clone(),
                key: key.to_string(),
                dtype: info.dtype.clone(),
            });
        }
        snap.to_data().map_err(|e| Error::Pickle {
            path: self.path.clone(),
            reason: format!("tensor `{key}`: {e:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::scan_pickle;

    #[test]
    fn allows_state_dict_globals() {
        // protocol 2: PROTO 2, GLOBAL collections OrderedDict, EMPTY_TUPLE, REDUCE, STOP
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.";
        assert!(scan_pickle(p).is_ok());
    }

    #[test]
    fn refuses_other_globals() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        let err = scan_pickle(p).expect_err("os.system must be refused");
        assert!(err.contains("os.system"), "{err}");
        // protocol 4 STACK_GLOBAL with memoized strings.
        let p = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.";
        let err = scan_pickle(p).expect_err("builtins.eval must be refused");
        assert!(err.contains("builtins.eval"), "{err}");
        assert!(scan_pickle(b"\x80\x02\x82\x01.").is_err());
        assert!(scan_pickle(b"\x80\x02X\xff\xff").is_err());
    }
}
