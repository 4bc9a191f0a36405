//! End to end: the `lora_qv` parity spec's `@init` and `@train_step` (forward, causal-LM loss,
//! backward, AdamW) compiled to native code, run for three steps on the fixture weights and
//! batch, against the reference interpreter run side by side.
//!
//! Tolerance: 1e-4 relative (norm-wise per tensor, `max |got - want| / max |want|`) for the
//! loss, the gradient norm and every updated param and optimizer state, at every step. Each
//! side feeds its own outputs into its next step, so errors would compound if they grew.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Stdlib, compile_file};
use graft_interp::Tensor;
use graft_ir::InputKind;
use graft_runtime::{WeightsFile, step_config};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn repo() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    r.canonicalize().unwrap_or(r)
}

/// max |a - b| / max |b| (0 when both are all zeros).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.ty(), b.ty());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 { err } else { err / scale }
}

#[test]
fn lora_qv_training_steps_match_the_interpreter() {
    let spec = repo().join("tests/parity/lora_qv.graft");
    let (_, program) = match compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
    let weights = WeightsFile::open(&repo().join("tests/fixtures/base.safetensors")).unwrap();
    let mut values: HashMap<String, Tensor> = HashMap::new();
    for t in program.tensors.iter().filter(|t| t.from_weights) {
        values.insert(t.path.clone(), weights.read(&t.path).unwrap());
    }

    // @init: params from the frozen weights and a seed, compiled vs interpreted.
    let init = program.module.function("init").unwrap();
    values.insert("seed".into(), Tensor::scalar_i64(0));
    let want_init = graft_interp::run(init, &values).unwrap();
    let got_init = graft_codegen::compile(init).unwrap().run(&values).unwrap();
    for ((name, g), (_, w)) in got_init.iter().zip(&want_init) {
        assert!(
            rel(g, w) <= 1e-6,
            "@init `{name}` differs by {:e}",
            rel(g, w)
        );
    }
    for (name, t) in want_init {
        values.insert(name, t);
    }
    values.remove("seed");

    let forward = program.module.function("forward").unwrap();
    let step_fn = graft_autodiff::train_step(forward, &step_config(&program.train)).unwrap();
    for i in step_fn.inputs().filter(|i| i.kind == InputKind::State) {
        values.insert(i.name.to_string(), Tensor::zeros(i.ty.clone()));
    }
    values.insert("input_ids".into(), weights.read("input_ids").unwrap());
    values.insert("labels".into(), weights.read("labels").unwrap());
    if step_fn.input("dropout_seed").is_some() {
        values.insert("dropout_seed".into(), Tensor::scalar_i64(0));
    }

    let t0 = Instant::now();
    let compiled = graft_codegen::compile(&step_fn).unwrap();
    let compile_time = t0.elapsed();
    eprintln!(
        "train_step: {} nodes, {} kernels, compiled in {compile_time:?}",
        step_fn.nodes.len(),
        compiled.kernel_count()
    );
    let mut want_vals = values.clone();
    let mut got_vals = values;
    for step in 0..3 {
        let t = Instant::now();
        let want = graft_interp::run(&step_fn, &want_vals).unwrap();
        let interp_time = t.elapsed();
        let t = Instant::now();
        let got = compiled.run(&got_vals).unwrap();
        let run_time = t.elapsed();
        assert_eq!(got.len(), want.len());
        let mut worst = (0f64, String::new());
        for ((gn, g), (wn, w)) in got.iter().zip(&want) {
            assert_eq!(gn, wn);
            let e = rel(g, w);
            assert!(e <= 1e-4, "step {step}: `{gn}` differs by {e:e} (relative)");
            if e > worst.0 {
                worst = (e, gn.clone());
            }
        }
        let loss = |v: &[(String, Tensor)]| {
            v.iter()
                .find(|(n, _)| n == "loss")
                .map(|(_, t)| t.to_f64_vec()[0])
                .unwrap()
        };
        eprintln!(
            "step {step}: loss {} (interpreter {}), worst `{}` {:e}; run {run_time:?}, interpreter {interp_time:?}",
            loss(&got),
            loss(&want),
            worst.1,
            worst.0
        );
        for (name, t) in want {
            want_vals.insert(name, t);
        }
        for (name, t) in got {
            got_vals.insert(name, t);
        }
    }
}
