//! Helpers shared by the front end's integration tests.
#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use graft_frontend::{Loaded, Program, Stdlib, compile};
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The stdlib folder of this checkout (so tests see edits without a rebuild).
pub fn stdlib() -> Stdlib {
    Stdlib::Dir(repo().join("stdlib"))
}

/// The path as shown in diagnostics and snapshots: relative to the repository root.
pub fn display(path: &Path) -> String {
    let full = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    match full.strip_prefix(repo()) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => panic!("{} is outside the repository", path.display()),
    }
}

/// Compiles a file, panicking with the rendered diagnostic if it fails.
pub fn compile_ok(path: &Path) -> (Loaded, Program) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    match compile(&display(path), Some(path), text, &stdlib()) {
        Ok(r) => r,
        Err(e) => panic!("{} failed to compile:\n{}", path.display(), e.render(false)),
    }
}

/// Compiles source text given inline.
pub fn compile_text(text: &str) -> Result<(Loaded, Program), String> {
    compile("inline.graft", None, text.to_string(), &stdlib()).map_err(|e| e.render(false))
}
