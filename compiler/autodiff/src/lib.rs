//! Reverse-mode automatic differentiation over graft's IR, and the training step built on it.
//!
//! [`grad`] appends the backward pass of a scalar loss to a function; [`train_step`] turns a
//! model's `@forward` into `@train_step` (loss, backward, clipping, schedule, optimizer).
//! Frozen weights get no gradient computation at all: only values that depend on a trainable
//! param carry adjoints.

pub mod grad;
pub mod step;

pub use grad::{grad, needs_grad};
pub use step::{
    Optimizer, ParamGroup, Schedule, StepConfig, TOTAL_STEPS, causal_lm_loss, train_step,
    training_loss,
};

/// Why differentiation or step construction failed.
#[derive(Debug, thiserror::Error)]
pub enum AdError {
    /// A node could not be typed (a bug in a rule, reported with the op and shapes).
    #[error(transparent)]
    Type(#[from] graft_ir::TypeError),
    /// The loss is not a float scalar.
    #[error("the loss must be a float scalar, got {0}")]
    NotScalarLoss(String),
    /// A gradient would have to flow through an op that has none.
    #[error("no gradient through `{0}`")]
    NotDifferentiable(String),
    /// The forward lacks something the step needs.
    #[error("the forward has no {0}")]
    Missing(String),
    /// Shapes that do not fit the loss.
    #[error("{0}")]
    Shape(String),
}
