//! Helpers the CLI's integration tests share: the repository, running `graft` in it with a
//! cache folder of the test's own, and reading how a process ended.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `graft ARGS` in the repository, with its stdlib and the kernel cache in `cache`.
pub fn graft(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .env("GRAFT_CACHE_DIR", cache)
        .output()
        .unwrap()
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exited on its own with `code`, not killed by a signal (SIGSEGV, SIGBUS, SIGABRT);
/// returns stdout then stderr.
pub fn exited(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.signal(),
        None,
        "killed by a signal: {}",
        text(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
