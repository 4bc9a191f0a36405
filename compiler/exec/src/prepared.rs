//! A compiled function as a runtime backend's prepared function ([`graft_runtime::Prepared`]),
//! whoever compiled it: the CPU backend's JIT, or a built binary's linked kernels.

use crate::CompiledFunction;
use graft_interp::Tensor;
use graft_runtime::{MappedInput, Prepared, PreparedInfo, RunProfile};
use std::collections::HashMap;

/// A [`CompiledFunction`] prepared for a runtime session.
pub struct Compiled(pub CompiledFunction);

impl Prepared for Compiled {
    fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String> {
        self.0.run(inputs).map_err(|e| e.to_string())
    }

    fn reads_in_place(&self) -> bool {
        true
    }

    fn run_mapped(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[MappedInput<'_>],
    ) -> Result<Vec<(String, Tensor)>, String> {
        self.0.run_mapped(inputs, mapped).map_err(|e| e.to_string())
    }

    fn run_mapped_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[MappedInput<'_>],
    ) -> Result<(graft_runtime::backend::Outputs, Option<RunProfile>), String> {
        let (out, times) = self
            .0
            .run_mapped_profiled(inputs, mapped)
            .map_err(|e| e.to_string())?;
        let mut p = RunProfile {
            launches: times.len(),
            ..RunProfile::default()
        };
        for k in &times {
            match k.kind {
                "gemm" | "matmul" => {
                    p.gemm_seconds += k.seconds;
                    p.gemm_flops += k.flops;
                }
                "pack_a" | "pack" => p.pack_seconds += k.seconds,
                _ => p.other_seconds += k.seconds,
            }
        }
        Ok((out, Some(p)))
    }

    fn bind(
        &self,
        inputs: &mut HashMap<String, Tensor>,
        mapped: &[MappedInput<'_>],
        release: &mut (dyn FnMut(&str) + Send),
    ) -> Result<usize, String> {
        self.0
            .bind(inputs, mapped, release)
            .map_err(|e| e.to_string())
    }

    fn info(&self) -> Option<PreparedInfo> {
        let c = self.0.compile_info();
        let m = self.0.memory();
        let cache = match (&c.cache_dir, &c.cache_error) {
            (None, _) => "off".to_string(),
            (Some(_), Some(e)) => format!("not written: {e}"),
            (Some(d), None) => d.display().to_string(),
        };
        Some(PreparedInfo {
            kernels: self.0.kernel_count(),
            compile_seconds: c.seconds,
            modules: c.modules,
            cached_modules: c.cached,
            cache,
            arena_bytes: m.arena_bytes,
            output_bytes: m.output_bytes,
            unshared_bytes: m.unshared_bytes,
            bound_bytes: self.0.bound_bytes(),
        })
    }
}
