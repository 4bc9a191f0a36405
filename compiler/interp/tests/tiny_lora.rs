//! End to end: compile `tests/parity/lora_qv.graft` (the tiny Llama + LoRA of the fixtures) with the front end, run its `init` and
//! `forward` in the interpreter on the fixture weights, and compare the logits with the ones
//! PyTorch + PEFT computed (`tests/fixtures/base.safetensors`, `lora_qv.safetensors`).
//! Tolerance: |got - want| <= 1e-5 + 1e-4 |want| per logit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{assert_close, fixture, st_tensor};
use graft_interp::{Tensor, run_module_fn};
use graft_ir::{InputKind, Module};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

fn compile() -> Module {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec = root.join("tests/parity/lora_qv.graft");
    match graft_frontend::compile_file(&spec, &graft_frontend::Stdlib::Dir(root.join("stdlib"))) {
        Ok((_, p)) => p.module,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    }
}

/// Runs `forward` with weights and `input_ids` from base.safetensors and params from
/// `param(name)`, returning the logits.
fn forward(m: &Module, base: &SafeTensors<'_>, param: impl Fn(&str) -> Tensor) -> Tensor {
    let f = m.function("forward").unwrap();
    let mut inputs = HashMap::new();
    for i in f.inputs() {
        let t = match i.kind {
            InputKind::Weight | InputKind::Data => st_tensor(base, i.name),
            InputKind::Param => param(i.name),
            InputKind::State => panic!("unexpected state input {}", i.name),
        };
        inputs.insert(i.name.to_string(), t);
    }
    let mut out = run_module_fn(m, "forward", &inputs).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "logits");
    out.remove(0).1
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn base_logits_match_pytorch_with_initial_lora() {
    let m = compile();
    let base_bytes = fixture("base.safetensors");
    let base = SafeTensors::deserialize(&base_bytes).unwrap();
    let init: HashMap<String, Tensor> = run_module_fn(
        &m,
        "init",
        &HashMap::from([("seed".to_string(), Tensor::scalar_i64(1234))]),
    )
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(init.len(), 8, "lora A and B for q, v in 2 layers");
    for (name, t) in &init {
        let v = t.to_f64_vec();
        if name.contains("lora_B") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}: B starts at zero");
        } else {
            // kaiming_uniform(a = sqrt 5) on fan_in 64: bound 1/sqrt(64) = 0.125
            assert!(
                v.iter().all(|&x| x.abs() <= 0.125),
                "{name}: within the kaiming bound"
            );
            assert!(v.iter().any(|&x| x != 0.0), "{name}: random");
        }
    }
    let logits = forward(&m, &base, |name| init[name].clone());
    let want = st_tensor(&base, "logits");
    assert_eq!(logits.shape(), want.shape());
    let (g, w) = (logits.to_f64_vec(), want.to_f64_vec());
    eprintln!("base logits: max |diff| = {:e}", max_abs_diff(&g, &w));
    assert_close(&g, &w, 1e-4, 1e-5, "base logits");
}

#[test]
fn lora_logits_match_peft_with_random_adapters() {
    let m = compile();
    let base_bytes = fixture("base.safetensors");
    let lora_bytes = fixture("lora_qv.safetensors");
    let base = SafeTensors::deserialize(&base_bytes).unwrap();
    let lora = SafeTensors::deserialize(&lora_bytes).unwrap();
    // PEFT saves `model.layers.0...lora_A.weight` as `base_model.model.model.layers.0...`
    let logits = forward(&m, &base, |name| {
        st_tensor(&lora, &format!("base_model.model.{name}"))
    });
    let want = st_tensor(&lora, "logits");
    let (g, w) = (logits.to_f64_vec(), want.to_f64_vec());
    eprintln!("lora logits: max |diff| = {:e}", max_abs_diff(&g, &w));
    assert!(
        max_abs_diff(&w, &st_tensor(&base, "logits").to_f64_vec()) > 1e-2,
        "adapters matter"
    );
    assert_close(&g, &w, 1e-4, 1e-5, "lora_qv logits");
}
