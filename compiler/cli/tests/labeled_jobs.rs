//! `graft train` on the shipped labeled-data examples: sentence classification (BERT),
//! extractive QA (BERT, SQuAD records), seq2seq (T5), image classification (ViT, a tensor
//! file), contrastive image–text pairs (CLIP, a tensor file) and DPO (the tiny Llama folder,
//! preference pairs). Each trains from its data file and the loss falls: the mean of the last
//! three steps is below `fall` times the mean of the first three. DPO starts at exactly ln 2
//! (the reference is the model with its adapters disabled, and LoRA's B starts at zero),
//! within 1e-4 (the printed digits).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What `graft train` prints for `spec`.
fn train(spec: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .args(["train", spec])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{spec}: {stdout}\n{stderr}");
    stdout.into_owned()
}

/// The per-step losses `graft train` prints for `spec`.
fn losses(spec: &str) -> Vec<f64> {
    let stdout = train(spec);
    let l: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("step "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|&x| x == "loss")?;
            w.get(at + 1)?.parse().ok()
        })
        .collect();
    assert!(l.len() >= 6, "{spec}: too few steps in {stdout}");
    l
}

fn falls(spec: &str, fall: f64) -> Vec<f64> {
    let l = losses(spec);
    let first = l[..3].iter().sum::<f64>() / 3.0;
    let last = l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < fall * first, "{spec}: {l:?}");
    l
}

#[test]
fn bert_trains_on_text_classification_records() {
    falls("dsl-examples/bert_sentiment.graft", 0.5);
}

/// The sentiment example evaluates its held-out sentences with `metrics [accuracy]`: every
/// evaluation prints the loss and an accuracy in [0, 1] (no perplexity: the loss is not a
/// language model's), and the last is at least the first.
#[test]
fn classification_evaluation_reports_accuracy() {
    let out = train("dsl-examples/bert_sentiment.graft");
    let acc: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("eval after step"))
        .map(|l| {
            assert!(!l.contains("perplexity"), "{l}");
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|&x| x == "accuracy").expect("accuracy");
            w[at + 1].parse::<f64>().expect("a number")
        })
        .collect();
    assert_eq!(acc.len(), 3, "{out}");
    assert!(
        acc.iter().all(|a| (0.0..=1.0).contains(a)) && acc[2] >= acc[0],
        "{acc:?}"
    );
}

#[test]
fn bert_trains_on_squad_records() {
    falls("dsl-examples/bert_squad.graft", 0.5);
}

#[test]
fn t5_trains_on_seq2seq_records() {
    falls("dsl-examples/t5_seq2seq.graft", 0.85);
}

#[test]
fn vit_trains_on_an_image_tensor_file() {
    falls("dsl-examples/vit_images.graft", 0.5);
}

#[test]
fn dpo_trains_on_preference_pairs_from_ln_2() {
    let l = falls("dsl-examples/tiny_dpo.graft", 0.1);
    assert!((l[0] - std::f64::consts::LN_2).abs() < 1e-4, "{l:?}");
}

#[test]
fn clip_trains_contrastively_on_image_text_pairs() {
    falls("dsl-examples/clip_pairs.graft", 0.6);
}

/// `graft generate` on the T5 example: the prompt is the encoder's source and the reply,
/// printed on the next line, the decoder's (greedy decoding is checked against
/// transformers' `generate` in runtime/tests/models.rs).
#[test]
fn generate_decodes_a_seq2seq_reply() {
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .args([
            "generate",
            "dsl-examples/t5_seq2seq.graft",
            "--prompt",
            "the cat is big",
            "--max-new-tokens",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = stdout
        .strip_prefix("the cat is big\n")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(!reply.trim().is_empty(), "{stdout}");
}
