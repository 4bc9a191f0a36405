//! The on-disk kernel cache: compiled modules kept as shared objects, so that a second run of
//! the same training step loads its kernels instead of compiling them again.
//!
//! Each module's key is the SHA-256 of everything its machine code depends on: graft's
//! version, the LLVM version, the host CPU name and features (the JIT compiles for them),
//! the pass pipeline, and the module's MLIR text, which the scheduler and lowering derive
//! deterministically from the optimized IR and the vector shape. The file is
//! `<dir>/<key>.so`.
//!
//! On a miss the module is JIT-compiled as usual, with MLIR's object cache enabled and
//! position-independent code; its object file is dumped and linked into a shared object with
//! the system C compiler driver (`cc -shared`, which Rust's own linking already needs), then
//! renamed into place (atomic on one file system, so readers never see a partial file) and
//! sealed with its SHA-256 beside it (`<key>.so.sha256`). Before loading, the file's digest
//! is checked against the seal: a truncated or altered object (which would crash the process
//! or compute wrong numbers) is removed and rebuilt, as is one that does not load or lacks a
//! kernel symbol. Writing
//! the cache is best effort: a failure leaves the JIT-compiled code in use and is reported.
//!
//! The directory is `kernels/` under graft's cache root: `$GRAFT_CACHE_DIR` when set (`off`
//! or empty disables the cache), else `$XDG_CACHE_HOME/graft`, else `$HOME/.cache/graft`.
#![allow(unsafe_code)]

use crate::CodegenError;
use crate::jit::{Jit, PIPELINE};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel cache directory: `kernels/` under graft's cache root
/// ([`graft_runtime::cache_dir`]), if caching is on.
pub(crate) fn default_dir() -> Option<PathBuf> {
    graft_runtime::cache_dir().map(|d| d.join("kernels"))
}

/// The key of a module's machine code (hex SHA-256; see the module docs).
pub(crate) fn key(module_text: &str) -> String {
    use inkwell::targets::TargetMachine;
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    graft_runtime::cache::digest(&[
        env!("CARGO_PKG_VERSION"),
        &format!("llvm {major}.{minor}.{patch}"),
        &TargetMachine::get_host_cpu_name().to_string(),
        &TargetMachine::get_host_cpu_features().to_string(),
        PIPELINE,
        module_text,
    ])
}

/// A cached module, loaded into the process.
pub(crate) struct Library {
    /// Held for its code: unloaded on drop.
    _lib: libloading::Library,
}

impl Library {
    /// Loads `<dir>/<key>.so` and looks up the packed wrappers of `names`; `None` when the
    /// file is absent, does not load, or lacks one of them.
    pub fn load(dir: &Path, key: &str, names: &[String]) -> Option<(Library, Vec<usize>)> {
        let path = dir.join(format!("{key}.so"));
        // A truncated or altered shared object would crash the process (SIGBUS, SIGSEGV,
        // SIGILL) or compute wrong numbers: its digest must match before it is loaded.
        if !graft_runtime::cache::verify(&path) {
            return None;
        }
        // SAFETY: the file was written by `store` below: a shared object linked from code
        // graft generated, with no initializers of its own; its name is the hash of exactly
        // that code's inputs, and it is renamed into place only once complete.
        let lib = unsafe { libloading::Library::new(&path) }.ok()?;
        let mut addrs = Vec::with_capacity(names.len());
        for n in names {
            let symbol = format!("_mlir_{n}\0");
            // SAFETY: the symbol is a packed wrapper `void(void**)`, as MLIR's ExecutionEngine
            // generates it; only its address is taken here.
            let f = unsafe {
                lib.get::<unsafe extern "C" fn(*mut *mut std::ffi::c_void)>(symbol.as_bytes())
            }
            .ok()?;
            addrs.push(*f as usize);
        }
        Some((Library { _lib: lib }, addrs))
    }
}

/// Writes `jit`'s object code (compiled with object dumping on) as `<dir>/<key>.so`.
pub(crate) fn store(dir: &Path, key: &str, jit: &Jit) -> Result<PathBuf, CodegenError> {
    let fail = |what: String| CodegenError::Internal(format!("kernel cache: {what}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let unique = format!(
        "{key}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    )
    .replace(['(', ')'], "");
    let object = dir.join(format!("{unique}.o"));
    let partial = dir.join(format!("{unique}.so.partial"));
    let result = (|| {
        jit.dump_object(&object)?;
        if !object.is_file() {
            return Err(fail("MLIR wrote no object file".into()));
        }
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let out = Command::new(&cc)
            .args(["-shared", "-o"])
            .arg(&partial)
            .arg(&object)
            .arg("-lm")
            .output()
            .map_err(|e| fail(format!("running {}: {e}", cc.to_string_lossy())))?;
        if !out.status.success() {
            return Err(fail(format!(
                "linking failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let path = dir.join(format!("{key}.so"));
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail(format!("{}: {e}", partial.display())))?;
        std::fs::rename(&partial, &path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        graft_runtime::files::sync_dir(dir);
        graft_runtime::cache::seal(&path)
            .map_err(|e| fail(format!("sealing {}: {e}", path.display())))?;
        Ok(path)
    })();
    let _ = std::fs::remove_file(&object);
    let _ = std::fs::remove_file(&partial);
    result
}
