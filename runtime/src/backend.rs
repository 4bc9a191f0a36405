//! Backends run IR functions: the reference interpreter here, compiled native code from
//! `graft-codegen` (which implements these traits, so this crate never links LLVM).

use graft_interp::Tensor;
use graft_ir::Function;
use std::collections::HashMap;

/// A function made ready to run.
pub trait Prepared {
    /// Runs it: inputs by name, outputs in order (the interpreter's contract).
    fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String>;
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
