//! `model m = llama from "folder"`: a Hugging Face model folder's config.json sets the
//! model's parameters through the config keys its graft source names, explicit arguments
//! win, and a folder that cannot be used is a diagnostic at the `from` clause naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Stdlib, compile_file};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    r.canonicalize().unwrap_or(r)
}

/// A spec in `dir` whose model line is `model`.
fn compile_in(dir: &Path, model: &str) -> Result<graft_frontend::Program, String> {
    let spec = dir.join("spec.graft");
    std::fs::write(&spec, format!("use models.llama\n{model}\n")).unwrap();
    match compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok((_, p)) => Ok(p),
        Err(graft_frontend::CompileFileError::Compile(e)) => Err(e.render(false)),
        Err(e) => Err(e.to_string()),
    }
}

fn folder(config: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let hf = d.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(hf.join("config.json"), config).unwrap();
    std::fs::write(hf.join("model.safetensors"), b"").unwrap();
    d
}

const CONFIG: &str = r#"{"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 3,
  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true,
  "rope_scaling": null, "model_type": "llama"}"#;

fn tensor_shape(p: &graft_frontend::Program, path: &str) -> Vec<usize> {
    p.tensors
        .iter()
        .find(|t| t.path == path)
        .unwrap_or_else(|| panic!("no {path}"))
        .ty
        .shape
        .clone()
}

#[test]
fn config_json_sets_the_dimensions_and_the_folder_gives_the_weights() {
    let d = folder(CONFIG);
    let p = compile_in(d.path(), "model base = llama from \"hf\"").unwrap();
    assert_eq!(tensor_shape(&p, "model.embed_tokens.weight"), [96, 32]);
    assert_eq!(
        tensor_shape(&p, "model.layers.2.self_attn.k_proj.weight"),
        [16, 32]
    );
    assert_eq!(
        tensor_shape(&p, "model.layers.0.mlp.up_proj.weight"),
        [48, 32]
    );
    // tie_word_embeddings: no separate lm_head.
    assert!(!p.tensors.iter().any(|t| t.path == "lm_head.weight"));
    let (w, _) = p.weights.clone().unwrap();
    assert!(w.ends_with("hf/model.safetensors"), "{}", w.display());
    // An explicit argument wins over the config; `weights` over the folder's file.
    let p = compile_in(
        d.path(),
        "model base = llama(layers: 1, tie_embeddings: false) from \"hf\" weights \"other.safetensors\"",
    )
    .unwrap();
    assert!(p.tensors.iter().all(|t| !t.path.contains("layers.1.")));
    assert!(p.tensors.iter().any(|t| t.path == "lm_head.weight"));
    assert!(p.weights.unwrap().0.ends_with("other.safetensors"));
}

#[test]
fn the_shipped_folder_gives_the_fixture_model() {
    let spec = repo().join("dsl-examples/tiny_lora_hf.graft");
    let (_, p) =
        compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))).unwrap_or_else(|e| panic!("{e}"));
    let explicit = repo().join("dsl-examples/tiny_lora.graft");
    let (_, q) = compile_file(&explicit, &Stdlib::Dir(repo().join("stdlib")))
        .unwrap_or_else(|e| panic!("{e}"));
    let shapes = |p: &graft_frontend::Program| -> Vec<(String, Vec<usize>)> {
        p.tensors
            .iter()
            .map(|t| (t.path.clone(), t.ty.shape.clone()))
            .collect()
    };
    assert_eq!(shapes(&p), shapes(&q));
}

#[test]
fn a_folder_that_cannot_be_used_is_a_located_error() {
    let cases: [(&str, &str); 3] = [
        (
            "{\"hidden_size\": 32,\n \"vocab_size\": }",
            "not valid JSON",
        ),
        ("[1, 2]", "is not a JSON object"),
        (
            &CONFIG.replace("\"hidden_size\": 32", "\"hidden_size\": \"wide\""),
            "`hidden_size` is \"wide\", but `hidden` of `llama` is int",
        ),
    ];
    for (config, says) in cases {
        let d = folder(config);
        let e = compile_in(d.path(), "model base = llama from \"hf\"").unwrap_err();
        assert!(e.contains(says) && e.contains("config.json"), "{e}");
        assert!(
            e.contains("spec.graft:2:"),
            "located at the from clause: {e}"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let e = compile_in(d.path(), "model base = llama from \"missing\"").unwrap_err();
    assert!(
        e.contains("cannot read") && e.contains("missing/config.json"),
        "{e}"
    );
    // A sharded checkpoint's index is the weights file; a folder with neither is an error.
    let d = folder(CONFIG);
    std::fs::remove_file(d.path().join("hf/model.safetensors")).unwrap();
    let e = compile_in(d.path(), "model base = llama from \"hf\"").unwrap_err();
    assert!(e.contains("has no model.safetensors"), "{e}");
    std::fs::write(d.path().join("hf/model.safetensors.index.json"), "{}").unwrap();
    let p = compile_in(d.path(), "model base = llama from \"hf\"").unwrap();
    assert!(
        p.weights
            .unwrap()
            .0
            .ends_with("model.safetensors.index.json")
    );
    // A missing dimension the config does not set is the usual missing-parameter error.
    let d = folder("{\"vocab_size\": 8}");
    let e = compile_in(d.path(), "model base = llama from \"hf\"").unwrap_err();
    assert!(e.contains("hidden"), "{e}");
}
