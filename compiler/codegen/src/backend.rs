//! The compiled CPU backend for runtime sessions: `graft_runtime::Backend` over [`crate::compile`].

use crate::CompiledFunction;
use graft_interp::Tensor;
use graft_runtime::{Backend, Prepared};
use std::collections::HashMap;

/// Compiles functions to native code for this host (MLIR → LLVM, JIT).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

struct Compiled(CompiledFunction);

impl Prepared for Compiled {
    fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String> {
        self.0.run(inputs).map_err(|e| e.to_string())
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "compiled cpu backend"
    }

    fn prepare(&self, f: &graft_ir::Function) -> Result<Box<dyn Prepared>, String> {
        crate::compile(f)
            .map(|c| Box::new(Compiled(c)) as Box<dyn Prepared>)
            .map_err(|e| e.to_string())
    }
}
