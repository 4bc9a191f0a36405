//! Running compiled functions: buffers, kernel launches split across threads, host steps,
//! and the conversion between interpreter tensors and kernel buffers.
//!
//! Inputs are read in place (the kernels get pointers into the caller's tensors or into a
//! memory-mapped weights file); outputs get buffers of their own, handed to the caller; every
//! other value lives in one arena at the offset the static memory plan (`memplan.rs`) gave
//! it. A kernel whose range is large enough is split into one contiguous part per thread of
//! the team (`team.rs`; rayon's pool when another run holds the team); calls write disjoint
//! parts of the output.

use crate::CodegenError;
use crate::kernel::{ERR_DIV_ZERO, ERR_GATHER, call_kernel};
use crate::memplan::{ALIGN, MemoryPlan, storage_bytes};
use crate::plan::{ExecPlan, Kind, Step};
use crate::team::{Held, Team};
use graft_interp::{Data, Tensor};
use graft_ir::{DType, Function, InputKind};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

/// Work (range × cost) below which a kernel runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 15;

/// Whatever keeps a function's machine code mapped (a JIT engine, a loaded shared object);
/// dropped after everything that may hold kernel addresses.
pub type CodeOwner = Box<dyn std::any::Any + Send + Sync>;

/// A function compiled to native code: its plan, the address of each step's kernel, and the
/// buffers kept between runs.
pub struct CompiledFunction {
    pub(crate) f: Function,
    pub(crate) plan: ExecPlan,
    pub(crate) wrappers: Vec<usize>,
    pub(crate) mlir: String,
    pub(crate) threads: usize,
    /// Split launches run on the team (`team.rs`) when it is free, else on rayon's pool.
    pub(crate) team: bool,
    /// Where each intermediate lives in the arena.
    pub(crate) memory: MemoryPlan,
    /// The arena, kept between runs.
    pub(crate) arena: Mutex<Option<Arena>>,
    /// The packed frozen weights, once bound ([`CompiledFunction::bind`]). Runs hold the
    /// read lock throughout.
    pub(crate) bound: RwLock<Option<Bound>>,
    /// How it was compiled.
    pub(crate) info: crate::CompileInfo,
    // Declared last: dropped after everything that may hold kernel addresses.
    pub(crate) _code: Vec<CodeOwner>,
}

/// A function's named outputs, in order.
pub type Outputs = Vec<(String, Tensor)>;

/// One kernel launch's wall time, from [`CompiledFunction::run_profiled`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel's symbol (empty for host steps).
    pub kernel: String,
    /// The node it computes.
    pub node: usize,
    /// That node's op.
    pub op: &'static str,
    /// That node's type.
    pub ty: String,
    /// The kind of kernel: `fused`, `reduce`, `softmax`, `pack_a`, `pack` (B), `gemm`, `matmul`
    /// (scalar) or `host`.
    pub kind: &'static str,
    /// Seconds.
    pub seconds: f64,
    /// Floating-point operations a GEMM or matmul launch performs (2 per multiply-add, over
    /// the padded panels it covers); 0 for other kernels.
    pub flops: f64,
}

/// Bound weights: every binding step's panels, in one mapping (huge pages, like the arena's:
/// the GEMMs stream them).
pub(crate) struct Bound {
    _memory: Arena,
    /// Each bound slot and the address of its panels.
    slots: Vec<(usize, usize)>,
    bytes: usize,
}

/// A kernel buffer, typed by storage.
#[derive(Debug)]
pub(crate) enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Byte(Vec<u8>),
}

impl Buf {
    /// A zeroed buffer holding `len` elements of `dtype`.
    pub fn new(dtype: DType, len: usize) -> Buf {
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 => Buf::F32(vec![0.0; len]),
            DType::F64 => Buf::F64(vec![0.0; len]),
            DType::I64 => Buf::I64(vec![0; len]),
            DType::I32 => Buf::I32(vec![0; len]),
            DType::U8 | DType::U4 | DType::Bool => Buf::Byte(vec![0; len]),
        }
    }

    /// The buffer's elements as native-endian bytes.
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Buf::F32(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Buf::F64(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Buf::I64(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Buf::I32(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Buf::Byte(v) => v.clone(),
        }
    }

    /// A buffer of `dtype`'s storage from native-endian bytes.
    fn from_bytes(dtype: DType, b: &[u8]) -> Buf {
        fn words<const N: usize, T>(b: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().unwrap_or([0; N])))
                .collect()
        }
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 => Buf::F32(words(b, f32::from_ne_bytes)),
            DType::F64 => Buf::F64(words(b, f64::from_ne_bytes)),
            DType::I64 => Buf::I64(words(b, i64::from_ne_bytes)),
            DType::I32 => Buf::I32(words(b, i32::from_ne_bytes)),
            DType::U8 | DType::U4 | DType::Bool => Buf::Byte(b.to_vec()),
        }
    }

    fn addr(&mut self) -> usize {
        match self {
            Buf::F32(v) => v.as_mut_ptr() as usize,
            Buf::F64(v) => v.as_mut_ptr() as usize,
            Buf::I64(v) => v.as_mut_ptr() as usize,
            Buf::I32(v) => v.as_mut_ptr() as usize,
            Buf::Byte(v) => v.as_mut_ptr() as usize,
        }
    }

    /// The tensor of type `ty` this buffer holds.
    fn into_tensor(self, ty: &graft_ir::TensorType) -> Result<Tensor, CodegenError> {
        let data = match (self, ty.dtype) {
            (Buf::F32(v), _) => Data::F32(v),
            (Buf::F64(v), _) => Data::F64(v),
            (Buf::I64(v), _) => Data::I64(v),
            (Buf::I32(v), _) => Data::I32(v),
            (Buf::Byte(v), DType::Bool) => Data::Bool(v.into_iter().map(|b| b != 0).collect()),
            (Buf::Byte(v), DType::U4) => Data::U4(v),
            (Buf::Byte(v), _) => Data::U8(v),
        };
        Ok(Tensor::new(ty.clone(), data)?)
    }

    /// A buffer holding a copy of `t`'s elements.
    fn from_tensor(t: &Tensor) -> Buf {
        match t.data() {
            Data::F32(v) => Buf::F32(v.clone()),
            Data::F64(v) => Buf::F64(v.clone()),
            Data::I64(v) => Buf::I64(v.clone()),
            Data::I32(v) => Buf::I32(v.clone()),
            Data::U8(v) | Data::U4(v) => Buf::Byte(v.clone()),
            Data::Bool(v) => Buf::Byte(v.iter().map(|&b| u8::from(b)).collect()),
        }
    }
}

/// The address of an input tensor's elements (read-only for the kernels).
fn tensor_addr(t: &Tensor) -> usize {
    match t.data() {
        Data::F32(v) => v.as_ptr() as usize,
        Data::F64(v) => v.as_ptr() as usize,
        Data::I64(v) => v.as_ptr() as usize,
        Data::I32(v) => v.as_ptr() as usize,
        Data::U8(v) | Data::U4(v) => v.as_ptr() as usize,
        Data::Bool(v) => v.as_ptr() as usize,
    }
}

/// A slot's contents while a function runs.
enum Live<'a> {
    Empty,
    /// A function input, read in place.
    Input(&'a Tensor),
    /// A function input read in place from caller-owned bytes (`f32`).
    Mapped(&'a [u8]),
    /// An intermediate at this byte offset in the arena.
    Arena(usize),
    /// An output's own buffer.
    Owned(Buf),
    /// A bound buffer at this address, held by the function while the run holds its lock.
    Bound(usize),
}

impl Live<'_> {
    /// The buffer's address, for an arena starting at `base`.
    fn addr(&mut self, base: usize) -> Option<usize> {
        match self {
            Live::Empty => None,
            Live::Input(t) => Some(tensor_addr(t)),
            Live::Mapped(b) => Some(b.as_ptr() as usize),
            Live::Arena(off) => Some(base + *off),
            Live::Owned(b) => Some(b.addr()),
            Live::Bound(a) => Some(*a),
        }
    }
}

/// The memory every intermediate of a run lives in, at offsets fixed by the
/// [`crate::memplan::MemoryPlan`] from a 64-byte-aligned start.
pub(crate) struct Arena {
    bytes: memmap2::MmapMut,
    /// Where the aligned part starts in `bytes`.
    start: usize,
}

/// Transparent huge pages are 2 MiB on x86-64.
const HUGE_PAGE: usize = 2 << 20;

impl Arena {
    /// An anonymous mapping (zero pages until touched) of at least `bytes`. A large arena
    /// starts on a 2 MiB boundary and asks for transparent huge pages: GEMMs stream packed
    /// panels and activations of many MiB, whose 4 KiB pages miss the TLB constantly
    /// (measured: small q/v step 0.52–0.58 s with 4 KiB pages, 0.43–0.54 s with huge ones).
    /// Where huge pages are off or unsupported the advice is ignored: same memory, same
    /// results.
    fn new(bytes: usize) -> Result<Arena, CodegenError> {
        let huge = bytes >= HUGE_PAGE;
        let slack = if huge { HUGE_PAGE } else { ALIGN };
        let map = memmap2::MmapOptions::new()
            .len(bytes + slack)
            .map_anon()
            .map_err(|e| {
                CodegenError::Internal(format!(
                    "could not map {} bytes for the memory plan's arena: {e}",
                    bytes + slack
                ))
            })?;
        let start = (slack - map.as_ptr() as usize % slack) % slack;
        #[cfg(target_os = "linux")]
        if huge {
            let _ = map.advise_range(memmap2::Advice::HugePage, start, bytes);
        }
        Ok(Arena { bytes: map, start })
    }

    /// The address of offset 0.
    fn base(&mut self) -> usize {
        self.bytes.as_mut_ptr() as usize + self.start
    }

    /// Copies a host step's result to byte offset `at`.
    fn write(&mut self, at: usize, b: &Buf) {
        let src = b.to_bytes();
        let at = self.start + at;
        self.bytes[at..at + src.len()].copy_from_slice(&src);
    }

    /// A buffer holding a copy of the `len` elements of `dtype` at byte offset `at`.
    fn read(&self, at: usize, dtype: DType, len: usize) -> Buf {
        let at = self.start + at;
        let bytes = &self.bytes[at..at + len * storage_bytes(dtype)];
        Buf::from_bytes(dtype, bytes)
    }
}

/// The error a kernel reported in its status buffer.
fn kernel_error(err: &[i64; 4]) -> CodegenError {
    let node = usize::try_from(err[1]).unwrap_or(0);
    match err[0] {
        ERR_GATHER => CodegenError::IndexOutOfRange {
            node,
            value: err[2],
            extent: usize::try_from(err[3]).unwrap_or(0),
        },
        ERR_DIV_ZERO => CodegenError::DivisionByZero { node },
        code => CodegenError::Internal(format!("kernel reported unknown error {code}")),
    }
}

impl CompiledFunction {
    /// A compiled function from its parts: `f` as scheduled, its `plan`, the packed wrapper
    /// of each step's kernel (`wrappers[i]` for `plan.steps[i]`, 0 for host steps), the
    /// owners keeping that code mapped, the MLIR it came from (empty when unknown) and how it
    /// was compiled. Runs split launches across `threads`; the memory plan is computed here.
    ///
    /// # Errors
    /// [`CodegenError::Internal`] when the plan and the wrappers do not match.
    pub fn new(
        f: Function,
        plan: ExecPlan,
        wrappers: Vec<usize>,
        code: Vec<CodeOwner>,
        mlir: String,
        info: crate::CompileInfo,
        threads: usize,
    ) -> Result<CompiledFunction, CodegenError> {
        if wrappers.len() != plan.steps.len() {
            return Err(CodegenError::Internal(format!(
                "{} kernel addresses for {} steps",
                wrappers.len(),
                plan.steps.len()
            )));
        }
        if let Some(s) = plan
            .steps
            .iter()
            .zip(&wrappers)
            .find(|(s, w)| **w == 0 && s.kind != Kind::Host && s.range > 0)
        {
            return Err(CodegenError::Internal(format!(
                "kernel `{}` has no code",
                s.0.symbol
            )));
        }
        let memory = crate::memplan::plan_memory(&plan);
        Ok(CompiledFunction {
            f,
            plan,
            wrappers,
            mlir,
            threads: threads.max(1),
            team: true,
            memory,
            arena: Mutex::default(),
            bound: RwLock::default(),
            info,
            _code: code,
        })
    }

    /// The execution plan.
    pub fn plan(&self) -> &ExecPlan {
        &self.plan
    }

    /// Where each intermediate lives in the arena.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.memory
    }

    /// The function as compiled (after the scheduler's reordering): the graph that
    /// [`KernelTime::node`] indexes.
    pub fn function(&self) -> &Function {
        &self.f
    }

    /// The MLIR module this function was compiled from (before lowering).
    pub fn mlir(&self) -> &str {
        &self.mlir
    }

    /// Number of kernel launches per run (host steps included).
    pub fn kernel_count(&self) -> usize {
        self.plan.steps.len()
    }

    /// The kernels, one line each: symbol, the node it computes, and its range.
    pub fn kernel_summary(&self) -> Vec<String> {
        self.plan
            .steps
            .iter()
            .map(|s| {
                let node = self.f.node(s.root);
                format!(
                    "{} %{} {} range {}",
                    s.symbol,
                    s.root.index(),
                    node.ty,
                    s.range
                )
            })
            .collect()
    }

    /// Limits the threads a kernel is split across (default: rayon's pool size); 1 runs
    /// everything on the calling thread.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Whether split launches run on graft's own team of threads (the default: parts with
    /// stealing, helpers that spin between launches; see `team.rs`) or on rayon's pool
    /// (one static chunk per thread), for comparisons.
    pub fn with_team(mut self, team: bool) -> Self {
        self.team = team;
        self
    }

    /// Runs the function on `inputs` (by input name; extra entries are ignored) and returns
    /// its outputs in order: the contract of `graft_interp::run`.
    ///
    /// # Errors
    /// A missing or mistyped input, an out-of-range `gather` index, an integer division by
    /// zero, or a failing host step.
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Vec<(String, Tensor)>, CodegenError> {
        self.run_inner(inputs, &[], None)
    }

    /// [`CompiledFunction::run`] with some inputs read in place from caller-owned bytes (a
    /// memory-mapped weights file): `f32` elements in the host's byte order, 4-byte aligned.
    /// An input found in `inputs` is taken from there.
    ///
    /// # Errors
    /// As [`CompiledFunction::run`]; a mapped input of the wrong type, length or alignment is
    /// [`CodegenError::InputTypeMismatch`].
    pub fn run_mapped(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'_>],
    ) -> Result<Vec<(String, Tensor)>, CodegenError> {
        self.run_inner(inputs, mapped, None)
    }

    /// [`CompiledFunction::run`], also timing every kernel launch (in execution order).
    ///
    /// # Errors
    /// As [`CompiledFunction::run`].
    pub fn run_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<(Outputs, Vec<KernelTime>), CodegenError> {
        self.run_mapped_profiled(inputs, &[])
    }

    /// [`CompiledFunction::run_mapped`], also timing every kernel launch (in execution order).
    ///
    /// # Errors
    /// As [`CompiledFunction::run_mapped`].
    pub fn run_mapped_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'_>],
    ) -> Result<(Outputs, Vec<KernelTime>), CodegenError> {
        let mut times = Vec::with_capacity(self.plan.steps.len());
        let out = self.run_inner(inputs, mapped, Some(&mut times))?;
        Ok((out, times))
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'_>],
        times: Option<&mut Vec<KernelTime>>,
    ) -> Result<Vec<(String, Tensor)>, CodegenError> {
        // Split kernels run on the team (see `team.rs`), held for the whole run. When
        // another run holds it, they are launched from a thread of rayon's pool: a launch
        // from outside the pool costs ~10 µs (the job is injected and the caller sleeps until
        // it is done), from inside ~2 µs, and a step has hundreds of launches.
        let team = self.team();
        if self.threads > 1 && team.is_none() && rayon::current_thread_index().is_none() {
            rayon::scope(|_| self.run_steps(inputs, mapped, times, None))
        } else {
            self.run_steps(inputs, mapped, times, team.as_ref())
        }
    }

    fn run_steps(
        &self,
        inputs: &HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'_>],
        mut times: Option<&mut Vec<KernelTime>>,
        team: Option<&Held<'_>>,
    ) -> Result<Vec<(String, Tensor)>, CodegenError> {
        let bound = self.bound.read().ok();
        let bound = bound.as_ref().and_then(|b| b.as_ref());
        let mut live: Vec<Live<'_>> = self.plan.slots.iter().map(|_| Live::Empty).collect();
        if let Some(b) = bound {
            for &(slot, addr) in &b.slots {
                live[slot] = Live::Bound(addr);
            }
        }
        // Once bound, the weights only binding read are not needed.
        let needed = |name: &str| bound.is_none() || !self.plan.bind_only.iter().any(|b| b == name);
        self.bind_inputs(inputs, mapped, &mut live, needed)?;
        // The arena is kept between runs (a training loop reuses the same, already faulted-in
        // memory every step); a concurrent run that finds it taken allocates its own.
        let mut arena = self
            .arena
            .lock()
            .ok()
            .and_then(|mut a| a.take())
            .map_or_else(|| Arena::new(self.memory.arena_bytes), Ok)?;
        let base = arena.base();
        for (s, off) in self.memory.offsets.iter().enumerate() {
            if let Some(off) = off {
                live[s] = Live::Arena(*off);
            }
        }
        for (si, step) in self.plan.steps.iter().enumerate() {
            if step.bind && bound.is_some() {
                continue;
            }
            let slot = &self.plan.slots[step.out];
            if matches!(live[step.out], Live::Empty) {
                live[step.out] = Live::Owned(Buf::new(slot.dtype, slot.len));
            }
            let started = std::time::Instant::now();
            if step.kind == Kind::Host {
                let result = self.host_step(step, &live, &arena)?;
                match live[step.out] {
                    Live::Arena(at) => arena.write(at, &result),
                    _ => live[step.out] = Live::Owned(result),
                }
            } else {
                let mut addrs = Vec::with_capacity(step.args.len() + 1);
                for &a in step.args.iter().chain(std::iter::once(&step.out)) {
                    addrs.push(live[a].addr(base).ok_or_else(|| {
                        CodegenError::Internal(format!("{}: buffer {a} is not ready", step.symbol))
                    })?);
                }
                self.launch(si, step, &addrs, team)?;
            }
            if let Some(t) = times.as_deref_mut() {
                let node = self.f.node(step.root);
                t.push(KernelTime {
                    kernel: step.symbol.clone(),
                    node: step.root.index(),
                    op: node.op.name(),
                    ty: node.ty.to_string(),
                    kind: step.kind.name(),
                    seconds: started.elapsed().as_secs_f64(),
                    flops: match &step.kind {
                        // A GEMM's cost is its FLOPs per range item; a scalar matmul's, the
                        // multiply-adds per row.
                        Kind::Gemm => (step.range * step.cost) as f64,
                        Kind::MatMulScalar => 2.0 * (step.range * step.cost) as f64,
                        _ => 0.0,
                    },
                });
            }
        }
        let mut uses: HashMap<usize, usize> = HashMap::new();
        for (_, _, s) in &self.plan.outputs {
            *uses.entry(*s).or_default() += 1;
        }
        let mut out = Vec::with_capacity(self.plan.outputs.len());
        for (name, ty, s) in &self.plan.outputs {
            let left = uses.entry(*s).or_default();
            *left -= 1;
            let t = match &mut live[*s] {
                Live::Input(t) => Tensor::new(ty.clone(), t.data().clone())?,
                Live::Mapped(b) => Buf::from_bytes(DType::F32, b).into_tensor(ty)?,
                Live::Owned(_) if *left == 0 => {
                    match std::mem::replace(&mut live[*s], Live::Empty) {
                        Live::Owned(b) => b.into_tensor(ty)?,
                        _ => return Err(CodegenError::Internal("output vanished".into())),
                    }
                }
                Live::Owned(b) => b_clone(b, ty)?,
                Live::Arena(_) | Live::Empty | Live::Bound(_) => {
                    return Err(CodegenError::Internal(format!(
                        "output `{name}` was not computed"
                    )));
                }
            };
            out.push((name.clone(), t));
        }
        if let Ok(mut kept) = self.arena.lock() {
            *kept = Some(arena);
        }
        Ok(out)
    }

    /// Points the input slots at `inputs` (or at `mapped` bytes), checking types; an input
    /// found in neither is an error when `needed(name)`, else left unset.
    fn bind_inputs<'a>(
        &self,
        inputs: &'a HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'a>],
        live: &mut [Live<'a>],
        needed: impl Fn(&str) -> bool,
    ) -> Result<(), CodegenError> {
        for (name, ty, slot) in &self.plan.inputs {
            let t = match inputs.get(name) {
                Some(t) => t,
                None => {
                    let Some(m) = mapped.iter().find(|m| m.name == name) else {
                        if needed(name) {
                            return Err(CodegenError::MissingInput { name: name.clone() });
                        }
                        continue;
                    };
                    let fits = m.ty == ty
                        && ty.dtype == DType::F32
                        && m.bytes.len() == 4 * ty.numel()
                        && (m.bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>());
                    if !fits {
                        return Err(CodegenError::InputTypeMismatch {
                            name: name.clone(),
                            expected: ty.clone(),
                            got: m.ty.clone(),
                        });
                    }
                    live[*slot] = Live::Mapped(m.bytes);
                    continue;
                }
            };
            if t.ty() != ty {
                return Err(CodegenError::InputTypeMismatch {
                    name: name.clone(),
                    expected: ty.clone(),
                    got: t.ty().clone(),
                });
            }
            live[*slot] = Live::Input(t);
        }
        Ok(())
    }

    /// Binds the frozen weights: runs, once, the steps that pack them (B of every `x · Wᵀ`
    /// on a `weight` input, or on a batched `concat` of them) into buffers this function
    /// keeps, so that later runs skip that packing and read the packed panels instead
    /// (the other orientation, `dy · W`, is then packed from those panels, not from `W`).
    /// Later runs ignore the bound inputs' values: binding freezes them until
    /// [`CompiledFunction::unbind`] (binding again replaces them).
    ///
    /// The inputs later runs no longer read ([`CompiledFunction::bind_only_inputs`]) are let
    /// go as soon as binding is done with each: a tensor in `inputs` is removed from the map
    /// and dropped, and `release(name)` is called (for a mapped input too, whose caller may
    /// drop its pages then), so the weights are not held twice at any point. Returns the
    /// bound bytes.
    ///
    /// # Errors
    /// An input binding reads missing from both `inputs` and `mapped`, or mistyped; nothing
    /// is removed or bound then.
    pub fn bind(
        &self,
        inputs: &mut HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'_>],
        release: &mut (dyn FnMut(&str) + Send),
    ) -> Result<usize, CodegenError> {
        let mut owned: HashMap<String, Tensor> = HashMap::new();
        for name in &self.plan.bind_only {
            if let Some(t) = inputs.remove(name) {
                owned.insert(name.clone(), t);
            }
        }
        let checked = self.bind_checked(inputs, &owned, mapped);
        let live = match checked {
            Ok(live) => live,
            Err(e) => {
                inputs.extend(owned);
                return Err(e);
            }
        };
        // The binding steps that run: the first to write each slot (a shared weight's later
        // packs would write the same panels again); the last of them to read each slot.
        let mut runs: Vec<usize> = Vec::new();
        for (si, st) in self.plan.steps.iter().enumerate().filter(|(_, st)| st.bind) {
            if runs.iter().all(|&r| self.plan.steps[r].out != st.out) {
                runs.push(si);
            }
        }
        let mut last = vec![None; self.plan.slots.len()];
        for &si in &runs {
            for &a in &self.plan.steps[si].args {
                last[a] = Some(si);
            }
        }
        // One mapping for all the panels, each at a 64-byte-aligned offset.
        let mut slots = Vec::with_capacity(runs.len());
        let mut bytes = 0;
        for &si in &runs {
            let slot = &self.plan.slots[self.plan.steps[si].out];
            slots.push((self.plan.steps[si].out, bytes));
            bytes += (slot.len * storage_bytes(slot.dtype)).next_multiple_of(ALIGN);
        }
        let mut memory = Arena::new(bytes)?;
        let base = memory.base();
        for s in &mut slots {
            s.1 += base;
        }
        let team = self.team();
        let mut run = |team: Option<&Held<'_>>| -> Result<(), CodegenError> {
            for (&si, &(_, out)) in runs.iter().zip(&slots) {
                let step = &self.plan.steps[si];
                let mut addrs: Vec<usize> = step.args.iter().map(|&a| live[a]).collect();
                addrs.push(out);
                self.launch(si, step, &addrs, team)?;
                for (name, _, s) in &self.plan.inputs {
                    if last[*s] == Some(si) && self.plan.bind_only.contains(name) {
                        owned.remove(name);
                        release(name);
                    }
                }
            }
            Ok(())
        };
        if self.threads > 1 && team.is_none() && rayon::current_thread_index().is_none() {
            rayon::scope(|_| run(None))?;
        } else {
            run(team.as_ref())?;
        }
        if let Ok(mut b) = self.bound.write() {
            *b = Some(Bound {
                _memory: memory,
                slots,
                bytes,
            });
        }
        Ok(bytes)
    }

    /// The address of every slot binding reads (0 for others), after checking that each is
    /// present with its declared type: in `inputs`, `owned` (the bind-only tensors taken
    /// out of the caller's map) or `mapped`.
    fn bind_checked(
        &self,
        inputs: &HashMap<String, Tensor>,
        owned: &HashMap<String, Tensor>,
        mapped: &[graft_runtime::MappedInput<'_>],
    ) -> Result<Vec<usize>, CodegenError> {
        let mut live: Vec<Live<'_>> = self.plan.slots.iter().map(|_| Live::Empty).collect();
        self.bind_inputs(inputs, mapped, &mut live, |_| false)?;
        for (name, ty, slot) in &self.plan.inputs {
            if let Some(t) = owned.get(name) {
                if t.ty() != ty {
                    return Err(CodegenError::InputTypeMismatch {
                        name: name.clone(),
                        expected: ty.clone(),
                        got: t.ty().clone(),
                    });
                }
                live[*slot] = Live::Bound(tensor_addr(t));
            }
        }
        let mut addrs = vec![0; live.len()];
        for st in self.plan.steps.iter().filter(|st| st.bind) {
            for &a in &st.args {
                addrs[a] = live[a].addr(0).ok_or_else(|| CodegenError::MissingInput {
                    name: self.plan.slots[a].input.clone().unwrap_or_default(),
                })?;
            }
        }
        Ok(addrs)
    }

    /// Bytes of the bound weights (0 before [`CompiledFunction::bind`]).
    pub fn bound_bytes(&self) -> usize {
        self.bound
            .read()
            .ok()
            .and_then(|b| b.as_ref().map(|b| b.bytes))
            .unwrap_or(0)
    }

    /// Drops the bound weights: later runs pack every weight again, from their inputs.
    pub fn unbind(&self) {
        if let Ok(mut b) = self.bound.write() {
            *b = None;
        }
    }

    /// The inputs that runs after [`CompiledFunction::bind`] no longer read.
    pub fn bind_only_inputs(&self) -> &[String] {
        &self.plan.bind_only
    }

    /// How the function was compiled: time, modules, kernel cache hits.
    pub fn compile_info(&self) -> &crate::CompileInfo {
        &self.info
    }

    /// The static memory plan: the arena's size (the planned peak of the intermediates),
    /// the outputs' size, and what the intermediates would take without reuse.
    pub fn memory(&self) -> crate::MemoryReport {
        self.memory.report()
    }

    /// Drops the arena kept between runs (the next run allocates it again).
    pub fn release_buffers(&self) {
        if let Ok(mut a) = self.arena.lock() {
            *a = None;
        }
    }

    /// Runs every step with caller-provided buffer addresses, one per slot (used by
    /// `graft_codegen::Gemm`, whose buffers are plain slices).
    ///
    /// # Errors
    /// As [`CompiledFunction::run`], for a kernel's reported error.
    pub fn run_raw(&self, addrs: &[usize]) -> Result<(), CodegenError> {
        let team = self.team();
        for (si, step) in self.plan.steps.iter().enumerate() {
            let mut a: Vec<usize> = step.args.iter().map(|&s| addrs[s]).collect();
            a.push(addrs[step.out]);
            self.launch(si, step, &a, team.as_ref())?;
        }
        Ok(())
    }

    /// The team for one run, when this function splits launches, uses the team, and the team
    /// is free.
    fn team(&self) -> Option<Held<'static>> {
        (self.threads > 1 && self.team).then(Team::get).flatten()
    }

    /// Launches step `si`, split into per-thread chunks when it is big enough: on `team`
    /// when the run holds it (parts with stealing, see `team.rs`), else on rayon's pool.
    #[allow(unsafe_code)]
    fn launch(
        &self,
        si: usize,
        step: &Step,
        addrs: &[usize],
        team: Option<&Held<'_>>,
    ) -> Result<(), CodegenError> {
        let n = step.range;
        let wrapper = self.wrappers.get(si).copied().unwrap_or(0);
        if n == 0 || wrapper == 0 {
            return Ok(());
        }
        let chunks = if n >= 2 && n.saturating_mul(step.cost) >= PARALLEL_WORK {
            self.threads.min(n)
        } else {
            1
        };
        let run = |lo: usize, hi: usize| -> [i64; 4] {
            let mut err = [0i64; 4];
            let e = step.may_fail.then_some(&mut err);
            // SAFETY: `wrapper` is the packed wrapper of this step's kernel, looked up in
            // `self._jit`, which outlives the call. `addrs` are the step's argument slots then
            // its output slot, in the kernel's parameter order (set by lowering); each is a
            // live buffer of the slot's dtype and length, which the schedule sized to the
            // value's type, i.e. to the kernel's memref type. Inputs are only read. Calls
            // cover disjoint `[lo, hi)` ranges, and a kernel writes only the output elements
            // of its range.
            unsafe { call_kernel(wrapper, lo, hi, addrs, e) };
            err
        };
        let errs: Vec<[i64; 4]> = match team {
            _ if chunks == 1 => vec![run(0, n)],
            Some(team) => {
                let first: Mutex<[i64; 4]> = Mutex::new([0; 4]);
                let record = |lo: usize, hi: usize| {
                    let e = run(lo, hi);
                    if e[0] != 0
                        && let Ok(mut f) = first.lock()
                        && f[0] == 0
                    {
                        *f = e;
                    }
                };
                let min_grain = (PARALLEL_WORK / 4).div_ceil(step.cost.max(1));
                team.launch(n, chunks.min(team.size()), min_grain, &record);
                vec![first.into_inner().unwrap_or([0; 4])]
            }
            None => {
                // Chunk c always runs on pool thread c (mod the pool's size): a GEMM's row
                // tiles are then computed on the thread that packed them, and every kernel
                // splits its range the same way, so a thread mostly reads what it wrote.
                rayon::broadcast(|ctx| {
                    let mut first = [0i64; 4];
                    for c in (ctx.index()..chunks).step_by(ctx.num_threads()) {
                        let e = run(n * c / chunks, n * (c + 1) / chunks);
                        if first[0] == 0 {
                            first = e;
                        }
                    }
                    first
                })
            }
        };
        match errs.iter().find(|e| e[0] != 0) {
            Some(e) => Err(kernel_error(e)),
            None => Ok(()),
        }
    }

    /// Evaluates a host step (`quantize`) with the reference interpreter.
    fn host_step(
        &self,
        step: &Step,
        live: &[Live<'_>],
        arena: &Arena,
    ) -> Result<Buf, CodegenError> {
        let node = self.f.node(step.root);
        let mut g = Function::new("host");
        let mut inputs = HashMap::new();
        let mut args = Vec::new();
        for (i, &a) in node.args.iter().enumerate() {
            let ty = self.f.ty(a).clone();
            let slot = self.plan.slot_of[a.index()]
                .ok_or_else(|| CodegenError::Internal("host operand has no buffer".into()))?;
            let t = match &live[slot] {
                Live::Input(t) => Tensor::new(ty.clone(), t.data().clone())?,
                Live::Mapped(b) => Buf::from_bytes(DType::F32, b).into_tensor(&ty)?,
                Live::Owned(b) => b_clone(b, &ty)?,
                Live::Arena(at) => {
                    let s = &self.plan.slots[slot];
                    arena.read(*at, s.dtype, s.len).into_tensor(&ty)?
                }
                Live::Empty | Live::Bound(_) => {
                    return Err(CodegenError::Internal("host operand missing".into()));
                }
            };
            let name = format!("x{i}");
            args.push(g.add_input(name.clone(), InputKind::Data, ty, None));
            inputs.insert(name, t);
        }
        let declared = node.op.needs_declared_type().then(|| node.ty.clone());
        let r = g
            .add_typed(node.op.clone(), &args, declared, None)
            .map_err(|e| CodegenError::Internal(e.to_string()))?;
        g.add_output("r", r);
        let out = graft_interp::run(&g, &inputs).map_err(|e| match e {
            graft_interp::InterpError::Quant { error, op, .. } => {
                CodegenError::Interp(graft_interp::InterpError::Quant {
                    node: step.root.index(),
                    op,
                    error,
                })
            }
            other => CodegenError::Interp(other),
        })?;
        let t = out
            .into_iter()
            .next()
            .ok_or_else(|| CodegenError::Internal("host step returned nothing".into()))?;
        Ok(Buf::from_tensor(&t.1))
    }
}

/// A tensor holding a copy of a buffer.
fn b_clone(b: &Buf, ty: &graft_ir::TensorType) -> Result<Tensor, CodegenError> {
    let copy = match b {
        Buf::F32(v) => Buf::F32(v.clone()),
        Buf::F64(v) => Buf::F64(v.clone()),
        Buf::I64(v) => Buf::I64(v.clone()),
        Buf::I32(v) => Buf::I32(v.clone()),
        Buf::Byte(v) => Buf::Byte(v.clone()),
    };
    copy.into_tensor(ty)
}
