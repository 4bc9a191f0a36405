//! Source files: the [`SourceMap`] of everything loaded, line/column lookup, and the
//! [`Loader`] that resolves `use` items against the importing file's folder and `stdlib/`.

use crate::ast::{FileId, Span};
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/stdlib.rs"));

/// One loaded file.
#[derive(Clone, Debug)]
pub struct LoadedFile {
    /// The path as shown in diagnostics (`stdlib/models/llama.graft` for stdlib files).
    pub name: String,
    /// Where it was read from on disk, if anywhere.
    pub disk_path: Option<PathBuf>,
    /// The text.
    pub text: String,
    line_starts: Vec<usize>,
}

/// Every source file loaded for one compilation.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<LoadedFile>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        disk_path: Option<PathBuf>,
        text: impl Into<String>,
    ) -> FileId {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        self.files.push(LoadedFile {
            name: name.into(),
            disk_path,
            text,
            line_starts,
        });
        FileId(self.files.len() as u32 - 1)
    }

    /// A loaded file.
    pub fn file(&self, id: FileId) -> &LoadedFile {
        &self.files[id.0 as usize]
    }

    /// Every loaded file, in load order.
    pub fn files(&self) -> impl Iterator<Item = (FileId, &LoadedFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }

    /// Finds a file by display name.
    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files
            .iter()
            .position(|f| f.name == name)
            .map(|i| FileId(i as u32))
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: FileId, offset: u32) -> (u32, u32) {
        let f = self.file(file);
        let offset = (offset as usize).min(f.text.len());
        let line = f
            .line_starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let start = f.line_starts[line];
        let col = f.text.get(start..offset).map_or(0, |s| s.chars().count());
        (line as u32 + 1, col as u32 + 1)
    }

    /// `file:line:col` of a span's start.
    pub fn describe(&self, span: Span) -> String {
        let (l, c) = self.line_col(span.file, span.start);
        format!("{}:{l}:{c}", self.file(span.file).name)
    }

    /// The source text of a span.
    pub fn snippet(&self, span: Span) -> &str {
        self.file(span.file)
            .text
            .get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }
}

/// Where the stdlib comes from.
#[derive(Clone, Debug)]
pub enum Stdlib {
    /// The copy embedded in the binary at build time.
    Embedded,
    /// A folder on disk (`--stdlib`, or `GRAFT_STDLIB`).
    Dir(PathBuf),
}

impl Stdlib {
    /// `GRAFT_STDLIB` if set, else the embedded copy.
    pub fn from_env() -> Stdlib {
        match std::env::var_os("GRAFT_STDLIB") {
            Some(dir) if !dir.is_empty() => Stdlib::Dir(PathBuf::from(dir)),
            _ => Stdlib::Embedded,
        }
    }

    /// Reads `rel` (like `models/llama.graft`) from the stdlib.
    pub fn read(&self, rel: &str) -> Option<(Option<PathBuf>, String)> {
        match self {
            Stdlib::Embedded => EMBEDDED_STDLIB
                .iter()
                .find(|(p, _)| *p == rel)
                .map(|(_, t)| (None, t.to_string())),
            Stdlib::Dir(dir) => {
                let p = dir.join(rel);
                read_regular(&p).ok().map(|t| (Some(p), t))
            }
        }
    }

    /// Every stdlib file, as paths under `stdlib/`.
    pub fn list(&self) -> Vec<String> {
        match self {
            Stdlib::Embedded => EMBEDDED_STDLIB.iter().map(|(p, _)| p.to_string()).collect(),
            Stdlib::Dir(dir) => {
                let mut out = Vec::new();
                list_dir(dir, dir, &mut out);
                out.sort();
                out
            }
        }
    }
}

fn list_dir(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            list_dir(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "graft") {
            if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// Resolves an import: first relative to the importing file's folder, then in the stdlib.
/// Returns the display name, disk path and text.
pub fn resolve_import(
    stdlib: &Stdlib,
    importer: &LoadedFile,
    rel: &str,
    relative_only: bool,
) -> Option<(String, Option<PathBuf>, String)> {
    if let Some(dir) = importer.disk_path.as_ref().and_then(|p| p.parent()) {
        let p = dir.join(rel);
        let is_self = match (
            importer
                .disk_path
                .as_ref()
                .and_then(|d| d.canonicalize().ok()),
            p.canonicalize().ok(),
        ) {
            (Some(a), Some(b)) => a == b,
            // Not both on disk (a built binary's overlay): a file never imports itself.
            _ => importer.disk_path.as_ref() == Some(&p),
        };
        if is_self {
            // `use nn` inside a file named nn.graft means the stdlib's nn, not itself.
        } else if let Ok(text) = read_regular(&p) {
            let name = display_name(&p, &importer.name, rel);
            return Some((name, Some(p), text));
        }
    } else if let Some(importer_rel) = importer.name.strip_prefix("stdlib/") {
        // An embedded stdlib file importing relative to itself.
        let base = importer_rel.rsplit_once('/').map_or("", |(d, _)| d);
        let joined = if base.is_empty() {
            rel.to_string()
        } else {
            format!("{base}/{rel}")
        };
        if let Some((disk, text)) = stdlib.read(&joined) {
            return Some((format!("stdlib/{joined}"), disk, text));
        }
    }
    if relative_only {
        return None;
    }
    stdlib
        .read(rel)
        .map(|(disk, text)| (format!("stdlib/{rel}"), disk, text))
}

fn display_name(path: &Path, importer_name: &str, rel: &str) -> String {
    match importer_name.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{rel}"),
        None => {
            let _ = path;
            rel.to_string()
        }
    }
}

/// Reads a source file, refusing anything but a regular file before opening it (opening a
/// FIFO blocks until a writer comes, and a device never ends).
///
/// # Errors
/// The I/O error, or `InvalidInput` for a special file.
pub fn read_regular(p: &Path) -> std::io::Result<String> {
    String::from_utf8(overlay::read_file(p)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Files read from an overlay instead of the disk, and a record of what was read: what lets
/// a binary built by `graft build` elaborate its spec again where the spec's folders are
/// absent. While recording, every file the front end (and the runtime's tokenizer) reads
/// through [`read_file`] is kept with its contents, and every path [`exists`] finds; a
/// binary installs that record as the overlay before elaborating.
pub mod overlay {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    /// Paths and their contents (`None`: the path exists, its contents were not read).
    pub type Files = BTreeMap<PathBuf, Option<Vec<u8>>>;

    static OVERLAY: OnceLock<Files> = OnceLock::new();
    static RECORD: Mutex<Option<Files>> = Mutex::new(None);

    /// Serves `files` in place of the disk from now on (once per process; later calls are
    /// ignored).
    pub fn install(files: Files) {
        let _ = OVERLAY.set(files);
    }

    /// Starts recording what is read.
    pub fn start_recording() {
        if let Ok(mut r) = RECORD.lock() {
            *r = Some(Files::new());
        }
    }

    /// Stops recording and returns what was read since [`start_recording`].
    pub fn take_recording() -> Files {
        RECORD
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .unwrap_or_default()
    }

    fn record(p: &Path, contents: Option<&[u8]>) {
        if let Ok(mut r) = RECORD.lock()
            && let Some(files) = r.as_mut()
        {
            let slot = files.entry(p.to_path_buf()).or_insert(None);
            if let Some(c) = contents {
                *slot = Some(c.to_vec());
            }
        }
    }

    /// The overlay's contents of `p`, if it holds them.
    pub fn get(p: &Path) -> Option<&'static [u8]> {
        OVERLAY.get()?.get(p)?.as_deref()
    }

    /// Whether `p` exists: in the overlay, else on disk.
    pub fn exists(p: &Path) -> bool {
        let found = OVERLAY.get().is_some_and(|o| o.contains_key(p)) || p.exists();
        if found {
            record(p, None);
        }
        found
    }

    /// Reads a regular file: from the overlay, else from the disk (refusing anything but a
    /// regular file before opening it: opening a FIFO blocks until a writer comes, and a
    /// device never ends).
    ///
    /// # Errors
    /// The I/O error, or `InvalidInput` for a special file.
    pub fn read_file(p: &Path) -> std::io::Result<Vec<u8>> {
        if let Some(bytes) = get(p) {
            return Ok(bytes.to_vec());
        }
        let m = std::fs::metadata(p)?;
        if !m.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                if m.is_dir() {
                    "it is a folder, not a file"
                } else {
                    "it is not a regular file (a FIFO, socket or device); graft reads only regular files"
                },
            ));
        }
        let bytes = std::fs::read(p)?;
        record(p, Some(&bytes));
        Ok(bytes)
    }
}
