//! Backends run IR functions: the reference interpreter here, compiled native code from
//! `graft-codegen` (which implements these traits, so this crate never links LLVM).

use graft_interp::Tensor;
use graft_ir::Function;
use std::collections::HashMap;

/// A function made ready to run.
pub trait Prepared {
    /// Runs it: inputs by name, outputs in order (the interpreter's contract).
    fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String>;

    /// What preparing it did and how it will use memory (compiled backends).
    fn info(&self) -> Option<PreparedInfo> {
        None
    }
}

/// What a compiled backend reports about a prepared function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedInfo {
    /// Kernel launches per run.
    pub kernels: usize,
    /// Seconds spent compiling (or loading from the kernel cache).
    pub compile_seconds: f64,
    /// Modules compiled, and how many of them came from the kernel cache.
    pub modules: usize,
    /// Modules loaded from the kernel cache.
    pub cached_modules: usize,
    /// The kernel cache, in a few words (`off`, a directory, or why writing it failed).
    pub cache: String,
    /// The static memory plan's arena: the planned peak of the intermediates, in bytes.
    pub arena_bytes: usize,
    /// Bytes of the outputs, allocated each run.
    pub output_bytes: usize,
    /// Bytes the intermediates would take without buffer reuse.
    pub unshared_bytes: usize,
}

/// Something that can prepare and run IR functions.
pub trait Backend {
    /// A short name for reports (`interpreter`, `cpu`).
    fn name(&self) -> &'static str;
    /// Prepares `f` (for compiled backends: compiles it).
    fn prepare(&self, f: &Function) -> Result<Box<dyn Prepared>, String>;
}

/// The reference interpreter as a backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interpreter;

struct Interpreted(Function);

impl Prepared for Interpreted {
    fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String> {
        graft_interp::run(&self.0, inputs).map_err(|e| e.to_string())
    }
}

impl Backend for Interpreter {
    fn name(&self) -> &'static str {
        "interpreter"
    }

    fn prepare(&self, f: &Function) -> Result<Box<dyn Prepared>, String> {
        Ok(Box::new(Interpreted(f.clone())))
    }
}
