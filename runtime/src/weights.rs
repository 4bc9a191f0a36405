//! Hugging Face safetensors checkpoints, memory-mapped, and checked against the tensors a
//! program expects (names, dtypes, shapes).

use graft_ir::{DType, TensorType};
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype as StDtype;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a weights file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (not a `source`: the message already says it once).
        cause: std::io::Error,
    },
    /// The path is not something graft reads (missing, a folder, a FIFO): the message says.
    #[error("{0}")]
    Unusable(String),
    /// The file is not valid safetensors.
    #[error("{path} is not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// One tensor's entry in a weights file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The element type, if graft knows it.
    pub dtype: Option<DType>,
    /// The safetensors dtype name (`F32`, `BF16`, ...).
    pub dtype_name: String,
    /// The shape.
    pub shape: Vec<usize>,
}

/// A memory-mapped safetensors checkpoint and its header: one file, or the shards a
/// Hugging Face `model.safetensors.index.json` lists. Byte ranges ([`WeightsFile::in_place`])
/// are offsets into the shards laid end to end, so one range names one tensor's bytes
/// whichever shard holds them.
pub struct WeightsFile {
    path: PathBuf,
    shards: Vec<Shard>,
    entries: BTreeMap<String, TensorEntry>,
    /// Which shard holds each tensor.
    shard_of: std::collections::HashMap<String, usize>,
}

/// One mapped safetensors file, at offset `base` of the shards laid end to end.
struct Shard {
    mmap: Mmap,
    base: usize,
}

fn map_dtype(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F64 => DType::F64,
        StDtype::F32 => DType::F32,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::I64 => DType::I64,
        StDtype::I32 => DType::I32,
        StDtype::U8 => DType::U8,
        StDtype::BOOL => DType::Bool,
        _ => return None,
    })
}

impl WeightsFile {
    /// Opens and maps a safetensors file and reads its header; a `*.index.json` (Hugging
    /// Face's index of a sharded checkpoint) opens every shard its `weight_map` names.
    pub fn open(path: &Path) -> Result<WeightsFile, WeightsError> {
        let fmt = |message: String| WeightsError::Format {
            path: path.to_path_buf(),
            message,
        };
        crate::files::regular_file(path, "weights file").map_err(WeightsError::Unusable)?;
        let files: Vec<PathBuf> = if path.to_string_lossy().ends_with(".index.json") {
            let text = std::fs::read_to_string(path).map_err(|cause| WeightsError::Io {
                path: path.to_path_buf(),
                cause,
            })?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| fmt(format!("not a valid index: {e}")))?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| fmt("the index has no `weight_map` object".into()))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            if names.len() != map.len() {
                return Err(fmt("a `weight_map` entry is not a file name".into()));
            }
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![path.to_path_buf()]
        };
        let mut shards = Vec::new();
        let mut entries = BTreeMap::new();
        let mut shard_of = std::collections::HashMap::new();
        let mut base = 0;
        for file_path in &files {
            let (mmap, shard_entries) = map_file(file_path).map_err(|e| {
                if files.len() > 1 || file_path != path {
                    WeightsError::Unusable(format!("{e} (a shard {} names)", path.display()))
                } else {
                    e
                }
            })?;
            for (name, e) in shard_entries {
                if shard_of.insert(name.clone(), shards.len()).is_some() {
                    return Err(fmt(format!("`{name}` is in two shards")));
                }
                entries.insert(name, e);
            }
            let len = mmap.len();
            shards.push(Shard { mmap, base });
            base += len;
        }
        Ok(WeightsFile {
            path: path.to_path_buf(),
            shards,
            entries,
            shard_of,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, by name.
    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// The shard holding `name`.
    fn shard(&self, name: &str) -> Option<&Shard> {
        self.shards.get(*self.shard_of.get(name)?)
    }

    /// The raw little-endian bytes of a tensor, borrowed from the map.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let shard = self.shard(name)?;
        let st = SafeTensors::deserialize(&shard.mmap).ok()?;
        let view = st.tensor(name).ok()?;
        let data = view.data();
        // Re-slice from the map so the borrow is tied to `self`, not to `st`.
        let start = data.as_ptr() as usize - shard.mmap.as_ptr() as usize;
        shard.mmap.get(start..start + data.len())
    }

    /// Where a tensor's bytes lie ([`WeightsFile::slice`] reads them) when a backend can
    /// read them in place as a tensor of type `ty`: stored as `F32` with `ty`'s shape and
    /// dtype `f32`, on a little-endian host, 4-byte aligned. `None` when it must be
    /// converted (read with [`WeightsFile::read`]).
    pub fn in_place(&self, name: &str, ty: &TensorType) -> Option<std::ops::Range<usize>> {
        let entry = self.entries.get(name)?;
        let fits = cfg!(target_endian = "little")
            && entry.dtype_name == "F32"
            && ty.dtype == DType::F32
            && entry.shape == ty.shape;
        let bytes = self
            .bytes(name)
            .filter(|b| fits && b.len() == 4 * ty.numel())?;
        if (bytes.as_ptr() as usize) % std::mem::align_of::<f32>() != 0 {
            return None;
        }
        let shard = self.shard(name)?;
        let start = shard.base + (bytes.as_ptr() as usize - shard.mmap.as_ptr() as usize);
        Some(start..start + bytes.len())
    }

    /// The header's `__metadata__` string map (of the first file; empty when there is none).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.shards
            .first()
            .and_then(|s| SafeTensors::read_metadata(&s.mmap).ok())
            .and_then(|(_, m)| m.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    /// The shard and its local range for a range of the shards laid end to end, when the
    /// range lies within one shard.
    fn locate(&self, range: &std::ops::Range<usize>) -> Option<(&Shard, std::ops::Range<usize>)> {
        let shard = self.shards.iter().rev().find(|s| s.base <= range.start)?;
        let local = range.start - shard.base..range.end.checked_sub(shard.base)?;
        (local.end <= shard.mmap.len() && local.start <= local.end).then_some((shard, local))
    }

    /// The bytes of a range [`WeightsFile::in_place`] gave.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        let (shard, local) = self.locate(&range)?;
        shard.mmap.get(local)
    }

    /// Drops the pages holding bytes `range` (as [`WeightsFile::in_place`] gives it) from
    /// this process's memory (those partly in the range too): a reader that no longer needs
    /// a tensor (a backend that bound a packed copy) releases its share of the resident set.
    /// The bytes stay readable: a later access reads them from the file again.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let Some((shard, local)) = self.locate(&range) else {
            return;
        };
        if local.is_empty() {
            return;
        }
        #[cfg(unix)]
        #[allow(unsafe_code)]
        // SAFETY: the map is a read-only shared mapping of a file graft does not write:
        // MADV_DONTNEED only unmaps the process's pages, and any later access reads the same
        // bytes from the file again, so no slice into the map observes a change.
        let _ = unsafe {
            shard.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                local.start,
                local.len(),
            )
        };
    }

    /// [`WeightsFile::check`] as one error: every problem, then (when there are problems, as
    /// a clue to a checkpoint of another architecture) the tensors the file has that the
    /// spec does not read.
    ///
    /// # Errors
    /// The file does not fit `expected`.
    pub fn fit(&self, expected: &[(String, TensorType)]) -> Result<(), String> {
        let problems = self.check(expected);
        if problems.is_empty() {
            return Ok(());
        }
        let mut msg = format!(
            "{} does not fit the spec ({} problems):",
            self.path.display(),
            problems.len()
        );
        for p in &problems {
            msg += &format!("\n  - {p}");
        }
        let unexpected: Vec<&str> = self
            .entries
            .keys()
            .filter(|k| !expected.iter().any(|(n, _)| n == *k))
            .map(String::as_str)
            .collect();
        if !unexpected.is_empty() {
            let shown: Vec<&str> = unexpected.iter().take(8).copied().collect();
            msg += &format!(
                "\n  - unexpected: {} tensors the spec does not read: {}{}",
                unexpected.len(),
                shown.join(", "),
                if unexpected.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        Err(msg)
    }

    /// Checks the file against the frozen weights a program reads; returns one message per
    /// problem (missing tensor, wrong shape, unsupported dtype).
    pub fn check(&self, expected: &[(String, TensorType)]) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, ty) in expected {
            match self.entries.get(name) {
                None => {
                    let near = self
                        .entries
                        .keys()
                        .max_by(|a, b| strsim_score(name, a).total_cmp(&strsim_score(name, b)));
                    problems.push(match near {
                        Some(n) => format!(
                            "`{name}` is missing from {} (nearest name: `{n}`)",
                            self.path.display()
                        ),
                        None => format!(
                            "`{name}` is missing from {} (the file is empty)",
                            self.path.display()
                        ),
                    });
                }
                Some(e) if e.shape != ty.shape => {
                    problems.push(format!(
                        "`{name}` has shape {:?} in {}, the spec expects {:?}",
                        e.shape,
                        self.path.display(),
                        ty.shape
                    ));
                }
                Some(e) if !e.dtype.is_some_and(|d| d.is_float()) => {
                    problems.push(format!(
                        "`{name}` has dtype {} in {}; graft loads float weights",
                        e.dtype_name,
                        self.path.display()
                    ));
                }
                Some(_) => {}
            }
        }
        problems
    }
}

/// A safetensors file held inside another file: the weights a built binary carries after
/// its code (`graft build --embed-weights`). Set once per process.
static EMBEDDED: std::sync::OnceLock<(PathBuf, u64, usize)> = std::sync::OnceLock::new();

/// Says that opening `path` as weights means the `len` bytes at `offset` of it (a multiple
/// of the page size). For a built binary whose weights follow its code.
pub fn embed(path: &Path, offset: u64, len: usize) {
    let _ = EMBEDDED.set((path.to_path_buf(), offset, len));
}

/// Maps one safetensors file and reads its header.
fn map_file(path: &Path) -> Result<(Mmap, BTreeMap<String, TensorEntry>), WeightsError> {
    let io = |cause| WeightsError::Io {
        path: path.to_path_buf(),
        cause,
    };
    crate::files::regular_file(path, "weights file").map_err(WeightsError::Unusable)?;
    let file = File::open(path).map_err(io)?;
    crate::sigbus::guard(path);
    let mut options = memmap2::MmapOptions::new();
    if let Some((_, offset, len)) = EMBEDDED.get().filter(|(p, _, _)| p == path) {
        options.offset(*offset).len(*len);
    }
    #[allow(unsafe_code)]
    // SAFETY: the map is read-only and graft does not write weights files while reading
    // them; another process truncating the file underneath raises SIGBUS, which
    // `sigbus::guard` (above) turns into a clear message and a clean exit.
    let mmap = unsafe { options.map(&file) }.map_err(io)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let entries = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                TensorEntry {
                    dtype: map_dtype(view.dtype()),
                    dtype_name: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                },
            )
        })
        .collect();
    Ok((mmap, entries))
}

/// Shared-prefix length, normalized: a cheap similarity for "nearest name" hints.
fn strsim_score(a: &str, b: &str) -> f64 {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    common as f64 / a.len().max(b.len()).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(
        path: &Path,
        tensors: &[(&str, Vec<usize>)],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let bufs: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4])
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&bufs)
            .map(|((n, s), b)| Ok((n.to_string(), TensorView::new(StDtype::F32, s.clone(), b)?)))
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        safetensors::serialize_to_file(views, None, path)?;
        Ok(())
    }

    /// Releasing a tensor's pages (after a backend bound a packed copy) keeps its bytes
    /// readable and unchanged: they are read from the file again. A range past the map's
    /// end, or empty, is ignored.
    #[test]
    fn released_bytes_read_the_same() -> Result<(), Box<dyn std::error::Error>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/base.safetensors");
        let f = WeightsFile::open(&path)?;
        let (name, ty) = f
            .entries()
            .iter()
            .find(|(_, e)| e.dtype == Some(DType::F32) && e.shape.len() == 2)
            .map(|(n, e)| (n.clone(), TensorType::new(DType::F32, e.shape.clone())))
            .ok_or("no f32 matrix in the fixture")?;
        let range = f.in_place(&name, &ty).ok_or("not readable in place")?;
        let before = f.slice(range.clone()).ok_or("no bytes")?.to_vec();
        assert!(before.iter().any(|&b| b != 0));
        f.release(range.clone());
        assert_eq!(f.slice(range.clone()), Some(&before[..]));
        f.release(range.start..usize::MAX);
        f.release(range.start..range.start);
        assert_eq!(f.slice(range), Some(&before[..]));
        Ok(())
    }

    #[test]
    fn reports_missing_and_misshapen_tensors() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("graft-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("w.safetensors");
        write(&path, &[("a.weight", vec![4, 8]), ("b.weight", vec![3])])?;
        let f = WeightsFile::open(&path)?;
        assert_eq!(f.entries().len(), 2);
        assert_eq!(f.bytes("a.weight").map(<[u8]>::len), Some(128));
        let problems = f.check(&[
            ("a.weight".into(), TensorType::new(DType::F32, vec![4, 8])),
            ("b.weight".into(), TensorType::new(DType::F32, vec![4])),
            ("a.wieght".into(), TensorType::new(DType::F32, vec![4, 8])),
        ]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("shape [3]"), "{}", problems[0]);
        assert!(
            problems[1].contains("nearest name: `a.weight`"),
            "{}",
            problems[1]
        );
        Ok(())
    }

    #[test]
    fn garbage_is_a_format_error_not_a_panic() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("graft-rt-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for (i, bytes) in [
            &b""[..],
            b"\x08\0\0\0\0\0\0\0{}",
            b"\xff\xff\xff\xff\xff\xff\xff\xffxx",
            b"\x02\0\0\0\0\0\0\0{",
        ]
        .iter()
        .enumerate()
        {
            let p = dir.join(format!("bad{i}.safetensors"));
            std::fs::write(&p, bytes)?;
            assert!(
                matches!(WeightsFile::open(&p), Err(WeightsError::Format { .. })),
                "case {i}"
            );
        }
        Ok(())
    }
}

impl WeightsFile {
    /// Reads a tensor: floats become `f32` (bf16/f16 exactly, f64 rounded), integers keep
    /// their type (`i64`, `i32`, `u8`), booleans become `bool`.
    pub fn read(&self, name: &str) -> Result<graft_interp::Tensor, WeightsError> {
        let fmt = |message: String| WeightsError::Format {
            path: self.path.clone(),
            message,
        };
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| fmt(format!("no tensor `{name}`")))?;
        let bytes = self
            .bytes(name)
            .ok_or_else(|| fmt(format!("cannot read the data of `{name}`")))?;
        let shape = entry.shape.clone();
        let chunks = |w: usize| bytes.chunks_exact(w);
        let t = match entry.dtype_name.as_str() {
            "F32" => graft_interp::Tensor::f32(
                shape,
                chunks(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            "F64" => graft_interp::Tensor::f32(
                shape,
                chunks(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
            ),
            "BF16" => graft_interp::Tensor::f32(
                shape,
                chunks(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            "F16" => graft_interp::Tensor::f32(
                shape,
                chunks(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            "I64" => graft_interp::Tensor::i64(
                shape,
                chunks(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            "I32" => graft_interp::Tensor::i32(
                shape,
                chunks(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            "U8" => graft_interp::Tensor::u8(shape, bytes.to_vec()),
            "BOOL" => graft_interp::Tensor::bool(shape, bytes.iter().map(|&b| b != 0).collect()),
            other => {
                return Err(fmt(format!(
                    "`{name}` has dtype {other}, which graft cannot read"
                )));
            }
        };
        t.map_err(|e| fmt(format!("`{name}`: {e}")))
    }
}

/// Serializes named `f32` tensors as safetensors bytes.
pub fn to_safetensors(tensors: &[(String, &graft_interp::Tensor)]) -> Result<Vec<u8>, String> {
    to_safetensors_with(tensors, None)
}

/// [`to_safetensors`] with a `__metadata__` string map in the header.
pub fn to_safetensors_with(
    tensors: &[(String, &graft_interp::Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, String> {
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(n, t)| match t.as_f32() {
            Some(d) => Ok(d.iter().flat_map(|x| x.to_le_bytes()).collect()),
            None => match t.as_i64() {
                Some(d) => Ok(d.iter().flat_map(|x| x.to_le_bytes()).collect()),
                None => Err(format!("`{n}` is neither f32 nor i64")),
            },
        })
        .collect::<Result<_, _>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bufs)
        .map(|((n, t), b)| {
            let dt = if t.as_f32().is_some() {
                StDtype::F32
            } else {
                StDtype::I64
            };
            safetensors::tensor::TensorView::new(dt, t.shape().to_vec(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, metadata).map_err(|e| e.to_string())
}
