//! The target-independent lowering: IR→IR rewrites that trade stored values for
//! recomputation, as a list of named passes run in order before a backend schedules the
//! function into kernels. Every backend runs the same passes; a target only says how large
//! its chunks are ([`Options`]).
//!
//! Each pass takes a verified function and returns one that computes the same outputs:
//! - `chunk-vocabulary`: the language-model head and its loss over vocabulary chunks, so the
//!   logits never exist whole (`linear_ce.rs`; off when the target's `vocab_chunk` is 0);
//! - `decompose-log-softmax`: large log-softmaxes as `x - max - log(sum(exp))` pieces the
//!   scheduler fuses (`decompose.rs`);
//! - `hoist-reductions`: small reductions (the loss, norms) as early as their operands allow
//!   (`reorder.rs`);
//! - `rematerialize`: cheap large values recomputed for their late readers instead of kept
//!   alive (`remat.rs`).
//!
//! In debug builds (the tests) every pass's result is verified, and an invalid one is an
//! error naming the pass. A caller can see the IR after any pass (`graft ir --print-after`,
//! or `GRAFT_PRINT_AFTER=<pass>|all` for every compile).

mod decompose;
mod linear_ce;
mod remat;
mod reorder;

use graft_ir::{Function, VerifyError, verify_function};

/// What a target asks of the passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Target bytes of one chunk of logits when the language-model head and its loss run
    /// over vocabulary chunks; 0 keeps the logits whole.
    pub vocab_chunk: usize,
}

/// Why the lowering failed.
#[derive(Debug, thiserror::Error)]
pub enum LoweringError {
    /// The function does not pass the IR verifier.
    #[error("the function is not valid IR: {0}")]
    Invalid(#[from] VerifyError),
    /// A pass built an ill-typed node, or its result does not verify: a bug in graft.
    #[error("{0}")]
    Pass(String),
}

/// One rewrite of the lowering.
#[derive(Clone, Copy)]
pub struct Pass {
    /// Its name, as `--print-after` and the file tests use it.
    pub name: &'static str,
    run: fn(&Function, &Options) -> Result<Function, String>,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Pass {
    /// This pass on `f` (verified) for `target`; its result is not verified here.
    ///
    /// # Errors
    /// [`LoweringError::Pass`] naming the pass, when it built an ill-typed node.
    pub fn run(&self, f: &Function, target: &Options) -> Result<Function, LoweringError> {
        (self.run)(f, target).map_err(|e| LoweringError::Pass(format!("pass `{}`: {e}", self.name)))
    }
}

/// The passes, in the order the lowering runs them.
pub const PASSES: [Pass; 4] = [
    Pass {
        name: "chunk-vocabulary",
        run: |f, t| {
            Ok(match t.vocab_chunk {
                0 => f.clone(),
                bytes => linear_ce::chunk_vocabulary(f, linear_ce::MIN_ELEMS, bytes),
            })
        },
    },
    Pass {
        name: "decompose-log-softmax",
        run: |f, _| {
            decompose::log_softmax(f, decompose::LOG_SOFTMAX_MIN).map_err(|e| e.to_string())
        },
    },
    Pass {
        name: "hoist-reductions",
        run: |f, _| Ok(reorder::hoist_reductions(f)),
    },
    Pass {
        name: "rematerialize",
        run: |f, _| remat::rematerialize(f).map_err(|e| e.to_string()),
    },
];

/// The pass called `name`.
pub fn pass(name: &str) -> Option<Pass> {
    PASSES.iter().copied().find(|p| p.name == name)
}

/// `f` through every pass, calling `after(pass, result)` after each. Each result is verified
/// when `verify` is set.
///
/// # Errors
/// [`LoweringError::Invalid`] when `f` does not verify, [`LoweringError::Pass`] naming the
/// pass whose result does not.
pub fn run_passes(
    f: &Function,
    target: &Options,
    verify: bool,
    after: &mut dyn FnMut(&str, &Function),
) -> Result<Function, LoweringError> {
    verify_function(f, usize::MAX)?;
    let mut f = f.clone();
    for p in &PASSES {
        f = p.run(&f, target)?;
        if verify {
            verify_function(&f, usize::MAX).map_err(|e| {
                LoweringError::Pass(format!("the IR after pass `{}` is invalid: {e}", p.name))
            })?;
        }
        after(p.name, &f);
    }
    Ok(f)
}

/// The passes `GRAFT_PRINT_AFTER` names (comma-separated, or `all`), whose IR every compile
/// prints to stderr.
pub fn print_after_env() -> impl FnMut(&str, &Function) {
    let wanted = std::env::var("GRAFT_PRINT_AFTER").unwrap_or_default();
    move |name: &str, f: &Function| {
        if wanted.split(',').any(|w| w == name || w == "all") {
            eprintln!("// IR after {name}");
            eprint!("{}", graft_ir::print_function(f));
        }
    }
}
