//! Backends run IR functions: the reference interpreter here, compiled native code from
//! `graft-codegen` (which implements these traits, so this crate never links LLVM).

use graft_interp::Tensor;
use graft_ir::{Function, TensorType};
use std::collections::HashMap;

/// A run's named outputs, in order.
pub type Outputs = Vec<(String, Tensor)>;

/// A function made ready to run.
pub trait Prepared {
    /// Runs it: inputs by name, outputs in order (the interpreter's contract).
    fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String>;

    /// What preparing it did and how it will use memory (compiled backends).
    fn info(&self) -> Option<PreparedInfo> {
        None
    }

    /// True when [`Prepared::run_mapped`] reads mapped inputs in place; the default copies
    /// them into tensors on every call, so callers should then hold tensors instead.
    fn reads_in_place(&self) -> bool {
        false
    }

    /// Binds the frozen weights (a compiled backend packs them once, for every later run,
    /// which then ignore those inputs' values). Each input later runs no longer read is let
    /// go as soon as binding is done with it: removed from `inputs` if there, and
    /// `release(name)` is called. Returns the bytes the bound copies take. The default binds
    /// nothing.
    fn bind(
        &self,
        inputs: &mut HashMap<String, Tensor>,
        mapped: &[MappedInput<'_>],
        release: &mut (dyn FnMut(&str) + Send),
    ) -> Result<usize, String> {
        let _ = (inputs, mapped, release);
        Ok(0)
    }

    /// [`Prepared::run_mapped`], also reporting where the run's time went (compiled
    /// backends; the default reports nothing).
    fn run_mapped_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[MappedInput<'_>],
    ) -> Result<(Outputs, Option<RunProfile>), String> {
        Ok((self.run_mapped(inputs, mapped)?, None))
    }

    /// Runs it with some inputs given as bytes borrowed from memory the caller keeps alive
    /// (a memory-mapped weights file) instead of tensors.
    fn run_mapped(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[MappedInput<'_>],
    ) -> Result<Vec<(String, Tensor)>, String> {
        if mapped.is_empty() {
            return self.run(inputs);
        }
        self.run(&with_copies(inputs, mapped)?)
    }
}

/// `inputs` plus tensors holding copies of the `mapped` inputs, for runners that need
/// tensors.
pub fn with_copies(
    inputs: &HashMap<String, Tensor>,
    mapped: &[MappedInput<'_>],
) -> Result<HashMap<String, Tensor>, String> {
    let mut all = inputs.clone();
    for m in mapped {
        all.insert(m.name.to_string(), m.to_tensor()?);
    }
    Ok(all)
}

/// An input read in place: `f32` elements, little-endian (the host's order), of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct MappedInput<'a> {
    /// The input's name.
    pub name: &'a str,
    /// Its type (dtype `f32`).
    pub ty: &'a TensorType,
    /// Its elements' bytes, `4 · ty.numel()` of them, 4-byte aligned.
    pub bytes: &'a [u8],
}

impl MappedInput<'_> {
    /// A tensor holding a copy.
    pub fn to_tensor(&self) -> Result<Tensor, String> {
        let v: Vec<f32> = self
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::f32(self.ty.shape.clone(), v).map_err(|e| e.to_string())
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
    /// Bytes of the bound (packed) frozen weights, once bound.
    pub bound_bytes: usize,
}

/// Where one run of a compiled function spent its time, kernel launch by kernel launch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunProfile {
    /// Seconds in GEMM kernels (the tiled products, without their packs).
    pub gemm_seconds: f64,
    /// Floating-point operations those GEMMs performed (over the padded panels they cover).
    pub gemm_flops: f64,
    /// Seconds packing GEMM operands (A's row tiles, B's panels).
    pub pack_seconds: f64,
    /// Seconds in every other kernel and host step.
    pub other_seconds: f64,
    /// Kernel launches.
    pub launches: usize,
}

/// Something that can prepare and run IR functions.
pub trait Backend {
    /// A short name for reports (`interpreter`, `cpu`).
    fn name(&self) -> &'static str;
    /// Prepares `f` (for compiled backends: compiles it).
    fn prepare(&self, f: &Function) -> Result<Box<dyn Prepared>, String>;

    /// The optimized form of `f` when this backend carries one (a built binary holds the
    /// steps it was compiled from, so it never runs the optimizer); `None` lets the caller
    /// optimize.
    fn optimized(&self, f: &Function) -> Option<Function> {
        let _ = f;
        None
    }
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
