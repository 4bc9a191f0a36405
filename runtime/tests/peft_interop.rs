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

/// A sequence classifier's adapter as PEFT saves it: LoRA on query and value and the
/// classifier as a `modules_to_save` (tests/fixtures/peft_bert_seqcls, PEFT 0.21.2, task
/// SEQ_CLS). Loaded into graft (LoRA + `full_ft` on the classifier), it gives PEFT's logits
/// within 1e-4 of the largest; saved again by graft, it has PEFT's keys and the config
/// fields that say what it computes (method, rank, alpha, targets, modules to save, task).
#[test]
fn a_peft_sequence_classifier_with_a_saved_head_round_trips() {
    let spec = repo().join("tests/models/bert_peft_seqcls.graft");
    let (_, p) =
        graft_frontend::compile_file(&spec, &graft_frontend::Stdlib::Dir(repo().join("stdlib")))
            .unwrap_or_else(|e| panic!("{e:?}"));
    let w = WeightsFile::open(&p.weights.as_ref().unwrap().0).unwrap();
    let mut s = Session::new(p, Some(&w), 0).unwrap();
    let fixture = repo().join("tests/fixtures/peft_bert_seqcls");
    let (n, missing) = s.load_trained(&fixture).unwrap();
    assert_eq!((n, missing.len()), (10, 0), "{missing:?}");
    let batch: Vec<(&str, graft_interp::Tensor)> =
        ["input_ids", "token_type_ids", "attention_mask"]
            .iter()
            .map(|&k| (k, w.read(k).unwrap()))
            .collect();
    let got = s.forward_named(&batch).unwrap();
    let want = WeightsFile::open(&fixture.join("logits.safetensors"))
        .unwrap()
        .read("logits")
        .unwrap();
    let (a, b) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= 1e-4 * scale,
        "logits differ from PEFT's by {err:e} (scale {scale})"
    );

    let out = std::env::temp_dir().join(format!("graft-seqcls-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let task = graft_runtime::peft::task_type(&s.program);
    graft_runtime::save_adapter(&out, &s.program.adapters, task.as_deref(), &s.params()).unwrap();
    let keys = |d: &std::path::Path| -> Vec<String> {
        let f = WeightsFile::open(&d.join("adapter_model.safetensors")).unwrap();
        f.entries().keys().cloned().collect()
    };
    assert_eq!(keys(&out), keys(&fixture));
    let config = |d: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    let (ours, theirs) = (config(&out), config(&fixture));
    for k in ["peft_type", "r", "task_type"] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    assert_eq!(ours["lora_alpha"].as_f64(), theirs["lora_alpha"].as_f64());
    let set = |v: &serde_json::Value| {
        let mut l: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        l.sort();
        l
    };
    assert_eq!(set(&ours["target_modules"]), set(&theirs["target_modules"]));
    assert!(set(&theirs["modules_to_save"]).contains(&"\"classifier\"".to_string()));
    assert_eq!(
        set(&ours["modules_to_save"]),
        vec!["\"classifier\"".to_string()]
    );
    std::fs::remove_dir_all(&out).unwrap();
}
