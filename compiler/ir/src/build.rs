//! The node builder every pass uses to add nodes to a function: each node type-checked by its
//! op's rule ([`Function::add_typed`]), with helpers so that autodiff's rules, the training
//! step and the lowering's rewrites read like the math they implement.

use crate::{
    BinaryOp, DType, Function, Loc, Op, ReduceOp, TensorType, TypeError, UnaryOp, ValueId,
};

/// Appends nodes to a function; every method returns the new value, or the typing rule's
/// error.
pub struct Emitter<'f> {
    /// The function being extended.
    pub f: &'f mut Function,
    /// The source location every new node gets.
    pub loc: Option<Loc>,
}

impl<'f> Emitter<'f> {
    /// An emitter whose nodes have no source location.
    pub fn new(f: &'f mut Function) -> Self {
        Emitter { f, loc: None }
    }

    /// An emitter whose nodes get `loc`.
    pub fn at(f: &'f mut Function, loc: Option<Loc>) -> Self {
        Emitter { f, loc }
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> TensorType {
        self.f.ty(v).clone()
    }

    /// Appends an op with an inferred type.
    pub fn op(&mut self, op: Op, args: &[ValueId]) -> Result<ValueId, TypeError> {
        self.f.add(op, args, self.loc)
    }

    /// Appends an op with a stated type.
    pub fn op_typed(
        &mut self,
        op: Op,
        args: &[ValueId],
        ty: TensorType,
    ) -> Result<ValueId, TypeError> {
        self.f.add_typed(op, args, Some(ty), self.loc)
    }

    /// A tensor of `ty` filled with `x`.
    pub fn constant(&mut self, x: f64, ty: TensorType) -> Result<ValueId, TypeError> {
        self.op_typed(Op::Constant { value: x }, &[], ty)
    }

    /// A constant with the type of `like`.
    pub fn like(&mut self, x: f64, like: ValueId) -> Result<ValueId, TypeError> {
        let ty = self.ty(like);
        self.constant(x, ty)
    }

    /// A unary op.
    pub fn un(&mut self, u: UnaryOp, a: ValueId) -> Result<ValueId, TypeError> {
        self.op(Op::Unary(u), &[a])
    }

    /// A binary op on two values of one type.
    pub fn bin(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId, TypeError> {
        self.op(Op::Binary(b), &[x, y])
    }

    /// `x + y`.
    pub fn add(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, TypeError> {
        self.bin(BinaryOp::Add, x, y)
    }

    /// `x - y`.
    pub fn sub(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, TypeError> {
        self.bin(BinaryOp::Sub, x, y)
    }

    /// `x * y`.
    pub fn mul(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, TypeError> {
        self.bin(BinaryOp::Mul, x, y)
    }

    /// `x / y`.
    pub fn div(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, TypeError> {
        self.bin(BinaryOp::Div, x, y)
    }

    /// `x * c` for a constant `c`.
    pub fn scale(&mut self, x: ValueId, c: f64) -> Result<ValueId, TypeError> {
        let k = self.like(c, x)?;
        self.mul(x, k)
    }

    /// `-x`.
    pub fn neg(&mut self, x: ValueId) -> Result<ValueId, TypeError> {
        self.un(UnaryOp::Neg, x)
    }

    /// Broadcasts to `shape` (no node if the shape already matches).
    pub fn broadcast(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, TypeError> {
        let ty = self.ty(x);
        if ty.shape == shape {
            return Ok(x);
        }
        self.op_typed(
            Op::Broadcast,
            &[x],
            TensorType::new(ty.dtype, shape.to_vec()),
        )
    }

    /// Reshapes (no node if the shape already matches).
    pub fn reshape(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, TypeError> {
        let ty = self.ty(x);
        if ty.shape == shape {
            return Ok(x);
        }
        self.op_typed(Op::Reshape, &[x], TensorType::new(ty.dtype, shape.to_vec()))
    }

    /// A reduction (no node for an empty axis list).
    pub fn reduce(
        &mut self,
        op: ReduceOp,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<ValueId, TypeError> {
        if axes.is_empty() {
            return Ok(x);
        }
        self.op(Op::Reduce { op, axes, keepdim }, &[x])
    }

    /// Sum of every element, as a scalar.
    pub fn sum_all(&mut self, x: ValueId) -> Result<ValueId, TypeError> {
        let r = self.ty(x).rank();
        if r == 0 {
            return Ok(x);
        }
        self.reduce(ReduceOp::Sum, x, (0..r).collect(), false)
    }

    /// A permutation of axes.
    pub fn transpose(&mut self, x: ValueId, perm: Vec<usize>) -> Result<ValueId, TypeError> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.op(Op::Transpose { perm }, &[x])
    }

    /// `select(c, a, b)`.
    pub fn select(&mut self, c: ValueId, a: ValueId, b: ValueId) -> Result<ValueId, TypeError> {
        self.op(Op::Select, &[c, a, b])
    }

    /// A dtype conversion.
    pub fn cast(&mut self, x: ValueId, dtype: DType) -> Result<ValueId, TypeError> {
        let ty = self.ty(x);
        if ty.dtype == dtype {
            return Ok(x);
        }
        self.op_typed(Op::Cast, &[x], ty.with_dtype(dtype))
    }

    /// `x[start..end]` along `axis`.
    pub fn slice(
        &mut self,
        x: ValueId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> Result<ValueId, TypeError> {
        self.op(Op::Slice { axis, start, end }, &[x])
    }

    /// A batched matrix product with transpose flags.
    pub fn matmul(
        &mut self,
        a: ValueId,
        b: ValueId,
        ta: bool,
        tb: bool,
    ) -> Result<ValueId, TypeError> {
        self.op(Op::MatMul { ta, tb }, &[a, b])
    }
}
