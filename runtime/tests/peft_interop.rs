//! A PEFT-trained adapter in graft, against PEFT's own logits: tests/fixtures/stories-peft-adapter/
//! (PEFT 0.21.2's LoRA r=16, alpha=32 on every linear layer of the shipped tiny-llama, after
//! 3 AdamW steps, saved by `PeftModel.save_pretrained`; made by scripts/peft_roundtrip.py
//! --fixture). graft's interpreter must give PEFT's logits within 1e-4.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo;
use graft_runtime::{Session, WeightsFile};

fn stories(edit: impl Fn(String) -> String) -> Session {
    let path = repo().join("dsl-examples/stories_lora.graft");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let p = graft_frontend::compile(
        "stories_lora.graft",
        Some(&path),
        text,
        &graft_frontend::Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)))
    .1;
    let w = WeightsFile::open(&p.weights.as_ref().unwrap().0).unwrap();
    Session::new(p, Some(&w), 0).unwrap()
}

#[test]
fn a_peft_trained_adapter_gives_pefts_logits() {
    let fixture = repo().join("tests/fixtures/stories-peft-adapter");
    let want = WeightsFile::open(&fixture.join("logits.safetensors")).unwrap();
    let ids = want.read("input_ids").unwrap();
    let want = want.read("logits_row0").unwrap();
    let mut s = stories(|t| t);
    let before = s.forward(&ids).unwrap();
    let (n, missing) = s.load_trained(&fixture).unwrap();
    assert_eq!((n, missing.len()), (28, 0));
    let got = s.forward(&ids).unwrap();
    let row = want.numel();
    let (a, b) = (&got.as_f32().unwrap()[..row], want.as_f32().unwrap());
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-4, "max |Δlogit| {err}");
    let moved = before.as_f32().unwrap()[..row]
        .iter()
        .zip(b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        moved > 1e-2,
        "the adapter barely changes the logits ({moved}): the check is vacuous"
    );
}

#[test]
fn an_adapter_made_with_another_scaling_is_refused() {
    let fixture = repo().join("tests/fixtures/stories-peft-adapter");
    let mut s = stories(|t| t.replace("alpha: 32.0", "alpha: 16.0"));
    let e = s.load_trained(&fixture).unwrap_err().to_string();
    assert!(
        e.contains("lora_alpha") && e.contains("32") && e.contains("16"),
        "{e}"
    );
}
