//! End to end: the `lora_qv` parity spec's `@init` and `@train_step` (forward, causal-LM loss,
//! backward, AdamW) compiled to native code, run for three steps on the fixture weights and
//! batch, against the reference interpreter run side by side; and the same for
//! `dsl-examples/tiny_lora.graft` on a batch with ignored labels, whose loss the compiler
//! chunks over the vocabulary.
//!
//! The compiled step runs with its frozen weights bound (packed once, before the first step).
//! At its first step it is also run unbound on the team, on rayon's pool and on one thread,
//! whose outputs must equal the bound step's bit for bit.
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
    let weights = WeightsFile::open(&repo().join("tests/fixtures/base.safetensors")).unwrap();
    let batch = [
        ("input_ids", weights.read("input_ids").unwrap()),
        ("labels", weights.read("labels").unwrap()),
    ];
    steps_match(
        &repo().join("tests/parity/lora_qv.graft"),
        &weights,
        batch,
        false,
    );
}

/// `dsl-examples/tiny_lora.graft` (batch 4 × 16, vocabulary 256) on random tokens, a quarter
/// of the labels ignored (`-100`): its logits (`[4, 15, 256]`) are chunked over the vocabulary
/// (see `linear_ce.rs`), so the loss, the label's logit, the `lse` and the gradient of the
/// final hidden state come from the chunked computation; the compiled graph must have no
/// `log_softmax` and no matmul producing whole logits.
#[test]
fn vocabulary_chunked_loss_matches_the_interpreter() {
    let weights = WeightsFile::open(&repo().join("tests/fixtures/base.safetensors")).unwrap();
    let draw = |i: u64| graft_interp::splitmix64(0x9e37_79b9_7f4a_7c15 ^ i);
    let ids: Vec<i64> = (0..64).map(|i| (draw(i) % 256) as i64).collect();
    let labels: Vec<i64> = (0..64)
        .map(|i| {
            if draw(64 + i) % 4 == 0 {
                -100
            } else {
                ids[i as usize]
            }
        })
        .collect();
    assert!(labels.contains(&-100) && labels.iter().any(|&l| l >= 0));
    for optimize in [false, true] {
        let batch = [
            ("input_ids", Tensor::i64(vec![4, 16], ids.clone()).unwrap()),
            ("labels", Tensor::i64(vec![4, 16], labels.clone()).unwrap()),
        ];
        let spec = repo().join("dsl-examples/tiny_lora.graft");
        let compiled = steps_match(&spec, &weights, batch, optimize);
        let f = compiled.function();
        assert!(
            !f.nodes
                .iter()
                .any(|n| matches!(n.op, graft_ir::Op::LogSoftmax { .. })),
            "optimized: {optimize}: the loss's log_softmax is still there"
        );
        // No product with the whole LM head (`[256, 64]`, or its transpose) as B.
        let lm_head = |v: graft_ir::ValueId| {
            let n = f.node(v);
            let weight = |n: &graft_ir::Node| matches!(&n.op, graft_ir::Op::Input { name, .. } if name == "lm_head.weight");
            weight(n) || matches!(n.op, graft_ir::Op::Transpose { .. }) && weight(f.node(n.args[0]))
        };
        let whole_logits = f
            .nodes
            .iter()
            .any(|n| matches!(n.op, graft_ir::Op::MatMul { .. }) && lm_head(n.args[1]));
        assert!(
            !whole_logits,
            "optimized: {optimize}: a matmul still produces whole logits"
        );
    }
}

/// Runs `spec`'s compiled `@init` and three compiled `@train_step`s against the interpreter
/// (frozen weights from `weights`, the data inputs from `batch`; the step optimized by
/// graft-opt first if `optimize`), checking every output (tolerances in the module doc);
/// returns the compiled step.
fn steps_match(
    spec: &Path,
    weights: &WeightsFile,
    batch: [(&str, Tensor); 2],
    optimize: bool,
) -> graft_codegen::CompiledFunction {
    let (_, program) = match compile_file(spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
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
    let mut step_fn = graft_autodiff::train_step(forward, &step_config(&program)).unwrap();
    if optimize {
        step_fn = graft_opt::optimize(&step_fn, &graft_opt::Options::default())
            .unwrap()
            .func;
    }
    for i in step_fn.inputs().filter(|i| i.kind == InputKind::State) {
        values.insert(i.name.to_string(), Tensor::zeros(i.ty.clone()));
    }
    for (name, t) in batch {
        values.insert(name.into(), t);
    }
    if step_fn.input("dropout_seed").is_some() {
        values.insert("dropout_seed".into(), Tensor::scalar_i64(0));
    }

    let compile = |f| graft_codegen::compile(f).unwrap();
    let t0 = Instant::now();
    let compiled = compile(&step_fn);
    let compile_time = t0.elapsed();
    eprintln!(
        "train_step: {} nodes, {} kernels, compiled in {compile_time:?}",
        step_fn.nodes.len(),
        compiled.kernel_count()
    );
    // The compiled step binds the frozen weights (packed once, as a training session does)
    // and runs without them; the unbound runs below get them back.
    let mut got_vals = values.clone();
    let mut released = Vec::new();
    compiled
        .bind(&mut got_vals, &[], &mut |n| released.push(n.to_string()))
        .unwrap();
    let frozen: HashMap<String, Tensor> = released
        .iter()
        .map(|n| (n.clone(), values[n].clone()))
        .collect();
    assert!(!frozen.is_empty(), "no frozen weight was bound");
    let mut want_vals = values;
    for step in 0..3 {
        let t = Instant::now();
        let want = graft_interp::run(&step_fn, &want_vals).unwrap();
        let interp_time = t.elapsed();
        let t = Instant::now();
        let got = compiled.run(&got_vals).unwrap();
        let run_time = t.elapsed();
        if step == 0 {
            // Every kernel computes each output element the same way whatever part of its
            // range a call covers, so how launches are split cannot change a bit: graft's
            // team (parts with stealing), rayon's pool (static chunks) and one thread agree
            // exactly.
            // Packing the frozen weights in every run instead of once at binding reads the
            // same panels: equal too.
            let mut all = got_vals.clone();
            all.extend(frozen.clone());
            for (how, other) in [
                ("the team, unbound", compile(&step_fn)),
                ("rayon's pool, unbound", compile(&step_fn).with_team(false)),
                ("one thread, unbound", compile(&step_fn).with_threads(1)),
            ] {
                assert!(
                    other.run(&all).unwrap() == got,
                    "the step on {how} differs from the bound step on the team"
                );
            }
        }
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
    compiled
}
