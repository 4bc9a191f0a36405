//! Models beyond Llama against transformers: each `tests/models/*.graft` spec's `@forward` on
//! the interpreter, with the weights and the batch of its fixture
//! (`scripts/make_model_fixtures.py`: a tiny random Hugging Face model, loaded by Hugging
//! Face's names), against the logits transformers computed. Tolerance: 1e-4 relative to the
//! largest logit (f32 on both sides; the interpreter accumulates in f64).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Stdlib, compile_file};
use graft_interp::Tensor;
use graft_runtime::WeightsFile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The largest |a − b| over the largest |b|.
fn norm_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.ty(), b.ty());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// `tests/models/{name}.graft`'s forward on its fixture's weights and batch, against the
/// fixture's logits.
fn check_forward(name: &str) {
    let spec = repo().join(format!("tests/models/{name}.graft"));
    let (_, program) = match compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
    let fixture = WeightsFile::open(&repo().join(format!("tests/fixtures/{name}.safetensors")))
        .expect("fixture");
    let forward = program.module.function("forward").expect("forward");
    let mut inputs = HashMap::new();
    for input in forward.inputs() {
        let t = fixture
            .read(input.name)
            .unwrap_or_else(|e| panic!("{name}: `{}` is not in the fixture: {e}", input.name));
        assert_eq!(t.ty(), input.ty, "{name}: `{}`", input.name);
        inputs.insert(input.name.to_string(), t);
    }
    // Every weight of the fixture is read: the spec names them all, by Hugging Face's names.
    let weights = fixture.entries().len() - 1;
    assert_eq!(
        inputs.len(),
        weights,
        "{name}: the spec reads every fixture tensor"
    );
    let out = graft_interp::run(forward, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let logits = &out.iter().find(|(n, _)| n == "logits").expect("logits").1;
    let want = fixture.read("logits").expect("logits");
    let e = norm_err(logits, &want);
    assert!(
        e <= 1e-4,
        "{name}: logits differ from transformers' by {e:e}"
    );
}

#[test]
fn bert_for_sequence_classification_matches_transformers() {
    check_forward("bert_classifier");
}

#[test]
fn vit_for_image_classification_matches_transformers() {
    check_forward("vit_classifier");
}
