//! graft's e-graph optimizer. It knows algebra, not method names: low-rank chains reassociate,
//! scalars move onto the smallest operand, transposes fold into matmul flags, products with a
//! dequantized weight fuse into one quantized matmul, products of one input batch into one
//! wider product, and (for inference) adapters fold into the frozen weights. A cost model of
//! FLOPs and bytes per target drives extraction.
//!
//! [`optimize`] runs it on one IR function and reports what fired and the cost before and
//! after.

pub mod analysis;
pub mod cost;
pub mod dag;
pub mod extract;
pub mod lang;
pub mod rules;
pub mod run;

pub use cost::{Summary, Target, summarize};

/// The optimizer's own source text (every module of this crate), for caches of its
/// results: an optimized step stored by one build is not served to a build whose rules, cost
/// model or extraction differ (see `graft_runtime::cache`). A new source file must be
/// listed here (the test `source_lists_every_module` checks).
pub const SOURCE: &[&str] = &[
    include_str!("analysis.rs"),
    include_str!("cost.rs"),
    include_str!("dag.rs"),
    include_str!("extract.rs"),
    include_str!("lang.rs"),
    include_str!("lib.rs"),
    include_str!("run.rs"),
    include_str!("rules/batching.rs"),
    include_str!("rules/layout.rs"),
    include_str!("rules/lowrank.rs"),
    include_str!("rules/mod.rs"),
    include_str!("rules/quant.rs"),
    include_str!("rules/scale.rs"),
    include_str!("rules/training.rs"),
];

pub use run::{Limits, RunReport};

use graft_ir::{Function, Op};
use std::collections::HashMap;

/// What the optimizer is optimizing for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A training step: adapters stay separate.
    Train,
    /// Inference with adapters folded into the weights.
    Merge,
}

/// Options for one optimization.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// The target the cost model describes.
    pub target: Target,
    /// Training or merged inference.
    pub mode: Mode,
    /// Equality-saturation limits.
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: Target::CPU,
            mode: Mode::Train,
            limits: Limits::default(),
        }
    }
}

/// An optimized function and how it got there.
#[derive(Clone, Debug)]
pub struct Optimized {
    /// The optimized function.
    pub func: Function,
    /// The rules run.
    pub run: RunReport,
    /// Cost before.
    pub before: Summary,
    /// Cost after.
    pub after: Summary,
    /// Shared-input batching groups adopted by extraction.
    pub batched_groups: usize,
    /// Extraction's work: switches tried, local repairs, full recomputations
    /// ([`extract::Extracted::work`]).
    pub extraction_work: [usize; 3],
    /// Wall time of the whole optimization (saturation and extraction).
    pub time: std::time::Duration,
}

/// Why optimization failed (a bug in the optimizer, reported rather than hidden).
#[derive(Debug, thiserror::Error)]
pub enum OptError {
    /// Extraction found no acyclic term.
    #[error("extraction found no acyclic term")]
    Extraction,
    /// The extracted term is not a valid function.
    #[error("the optimized function is invalid: {0}")]
    Invalid(String),
}

/// Optimizes a function.
pub fn optimize(f: &Function, opts: &Options) -> Result<Optimized, OptError> {
    let start = std::time::Instant::now();
    let term = lang::to_term(f);
    let mut eg = analysis::Graph::default();
    let root = eg.add_expr(&term.expr);
    let groups = rules::batching::Groups::default();
    let table = match opts.mode {
        Mode::Train => rules::training_rules(&groups),
        Mode::Merge => rules::merge_rules(&groups),
    };
    let (eg, run) = run::saturate(eg, &table, &opts.limits);
    let ex = extract::extract(&eg, root, &term.expr, opts.target, &groups)
        .ok_or(OptError::Extraction)?;
    let out = lang::from_term(
        &f.name,
        &lang::Term {
            expr: ex.expr,
            outputs: term.outputs,
        },
    )
    .map_err(OptError::Invalid)?;
    let func = inputs_first(f, &out)
        .ok_or_else(|| OptError::Invalid("its inputs cannot be moved first".into()))?;
    graft_ir::verify_function(&func, usize::MAX).map_err(|e| OptError::Invalid(e.to_string()))?;
    Ok(Optimized {
        before: summarize(f, &opts.target),
        after: summarize(&func, &opts.target),
        func,
        run,
        batched_groups: ex.groups_used,
        extraction_work: ex.work,
        time: start.elapsed(),
    })
}

/// Reorders `out` so its inputs come first, in the order `original` declares them.
fn inputs_first(original: &Function, out: &Function) -> Option<Function> {
    let order: HashMap<&str, usize> = original
        .inputs()
        .enumerate()
        .map(|(i, x)| (x.name, i))
        .collect();
    let n = out.nodes.len();
    let mut idx: Vec<usize> = (0..n)
        .filter(|&i| matches!(out.nodes[i].op, Op::Input { .. }))
        .collect();
    idx.sort_by_key(|&i| match &out.nodes[i].op {
        Op::Input { name, .. } => order.get(name.as_str()).copied().unwrap_or(usize::MAX),
        _ => usize::MAX,
    });
    idx.extend((0..n).filter(|&i| !matches!(out.nodes[i].op, Op::Input { .. })));
    out.reordered(&idx)
}

#[cfg(test)]
mod source_tests {
    /// Every `.rs` file under `src/` is in [`super::SOURCE`], so that any change to the
    /// optimizer changes the optimized-step cache's key.
    #[test]
    fn source_lists_every_module() {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        count(&p)
                    } else {
                        usize::from(p.extension().is_some_and(|x| x == "rs"))
                    }
                })
                .sum()
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert_eq!(count(&src), super::SOURCE.len());
        assert!(
            super::SOURCE
                .iter()
                .any(|s| s.contains("fn source_lists_every_module"))
        );
    }
}
