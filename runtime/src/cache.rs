//! graft's on-disk cache: the optimized training step (here) and compiled kernels (in
//! `graft-codegen`, under `kernels/`), so that a second run of the same spec starts without
//! optimizing or compiling again.
//!
//! The root is `$GRAFT_CACHE_DIR` when set (`off` or empty disables caching), else
//! `$XDG_CACHE_HOME/graft`, else `$HOME/.cache/graft`. Entries are named by the SHA-256 of
//! everything they depend on (for the optimized step: graft's version, the options, the
//! unoptimized step's text and the optimizer's own source, `graft_opt::SOURCE`), written to
//! a temporary name, fsynced and renamed into place, sealed with a digest file beside them
//! (`<entry>.sha256`, [`seal`]), and checked against it before use ([`verify`]): a damaged,
//! edited or unsealed entry is removed, counts as a miss and is rebuilt.

use graft_ir::{Function, Module, parse_module, print_module, verify_function};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The cache root from the environment, if caching is on.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("GRAFT_CACHE_DIR") {
        Some(d) if d.is_empty() || d == "off" => None,
        Some(d) => Some(PathBuf::from(d)),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
            Some(base.join("graft"))
        }
    }
}

/// Hex SHA-256 of `parts`, each length-prefixed (so that part boundaries count).
pub fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest file beside a cache entry: `<entry>.sha256`.
fn seal_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

fn file_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Records the SHA-256 of a finished cache entry beside it (written durably and atomically),
/// so that [`verify`] can tell a damaged entry from a good one before it is used.
///
/// # Errors
/// The entry cannot be read or the digest written.
pub fn seal(entry: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(entry)?;
    crate::write_atomic(&seal_path(entry), file_digest(&bytes).as_bytes())
}

/// Whether a cache entry is whole: its bytes match the digest [`seal`] recorded. An entry
/// that does not (truncated, edited, unsealed) is removed with its digest, so the caller
/// rebuilds it; an absent entry is simply `false`.
pub fn verify(entry: &Path) -> bool {
    let Ok(bytes) = std::fs::read(entry) else {
        return false;
    };
    let ok =
        std::fs::read_to_string(seal_path(entry)).is_ok_and(|d| d.trim() == file_digest(&bytes));
    if !ok {
        let _ = std::fs::remove_file(entry);
        let _ = std::fs::remove_file(seal_path(entry));
    }
    ok
}

/// `f` optimized for `backend`: the backend's own optimized form when it carries one
/// ([`crate::Backend::optimized`]), else [`optimized_step`] with the default options
/// through the cache under [`cache_dir`]. Also says whether it came from a cache.
///
/// # Errors
/// As [`optimized_step`].
pub fn optimized_for(
    backend: &dyn crate::Backend,
    files: &[String],
    f: &Function,
) -> Result<(Function, bool), String> {
    if let Some(o) = backend.optimized(f) {
        return Ok((o, true));
    }
    optimized_step(
        cache_dir().as_deref(),
        files,
        f,
        &graft_opt::Options::default(),
    )
}

/// The optimized form of `step` under `opts`, from `dir/opt/` when there, else by running
/// the optimizer (and storing the result). Returns it and whether it came from the cache.
///
/// # Errors
/// The optimizer's error, as a message.
pub fn optimized_step(
    dir: Option<&Path>,
    files: &[String],
    step: &Function,
    opts: &graft_opt::Options,
) -> Result<(Function, bool), String> {
    let text = print_module(&Module {
        files: files.to_vec(),
        functions: vec![step.clone()],
    });
    // The optimizer's source is part of the key: an optimized step from a build with other
    // rules or another cost model is stale even at the same version.
    let options = format!("{opts:?}");
    let mut parts = vec![env!("CARGO_PKG_VERSION"), "optimized step", &options, &text];
    parts.extend_from_slice(graft_opt::SOURCE);
    let key = digest(&parts);
    let path = dir.map(|d| d.join("opt").join(format!("{key}.graft-ir")));
    if let Some(f) = path.as_deref().and_then(|p| load(p, step)) {
        return Ok((f, true));
    }
    let optimized = graft_opt::optimize(step, opts)
        .map_err(|e| format!("the optimizer failed: {e}"))?
        .func;
    if let Some(p) = &path {
        let out = print_module(&Module {
            files: files.to_vec(),
            functions: vec![optimized.clone()],
        });
        // Best effort: a cache that cannot be written only costs time.
        if crate::write_atomic(p, out.as_bytes()).is_ok() {
            let _ = seal(p);
        }
    }
    Ok((optimized, false))
}

/// A cached optimized step, if the file parses, verifies and has `step`'s signature.
fn load(path: &Path, step: &Function) -> Option<Function> {
    if !verify(path) {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut m = parse_module(&text).ok()?;
    if m.functions.len() != 1 {
        return None;
    }
    let f = m.functions.pop()?;
    verify_function(&f, usize::MAX).ok()?;
    let sig = |f: &Function| {
        let ins: Vec<_> = f
            .inputs()
            .map(|i| (i.name.to_string(), i.kind, i.ty.clone()))
            .collect();
        let outs: Vec<_> = f
            .outputs
            .iter()
            .map(|o| (o.name.clone(), f.ty(o.value).clone()))
            .collect();
        (f.name.clone(), ins, outs)
    };
    (sig(&f) == sig(step)).then_some(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use graft_ir::{BinaryOp, DType, InputKind, Op, TensorType};

    fn step() -> Function {
        // (x · 1) + 0: the optimizer folds both away.
        let mut f = Function::new("train_step");
        let t = TensorType::new(DType::F32, vec![4]);
        let x = f.add_input("x", InputKind::Param, t.clone(), None);
        let one = f
            .add_typed(Op::Constant { value: 1.0 }, &[], Some(t.clone()), None)
            .unwrap();
        let zero = f
            .add_typed(Op::Constant { value: 0.0 }, &[], Some(t), None)
            .unwrap();
        let m = f.add(Op::Binary(BinaryOp::Mul), &[x, one], None).unwrap();
        let a = f.add(Op::Binary(BinaryOp::Add), &[m, zero], None).unwrap();
        f.add_output("y", a);
        f
    }

    #[test]
    fn the_optimized_step_is_stored_then_loaded_and_a_damaged_file_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let opts = graft_opt::Options::default();
        let (first, hit) = optimized_step(Some(dir.path()), &[], &step(), &opts).unwrap();
        assert!(!hit);
        assert!(first.nodes.len() < step().nodes.len(), "the optimizer ran");
        let (second, hit) = optimized_step(Some(dir.path()), &[], &step(), &opts).unwrap();
        assert!(hit);
        assert_eq!(print_module_of(&second), print_module_of(&first));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("opt"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "graft-ir"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        // An edit that still parses, verifies and has the signature (the file's own text
        // with a comment added) is caught by the digest.
        let text = std::fs::read_to_string(&files[0]).unwrap();
        std::fs::write(&files[0], format!("{text}\n")).unwrap();
        let (_, hit) = optimized_step(Some(dir.path()), &[], &step(), &opts).unwrap();
        assert!(!hit, "an edited entry is a miss");
        std::fs::write(&files[0], "func @train_step(").unwrap();
        let (third, hit) = optimized_step(Some(dir.path()), &[], &step(), &opts).unwrap();
        assert!(!hit, "a damaged entry is a miss");
        assert_eq!(print_module_of(&third), print_module_of(&first));
        let (_, hit) = optimized_step(None, &[], &step(), &opts).unwrap();
        assert!(!hit, "no directory, no cache");
    }

    fn print_module_of(f: &Function) -> String {
        print_module(&Module {
            files: Vec::new(),
            functions: vec![f.clone()],
        })
    }

    #[test]
    fn digests_separate_their_parts() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(digest(&["x"]).len(), 64);
    }
}
