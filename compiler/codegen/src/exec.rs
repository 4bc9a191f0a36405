//! Running compiled functions: buffers, kernel launches split across threads, host steps,
//! and the conversion between interpreter tensors and kernel buffers.
//!
//! Inputs are read in place (the kernels get pointers into the caller's tensors); every
//! other value lives in a buffer allocated when its producer runs and recycled after its last
//! reader. A kernel whose range is large enough is split into one contiguous chunk per
//! thread of rayon's pool; chunks write disjoint parts of the output.

use crate::CodegenError;
use crate::expr::{ERR_DIV_ZERO, ERR_GATHER};
use crate::jit::{Jit, call_kernel};
use crate::schedule::{Plan, Slot, Step, StepKind};
use graft_interp::{Data, Tensor};
use graft_ir::{DType, Function, InputKind};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// Work (range × cost) below which a kernel runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 15;

/// A function compiled to native code; see [`crate::compile`].
pub struct CompiledFunction {
    pub(crate) f: Function,
    pub(crate) plan: Plan,
    pub(crate) wrappers: Vec<usize>,
    pub(crate) mlir: String,
    pub(crate) threads: usize,
    /// Last step reading each slot (`usize::MAX` for outputs and inputs).
    pub(crate) last_use: Vec<usize>,
    /// Intermediate buffers kept between runs, by (storage kind, length): a training loop
    /// reuses the same, already faulted-in memory every step.
    pub(crate) pool: Mutex<HashMap<(u8, usize), Vec<Buf>>>,
    // Declared last: dropped after everything that may hold kernel addresses.
    pub(crate) _jits: Vec<Jit>,
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
    /// Seconds.
    pub seconds: f64,
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

    /// The pool key of a buffer of `len` elements of `dtype`.
    fn key_of(dtype: DType, len: usize) -> (u8, usize) {
        let kind = match dtype {
            DType::F32 | DType::BF16 | DType::F16 => 0,
            DType::F64 => 1,
            DType::I64 => 2,
            DType::I32 => 3,
            DType::U8 | DType::U4 | DType::Bool => 4,
        };
        (kind, len)
    }

    fn key(&self) -> (u8, usize) {
        match self {
            Buf::F32(v) => (0, v.len()),
            Buf::F64(v) => (1, v.len()),
            Buf::I64(v) => (2, v.len()),
            Buf::I32(v) => (3, v.len()),
            Buf::Byte(v) => (4, v.len()),
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
    Input(&'a Tensor),
    Owned(Buf),
}

impl Live<'_> {
    fn addr(&mut self) -> Option<usize> {
        match self {
            Live::Empty => None,
            Live::Input(t) => Some(tensor_addr(t)),
            Live::Owned(b) => Some(b.addr()),
        }
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
        self.run_inner(inputs, None)
    }

    /// [`CompiledFunction::run`], also timing every kernel launch (in execution order).
    ///
    /// # Errors
    /// As [`CompiledFunction::run`].
    pub fn run_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<(Outputs, Vec<KernelTime>), CodegenError> {
        let mut times = Vec::with_capacity(self.plan.steps.len());
        let out = self.run_inner(inputs, Some(&mut times))?;
        Ok((out, times))
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Tensor>,
        mut times: Option<&mut Vec<KernelTime>>,
    ) -> Result<Vec<(String, Tensor)>, CodegenError> {
        let mut live: Vec<Live<'_>> = self.plan.slots.iter().map(|_| Live::Empty).collect();
        for (name, ty, slot) in &self.plan.inputs {
            let t = inputs
                .get(name)
                .ok_or_else(|| CodegenError::MissingInput { name: name.clone() })?;
            if t.ty() != ty {
                return Err(CodegenError::InputTypeMismatch {
                    name: name.clone(),
                    expected: ty.clone(),
                    got: t.ty().clone(),
                });
            }
            live[*slot] = Live::Input(t);
        }
        // Concurrent runs each take what the pool has; whatever is left over is merged back.
        let mut pool = self
            .pool
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        for (si, step) in self.plan.steps.iter().enumerate() {
            let slot = &self.plan.slots[step.out];
            if matches!(live[step.out], Live::Empty) {
                let reused = pool
                    .get_mut(&Buf::key_of(slot.dtype, slot.len))
                    .and_then(Vec::pop);
                live[step.out] =
                    Live::Owned(reused.unwrap_or_else(|| Buf::new(slot.dtype, slot.len)));
            }
            let started = std::time::Instant::now();
            if step.kind == StepKind::Host {
                let result = self.host_step(step, &live)?;
                live[step.out] = Live::Owned(result);
            } else {
                let mut addrs = Vec::with_capacity(step.args.len() + 1);
                for &a in step.args.iter().chain(std::iter::once(&step.out)) {
                    addrs.push(live[a].addr().ok_or_else(|| {
                        CodegenError::Internal(format!("{}: buffer {a} is not ready", step.symbol))
                    })?);
                }
                self.launch(si, step, &addrs)?;
            }
            if let Some(t) = times.as_deref_mut() {
                let node = self.f.node(step.root);
                t.push(KernelTime {
                    kernel: step.symbol.clone(),
                    node: step.root.index(),
                    op: node.op.name(),
                    ty: node.ty.to_string(),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            for &a in &step.args {
                if self.last_use.get(a) == Some(&si)
                    && let Live::Owned(b) = std::mem::replace(&mut live[a], Live::Empty)
                {
                    pool.entry(b.key()).or_default().push(b);
                }
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
                Live::Owned(_) if *left == 0 => {
                    match std::mem::replace(&mut live[*s], Live::Empty) {
                        Live::Owned(b) => b.into_tensor(ty)?,
                        _ => return Err(CodegenError::Internal("output vanished".into())),
                    }
                }
                Live::Owned(b) => b_clone(b, ty)?,
                Live::Empty => {
                    return Err(CodegenError::Internal(format!(
                        "output `{name}` was not computed"
                    )));
                }
            };
            out.push((name.clone(), t));
        }
        for l in live {
            if let Live::Owned(b) = l {
                pool.entry(b.key()).or_default().push(b);
            }
        }
        if let Ok(mut shared) = self.pool.lock() {
            for (k, mut v) in pool {
                shared.entry(k).or_default().append(&mut v);
            }
        }
        Ok(out)
    }

    /// Drops the intermediate buffers kept between runs.
    pub fn release_buffers(&self) {
        if let Ok(mut p) = self.pool.lock() {
            p.clear();
        }
    }

    /// Runs every step with caller-provided buffer addresses, one per slot (used by
    /// [`crate::Gemm`], whose buffers are plain slices).
    pub(crate) fn run_raw(&self, addrs: &[usize]) -> Result<(), CodegenError> {
        for (si, step) in self.plan.steps.iter().enumerate() {
            let mut a: Vec<usize> = step.args.iter().map(|&s| addrs[s]).collect();
            a.push(addrs[step.out]);
            self.launch(si, step, &a)?;
        }
        Ok(())
    }

    /// Launches step `si`, split into per-thread chunks when it is big enough.
    #[allow(unsafe_code)]
    fn launch(&self, si: usize, step: &Step, addrs: &[usize]) -> Result<(), CodegenError> {
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
        let run = |c: usize| -> [i64; 4] {
            let (lo, hi) = (n * c / chunks, n * (c + 1) / chunks);
            let mut err = [0i64; 4];
            let e = step.may_fail.then_some(&mut err);
            // SAFETY: `wrapper` is the packed wrapper of this step's kernel, looked up in
            // `self._jit`, which outlives the call. `addrs` are the step's argument slots then
            // its output slot, in the kernel's parameter order (set by lowering); each is a
            // live buffer of the slot's dtype and length, which the schedule sized to the
            // value's type, i.e. to the kernel's memref type. Inputs are only read. Chunks
            // cover disjoint `[lo, hi)` ranges, and a kernel writes only the output elements
            // of its range.
            unsafe { call_kernel(wrapper, lo, hi, addrs, e) };
            err
        };
        let errs: Vec<[i64; 4]> = if chunks == 1 {
            vec![run(0)]
        } else {
            (0..chunks).into_par_iter().map(run).collect()
        };
        match errs.iter().find(|e| e[0] != 0) {
            Some(e) => Err(kernel_error(e)),
            None => Ok(()),
        }
    }

    /// Evaluates a host step (`quantize`) with the reference interpreter.
    fn host_step(&self, step: &Step, live: &[Live<'_>]) -> Result<Buf, CodegenError> {
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
                Live::Owned(b) => b_clone(b, &ty)?,
                Live::Empty => return Err(CodegenError::Internal("host operand missing".into())),
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

/// The last step reading each slot; inputs and outputs are never recycled.
pub(crate) fn last_uses(plan: &Plan) -> Vec<usize> {
    let mut last = vec![0usize; plan.slots.len()];
    for (si, step) in plan.steps.iter().enumerate() {
        for &a in &step.args {
            last[a] = si;
        }
    }
    for (i, Slot { input, .. }) in plan.slots.iter().enumerate() {
        if input.is_some() {
            last[i] = usize::MAX;
        }
    }
    for (_, _, s) in &plan.outputs {
        last[*s] = usize::MAX;
    }
    // Views share their operand's slot, so the per-slot maximum covers their readers too.
    last
}
