//! Helpers for the runtime's tests: the tiny LoRA example (edited as a test needs), a session
//! on the fixture weights, and a batch of the shipped data.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Program, Stdlib, compile};
use graft_interp::Tensor;
use graft_runtime::{Session, WeightsFile};
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    r.canonicalize().unwrap_or(r)
}

/// The tiny LoRA example with `edit` applied to its text.
pub fn program(edit: impl Fn(String) -> String) -> Program {
    let path = repo().join("dsl-examples/tiny_lora.graft");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    compile(
        "tiny_lora.graft",
        Some(&path),
        text,
        &Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)))
    .1
}

/// An interpreter session on the fixture weights.
pub fn session(p: Program) -> Session {
    let w = WeightsFile::open(&repo().join("tests/fixtures/base.safetensors")).unwrap();
    Session::new(p, Some(&w), 0).unwrap()
}

/// The shipped data file.
pub fn data() -> PathBuf {
    repo().join("dsl-examples/data/tiny_tokens.jsonl")
}

/// The shipped data's batches for `p`, in file order.
pub fn batches(p: &Program) -> graft_runtime::Batches {
    graft_runtime::data::load(p, &data(), None, false, false)
        .unwrap()
        .0
}

/// The first batch of the shipped data, shaped for `p` (its labels are the ids).
pub fn ids(p: &Program) -> Tensor {
    batches(p).next_batch().0
}
