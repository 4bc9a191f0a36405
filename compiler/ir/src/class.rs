//! What each op does with elements, declared once: the scheduler, the rematerializer, the
//! cost model and the optimizer's analysis read an op's class instead of keeping lists of
//! their own, and a new op must be classified here (the match is exhaustive) before any pass
//! can see it.

use crate::Op;

/// The kind of work an op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// A function input.
    Input,
    /// Values from their index alone: `constant`, `iota`, the `random_*` draws.
    Generator,
    /// Each element from the operands' elements at its index (a quantized block's scale, for
    /// `dequantize`): unary and binary ops, `select`, `cast`, `dropout`, `dequantize`.
    Elementwise,
    /// The operand's elements in the same order: `reshape`, `stop_grad`. No copy is needed.
    View,
    /// Elements moved by an index map, no arithmetic: `broadcast`, `transpose`, `slice`,
    /// `concat`, `gather`.
    Remap,
    /// Elements combined along axes: `reduce_*`, `softmax`, `log_softmax`.
    Reduction,
    /// A matrix product: `matmul`, `qmatmul`.
    Contraction,
    /// A whole-matrix algorithm, run on the host by the CPU backend: the factorizations,
    /// `solve`, `sort`, `quantize`.
    Host,
}

impl OpClass {
    /// Whether a value of this class can be computed inside its consumer's loop, element by
    /// element, instead of being stored: generators, elementwise ops, views and remaps.
    pub fn fuses(self) -> bool {
        matches!(
            self,
            OpClass::Generator | OpClass::Elementwise | OpClass::View | OpClass::Remap
        )
    }

    /// Whether the class only rearranges its operand's elements (views and remaps).
    pub fn is_layout(self) -> bool {
        matches!(self, OpClass::View | OpClass::Remap)
    }
}

impl Op {
    /// The op's class.
    pub fn class(&self) -> OpClass {
        match self {
            Op::Input { .. } => OpClass::Input,
            Op::Constant { .. } | Op::Iota { .. } | Op::Random { .. } => OpClass::Generator,
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Select
            | Op::Cast
            | Op::Dropout { .. }
            | Op::Dequantize { .. } => OpClass::Elementwise,
            Op::Reshape | Op::StopGrad => OpClass::View,
            Op::Broadcast
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather { .. } => OpClass::Remap,
            Op::Reduce { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => OpClass::Reduction,
            Op::MatMul { .. } | Op::QuantMatMul { .. } => OpClass::Contraction,
            Op::Factor(_) | Op::Solve | Op::Sort { .. } | Op::Quantize { .. } => OpClass::Host,
        }
    }
}
