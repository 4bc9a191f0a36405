//! Running compiled functions: the execution plan a backend's compiler produced (kernels in
//! order, their buffers and the threads a launch is split across), the static memory plan,
//! and the executor. Kernels are addresses of native functions with MLIR's packed calling
//! convention, from wherever they were compiled: a JIT in this process, a shared object from
//! the kernel cache, or object code linked into a binary `graft build` made. This crate does
//! not link LLVM or MLIR, so a built training binary links it without them.
//!
//! [`CompiledFunction::run`] has `graft_interp::run`'s contract: inputs by name, outputs in
//! order. [`ExecPlan`] serializes (serde), so a plan can be stored beside its object code.

mod exec;
mod kernel;
mod memplan;
mod plan;
mod prepared;
mod team;

pub use exec::CodeOwner;
pub use exec::{CompiledFunction, KernelTime, Outputs};
pub use kernel::{ERR_DIV_ZERO, ERR_GATHER};
pub use memplan::{
    ALIGN, MemoryPlan, MemoryReport, overlapping, peak_report, plan_memory, storage_bytes,
};
pub use plan::{ExecPlan, Kind, Slot, Step};
pub use prepared::Compiled;

use graft_ir::{TensorType, VerifyError};

/// Why a function could not be compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// LLVM could not initialize the native target.
    #[error("LLVM could not initialize the native target: {0}")]
    NativeTarget(String),
    /// MLIR rejected a module that should be valid.
    #[error("MLIR did not accept a trivial module; is libmlir 22 installed? (scripts/setup.sh)")]
    Mlir,
    /// The function does not pass the IR verifier.
    #[error("the function is not valid IR: {0}")]
    Invalid(#[from] VerifyError),
    /// An op/dtype combination the IR does not define (the interpreter rejects it too).
    #[error("%{node}: `{op}` is not supported: {message}")]
    Unsupported {
        /// The node index.
        node: usize,
        /// The op's text name.
        op: String,
        /// What is not supported.
        message: String,
    },
    /// The generated MLIR or the pass pipeline failed: a bug in graft, reported with MLIR's
    /// diagnostics.
    #[error("internal code generation error: {0}")]
    Internal(String),
    /// No tensor was given for an input.
    #[error("missing input `{name}`")]
    MissingInput {
        /// The input's name.
        name: String,
    },
    /// The tensor given for an input has another type than the input node.
    #[error("input `{name}` expects {expected}, got {got}")]
    InputTypeMismatch {
        /// The input's name.
        name: String,
        /// The input node's type.
        expected: TensorType,
        /// The given tensor's type.
        got: TensorType,
    },
    /// A `gather` index is negative or not below the indexed extent.
    #[error("%{node}: `gather` index {value} is out of range for an axis of extent {extent}")]
    IndexOutOfRange {
        /// The node index.
        node: usize,
        /// The bad index.
        value: i64,
        /// The extent of the indexed axis.
        extent: usize,
    },
    /// An integer division by zero.
    #[error("%{node}: integer division by zero")]
    DivisionByZero {
        /// The node index.
        node: usize,
    },
    /// A node run on the host (through the reference interpreter) failed.
    #[error(transparent)]
    Interp(#[from] graft_interp::InterpError),
}

/// What compiling a function did, from [`CompiledFunction::compile_info`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompileInfo {
    /// Wall time of scheduling, lowering, and compiling or loading the kernels.
    pub seconds: f64,
    /// Modules the kernels were split into.
    pub modules: usize,
    /// Modules loaded from the kernel cache instead of being compiled.
    pub cached: usize,
    /// Modules compiled and written to the cache.
    pub stored: usize,
    /// The cache directory, when caching is on.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Why writing the cache failed, if it did (the compiled code is used anyway).
    pub cache_error: Option<String>,
    /// The object files written, one per module, with the kernels each defines (when the
    /// compiler was asked for them, to link into a binary).
    pub objects: Vec<(std::path::PathBuf, Vec<String>)>,
}
