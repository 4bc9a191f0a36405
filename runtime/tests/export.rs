//! `export --merged` against its oracle: the merged folder, loaded as a plain model with no
//! adapters, gives the adapted model's logits (interpreter, f32; tolerance 1e-5 of the
//! largest logit), for LoRA, DoRA and a gated adapter on the shipped tiny-llama folder; a
//! soft prompt or a non-affine adapter is refused with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo;
use graft_frontend::{Loaded, Stdlib, elaborate, load};
use graft_interp::Tensor;
use graft_runtime::{Session, WeightsFile};
use std::path::Path;

fn loaded_in(dir: &Path, name: &str, text: &str) -> Loaded {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    load(
        name,
        Some(path),
        text.to_string(),
        &Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)))
}

fn spec(model: &str, adapt: &str) -> String {
    format!(
        "use models.llama\nuse peft.lora\nuse peft.dora\nuse peft.prompt_tuning\n\
         adapter gated(r: int = 2) wraps linear(in, out) {{\n\
             param A: [r, in] = normal(std: 0.1)\n\
             param B: [out, r] = normal(std: 0.1)\n\
             param g: [out] = normal(std: 1.0)\n\
             forward(x) = base(x) + tanh(g) * (x @ A^T @ B^T)\n\
         }}\n\
         adapter squashed(r: int = 2) wraps linear(in, out) {{\n\
             param A: [r, in] = normal(std: 0.5)\n\
             forward(x) = base(x) + tanh(x @ A^T) @ A\n\
         }}\n\
         model base = llama from \"{model}\"\n{adapt}\n\
         train {{\n  loss causal_lm\n  batch 1  seq 12  steps 1\n}}\n"
    )
}

/// A session with every trainable tensor set to seeded nonzero values (LoRA's B starts at
/// zero, which would make any merge look right).
fn trained(l: &Loaded) -> Session {
    let p = elaborate(l).unwrap();
    let w = WeightsFile::open(&p.weights.as_ref().unwrap().0).unwrap();
    let mut s = Session::new(p, Some(&w), 0).unwrap();
    let params: Vec<(String, Vec<usize>, Vec<f32>)> = s
        .params()
        .into_iter()
        .map(|(p, t)| (p, t.shape().to_vec(), t.as_f32().unwrap().to_vec()))
        .collect();
    for (path, shape, old) in params {
        let data = old
            .iter()
            .enumerate()
            .map(|(i, x)| x + ((i * 37 % 101) as f32 - 50.0) * 2e-3)
            .collect();
        s.set_param(&path, Tensor::f32(shape, data).unwrap())
            .unwrap();
    }
    s
}

fn ids() -> Tensor {
    Tensor::i64(
        vec![1, 12],
        vec![0, 337, 336, 311, 335, 279, 263, 355, 334, 349, 18, 1],
    )
    .unwrap()
}

fn save(s: &Session, dir: &Path) {
    let params = s.params();
    let bytes = graft_runtime::weights::to_safetensors(&params).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("trainable.safetensors"), bytes).unwrap();
}

#[test]
fn a_merged_folder_gives_the_adapted_models_logits() {
    let model = repo().join("dsl-examples/models/tiny-llama");
    let model = model.display();
    for adapt in [
        "adapt base { lora(r: 4, alpha: 8.0) at \"all-linear\" }",
        "adapt base { dora(r: 4, alpha: 8.0) at [\"q_proj\", \"v_proj\", \"down_proj\"] }",
        "adapt base { gated(r: 2) at [\"o_proj\", \"up_proj\"] }",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let l = loaded_in(dir.path(), "a.graft", &spec(&model.to_string(), adapt));
        let mut s = trained(&l);
        let want = s.forward(&ids()).unwrap();
        save(&s, &dir.path().join("adapter"));
        let out = dir.path().join("merged");
        let written =
            graft_runtime::export::export_merged(&l, Some(&dir.path().join("adapter")), &out)
                .unwrap();
        assert!(written.iter().any(|p| p.ends_with("config.json")));
        assert!(out.join("tokenizer.json").is_file());
        let plain = loaded_in(dir.path(), "plain.graft", &spec("merged", ""));
        let p = elaborate(&plain).unwrap();
        let w = WeightsFile::open(&p.weights.as_ref().unwrap().0).unwrap();
        let got = Session::new(p, Some(&w), 0)
            .unwrap()
            .forward(&ids())
            .unwrap();
        let (a, b) = (want.as_f32().unwrap(), got.as_f32().unwrap());
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{adapt}: max |Δlogit| {err} (scale {scale})"
        );
        // The adapter changed the logits: the check above is not vacuous.
        let base_w =
            WeightsFile::open(&repo().join("dsl-examples/models/tiny-llama/model.safetensors"))
                .unwrap();
        let plain_base = loaded_in(dir.path(), "b.graft", &spec(&model.to_string(), ""));
        let base = Session::new(elaborate(&plain_base).unwrap(), Some(&base_w), 0)
            .unwrap()
            .forward(&ids())
            .unwrap();
        let moved = a
            .iter()
            .zip(base.as_f32().unwrap())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            moved > 1e-2 * scale,
            "{adapt}: the adapter moved the logits by only {moved}"
        );
    }
}

#[test]
fn a_soft_prompt_or_a_non_affine_adapter_is_refused_and_nothing_written() {
    let model = repo()
        .join("dsl-examples/models/tiny-llama")
        .display()
        .to_string();
    for (adapt, says) in [
        (
            "adapt base { prompt_tuning(tokens: 4) at \"model.embed_tokens\" }",
            "cannot be merged",
        ),
        (
            "adapt base { squashed(r: 2) at [\"q_proj\"] }",
            "not affine",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let l = loaded_in(dir.path(), "a.graft", &spec(&model, adapt));
        let out = dir.path().join("merged");
        let e = graft_runtime::export::export_merged(&l, None, &out)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(says), "{adapt}: {e}");
        assert!(!out.exists(), "{adapt}: wrote {}", out.display());
    }
}
