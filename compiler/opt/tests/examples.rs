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
