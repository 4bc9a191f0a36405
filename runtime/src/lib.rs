//! graft's runtime. Today: Hugging Face safetensors checkpoints, memory-mapped, and checked
//! against the tensors a compiled program expects (names, dtypes, shapes).

#![allow(unsafe_code)] // Memory-mapping a file is `unsafe` in memmap2; see `WeightsFile::open`.

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
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
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

/// A memory-mapped safetensors file and its header.
pub struct WeightsFile {
    path: PathBuf,
    mmap: Mmap,
    entries: BTreeMap<String, TensorEntry>,
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
    /// Opens and maps a safetensors file and reads its header.
    pub fn open(path: &Path) -> Result<WeightsFile, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and graft does not write weights files while reading
        // them; another process truncating the file underneath is outside what we guard.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
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
        Ok(WeightsFile {
            path: path.to_path_buf(),
            mmap,
            entries,
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

    /// The raw little-endian bytes of a tensor, borrowed from the map.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let st = SafeTensors::deserialize(&self.mmap).ok()?;
        let view = st.tensor(name).ok()?;
        let data = view.data();
        // Re-slice from the map so the borrow is tied to `self`, not to `st`.
        let start = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
        self.mmap.get(start..start + data.len())
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
