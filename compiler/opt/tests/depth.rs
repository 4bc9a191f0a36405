//! The optimizer's work grows linearly with a model's depth: the same number of saturation
//! iterations at every depth (a fixed match limit would ban the ordinary rules of a deep model
//! and cost an extra pass over the graph per ban), at most one full recomputation of the
//! chosen DAG in extraction (every switch is evaluated and repaired locally), and switches
//! tried bounded by the e-graph's size. Counts, not seconds: timings are `graft explain`'s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_frontend::{Stdlib, compile};
use graft_opt::{Options, optimize};

fn optimized(layers: usize) -> graft_opt::Optimized {
    let spec = format!(
        "use models.llama\nuse peft.lora\n\
         model base = llama(vocab: 64, hidden: 32, layers: {layers}, heads: 4, ffn: 48)\n\
         adapt base {{ lora(r: 2, alpha: 4.0) at [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"] }}\n\
         train {{ batch 2 seq 8 }}\n"
    );
    let stdlib = Stdlib::Dir(common::repo().join("stdlib"));
    let (_, p) = compile("depth.graft", None, spec, &stdlib)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    optimize(&common::train_step(&p), &Options::default()).expect("optimize")
}

#[test]
fn work_grows_linearly_with_depth() {
    let (shallow, deep) = (optimized(2), optimized(16));
    assert_eq!(
        shallow.run.iterations, deep.run.iterations,
        "iterations: {:?} vs {:?}",
        shallow.run.stops, deep.run.stops
    );
    for o in [&shallow, &deep] {
        assert!(
            o.extraction_work[2] <= 1,
            "full recomputations: {:?}",
            o.extraction_work
        );
        // Hill-climbing tries each e-node at most once per round (three rounds), plus the
        // batching groups and shared scales.
        assert!(
            o.extraction_work[0] <= 4 * o.run.nodes,
            "switches tried {:?} for {} e-nodes",
            o.extraction_work,
            o.run.nodes
        );
        assert!(o.after.seconds <= o.before.seconds);
    }
}
