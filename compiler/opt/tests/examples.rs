//! Property test on real programs: for the training step of every spec in `dsl-examples/`
//! (and the forward with `--merge`), the interpreter gives the same outputs before and after
//! optimization, within 1e-4 of the largest value of each output.

mod common;

use common::{program, random_inputs, train_step, worst_rel_err};
use graft_opt::{Mode, Options, optimize};

fn check(rel: &str, mode: Mode) -> graft_opt::Optimized {
    let p = program(rel);
    let f = match mode {
        Mode::Train => train_step(&p),
        Mode::Merge => p.module.function("forward").expect("forward").clone(),
    };
    let opt = optimize(
        &f,
        &Options {
            mode,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{rel}: {e}"));
    let vocab = p
        .tensors
        .iter()
        .find(|t| t.path == "model.embed_tokens.weight")
        .map_or(2, |t| t.ty.shape[0] as i64);
    let inputs = random_inputs(&f, vocab, 3);
    let before = graft_interp::run(&f, &inputs).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let after =
        graft_interp::run(&opt.func, &inputs).unwrap_or_else(|e| panic!("{rel} optimized: {e}"));
    let (e, name) = worst_rel_err(&after, &before);
    assert!(
        e <= 1e-4,
        "{rel} ({mode:?}): output `{name}` changed by {e:e} (relative) through optimization"
    );
    opt
}

#[test]
fn training_steps_of_every_example_are_preserved() {
    for entry in std::fs::read_dir(common::repo().join("dsl-examples"))
        .expect("examples")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".graft") || name.starts_with("small") {
            continue;
        }
        let opt = check(&format!("dsl-examples/{name}"), Mode::Train);
        assert!(
            opt.after.seconds <= opt.before.seconds * 1.0001,
            "{name}: the optimized step is estimated slower ({} vs {} s)",
            opt.after.seconds,
            opt.before.seconds
        );
        eprintln!(
            "{name}: {:?} fired; {:.3e} → {:.3e} FLOPs, {:.3e} → {:.3e} bytes",
            opt.run.applied, opt.before.flops, opt.after.flops, opt.before.bytes, opt.after.bytes
        );
    }
}

#[test]
fn merged_forward_is_preserved_and_has_no_adapter_path() {
    let opt = check("dsl-examples/tiny_lora.graft", Mode::Merge);
    assert!(
        opt.run.applied.contains_key("matmul-distribute"),
        "merge fired: {:?}",
        opt.run.applied
    );
}

/// LoRA's backward scales the output gradient (`[tokens, features]`) by `alpha / r` once and
/// feeds it to two rank-r products (the gradients of `B` and of `x·Aᵀ`). The optimizer moves
/// the scale onto the products, which are rank-r sized, so that no full-size scaled copy of a
/// gradient is computed: every reader of the scaled value switches at once (a one-reader
/// switch never pays, since the value stays for the other).
#[test]
fn lora_scales_move_onto_the_rank_r_products() {
    use graft_ir::{BinaryOp, Function, Op};
    // The benchmarks' tiny Llama with LoRA on every linear layer (batch 4 × 128).
    let rel = "tests/opt-specs/tiny_all_linear.graft";
    let text = std::fs::read_to_string(common::repo().join(rel)).expect("the spec");
    assert!(
        text.contains("lora(r: 8, alpha: 16.0)"),
        "the scale below is alpha / r = 2"
    );
    let p = program(rel);
    let f = train_step(&p);
    let tokens = f.input("input_ids").map_or(0, |i| i.ty.numel());
    let hidden = p
        .tensors
        .iter()
        .find(|t| t.path == "model.embed_tokens.weight")
        .map_or(0, |t| t.ty.shape[1]);
    assert!(tokens > 0 && hidden > 0);
    // The value of a (broadcast) constant operand.
    let splat = |f: &Function, v: graft_ir::ValueId| -> Option<f64> {
        let n = f.node(v);
        match n.op {
            Op::Constant { value } => Some(value),
            Op::Broadcast => match f.node(n.args[0]).op {
                Op::Constant { value } => Some(value),
                _ => None,
            },
            _ => None,
        }
    };
    // Full-size values multiplied by the LoRA scale.
    let scaled = |f: &Function| {
        f.nodes
            .iter()
            .filter(|n| {
                matches!(n.op, Op::Binary(BinaryOp::Mul))
                    && n.ty.numel() >= tokens * hidden
                    && n.args.iter().any(|&a| splat(f, a) == Some(2.0))
            })
            .count()
    };
    let before = scaled(&f);
    assert!(before > 0, "the unoptimized step scales no full-size value");
    // (Semantics: `training_steps_of_every_example_are_preserved` and the random graphs.)
    // No time limit in effect (a debug build on a loaded machine would hit the default's and
    // stop saturating early); the iteration and node limits keep the run deterministic.
    let opts = Options {
        limits: graft_opt::Limits {
            time: std::time::Duration::from_secs(3600),
            ..graft_opt::Limits::default()
        },
        ..Options::default()
    };
    let opt = optimize(&f, &opts).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(scaled(&opt.func), 0, "of {before}");
    assert!(opt.after.seconds < opt.before.seconds);
}
