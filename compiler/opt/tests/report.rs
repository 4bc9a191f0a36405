//! The optimizer on the benchmark models, as `graft explain` reports it: the estimated time of
//! the training step never gets worse, and shared-input batching is adopted where it pays.
//! Run with `--nocapture` to see the numbers (FLOPs, bytes, peak memory before and after);
//! `GRAFT_OPT_REPORT=all` adds the all-linear and "small" models (use `--release`).

mod common;

use graft_opt::{Options, optimize};

#[test]
fn benchmark_models_get_cheaper() {
    let mut specs = vec!["tests/opt-specs/tiny_qkvo.graft"];
    if std::env::var("GRAFT_OPT_REPORT").is_ok_and(|v| v == "all") {
        specs.extend([
            "tests/opt-specs/tiny_all_linear.graft",
            "tests/opt-specs/small_qkvo.graft",
            "tests/opt-specs/small_all_linear.graft",
        ]);
    }
    for spec in specs {
        let p = common::program(spec);
        let step = common::train_step(&p);
        let o = optimize(&step, &Options::default()).expect("optimize");
        eprintln!(
            "{spec}: FLOPs {:.4e} → {:.4e}, bytes {:.4e} → {:.4e}, peak {:.3e} → {:.3e}, est. {:.3e} s → {:.3e} s, kernels {} → {}, {} batched groups, {:.2} s to optimize; fired {:?}",
            o.before.flops,
            o.after.flops,
            o.before.bytes,
            o.after.bytes,
            o.before.peak_memory,
            o.after.peak_memory,
            o.before.seconds,
            o.after.seconds,
            o.before.kernels,
            o.after.kernels,
            o.batched_groups,
            o.time.as_secs_f64(),
            o.run.applied
        );
        assert!(o.after.seconds < o.before.seconds, "{spec}: not cheaper");
        assert!(o.batched_groups > 0, "{spec}: no batching group adopted");
    }
}
