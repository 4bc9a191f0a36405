//! The research examples (dsl-examples/research/, one spec per seed paper): each trains for
//! its 20 steps with `graft train` and the loss falls (the mean of the last three steps
//! below `fall` times the mean of the first three; measured on this project's hosts: ACE-LoRA
//! 0.27, FAAR 0.78, FedPDPO 0.01, Free Sinewich 0.73, MCFT 0.89, MoR 0.76, QFT 0.89,
//! Zipper-LoRA 0.73), and `graft explain` runs on it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn graft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .args(args)
        .output()
        .unwrap()
}

fn trains_and_explains(name: &str, fall: f64) {
    let spec = format!("dsl-examples/research/{name}.graft");
    let out = graft(&["train", &spec]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let l: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("step "))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .collect();
    assert_eq!(l.len(), 20, "{name}: {stdout}");
    let first = l[..3].iter().sum::<f64>() / 3.0;
    let last = l[17..].iter().sum::<f64>() / 3.0;
    assert!(last < fall * first, "{name}: {l:?}");
    let out = graft(&["explain", &spec, "--no-ir"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("cost"), "{name}: {text}");
}

#[test]
fn ace_lora() {
    trains_and_explains("ace_lora", 0.5);
}

#[test]
fn faar() {
    trains_and_explains("faar", 0.9);
}

#[test]
fn fedpdpo() {
    trains_and_explains("fedpdpo", 0.1);
}

#[test]
fn free_sinewich() {
    trains_and_explains("free_sinewich", 0.9);
}

#[test]
fn mcft() {
    trains_and_explains("mcft", 0.95);
}

#[test]
fn mor() {
    trains_and_explains("mor", 0.9);
}

#[test]
fn qft() {
    trains_and_explains("qft", 0.95);
}

#[test]
fn zipper_lora() {
    trains_and_explains("zipper_lora", 0.9);
}
