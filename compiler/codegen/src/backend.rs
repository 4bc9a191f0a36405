//! The compiled CPU backend for runtime sessions: `graft_runtime::Backend` over [`crate::compile`].

use graft_exec::Compiled;
use graft_runtime::{Backend, Prepared};

/// Compiles functions to native code for this host (MLIR → LLVM, JIT).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

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
