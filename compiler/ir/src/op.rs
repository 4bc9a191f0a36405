//! The IR's operations: their attributes, their text names, and their typing rules.
//!
//! Everything the compiler knows about one op lives here: how it is spelled in the text form
//! (`to_parts` / `from_parts`) and which operand types it accepts and what it returns
//! (`result_type`). Passes match on [`Op`] but never re-derive these facts.

use crate::attr::{AttrValue, Attrs};
use crate::dtype::{DType, TensorType, shape_str};
use std::fmt;

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `eˣ`
    Exp,
    /// natural logarithm
    Log,
    /// `√x`
    Sqrt,
    /// `1/√x`
    Rsqrt,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// hyperbolic tangent
    Tanh,
    /// `1/(1+e⁻ˣ)`
    Sigmoid,
    /// `x·sigmoid(x)`
    Silu,
    /// `max(x, 0)`
    Relu,
    /// `|x|`
    Abs,
    /// `1/x`
    Recip,
    /// the error function `2/√π ∫₀ˣ e^(−t²) dt`
    Erf,
    /// logical not (bool)
    Not,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 15] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Relu,
        UnaryOp::Abs,
        UnaryOp::Recip,
        UnaryOp::Erf,
        UnaryOp::Not,
    ];

    /// The op's name in the text form and in graft source.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Relu => "relu",
            UnaryOp::Abs => "abs",
            UnaryOp::Recip => "recip",
            UnaryOp::Erf => "erf",
            UnaryOp::Not => "not",
        }
    }

    /// Looks a unary op up by name.
    pub fn from_name(name: &str) -> Option<UnaryOp> {
        UnaryOp::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// Elementwise binary operations; both operands have the same type (the IR broadcasts
/// explicitly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `aᵇ`
    Pow,
    /// elementwise maximum
    Max,
    /// elementwise minimum
    Min,
    /// `a == b` (bool result)
    Eq,
    /// `a != b` (bool result)
    Ne,
    /// `a < b` (bool result)
    Lt,
    /// `a <= b` (bool result)
    Le,
    /// `a > b` (bool result)
    Gt,
    /// `a >= b` (bool result)
    Ge,
    /// logical and (bool)
    And,
    /// logical or (bool)
    Or,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 15] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::And,
        BinaryOp::Or,
    ];

    /// The op's name in the text form.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    /// Looks a binary op up by name.
    pub fn from_name(name: &str) -> Option<BinaryOp> {
        BinaryOp::ALL.into_iter().find(|o| o.name() == name)
    }

    /// True for the comparisons, whose result is `bool`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }

    /// True for the logical ops, whose operands are `bool`.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Σ
    Sum,
    /// arithmetic mean
    Mean,
    /// maximum
    Max,
    /// minimum
    Min,
}

impl ReduceOp {
    const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

    /// The op's name in the text form (`reduce_sum`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "reduce_sum",
            ReduceOp::Mean => "reduce_mean",
            ReduceOp::Max => "reduce_max",
            ReduceOp::Min => "reduce_min",
        }
    }
}

/// A matrix factorization of the last two axes `[.., m, n]` (`k = min(m, n)`), in reduced
/// form as `torch.linalg` computes it. Each op is one factor; `@init` computes them (the
/// interpreter, in f64), and they have no gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FactorOp {
    /// `U` [.., m, k] of `x = U·diag(S)·Vh` (`torch.linalg.svd(x, full_matrices=False)`).
    SvdU,
    /// The singular values `S` [.., k], descending.
    SvdS,
    /// `Vh` [.., k, n].
    SvdVh,
    /// `Q` [.., m, k] of `x = Q·R` (`torch.linalg.qr(x)`, Householder as LAPACK's `geqrf`).
    QrQ,
    /// `R` [.., k, n], upper triangular.
    QrR,
}

impl FactorOp {
    /// Every factorization op.
    pub const ALL: [FactorOp; 5] = [
        FactorOp::SvdU,
        FactorOp::SvdS,
        FactorOp::SvdVh,
        FactorOp::QrQ,
        FactorOp::QrR,
    ];

    /// The op's name in the text form and in graft source.
    pub fn name(self) -> &'static str {
        match self {
            FactorOp::SvdU => "svd_u",
            FactorOp::SvdS => "svd_s",
            FactorOp::SvdVh => "svd_vh",
            FactorOp::QrQ => "qr_q",
            FactorOp::QrR => "qr_r",
        }
    }

    /// Looks a factorization op up by name.
    pub fn from_name(name: &str) -> Option<FactorOp> {
        FactorOp::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The factor's shape for an operand of shape `[.., m, n]` (rank 2 or more).
    pub fn shape(self, x: &[usize]) -> Vec<usize> {
        let r = x.len();
        let (m, n) = (x[r - 2], x[r - 1]);
        let k = m.min(n);
        let mut s = x[..r - 2].to_vec();
        match self {
            FactorOp::SvdU | FactorOp::QrQ => s.extend([m, k]),
            FactorOp::SvdS => s.push(k),
            FactorOp::SvdVh | FactorOp::QrR => s.extend([k, n]),
        }
        s
    }
}

/// What an input of a function is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// A frozen weight, loaded by name from the weights file; never gets a gradient.
    Weight,
    /// A trainable parameter; its initial value comes from the module's `init` function.
    Param,
    /// A batch input (token ids, labels, a seed).
    Data,
    /// Training state carried between steps (optimizer moments, the step counter).
    State,
}

impl InputKind {
    const ALL: [InputKind; 4] = [
        InputKind::Weight,
        InputKind::Param,
        InputKind::Data,
        InputKind::State,
    ];

    /// The kind's name in the text form.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Weight => "weight",
            InputKind::Param => "param",
            InputKind::Data => "data",
            InputKind::State => "state",
        }
    }
}

/// The largest `n` for which PyTorch's CPU `randperm` makes 32-bit draws (it switches to
/// 64-bit draws from `u32::MAX / 20` on), the range `Distribution::TorchRandperm` reproduces.
pub const TORCH_RANDPERM_MAX: i64 = (u32::MAX / 20) as i64 - 1;

/// A random distribution, for initializers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Uniform on `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Normal with the given mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Uniform on `[lo, hi)` as PyTorch's CPU generator draws it for `f32`:
    /// `torch.empty(n).uniform_(lo, hi, generator=torch.Generator().manual_seed(seed))`
    /// (MT19937). Draws are sequential, so the op's `stream` is the number of draws made
    /// before this tensor's first, not an independent stream.
    TorchUniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// The leading entries of a random permutation of `0..n` as PyTorch's CPU generator draws
    /// it: `torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]` (MT19937,
    /// Fisher–Yates from the front, one 32-bit draw `z % (n − i)` per position), a rank-1
    /// result of `k ≤ n` entries. `stream` counts earlier draws, as for `TorchUniform`.
    TorchRandperm {
        /// The size of the permuted range.
        n: i64,
    },
    /// Integers uniform on `[lo, hi)`.
    Int {
        /// Lower bound (inclusive).
        lo: i64,
        /// Upper bound (exclusive).
        hi: i64,
    },
}

/// A quantization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 4-bit NormalFloat (QLoRA), blockwise absmax, bit-compatible with bitsandbytes.
    Nf4,
    /// Symmetric 8-bit, blockwise absmax: code = round(127·x/absmax) + 128 (`u8`).
    Int8,
}

impl QuantFormat {
    /// The format's name in source and text form.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Nf4 => "nf4",
            QuantFormat::Int8 => "int8",
        }
    }

    /// The dtype of the format's codes.
    pub fn code_dtype(self) -> DType {
        match self {
            QuantFormat::Nf4 => DType::U4,
            QuantFormat::Int8 => DType::U8,
        }
    }

    /// Looks a format up by name.
    pub fn from_name(name: &str) -> Option<QuantFormat> {
        match name {
            "nf4" => Some(QuantFormat::Nf4),
            "int8" => Some(QuantFormat::Int8),
            _ => None,
        }
    }
}

/// Which result of a quantization a `quantize` node produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantPart {
    /// The packed codes, same logical shape as the input.
    Codes,
    /// One absmax scale per block.
    Absmax,
}

/// An IR operation with its attributes. Each node applies one op to its operands.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A function input; the node's type is its declared type.
    Input {
        /// Full name: a Hugging Face-style parameter path or a data name.
        name: String,
        /// What the input is.
        kind: InputKind,
    },
    /// A tensor filled with one value (of the node's type).
    Constant {
        /// The fill value.
        value: f64,
    },
    /// A tensor whose elements are their index along `axis`.
    Iota {
        /// The counting axis.
        axis: usize,
    },
    /// Random values from a seeded counter-based generator; operand: an `i64[]` seed.
    Random {
        /// The distribution.
        dist: Distribution,
        /// Stream id, so that different tensors drawn from one seed are independent.
        stream: u64,
    },
    /// An elementwise unary op.
    Unary(UnaryOp),
    /// An elementwise binary op on two operands of one type.
    Binary(BinaryOp),
    /// One factor of a matrix factorization (`@init` only).
    Factor(FactorOp),
    /// `solve(A, B)`: the X with A·X = B, for square A `[..., n, n]` and B `[..., n, k]` with
    /// the same leading axes (`torch.linalg.solve`); differentiable.
    Solve,
    /// `sort(x, axis)`: `x` sorted ascending along `axis` (NaN last; `torch.sort`'s values);
    /// not differentiable. With a gather at a runtime index it gives the k-th smallest value
    /// (`torch.kthvalue`), with slices the k smallest or largest.
    Sort {
        /// The sorted axis.
        axis: usize,
    },
    /// `select(c, a, b)`: `a` where `c` is true, else `b`.
    Select,
    /// Batched matrix product `[..., m, k] × [..., k, n]`; a rank-2 operand is shared by every
    /// batch; `ta`/`tb` read an operand with its last two axes swapped.
    MatMul {
        /// Transpose the first operand's last two axes.
        ta: bool,
        /// Transpose the second operand's last two axes.
        tb: bool,
    },
    /// A reduction over `axes`.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// The reduced axes, ascending.
        axes: Vec<usize>,
        /// Keep reduced axes with extent 1.
        keepdim: bool,
    },
    /// Same elements, the node's shape.
    Reshape,
    /// Axis permutation: result axis `i` is operand axis `perm[i]`.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// NumPy-style broadcast to the node's shape (operand aligned to the trailing axes).
    Broadcast,
    /// Concatenation along `axis`.
    Concat {
        /// The joined axis.
        axis: usize,
    },
    /// Elements `start..end` along `axis`.
    Slice {
        /// The sliced axis.
        axis: usize,
        /// First index.
        start: usize,
        /// One past the last index.
        end: usize,
    },
    /// `take(table, indices, axis)`: result shape is
    /// `table[..axis] ++ indices ++ table[axis+1..]`.
    Gather {
        /// The indexed axis of the table.
        axis: usize,
    },
    /// Softmax along `axis`.
    Softmax {
        /// The normalized axis.
        axis: usize,
    },
    /// Log-softmax along `axis`.
    LogSoftmax {
        /// The normalized axis.
        axis: usize,
    },
    /// Element type conversion to the node's dtype.
    Cast,
    /// Identity in the forward pass; no gradient flows through it.
    StopGrad,
    /// Inverted dropout with probability `p`; operands: `x`, an `i64[]` seed.
    Dropout {
        /// Probability of zeroing an element.
        p: f64,
        /// Stream id, so that dropouts sharing one seed draw independent masks.
        stream: u64,
    },
    /// Blockwise quantization of a float tensor; produces one `part` of the result.
    Quantize {
        /// The format.
        format: QuantFormat,
        /// Elements per absmax block.
        block: usize,
        /// Which result this node is.
        part: QuantPart,
    },
    /// Blockwise dequantization. Operands: codes, absmax (`f32`), or with nested
    /// (double) quantization codes, absmax codes (`u8`), absmax scales (`f32`), absmax offset
    /// (`f32[]`).
    Dequantize {
        /// The format.
        format: QuantFormat,
        /// Elements per absmax block.
        block: usize,
        /// Absmax values per block of the nested quantization; 0 when absmax is plain f32.
        nested: usize,
    },
    /// `matmul{ta, tb}(x, dequantize(codes, scales...))` as one op, so the full-precision
    /// weight never exists. Operands: x, then the `dequantize` operands.
    QuantMatMul {
        /// The format.
        format: QuantFormat,
        /// Elements per absmax block.
        block: usize,
        /// Nested block size; 0 for plain absmax.
        nested: usize,
        /// Transpose x's last two axes.
        ta: bool,
        /// Transpose the weight.
        tb: bool,
    },
}

/// An operand/attribute mismatch found while typing an op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{op}`: {message} (operands: {})", fmt_types(.operands))]
pub struct TypeError {
    /// The op's text name.
    pub op: String,
    /// What is wrong.
    pub message: String,
    /// The operand types, in order.
    pub operands: Vec<TensorType>,
}

fn fmt_types(types: &[TensorType]) -> String {
    if types.is_empty() {
        return "none".to_string();
    }
    types
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Op {
    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Constant { .. } => "constant",
            Op::Iota { .. } => "iota",
            Op::Random { dist, .. } => match dist {
                Distribution::Uniform { .. } => "random_uniform",
                Distribution::TorchUniform { .. } => "random_torch_uniform",
                Distribution::TorchRandperm { .. } => "random_torch_randperm",
                Distribution::Normal { .. } => "random_normal",
                Distribution::Int { .. } => "random_int",
            },
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Factor(f) => f.name(),
            Op::Solve => "solve",
            Op::Sort { .. } => "sort",
            Op::Select => "select",
            Op::MatMul { .. } => "matmul",
            Op::Reduce { op, .. } => op.name(),
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Broadcast => "broadcast",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::Cast => "cast",
            Op::StopGrad => "stop_grad",
            Op::Dropout { .. } => "dropout",
            Op::Quantize { .. } => "quantize",
            Op::Dequantize { .. } => "dequantize",
            Op::QuantMatMul { .. } => "qmatmul",
        }
    }

    /// True when the node's type cannot be inferred from its operands and must be stated.
    pub fn needs_declared_type(&self) -> bool {
        matches!(
            self,
            Op::Input { .. }
                | Op::Constant { .. }
                | Op::Iota { .. }
                | Op::Random { .. }
                | Op::Reshape
                | Op::Broadcast
                | Op::Cast
                | Op::Dequantize { .. }
        )
    }

    /// The op's attributes, in text-form order.
    pub fn attrs(&self) -> Attrs {
        let mut a = Attrs::default();
        match self {
            Op::Input { name, kind } => {
                a.push("name", AttrValue::Str(name.clone()));
                a.push("kind", AttrValue::Ident(kind.name().to_string()));
            }
            Op::Constant { value } => a.push("value", AttrValue::Float(*value)),
            Op::Iota { axis }
            | Op::Concat { axis }
            | Op::Gather { axis }
            | Op::Sort { axis }
            | Op::Softmax { axis }
            | Op::LogSoftmax { axis } => a.push("axis", AttrValue::Int(*axis as i64)),
            Op::Random { dist, stream } => {
                match *dist {
                    Distribution::Uniform { lo, hi } | Distribution::TorchUniform { lo, hi } => {
                        a.push("lo", AttrValue::Float(lo));
                        a.push("hi", AttrValue::Float(hi));
                    }
                    Distribution::Normal { mean, std } => {
                        a.push("mean", AttrValue::Float(mean));
                        a.push("std", AttrValue::Float(std));
                    }
                    Distribution::Int { lo, hi } => {
                        a.push("lo", AttrValue::Int(lo));
                        a.push("hi", AttrValue::Int(hi));
                    }
                    Distribution::TorchRandperm { n } => a.push("n", AttrValue::Int(n)),
                }
                a.push("stream", AttrValue::Int(*stream as i64));
            }
            Op::MatMul { ta, tb } => {
                if *ta {
                    a.push("ta", AttrValue::Bool(true));
                }
                if *tb {
                    a.push("tb", AttrValue::Bool(true));
                }
            }
            Op::Reduce { axes, keepdim, .. } => {
                a.push(
                    "axes",
                    AttrValue::List(axes.iter().map(|&x| x as i64).collect()),
                );
                if *keepdim {
                    a.push("keepdim", AttrValue::Bool(true));
                }
            }
            Op::Transpose { perm } => a.push(
                "perm",
                AttrValue::List(perm.iter().map(|&x| x as i64).collect()),
            ),
            Op::Slice { axis, start, end } => {
                a.push("axis", AttrValue::Int(*axis as i64));
                a.push("start", AttrValue::Int(*start as i64));
                a.push("end", AttrValue::Int(*end as i64));
            }
            Op::Dropout { p, stream } => {
                a.push("p", AttrValue::Float(*p));
                a.push("stream", AttrValue::Int(*stream as i64));
            }
            Op::Quantize {
                format,
                block,
                part,
            } => {
                a.push("format", AttrValue::Ident(format.name().to_string()));
                a.push("block", AttrValue::Int(*block as i64));
                let part = match part {
                    QuantPart::Codes => "codes",
                    QuantPart::Absmax => "absmax",
                };
                a.push("part", AttrValue::Ident(part.to_string()));
            }
            Op::Dequantize {
                format,
                block,
                nested,
            } => push_quant(&mut a, *format, *block, *nested),
            Op::QuantMatMul {
                format,
                block,
                nested,
                ta,
                tb,
            } => {
                push_quant(&mut a, *format, *block, *nested);
                if *ta {
                    a.push("ta", AttrValue::Bool(true));
                }
                if *tb {
                    a.push("tb", AttrValue::Bool(true));
                }
            }
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Factor(_)
            | Op::Solve
            | Op::Select
            | Op::Reshape
            | Op::Broadcast
            | Op::Cast
            | Op::StopGrad => {}
        }
        a
    }

    /// Rebuilds an op from its text name and attributes; every attribute must be used.
    pub fn from_parts(name: &str, mut a: Attrs) -> Result<Op, String> {
        let op = match name {
            "input" => {
                let kind = a.take_ident("kind")?;
                let kind = InputKind::ALL
                    .into_iter()
                    .find(|k| k.name() == kind)
                    .ok_or_else(|| format!("unknown input kind `{kind}`"))?;
                Op::Input {
                    name: a.take_str("name")?,
                    kind,
                }
            }
            "constant" => Op::Constant {
                value: a.take_float("value")?,
            },
            "iota" => Op::Iota {
                axis: a.take_usize("axis")?,
            },
            "random_uniform" => Op::Random {
                dist: Distribution::Uniform {
                    lo: a.take_float("lo")?,
                    hi: a.take_float("hi")?,
                },
                stream: a.take_int("stream")? as u64,
            },
            "random_torch_uniform" => Op::Random {
                dist: Distribution::TorchUniform {
                    lo: a.take_float("lo")?,
                    hi: a.take_float("hi")?,
                },
                stream: a.take_int("stream")? as u64,
            },
            "random_torch_randperm" => Op::Random {
                dist: Distribution::TorchRandperm {
                    n: a.take_int("n")?,
                },
                stream: a.take_int("stream")? as u64,
            },
            "random_normal" => Op::Random {
                dist: Distribution::Normal {
                    mean: a.take_float("mean")?,
                    std: a.take_float("std")?,
                },
                stream: a.take_int("stream")? as u64,
            },
            "random_int" => Op::Random {
                dist: Distribution::Int {
                    lo: a.take_int("lo")?,
                    hi: a.take_int("hi")?,
                },
                stream: a.take_int("stream")? as u64,
            },
            "select" => Op::Select,
            "solve" => Op::Solve,
            "sort" => Op::Sort {
                axis: a.take_usize("axis")?,
            },
            "matmul" => Op::MatMul {
                ta: a.take_bool_or("ta", false)?,
                tb: a.take_bool_or("tb", false)?,
            },
            "reshape" => Op::Reshape,
            "transpose" => Op::Transpose {
                perm: a.take_usize_list("perm")?,
            },
            "broadcast" => Op::Broadcast,
            "concat" => Op::Concat {
                axis: a.take_usize("axis")?,
            },
            "slice" => Op::Slice {
                axis: a.take_usize("axis")?,
                start: a.take_usize("start")?,
                end: a.take_usize("end")?,
            },
            "gather" => Op::Gather {
                axis: a.take_usize("axis")?,
            },
            "softmax" => Op::Softmax {
                axis: a.take_usize("axis")?,
            },
            "log_softmax" => Op::LogSoftmax {
                axis: a.take_usize("axis")?,
            },
            "cast" => Op::Cast,
            "stop_grad" => Op::StopGrad,
            "dropout" => Op::Dropout {
                p: a.take_float("p")?,
                stream: a.take_int("stream")? as u64,
            },
            "quantize" => {
                let format = take_format(&mut a)?;
                let block = a.take_usize("block")?;
                let part = match a.take_ident("part")?.as_str() {
                    "codes" => QuantPart::Codes,
                    "absmax" => QuantPart::Absmax,
                    other => return Err(format!("unknown quantize part `{other}`")),
                };
                Op::Quantize {
                    format,
                    block,
                    part,
                }
            }
            "dequantize" => Op::Dequantize {
                format: take_format(&mut a)?,
                block: a.take_usize("block")?,
                nested: a.take_usize_or("nested", 0)?,
            },
            "qmatmul" => Op::QuantMatMul {
                format: take_format(&mut a)?,
                block: a.take_usize("block")?,
                nested: a.take_usize_or("nested", 0)?,
                ta: a.take_bool_or("ta", false)?,
                tb: a.take_bool_or("tb", false)?,
            },
            _ => {
                if let Some(u) = UnaryOp::from_name(name) {
                    Op::Unary(u)
                } else if let Some(b) = BinaryOp::from_name(name) {
                    Op::Binary(b)
                } else if let Some(f) = FactorOp::from_name(name) {
                    Op::Factor(f)
                } else if let Some(r) = ReduceOp::ALL.into_iter().find(|r| r.name() == name) {
                    Op::Reduce {
                        op: r,
                        axes: a.take_usize_list("axes")?,
                        keepdim: a.take_bool_or("keepdim", false)?,
                    }
                } else {
                    return Err(format!("unknown op `{name}`"));
                }
            }
        };
        a.finish()?;
        Ok(op)
    }

    /// The number of operands the op takes, or `None` when it is variadic.
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Input { .. } | Op::Constant { .. } | Op::Iota { .. } => Some(0),
            Op::Random { .. }
            | Op::Unary(_)
            | Op::Factor(_)
            | Op::Sort { .. }
            | Op::Reduce { .. }
            | Op::Reshape
            | Op::Transpose { .. }
            | Op::Broadcast
            | Op::Slice { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Cast
            | Op::StopGrad
            | Op::Quantize { .. } => Some(1),
            Op::Binary(_)
            | Op::MatMul { .. }
            | Op::Solve
            | Op::Gather { .. }
            | Op::Dropout { .. } => Some(2),
            Op::Select => Some(3),
            Op::Concat { .. } | Op::Dequantize { .. } | Op::QuantMatMul { .. } => None,
        }
    }

    /// Computes the result type from the operand types. Ops for which
    /// [`Op::needs_declared_type`] holds take the result type from `declared` and check it
    /// against the operands; for the others `declared` is ignored.
    pub fn result_type(
        &self,
        args: &[&TensorType],
        declared: Option<&TensorType>,
    ) -> Result<TensorType, TypeError> {
        let err = |message: String| TypeError {
            op: self.name().to_string(),
            message,
            operands: args.iter().map(|t| (*t).clone()).collect(),
        };
        if let Some(n) = self.arity()
            && args.len() != n
        {
            return Err(err(format!("expects {n} operand(s), got {}", args.len())));
        }
        let declared = || -> Result<TensorType, TypeError> {
            declared
                .cloned()
                .ok_or_else(|| err("the result type must be stated".into()))
        };
        let float = |t: &TensorType| -> Result<(), TypeError> {
            if t.dtype.is_float() {
                Ok(())
            } else {
                Err(err(format!("expects a float operand, got {t}")))
            }
        };
        let axis_ok = |axis: usize, t: &TensorType| -> Result<(), TypeError> {
            if axis < t.rank() {
                Ok(())
            } else {
                Err(err(format!("axis {axis} is out of range for {t}")))
            }
        };
        let seed_ok = |t: &TensorType| -> Result<(), TypeError> {
            if *t == TensorType::scalar(DType::I64) {
                Ok(())
            } else {
                Err(err(format!("the seed must be i64[], got {t}")))
            }
        };
        match self {
            Op::Input { .. } | Op::Constant { .. } => declared(),
            Op::Iota { axis } => {
                let t = declared()?;
                axis_ok(*axis, &t)?;
                Ok(t)
            }
            Op::Random { dist, .. } => {
                seed_ok(args[0])?;
                let t = declared()?;
                let ok = match dist {
                    Distribution::Int { lo, hi } => t.dtype.is_int() && lo < hi,
                    Distribution::Uniform { lo, hi } | Distribution::TorchUniform { lo, hi } => {
                        t.dtype.is_float() && lo <= hi
                    }
                    Distribution::Normal { std, .. } => t.dtype.is_float() && *std >= 0.0,
                    Distribution::TorchRandperm { n } => {
                        t.rank() == 1 && (t.numel() as i64) <= *n && *n <= TORCH_RANDPERM_MAX
                    }
                };
                if !ok {
                    return Err(err(format!("distribution does not fit result type {t}")));
                }
                Ok(t)
            }
            Op::Unary(u) => {
                let t = args[0];
                match u {
                    UnaryOp::Not if t.dtype != DType::Bool => {
                        return Err(err(format!("expects a bool operand, got {t}")));
                    }
                    UnaryOp::Not | UnaryOp::Neg | UnaryOp::Abs => {}
                    _ => float(t)?,
                }
                Ok(t.clone())
            }
            Op::Binary(b) => {
                let (x, y) = (args[0], args[1]);
                if x != y {
                    return Err(err(format!(
                        "operands must have one type, got {x} and {y} (broadcast explicitly)"
                    )));
                }
                if b.is_logical() && x.dtype != DType::Bool {
                    return Err(err(format!("expects bool operands, got {x}")));
                }
                if matches!(b, BinaryOp::Pow) {
                    float(x)?;
                }
                if b.is_comparison() {
                    Ok(x.with_dtype(DType::Bool))
                } else {
                    Ok(x.clone())
                }
            }
            Op::Factor(f) => {
                let t = args[0];
                float(t)?;
                if t.rank() < 2 {
                    return Err(err(format!("expects a matrix (rank 2 or more), got {t}")));
                }
                Ok(TensorType::new(t.dtype, f.shape(&t.shape)))
            }
            Op::Solve => {
                let (a, b) = (args[0], args[1]);
                float(a)?;
                let r = a.rank();
                if r < 2
                    || a.shape[r - 1] != a.shape[r - 2]
                    || b.rank() != r
                    || b.dtype != a.dtype
                    || b.shape[..r - 1] != a.shape[..r - 1]
                {
                    return Err(err(format!(
                        "expects a square A [..., n, n] and B [..., n, k] of its dtype and leading axes, got {a} and {b}"
                    )));
                }
                Ok(b.clone())
            }
            Op::Sort { axis } => {
                let t = args[0];
                float(t)?;
                axis_ok(*axis, t)?;
                Ok(t.clone())
            }
            Op::Select => {
                let (c, x, y) = (args[0], args[1], args[2]);
                if c.dtype != DType::Bool || c.shape != x.shape || x != y {
                    return Err(err(
                        "expects a bool condition and two values, all of one shape".into(),
                    ));
                }
                Ok(x.clone())
            }
            Op::MatMul { ta, tb } => {
                let (a, b) = (args[0], args[1]);
                if a.rank() < 2 || b.rank() < 2 {
                    return Err(err("operands must have rank 2 or more".into()));
                }
                if a.dtype != b.dtype || !a.dtype.is_float() {
                    return Err(err("operands must share one float dtype".into()));
                }
                let (ra, rb) = (a.rank(), b.rank());
                let (m, ka) = if *ta {
                    (a.shape[ra - 1], a.shape[ra - 2])
                } else {
                    (a.shape[ra - 2], a.shape[ra - 1])
                };
                let (kb, n) = if *tb {
                    (b.shape[rb - 1], b.shape[rb - 2])
                } else {
                    (b.shape[rb - 2], b.shape[rb - 1])
                };
                if ka != kb {
                    return Err(err(format!("contraction extents differ: {ka} vs {kb}")));
                }
                let batch = if ra == rb {
                    if a.shape[..ra - 2] != b.shape[..rb - 2] {
                        return Err(err("batch axes differ".into()));
                    }
                    a.shape[..ra - 2].to_vec()
                } else if rb == 2 {
                    a.shape[..ra - 2].to_vec()
                } else if ra == 2 {
                    b.shape[..rb - 2].to_vec()
                } else {
                    return Err(err(
                        "batch ranks differ and neither operand is rank 2".into()
                    ));
                };
                let mut shape = batch;
                shape.extend([m, n]);
                Ok(TensorType::new(a.dtype, shape))
            }
            Op::Reduce { op, axes, keepdim } => {
                let t = args[0];
                if !axes.windows(2).all(|w| w[0] < w[1]) || axes.iter().any(|&x| x >= t.rank()) {
                    return Err(err(format!(
                        "axes {axes:?} must be ascending and within rank {}",
                        t.rank()
                    )));
                }
                if matches!(op, ReduceOp::Sum | ReduceOp::Mean) {
                    float(t)?;
                }
                let mut shape = Vec::new();
                for (i, &d) in t.shape.iter().enumerate() {
                    if axes.contains(&i) {
                        if *keepdim {
                            shape.push(1);
                        }
                    } else {
                        shape.push(d);
                    }
                }
                Ok(TensorType::new(t.dtype, shape))
            }
            Op::Reshape => {
                let t = declared()?;
                if t.dtype != args[0].dtype || t.numel() != args[0].numel() {
                    return Err(err(format!("cannot reshape to {t}")));
                }
                Ok(t)
            }
            Op::Transpose { perm } => {
                let t = args[0];
                let mut seen = vec![false; t.rank()];
                if perm.len() != t.rank()
                    || perm
                        .iter()
                        .any(|&p| p >= t.rank() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(err(format!(
                        "{perm:?} is not a permutation of {} axes",
                        t.rank()
                    )));
                }
                Ok(TensorType::new(
                    t.dtype,
                    perm.iter().map(|&p| t.shape[p]).collect::<Vec<_>>(),
                ))
            }
            Op::Broadcast => {
                let t = declared()?;
                let x = args[0];
                if !broadcastable(&x.shape, &t.shape) || x.dtype != t.dtype {
                    return Err(err(format!("cannot broadcast to {t}")));
                }
                Ok(t)
            }
            Op::Concat { axis } => {
                let Some(first) = args.first() else {
                    return Err(err("expects at least one operand".into()));
                };
                axis_ok(*axis, first)?;
                let mut shape = first.shape.clone();
                shape[*axis] = 0;
                for t in args {
                    let same_rest = t.rank() == first.rank()
                        && t.shape
                            .iter()
                            .zip(&first.shape)
                            .enumerate()
                            .all(|(i, (a, b))| i == *axis || a == b);
                    if !same_rest || t.dtype != first.dtype {
                        return Err(err(format!("operands differ outside axis {axis}")));
                    }
                    shape[*axis] += t.shape[*axis];
                }
                Ok(TensorType::new(first.dtype, shape))
            }
            Op::Slice { axis, start, end } => {
                let t = args[0];
                axis_ok(*axis, t)?;
                if start > end || *end > t.shape[*axis] {
                    return Err(err(format!(
                        "range {start}..{end} is outside axis {axis} of {t}"
                    )));
                }
                let mut shape = t.shape.clone();
                shape[*axis] = end - start;
                Ok(TensorType::new(t.dtype, shape))
            }
            Op::Gather { axis } => {
                let (table, idx) = (args[0], args[1]);
                axis_ok(*axis, table)?;
                if !matches!(idx.dtype, DType::I64 | DType::I32) {
                    return Err(err(format!("indices must be i64 or i32, got {idx}")));
                }
                let mut shape = table.shape[..*axis].to_vec();
                shape.extend(&idx.shape);
                shape.extend(&table.shape[axis + 1..]);
                Ok(TensorType::new(table.dtype, shape))
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                float(args[0])?;
                axis_ok(*axis, args[0])?;
                Ok(args[0].clone())
            }
            Op::Cast => {
                let t = declared()?;
                if t.shape != args[0].shape {
                    return Err(err(format!("cast cannot change the shape to {t}")));
                }
                Ok(t)
            }
            Op::StopGrad => Ok(args[0].clone()),
            Op::Dropout { p, .. } => {
                float(args[0])?;
                seed_ok(args[1])?;
                if !(0.0..1.0).contains(p) {
                    return Err(err(format!("p = {p} must be in [0, 1)")));
                }
                Ok(args[0].clone())
            }
            Op::Quantize {
                format,
                block,
                part,
            } => {
                let t = args[0];
                float(t)?;
                if *block == 0 {
                    return Err(err("block must be positive".into()));
                }
                Ok(match part {
                    QuantPart::Codes => t.with_dtype(format.code_dtype()),
                    QuantPart::Absmax => {
                        TensorType::new(DType::F32, vec![t.numel().div_ceil(*block)])
                    }
                })
            }
            Op::Dequantize {
                format,
                block,
                nested,
            } => {
                let t = declared()?;
                let codes = args
                    .first()
                    .ok_or_else(|| err("expects the codes operand".into()))?;
                if codes.dtype != format.code_dtype()
                    || codes.shape != t.shape
                    || !t.dtype.is_float()
                    || *block == 0
                    || (*nested != 0 && *format != QuantFormat::Nf4)
                {
                    return Err(err(format!(
                        "{} codes of shape {} cannot dequantize to {t}",
                        format.code_dtype().name(),
                        shape_str(&codes.shape)
                    )));
                }
                let blocks = codes.numel().div_ceil(*block);
                let expect: Vec<TensorType> = if *nested == 0 {
                    vec![TensorType::new(DType::F32, vec![blocks])]
                } else {
                    vec![
                        TensorType::new(DType::U8, vec![blocks]),
                        TensorType::new(DType::F32, vec![blocks.div_ceil(*nested)]),
                        TensorType::scalar(DType::F32),
                    ]
                };
                let got: Vec<TensorType> = args[1..].iter().map(|t| (*t).clone()).collect();
                if got != expect {
                    return Err(err(format!(
                        "scale operands must be {}",
                        fmt_types(&expect)
                    )));
                }
                Ok(t)
            }
            Op::QuantMatMul {
                format,
                block,
                nested,
                ta,
                tb,
            } => {
                let (x, rest) = args
                    .split_first()
                    .ok_or_else(|| err("expects x and the quantized weight".into()))?;
                let codes = rest
                    .first()
                    .ok_or_else(|| err("expects the codes operand".into()))?;
                let w = TensorType::new(x.dtype, codes.shape.clone());
                Op::Dequantize {
                    format: *format,
                    block: *block,
                    nested: *nested,
                }
                .result_type(rest, Some(&w))
                .map_err(|e| err(e.message))?;
                Op::MatMul { ta: *ta, tb: *tb }
                    .result_type(&[x, &w], None)
                    .map_err(|e| err(e.message))
            }
        }
    }
}

/// The attributes a dequantization carries (shared by `dequantize` and `qmatmul`).
fn push_quant(a: &mut Attrs, format: QuantFormat, block: usize, nested: usize) {
    a.push("format", AttrValue::Ident(format.name().to_string()));
    a.push("block", AttrValue::Int(block as i64));
    if nested != 0 {
        a.push("nested", AttrValue::Int(nested as i64));
    }
}

fn take_format(a: &mut Attrs) -> Result<QuantFormat, String> {
    let f = a.take_ident("format")?;
    QuantFormat::from_name(&f).ok_or_else(|| format!("unknown quantization format `{f}`"))
}

/// True when `from` broadcasts to `to` under NumPy's rules (aligned to the trailing axes,
/// each extent equal or 1).
pub fn broadcastable(from: &[usize], to: &[usize]) -> bool {
    from.len() <= to.len()
        && from
            .iter()
            .rev()
            .zip(to.iter().rev())
            .all(|(&f, &t)| f == t || f == 1)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name(), self.attrs())
    }
}
