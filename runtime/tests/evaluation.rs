//! Evaluation on the interpreter: `@eval`'s loss is the training loss's computation (the
//! causal-LM loss of `Session::gradients`, an independent construction of forward + loss)
//! with dropout off, and trained tensors load back from the folders `--save` writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ids, program, session};

#[test]
fn the_eval_loss_is_the_training_loss_with_dropout_off() {
    let p = program(|t| t);
    let x = ids(&p);
    let mut s = session(p);
    s.step(&x, &x).unwrap();
    let (want, _) = s.gradients(&x, &x).unwrap();
    let got = s.eval_loss(&x, &x).unwrap();
    assert!(
        ((got - want) / want).abs() < 1e-6,
        "eval {got} vs training loss {want}"
    );
    // With dropout on the LoRA input the training loss changes from step to step's masks; the
    // eval loss is the dropout-free one, the same as the spec without dropout.
    let dropped = program(|t| {
        t.replace(
            "lora(r: 4, alpha: 8.0)",
            "lora(r: 4, alpha: 8.0, lora_dropout: 0.5)",
        )
    });
    let mut d = session(dropped);
    let mut plain = session(program(|t| t));
    let (a, b) = (
        d.eval_loss(&x, &x).unwrap(),
        plain.eval_loss(&x, &x).unwrap(),
    );
    assert!(
        ((a - b) / b).abs() < 1e-6,
        "dropout left on in eval: {a} vs {b}"
    );
    let s = d
        .evaluate([(x.clone(), x.clone()), (x.clone(), x.clone())])
        .unwrap();
    assert_eq!(s.batches, 2);
    assert!((s.loss - f64::from(b)).abs() < 1e-5 && (s.perplexity - s.loss.exp()).abs() < 1e-9);
}

#[test]
fn trained_tensors_load_back_from_a_saved_folder() {
    let p = program(|t| t);
    let x = ids(&p);
    let mut trained = session(p);
    for _ in 0..3 {
        trained.step(&x, &x).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let params = trained.params();
    let count = params.len();
    graft_runtime::save_adapter(
        dir.path(),
        &trained.program.adapters,
        Some("CAUSAL_LM"),
        &params,
    )
    .unwrap();
    let want = trained.eval_loss(&x, &x).unwrap();
    // From the PEFT adapter.
    let mut fresh = session(program(|t| t));
    assert_ne!(
        fresh.eval_loss(&x, &x).unwrap(),
        want,
        "training changed nothing"
    );
    let (n, missing) = fresh.load_trained(dir.path()).unwrap();
    assert_eq!((n, missing.len()), (count, 0));
    assert_eq!(fresh.eval_loss(&x, &x).unwrap(), want);
    // From graft's own file, when there is no PEFT adapter.
    let own = tempfile::tempdir().unwrap();
    let bytes = graft_runtime::weights::to_safetensors(&trained.params()).unwrap();
    std::fs::write(own.path().join("trainable.safetensors"), bytes).unwrap();
    let mut fresh = session(program(|t| t));
    fresh.load_trained(own.path()).unwrap();
    assert_eq!(fresh.eval_loss(&x, &x).unwrap(), want);
    // A folder for another method is refused, naming the setting that differs.
    let dora = program(|t| {
        t.replace("use peft.lora", "use peft.dora")
            .replace("lora(r: 4", "dora(r: 4")
    });
    let e = session(dora)
        .load_trained(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("use_dora"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = session(program(|t| t))
        .load_trained(empty.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no adapter_model.safetensors"), "{e}");
}
