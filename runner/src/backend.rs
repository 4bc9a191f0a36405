//! The backend of a built binary: every function a run prepares was compiled when the
//! binary was built, so preparing one finds its plan and binds each step to the kernel
//! linked in under its symbol, and optimizing one returns the optimized function the binary
//! carries. Nothing is compiled or optimized at run time.

use crate::payload::{BuiltFunction, function_key};
use graft_exec::{CompileInfo, Compiled, CompiledFunction};
use graft_ir::Function;
use graft_runtime::{Backend, Prepared};
use std::collections::HashMap;

/// One carried function, parsed.
struct Entry {
    role: String,
    unoptimized: String,
    optimized: Function,
    prepared_key: String,
    scheduled: Function,
    plan: graft_exec::ExecPlan,
    symbols: Vec<String>,
}

/// Prepares functions from a payload's plans and a table of linked kernels.
pub struct LinkedBackend {
    entries: Vec<Entry>,
    kernels: HashMap<String, usize>,
}

fn one_function(text: &str, what: &str) -> Result<Function, String> {
    let m = graft_ir::parse_module(text).map_err(|e| format!("{what}: {e}"))?;
    m.functions
        .into_iter()
        .next()
        .ok_or_else(|| format!("{what}: no function"))
}

impl LinkedBackend {
    /// The backend for `functions`, whose kernels are at the addresses `kernels` gives by
    /// link symbol.
    ///
    /// # Errors
    /// A function's text does not parse (a damaged binary).
    pub fn new(
        functions: &[BuiltFunction],
        kernels: HashMap<String, usize>,
    ) -> Result<LinkedBackend, String> {
        let mut entries = Vec::new();
        for b in functions {
            let optimized = one_function(&b.optimized, &b.role)?;
            let scheduled = one_function(&b.scheduled, &b.role)?;
            entries.push(Entry {
                role: b.role.clone(),
                unoptimized: b.unoptimized.clone(),
                prepared_key: function_key(&optimized),
                optimized,
                scheduled,
                plan: b.plan.clone(),
                symbols: b.symbols.clone(),
            });
        }
        Ok(LinkedBackend { entries, kernels })
    }
}

impl Backend for LinkedBackend {
    fn name(&self) -> &'static str {
        "compiled cpu backend (linked)"
    }

    fn prepare(&self, f: &Function) -> Result<Box<dyn Prepared>, String> {
        let key = function_key(f);
        let e = self.entries.iter().find(|e| e.prepared_key == key).ok_or_else(|| {
            let roles: Vec<&str> = self.entries.iter().map(|e| e.role.as_str()).collect();
            format!(
                "this binary has no compiled code for `@{}` as this run builds it (it carries {}); \
                 a setting that changes the training step (such as --accumulate) needs another `graft build`",
                f.name,
                roles.join(", ")
            )
        })?;
        let mut wrappers = Vec::with_capacity(e.symbols.len());
        for s in &e.symbols {
            wrappers.push(if s.is_empty() {
                0
            } else {
                *self
                    .kernels
                    .get(s)
                    .ok_or_else(|| format!("kernel `{s}` is not linked into this binary"))?
            });
        }
        let compiled = CompiledFunction::new(
            e.scheduled.clone(),
            e.plan.clone(),
            wrappers,
            Vec::new(),
            String::new(),
            CompileInfo {
                modules: 0,
                ..CompileInfo::default()
            },
            rayon::current_num_threads(),
        )
        .map_err(|err| err.to_string())?;
        Ok(Box::new(Compiled(compiled)))
    }

    /// The carried optimized form of `f`; `f` itself when the binary carries none, so that
    /// no optimizer runs and [`Backend::prepare`] says what is missing at once.
    fn optimized(&self, f: &Function) -> Option<Function> {
        let key = function_key(f);
        let found = self.entries.iter().find(|e| e.unoptimized == key);
        Some(found.map_or_else(|| f.clone(), |e| e.optimized.clone()))
    }
}
