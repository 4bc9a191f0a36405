//! Models beyond Llama compiled for the CPU: each `tests/models/*.graft` spec's `@forward`,
//! as elaborated and after the e-graph optimizer, compiled by graft_codegen and run on its
//! fixture's weights and batch (`scripts/make_model_fixtures.py`), against the logits
//! transformers computed. Tolerance: 1e-4 relative to the largest logit (the `f32` GEMM
//! accumulates in `f32`; transformers too).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Stdlib, compile_file};
use graft_interp::Tensor;
use graft_runtime::WeightsFile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// max |a − b| / max |b|.
fn norm_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.ty(), b.ty());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn check_compiled_forward(name: &str) {
    let spec = repo().join(format!("tests/models/{name}.graft"));
    let (_, program) = match compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
    let fixture =
        WeightsFile::open(&repo().join(format!("tests/fixtures/{name}.safetensors"))).unwrap();
    let forward = program.module.function("forward").unwrap();
    let inputs: HashMap<String, Tensor> = forward
        .inputs()
        .map(|i| (i.name.to_string(), fixture.read(i.name).unwrap()))
        .collect();
    let want = fixture.read("logits").unwrap();
    let optimized = graft_opt::optimize(forward, &graft_opt::Options::default())
        .unwrap()
        .func;
    for (how, f) in [("elaborated", forward), ("optimized", &optimized)] {
        let out = graft_codegen::compile(f).unwrap().run(&inputs).unwrap();
        let logits = &out.iter().find(|(n, _)| n == "logits").unwrap().1;
        let e = norm_err(logits, &want);
        assert!(
            e <= 1e-4,
            "{name} ({how}): logits differ from transformers' by {e:e}"
        );
    }
}

#[test]
fn bert_for_sequence_classification_compiles_to_transformers_logits() {
    check_compiled_forward("bert_classifier");
}

#[test]
fn vit_for_image_classification_compiles_to_transformers_logits() {
    check_compiled_forward("vit_classifier");
}

#[test]
fn t5_for_conditional_generation_compiles_to_transformers_logits() {
    check_compiled_forward("t5_seq2seq");
}

#[test]
fn bert_for_question_answering_compiles_to_transformers_logits() {
    check_compiled_forward("bert_qa");
}

#[test]
fn clip_compiles_to_transformers_logits() {
    check_compiled_forward("clip");
}
