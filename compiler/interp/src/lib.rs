//! graft's reference interpreter: runs any IR function directly on the CPU.
//!
//! It is slow and meant to be obviously correct: it is the oracle every optimization and
//! every backend is tested against, so its semantics *are* the IR's semantics. They are:
//!
//! - **Storage.** See [`Tensor`] and [`Data`]: row-major; bf16/f16 values are kept as `f32`
//!   values exactly representable in the type; `u4` tensors hold one unpacked code per element.
//! - **Float arithmetic** is done in `f32` (in `f64` for `f64` tensors) and each result is
//!   rounded once to the node dtype (round to nearest even for bf16/f16). The exceptions
//!   accumulate in `f64` and round once at the end: `matmul` (products and dot-product sums),
//!   `reduce_sum`/`reduce_mean`, `softmax`/`log_softmax` (the whole computation: max, `x - max`,
//!   `exp`, the sum, the division or `- ln(sum)`), `dropout`'s scaling, and the random ops.
//! - **Elementwise ops** (`elementwise.rs`): `rsqrt(x) = 1/sqrt(x)`, `sigmoid(x) = 1/(1+exp(-x))`,
//!   `silu(x) = x/(1+exp(-x))`, `recip(x) = 1/x`, `relu(x) = 0 if x < 0 else x` (NaN and -0.0
//!   pass through), `pow = powf`; `max`/`min` propagate NaN. Integer `add`/`sub`/`mul` wrap,
//!   `div` truncates toward zero and fails on a zero divisor. Comparisons follow IEEE (NaN
//!   compares unequal to everything).
//! - **Casts and fills** (`tensor.rs`): float → int truncates toward zero and saturates (Rust
//!   `as`, NaN → 0); int → int wraps (`as`); → `u4` saturates floats to `0..=15` and wraps
//!   integers modulo 16; → bf16/f16 rounds to nearest even; bool → number gives 0/1; number →
//!   bool is `x != 0`. `constant{value}` and `iota{axis}` convert their value the same way.
//! - **Layout ops** (`layout.rs`): reshape keeps the row-major element order; `transpose`'s
//!   result axis `i` is operand axis `perm[i]`; `broadcast` aligns the operand to the trailing
//!   axes and repeats extent-1 axes; `gather` rejects negative and out-of-range indices.
//! - **Randomness** ([`random`]): counter-based (splitmix64), reproducible from `(seed, stream,
//!   element index)` alone.
//! - **Factorizations** (`linalg.rs`): `svd_*` and `qr_*` in `f64`, signs as documented there.
//! - **Quantization** (`quant.rs`): NF4 through `graft-quant`, bit-exact with bitsandbytes.
//!
//! [`run`] verifies the function first, so a malformed graph is an error, never a panic.

mod compute;
mod elementwise;
mod layout;
mod linalg;
pub mod mt19937;
mod quant;
pub mod random;
mod tensor;

pub use random::{
    dropout_keep, int_value, normal_value, splitmix64, stream_key, uniform_bits, uniform_unit,
    uniform_value,
};
pub use tensor::{Data, Tensor, round_f32, round_f64};

use graft_ir::{Function, Module, Op, TensorType, VerifyError, verify_function};
use std::collections::HashMap;

/// Why a function could not be evaluated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// No tensor was given for an input node.
    #[error("missing input `{name}`")]
    MissingInput {
        /// The input's name.
        name: String,
    },
    /// The tensor given for an input has another type than the input node.
    #[error("input `{name}` expects {expected}, got {got}")]
    InputTypeMismatch {
        /// The input's name.
        name: String,
        /// The input node's type.
        expected: TensorType,
        /// The given tensor's type.
        got: TensorType,
    },
    /// The interpreter does not define this op on these operand types.
    #[error("%{node}: `{op}` is not supported on ({}): {message}", fmt_types(.operands))]
    Unsupported {
        /// The op's text name.
        op: String,
        /// The node index.
        node: usize,
        /// The operand types.
        operands: Vec<TensorType>,
        /// What is not supported.
        message: String,
    },
    /// A `gather` index is negative or not below the indexed extent.
    #[error("%{node}: `gather` index {value} is out of range for an axis of extent {extent}")]
    IndexOutOfRange {
        /// The node index.
        node: usize,
        /// The bad index.
        value: i64,
        /// The extent of the indexed axis.
        extent: usize,
    },
    /// An integer division by zero.
    #[error("%{node}: integer division by zero")]
    DivisionByZero {
        /// The node index.
        node: usize,
    },
    /// `solve` met a matrix with no inverse (a zero pivot after partial pivoting).
    #[error("%{node}: `solve`: matrix {batch} of A is singular")]
    Singular {
        /// The node index.
        node: usize,
        /// Which matrix of the batch (row-major over the leading axes).
        batch: usize,
    },
    /// Quantization or dequantization rejected its operands (for example a NaN weight).
    #[error("%{node}: `{op}`: {error}")]
    Quant {
        /// The node index.
        node: usize,
        /// The op's text name.
        op: String,
        /// graft-quant's error.
        #[source]
        error: graft_quant::QuantError,
    },
    /// The function does not pass the IR verifier.
    #[error("the function is not valid IR: {0}")]
    Invalid(#[from] VerifyError),
    /// The module has no function of that name.
    #[error("no function `{name}` in the module")]
    NoSuchFunction {
        /// The requested name.
        name: String,
    },
    /// Tensor data that does not fit its type (wrong element count or storage variant).
    #[error("invalid {ty} tensor: {message}")]
    InvalidTensor {
        /// The intended type.
        ty: TensorType,
        /// What is wrong.
        message: String,
    },
}

fn fmt_types(types: &[TensorType]) -> String {
    let v: Vec<String> = types.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// What an op implementation needs to know about the node it evaluates.
pub(crate) struct Ctx<'a> {
    /// The node index.
    pub node: usize,
    /// The op.
    pub op: &'a Op,
    /// The node's result type.
    pub ty: &'a TensorType,
    /// The operand values.
    pub args: Vec<&'a Tensor>,
}

impl Ctx<'_> {
    /// An [`InterpError::Unsupported`] for this node.
    pub fn unsupported(&self, message: impl Into<String>) -> InterpError {
        InterpError::Unsupported {
            op: self.op.name().to_string(),
            node: self.node,
            operands: self.args.iter().map(|t| t.ty().clone()).collect(),
            message: message.into(),
        }
    }

    /// Operand `i`.
    pub fn arg(&self, i: usize) -> Result<&Tensor, InterpError> {
        self.args
            .get(i)
            .copied()
            .ok_or_else(|| self.unsupported(format!("operand {i} is missing")))
    }

    /// A result of the node's type.
    pub fn result(&self, data: Data) -> Result<Tensor, InterpError> {
        if data.fits(self.ty.dtype) && data.len() == self.ty.numel() {
            Ok(Tensor::from_parts(self.ty.clone(), data))
        } else {
            Err(self.unsupported(format!(
                "internal: produced data that does not fit {}",
                self.ty
            )))
        }
    }
}

/// Evaluates `f` on `inputs` (by input name) and returns its outputs, in order.
///
/// The function is verified first; each node is then evaluated in order. Every `input` node
/// must have a tensor of exactly its type in `inputs` (extra entries are ignored). Values are
/// freed after their last use.
///
/// # Errors
/// See [`InterpError`]: an invalid function, a missing or mistyped input, or an op that fails
/// at run time (a bad `gather` index, an integer division by zero, a non-finite value to
/// quantize, an op/dtype combination the interpreter does not define).
pub fn run(
    f: &Function,
    inputs: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, InterpError> {
    run_watched(f, inputs, &mut |_, _| true).map(|r| r.unwrap_or_default())
}

/// The first node (in evaluation order) whose floating-point result holds a NaN or an
/// infinity, with its first such value; `None` when every value is finite. This is the
/// debugging aid behind a non-finite loss: run the step here and name the op that made it.
///
/// # Errors
/// As [`run`].
pub fn first_non_finite(
    f: &Function,
    inputs: &HashMap<String, Tensor>,
) -> Result<Option<(usize, f64)>, InterpError> {
    let mut found = None;
    run_watched(f, inputs, &mut |i, t| {
        let bad = match t.data() {
            Data::F32(v) => v.iter().find(|x| !x.is_finite()).map(|x| f64::from(*x)),
            Data::F64(v) => v.iter().find(|x| !x.is_finite()).copied(),
            _ => None,
        };
        found = bad.map(|x| (i, x));
        found.is_none()
    })?;
    Ok(found)
}

/// [`run`], showing each node's value to `watch` as it is computed; `Ok(None)` when `watch`
/// returned false (stop there).
fn run_watched(
    f: &Function,
    inputs: &HashMap<String, Tensor>,
    watch: &mut dyn FnMut(usize, &Tensor) -> bool,
) -> Result<Option<Vec<(String, Tensor)>>, InterpError> {
    // Locations are irrelevant here, so allow any file index.
    verify_function(f, usize::MAX)?;
    // last_use[v]: the last node reading v (v itself when none; usize::MAX for outputs).
    let mut last_use: Vec<usize> = (0..f.nodes.len()).collect();
    for (i, n) in f.nodes.iter().enumerate() {
        for a in &n.args {
            if let Some(l) = last_use.get_mut(a.index()) {
                *l = i;
            }
        }
    }
    for o in &f.outputs {
        if let Some(l) = last_use.get_mut(o.value.index()) {
            *l = usize::MAX;
        }
    }
    let mut values: Vec<Option<Tensor>> = Vec::with_capacity(f.nodes.len());
    for (i, node) in f.nodes.iter().enumerate() {
        let mut args = Vec::with_capacity(node.args.len());
        for a in &node.args {
            match values.get(a.index()) {
                Some(Some(t)) => args.push(t),
                _ => return Err(freed(i, Some(&node.op))),
            }
        }
        let ctx = Ctx {
            node: i,
            op: &node.op,
            ty: &node.ty,
            args,
        };
        let t = eval(&ctx, inputs)?;
        if !watch(i, &t) {
            return Ok(None);
        }
        values.push((last_use.get(i) != Some(&i)).then_some(t));
        for a in &node.args {
            if last_use.get(a.index()) == Some(&i)
                && let Some(v) = values.get_mut(a.index())
            {
                *v = None;
            }
        }
    }
    f.outputs
        .iter()
        .map(|o| match values.get(o.value.index()) {
            Some(Some(t)) => Ok((o.name.clone(), t.clone())),
            _ => Err(freed(
                o.value.index(),
                f.nodes.get(o.value.index()).map(|n| &n.op),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An internal error: a value was needed after it was freed (cannot happen on verified IR).
fn freed(node: usize, op: Option<&Op>) -> InterpError {
    InterpError::Unsupported {
        op: op.map_or("?", Op::name).to_string(),
        node,
        operands: Vec::new(),
        message: "internal: an operand value is not available".into(),
    }
}

/// Runs the function `name` of `m`; see [`run`].
///
/// # Errors
/// [`InterpError::NoSuchFunction`], or any error of [`run`].
pub fn run_module_fn(
    m: &Module,
    name: &str,
    inputs: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, InterpError> {
    let f = m
        .function(name)
        .ok_or_else(|| InterpError::NoSuchFunction {
            name: name.to_string(),
        })?;
    run(f, inputs)
}

/// Evaluates one node.
fn eval(ctx: &Ctx<'_>, inputs: &HashMap<String, Tensor>) -> Result<Tensor, InterpError> {
    match ctx.op {
        Op::Input { name, .. } => {
            let t = inputs
                .get(name)
                .ok_or_else(|| InterpError::MissingInput { name: name.clone() })?;
            if t.ty() != ctx.ty {
                return Err(InterpError::InputTypeMismatch {
                    name: name.clone(),
                    expected: ctx.ty.clone(),
                    got: t.ty().clone(),
                });
            }
            Ok(t.clone())
        }
        Op::Constant { value } => elementwise::constant(ctx, *value),
        Op::Iota { axis } => elementwise::iota(ctx, *axis),
        Op::Random { dist, stream } => random::random(ctx, *dist, *stream),
        Op::Unary(u) => elementwise::unary(ctx, *u),
        Op::Binary(b) => elementwise::binary(ctx, *b),
        Op::Factor(f) => linalg::factor(ctx, *f),
        Op::Solve => linalg::solve(ctx),
        Op::Sort { axis } => layout::sort(ctx, *axis),
        Op::Select => elementwise::select(ctx),
        Op::Cast => elementwise::cast(ctx),
        Op::MatMul { ta, tb } => compute::matmul(ctx, *ta, *tb),
        Op::Reduce { op, axes, keepdim } => compute::reduce(ctx, *op, axes, *keepdim),
        Op::Softmax { axis } => compute::softmax(ctx, *axis, false),
        Op::LogSoftmax { axis } => compute::softmax(ctx, *axis, true),
        Op::Reshape => layout::reshape(ctx),
        Op::Transpose { perm } => layout::transpose(ctx, perm),
        Op::Broadcast => layout::broadcast(ctx),
        Op::Concat { axis } => layout::concat(ctx, *axis),
        Op::Slice { axis, start, end } => layout::slice(ctx, *axis, *start, *end),
        Op::Gather { axis } => layout::gather(ctx, *axis),
        Op::StopGrad => Ok(ctx.arg(0)?.clone()),
        Op::Dropout { p, stream } => random::dropout(ctx, *p, *stream),
        Op::Quantize {
            format,
            block,
            part,
        } => quant::quantize(ctx, *format, *block, *part),
        Op::Dequantize {
            format,
            block,
            nested,
        } => quant::dequantize(ctx, *format, *block, *nested),
        Op::QuantMatMul {
            format,
            block,
            nested,
            ta,
            tb,
        } => {
            // Reference semantics: dequantize the weight, then multiply.
            let (x, rest) = ctx
                .args
                .split_first()
                .ok_or_else(|| ctx.unsupported("missing x"))?;
            let codes = rest
                .first()
                .ok_or_else(|| ctx.unsupported("missing codes"))?;
            let w_ty = TensorType::new(x.dtype(), codes.shape().to_vec());
            let dq_op = Op::Dequantize {
                format: *format,
                block: *block,
                nested: *nested,
            };
            let w = quant::dequantize(
                &Ctx {
                    node: ctx.node,
                    op: &dq_op,
                    ty: &w_ty,
                    args: rest.to_vec(),
                },
                *format,
                *block,
                *nested,
            )?;
            let mm_op = Op::MatMul { ta: *ta, tb: *tb };
            compute::matmul(
                &Ctx {
                    node: ctx.node,
                    op: &mm_op,
                    ty: ctx.ty,
                    args: vec![*x, &w],
                },
                *ta,
                *tb,
            )
        }
    }
}
