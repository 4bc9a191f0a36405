//! The practitioner's job end to end on the shipped tiny-llama folder and text corpus: train
//! with eval, evaluate the saved adapter, export a merged model, generate (compiled and on the
//! interpreter: the same greedy text), chat; and a model folder whose files are bad (another
//! architecture's checkpoint, a truncated checkpoint or shard index, a broken tokenizer):
//! one clear error naming the file, nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{graft, repo};
use std::path::Path;
use std::process::Output;

fn ok(out: &Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    all
}

fn failed(out: &Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    all
}

fn number_after(s: &str, key: &str) -> f64 {
    let at = s.rfind(key).unwrap_or_else(|| panic!("no {key:?} in {s}")) + key.len();
    s[at..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn train_eval_export_and_generate_on_text() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let adapter = tmp.path().join("adapter");
    let a = adapter.display().to_string();
    let spec = "dsl-examples/stories_lora.graft";
    let out = ok(&graft(
        &[
            "train",
            spec,
            "--steps",
            "40",
            "--eval-every",
            "20",
            "--save",
            &a,
        ],
        &cache,
    ));
    // Eval loss after 20 and 40 steps, falling; perplexity reported.
    let evals: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("eval after step"))
        .map(|l| number_after(l, "loss "))
        .collect();
    assert_eq!(evals.len(), 2, "{out}");
    assert!(evals[1] < evals[0] && evals[1] < 4.0, "{out}");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(adapter.join("metrics.jsonl").is_file() && adapter.join("loss.svg").is_file());
    let e = ok(&graft(&["eval", spec, "--adapter", &a], &cache));
    let loss = number_after(&e, "eval loss ");
    // `graft eval` reads every batch of the eval file; training's last evaluation did too.
    assert!((loss - evals[1]).abs() < 1e-3, "{e} vs {evals:?}");
    let merged = tmp.path().join("merged");
    ok(&graft(
        &[
            "export",
            spec,
            "--adapter",
            &a,
            "--merged",
            &merged.display().to_string(),
        ],
        &cache,
    ));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(merged.join(f).is_file(), "{f}");
    }
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            spec,
            "--adapter",
            &a,
            "--prompt",
            "Every morning",
        ];
        args.extend_from_slice(extra);
        String::from_utf8(graft(&args, &cache).stdout).unwrap()
    };
    let compiled = generate(&[]);
    assert!(
        compiled.starts_with("Every morning") && compiled.len() > 30,
        "{compiled}"
    );
    assert_eq!(
        compiled,
        generate(&["--interpret"]),
        "greedy text differs between backends"
    );
    assert_eq!(
        compiled,
        generate(&["--no-kv-cache"]),
        "the KV cache changes the text"
    );
    let sampled = generate(&["--temperature", "0.8", "--top-p", "0.9", "--seed", "5"]);
    assert_eq!(
        sampled,
        generate(&["--temperature", "0.8", "--top-p", "0.9", "--seed", "5"])
    );
    let chat = ok(&graft(
        &[
            "generate",
            spec,
            "--adapter",
            &a,
            "--chat",
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "8",
        ],
        &cache,
    ));
    assert!(!chat.trim().is_empty());
}

/// A copy of the shipped model folder with `edit` applied, and a spec reading it.
fn broken_folder(tmp: &Path, edit: impl Fn(&Path)) -> String {
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(repo().join("dsl-examples/models/tiny-llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    edit(&dir);
    let spec = std::fs::read_to_string(repo().join("dsl-examples/stories_lora.graft"))
        .unwrap()
        .replace(
            "\"models/tiny-llama\"",
            &format!("{:?}", dir.display().to_string()),
        )
        .replace(
            "\"data/",
            &format!("\"{}/dsl-examples/data/", repo().display()),
        );
    let path = tmp.join("spec.graft");
    std::fs::write(&path, spec).unwrap();
    path.display().to_string()
}

#[test]
fn bad_model_folders_get_one_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let save = tmp.path().join("out");
    let s = save.display().to_string();
    let run = |spec: &str| {
        failed(&graft(
            &["train", spec, "--steps", "1", "--save", &s],
            &cache,
        ))
    };

    // Another architecture's checkpoint: every problem in one error, unexpected names too.
    let spec = broken_folder(&tmp.path().join("a"), |d| {
        let w = std::fs::read(repo().join("tests/fixtures/base.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), w).unwrap();
    });
    let e = run(&spec);
    assert!(e.contains("does not fit the spec"), "{e}");
    assert!(
        e.contains("has shape [256, 64]") && e.contains("expects [512, 64]"),
        "{e}"
    );
    assert!(
        e.contains("unexpected") && e.contains("lm_head.weight"),
        "{e}"
    );

    // A truncated checkpoint.
    let spec = broken_folder(&tmp.path().join("b"), |d| {
        let p = d.join("model.safetensors");
        let w = std::fs::read(&p).unwrap();
        std::fs::write(&p, &w[..w.len() / 3]).unwrap();
    });
    let e = run(&spec);
    assert!(e.contains("model.safetensors"), "{e}");

    // A shard index naming a missing shard, and one that is not JSON.
    for (name, index) in [
        (
            "c",
            r#"{"weight_map": {"model.norm.weight": "model-00002.safetensors"}}"#,
        ),
        ("d", "{\"weight_map\": {"),
    ] {
        let spec = broken_folder(&tmp.path().join(name), |d| {
            std::fs::remove_file(d.join("model.safetensors")).unwrap();
            std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
        });
        let e = run(&spec);
        assert!(
            e.contains("model.safetensors.index.json") || e.contains("model-00002"),
            "{e}"
        );
    }

    // A tokenizer.json that is not JSON: the file, line and column.
    let spec = broken_folder(&tmp.path().join("e"), |d| {
        std::fs::write(d.join("tokenizer.json"), "{\n  \"model\": {\n").unwrap();
    });
    let e = run(&spec);
    assert!(
        e.contains("tokenizer.json:3:") && e.contains("not valid JSON"),
        "{e}"
    );
    assert!(!save.exists(), "a failed run wrote {}", save.display());
}

#[test]
fn resuming_with_another_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let spec = broken_folder(tmp.path(), |_| {});
    let ck = tmp.path().join("ck").display().to_string();
    ok(&graft(
        &["train", &spec, "--steps", "2", "--checkpoint", &ck],
        &cache,
    ));
    // The same tokenizer written out again with other whitespace: other bytes.
    let tok = tmp.path().join("model/tokenizer.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&tok).unwrap()).unwrap();
    std::fs::write(&tok, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let e = failed(&graft(
        &["train", &spec, "--steps", "4", "--checkpoint", &ck],
        &cache,
    ));
    assert!(e.contains("tokenizer"), "{e}");
}
