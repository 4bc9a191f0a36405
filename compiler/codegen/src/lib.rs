//! Code generation: graft IR to native CPU code through MLIR and LLVM. The only crate that
//! links LLVM and MLIR (melior 0.27 and inkwell 0.11 on LLVM 22).
//!
//! [`compile`] verifies a function, schedules it into kernels, writes them as MLIR (func, scf,
//! arith, math, memref and vector ops on statically shaped memrefs; text parsed and verified
//! by melior), lowers that to the LLVM dialect with [`PIPELINE`] and JIT-compiles it for the
//! host CPU (MLIR's `ExecutionEngine`, `-O3`, host CPU features). [`CompiledFunction::run`]
//! has `graft_interp::run`'s contract and semantics; the tests check every op against it.
//!
//! How nodes become kernels (the scheduler, `schedule.rs`):
//! - elementwise ops, casts, `select`, `constant`, `iota`, `random_*`, `dropout` and
//!   `dequantize` fuse into one loop nest per materialized result, through `broadcast`,
//!   `transpose`, `slice`, `concat`, `gather` and `reshape` as index maps (no copies);
//! - `reduce_*` and `softmax`/`log_softmax` are kernels of their own with the producer of
//!   their operand fused in; they accumulate in `f64` like the interpreter;
//! - an `f32` `matmul` is a pack kernel (B into `NR`-wide panels) plus a tiled GEMM whose
//!   microkernels hold an `MR × NR` tile in vector registers (`vector.fma`), with
//!   last-two-axes transposes of its operands folded into `ta`/`tb`; other dtypes use a
//!   scalar loop accumulating in `f64`;
//! - `reshape` and `stop_grad` of a buffer are views; `quantize` runs on the host through
//!   the interpreter.
//!
//! Every kernel's outermost loop runs over a range `[lo, hi)` that the executor splits across
//! rayon's threads. Identical kernels (one per layer, typically) are emitted once.
//! Elementwise results are bit-identical to the interpreter's; the `f32` GEMM accumulates in
//! `f32` with FMAs (within 1e-4 of the interpreter's `f64` sums on the tests' shapes).
//!
//! [`emit_mlir`], [`emit_llvm_dialect`] and [`emit_llvm`] print the module before lowering,
//! after the pass pipeline and as LLVM IR (`graft ir --emit=mlir|llvm`); [`host_info`]
//! reports the toolchain for `graft doctor`; [`Gemm`] exposes the GEMM on plain slices.

mod backend;
mod cache;
mod cpu_level;
mod expr;
mod gemm;
mod gpu;
mod host;
mod jit;
mod kernels;
mod lower;
#[cfg(test)]
mod memplan_tests;
mod peak;
mod plan_text;
mod scalar;
mod schedule;
mod text;

pub use backend::CpuBackend;
pub use cpu_level::{CHECKABLE, CpuLevel};
pub use gpu::{GPU_ARCHS, GPU_PIPELINE, GpuArch, Ptx, emit_ptx};
pub use graft_exec::{
    CodegenError, CompileInfo, CompiledFunction, KernelTime, MemoryReport, Outputs,
};
pub use graft_lowering::{LoweringError, PASSES, Pass, pass};
pub use host::{CpuTarget, HostInfo, host_info};
pub use jit::PIPELINE;
pub use peak::{Peak, fma_peak};

use graft_ir::{DType, Function, InputKind, Op, TensorType};
use rayon::prelude::*;

/// Verifies, schedules and lowers `f` for `target`.
fn lowered(
    f: &Function,
    target: &CpuTarget,
) -> Result<(Function, schedule::Plan, lower::Lowered), CodegenError> {
    // The rewrites keep the graph well typed and in order; checked in debug builds (tests).
    let f = run_passes(
        f,
        target,
        cfg!(debug_assertions),
        &mut graft_lowering::print_after_env(),
    )?;
    let mut plan = schedule::plan(&f, target)?;
    let lowered = lower::lower(&f, &mut plan, target)?;
    Ok((f, plan, lowered))
}

/// `f` through the target-independent lowering passes ([`graft_lowering::run_passes`]) with
/// `target`'s options, calling `after(pass, result)` after each; each result is verified
/// when `verify` is set.
///
/// # Errors
/// [`CodegenError::Invalid`] when `f` does not verify, [`CodegenError::Internal`] naming the
/// pass whose result does not.
pub fn run_passes(
    f: &Function,
    target: &CpuTarget,
    verify: bool,
    after: &mut dyn FnMut(&str, &Function),
) -> Result<Function, CodegenError> {
    graft_lowering::run_passes(f, &target.lowering(), verify, after).map_err(|e| match e {
        LoweringError::Invalid(v) => CodegenError::Invalid(v),
        LoweringError::Pass(m) => CodegenError::Internal(m),
    })
}

/// How [`compile_with`] compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Vector shape (lanes, GEMM tile); the code always runs on the host.
    pub target: CpuTarget,
    /// The on-disk kernel cache directory (`None`: always compile).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Also write each module's object code here (`m<i>.o`, listed in
    /// [`CompileInfo::objects`]), for linking into a binary; the cache is then not read.
    pub objects: Option<std::path::PathBuf>,
}

impl Default for CompileOptions {
    /// The host's vector shape and the kernel cache under graft's cache root
    /// ([`graft_runtime::cache_dir`]: `$GRAFT_CACHE_DIR`, `off` to disable; else
    /// `$XDG_CACHE_HOME/graft` or `~/.cache/graft`), in `kernels/`.
    fn default() -> Self {
        CompileOptions {
            target: CpuTarget::host(),
            cache_dir: cache::default_dir(),
            objects: None,
        }
    }
}

/// Compiles `f` to native code for the host CPU, through the kernel cache of
/// [`CompileOptions::default`].
///
/// The kernels are split into one module per thread of rayon's pool (for functions with many
/// kernels) and JIT-compiled in parallel.
///
/// # Errors
/// [`CodegenError::Invalid`] when `f` does not verify, [`CodegenError::Unsupported`] for an
/// op/dtype combination the IR does not define, [`CodegenError::Internal`] when MLIR or LLVM
/// reject the generated code (a bug in graft).
pub fn compile(f: &Function) -> Result<CompiledFunction, CodegenError> {
    compile_with(f, &CompileOptions::default())
}

/// [`compile`] with an explicit vector shape (lanes, GEMM tile) instead of the host's, e.g.
/// to test or compare the AVX2 shape on an AVX-512 machine, and without the kernel cache.
///
/// # Errors
/// As [`compile`].
pub fn compile_for(f: &Function, target: &CpuTarget) -> Result<CompiledFunction, CodegenError> {
    compile_with(
        f,
        &CompileOptions {
            target: *target,
            cache_dir: None,
            objects: None,
        },
    )
}

/// [`compile`] with explicit options.
///
/// # Errors
/// As [`compile`]. Failing to write the cache is not an error (see
/// [`CompileInfo::cache_error`]).
pub fn compile_with(f: &Function, opts: &CompileOptions) -> Result<CompiledFunction, CodegenError> {
    let started = std::time::Instant::now();
    let (f, plan, lowered) = lowered(f, &opts.target)?;
    let f = &f;
    let threads = rayon::current_num_threads().max(1);
    let kernels = lowered.funcs.iter().filter(|k| k.ranged).count();
    let parts = (kernels / 16).clamp(1, threads);
    let modules = if kernels == 0 {
        Vec::new()
    } else {
        lowered.chunks(parts)
    };
    jit::init_native()?;
    let dir = opts.cache_dir.as_deref();
    // LLVM compiles a module when a symbol is first looked up, so look up in parallel too.
    let objects = opts.objects.as_deref();
    let compiled: Vec<(jit::Code, Vec<usize>, Cached)> = modules
        .par_iter()
        .enumerate()
        .map(|(i, (text, names))| {
            let key = dir.map(|_| cache::key(text));
            if let (Some(d), Some(k), None) = (dir, &key, objects)
                && let Some((lib, addrs)) = cache::Library::load(d, k, names)
            {
                return Ok((jit::Code::Cached { _library: lib }, addrs, Cached::Hit));
            }
            let j = jit::Jit::new(text, dir.is_some() || objects.is_some())?;
            let addrs = names
                .iter()
                .map(|n| j.lookup(n))
                .collect::<Result<_, _>>()?;
            if let Some(o) = objects {
                j.dump_object(&o.join(format!("m{i}.o")))?;
            }
            let status = match (dir, &key) {
                (Some(d), Some(k)) => match cache::store(d, k, &j) {
                    Ok(_) => Cached::Stored,
                    Err(e) => Cached::Failed(e.to_string()),
                },
                _ => Cached::Off,
            };
            Ok((jit::Code::Jit { _engine: j }, addrs, status))
        })
        .collect::<Result<_, CodegenError>>()?;
    let mut wrappers = Vec::with_capacity(plan.steps.len());
    for s in &plan.steps {
        let found = modules
            .iter()
            .zip(&compiled)
            .find_map(|((_, names), (_, addrs, _))| {
                let i = names.iter().position(|n| *n == s.symbol)?;
                addrs.get(i).copied()
            });
        wrappers.push(match found {
            Some(a) => a,
            None if s.symbol.is_empty() => 0,
            None => {
                return Err(CodegenError::Internal(format!(
                    "kernel `{}` was not emitted",
                    s.symbol
                )));
            }
        });
    }
    let info = CompileInfo {
        seconds: started.elapsed().as_secs_f64(),
        modules: compiled.len(),
        cached: compiled.iter().filter(|c| c.2 == Cached::Hit).count(),
        stored: compiled.iter().filter(|c| c.2 == Cached::Stored).count(),
        cache_dir: opts.cache_dir.clone(),
        cache_error: compiled.iter().find_map(|c| match &c.2 {
            Cached::Failed(e) => Some(e.clone()),
            _ => None,
        }),
        objects: match objects {
            Some(o) => modules
                .iter()
                .enumerate()
                .map(|(i, (_, names))| (o.join(format!("m{i}.o")), names.clone()))
                .collect(),
            None => Vec::new(),
        },
    };
    let code = compiled
        .into_iter()
        .map(|(c, _, _)| Box::new(c) as graft_exec::CodeOwner)
        .collect();
    let plan = plan.to_exec();
    let compiled = CompiledFunction::new(
        f.clone(),
        plan,
        wrappers,
        code,
        lowered.module(),
        info,
        threads,
    )?;
    if std::env::var_os("GRAFT_MEMPLAN_DEBUG").is_some() {
        eprint!(
            "{}",
            graft_exec::peak_report(f, compiled.plan(), compiled.memory_plan())
        );
    }
    Ok(compiled)
}

/// What happened to one module with the kernel cache.
#[derive(Clone, Debug, PartialEq)]
enum Cached {
    Off,
    Hit,
    Stored,
    Failed(String),
}

/// The MLIR module `compile` builds for `f`, before lowering.
///
/// # Errors
/// As [`compile`], except for the JIT.
pub fn emit_mlir(f: &Function) -> Result<String, CodegenError> {
    Ok(lowered(f, &CpuTarget::host())?.2.module())
}

/// [`emit_mlir`] for another vector shape than the host's (the file tests fix one).
///
/// # Errors
/// As [`emit_mlir`].
pub fn emit_mlir_for(f: &Function, target: &CpuTarget) -> Result<String, CodegenError> {
    Ok(lowered(f, target)?.2.module())
}

/// The schedule of `f` for `target` after lowering, as text: its buffers, the values fused
/// into their consumers, and one line per kernel launch.
///
/// # Errors
/// As [`emit_mlir`].
pub fn schedule_text(f: &Function, target: &CpuTarget) -> Result<String, CodegenError> {
    let (f, plan, _) = lowered(f, target)?;
    Ok(plan.describe(&f))
}

/// The LLVM IR of `f`'s kernels after lowering.
///
/// # Errors
/// As [`compile`].
pub fn emit_llvm(f: &Function) -> Result<String, CodegenError> {
    jit::llvm_ir(&emit_mlir(f)?)
}

/// The module after the pass pipeline, in MLIR's LLVM dialect.
///
/// # Errors
/// As [`compile`].
pub fn emit_llvm_dialect(f: &Function) -> Result<String, CodegenError> {
    jit::lowered_mlir(&emit_mlir(f)?)
}

/// A standalone `f32` GEMM `C[m, n] = A[m, k] · B[k, n]` (row-major), compiled through the
/// same pack + tiled-vector kernels as a `matmul` node. For benchmarks and embedding.
pub struct Gemm {
    compiled: CompiledFunction,
    shape: (usize, usize, usize),
    scratch: Vec<f32>,
}

impl Gemm {
    /// Compiles the GEMM for these extents, for the host CPU.
    ///
    /// # Errors
    /// As [`compile`].
    pub fn new(m: usize, k: usize, n: usize) -> Result<Gemm, CodegenError> {
        Gemm::new_for(m, k, n, &CpuTarget::host())
    }

    /// Compiles the GEMM with an explicit vector shape (see [`compile_for`]).
    ///
    /// # Errors
    /// As [`compile`].
    pub fn new_for(m: usize, k: usize, n: usize, target: &CpuTarget) -> Result<Gemm, CodegenError> {
        let mut f = Function::new("gemm");
        let t = |s: [usize; 2]| TensorType::new(DType::F32, s.to_vec());
        let a = f.add_input("a", InputKind::Data, t([m, k]), None);
        let b = f.add_input("b", InputKind::Data, t([k, n]), None);
        let c = f
            .add(
                Op::MatMul {
                    ta: false,
                    tb: false,
                },
                &[a, b],
                None,
            )
            .map_err(|e| CodegenError::Internal(e.to_string()))?;
        f.add_output("c", c);
        let compiled = compile_for(&f, target)?;
        // The packed operands live in the memory plan's arena (64-byte aligned offsets; the
        // extra line lets `run` align the start).
        let scratch_len = (compiled.memory_plan().arena_bytes + graft_exec::ALIGN) / 4;
        Ok(Gemm {
            compiled,
            shape: (m, k, n),
            scratch: vec![0.0; scratch_len],
        })
    }

    /// Limits the threads used (default: rayon's pool size).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.compiled = self.compiled.with_threads(threads);
        self
    }

    /// `c = a · b`.
    ///
    /// # Errors
    /// [`CodegenError::InputTypeMismatch`] when a slice has the wrong length.
    pub fn run(&mut self, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<(), CodegenError> {
        let (m, k, n) = self.shape;
        for (name, len, want) in [
            ("a", a.len(), m * k),
            ("b", b.len(), k * n),
            ("c", c.len(), m * n),
        ] {
            if len != want {
                return Err(CodegenError::InputTypeMismatch {
                    name: name.into(),
                    expected: TensorType::new(DType::F32, vec![want]),
                    got: TensorType::new(DType::F32, vec![len]),
                });
            }
        }
        let plan = self.compiled.plan();
        let offsets = &self.compiled.memory_plan().offsets;
        let base = (self.scratch.as_mut_ptr() as usize).next_multiple_of(graft_exec::ALIGN);
        let mut addrs = vec![0usize; plan.slots.len()];
        for (i, s) in plan.slots.iter().enumerate() {
            addrs[i] = match (s.input.as_deref(), offsets[i]) {
                (Some("a"), _) => a.as_ptr() as usize,
                (Some("b"), _) => b.as_ptr() as usize,
                (_, Some(off)) => base + off,
                _ => c.as_mut_ptr() as usize,
            };
        }
        self.compiled.run_raw(&addrs)
    }
}
