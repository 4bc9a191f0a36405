//! A small node-emitting helper over a [`Function`], so the autodiff rules and the training
//! step read like the math they implement.

use crate::AdError;
use graft_ir::{BinaryOp, DType, Function, Op, ReduceOp, TensorType, UnaryOp, ValueId};

/// Appends nodes to a function; every method returns the new value.
pub struct Emitter<'f> {
    /// The function being extended.
    pub f: &'f mut Function,
}

impl Emitter<'_> {
    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> TensorType {
        self.f.ty(v).clone()
    }

    /// Appends an op with an inferred type.
    pub fn op(&mut self, op: Op, args: &[ValueId]) -> Result<ValueId, AdError> {
        Ok(self.f.add(op, args, None)?)
    }

    /// Appends an op with a stated type.
    pub fn op_typed(
        &mut self,
        op: Op,
        args: &[ValueId],
        ty: TensorType,
    ) -> Result<ValueId, AdError> {
        Ok(self.f.add_typed(op, args, Some(ty), None)?)
    }

    /// A tensor of `ty` filled with `x`.
    pub fn constant(&mut self, x: f64, ty: TensorType) -> Result<ValueId, AdError> {
        self.op_typed(Op::Constant { value: x }, &[], ty)
    }

    /// A constant with the type of `like`.
    pub fn like(&mut self, x: f64, like: ValueId) -> Result<ValueId, AdError> {
        let ty = self.ty(like);
        self.constant(x, ty)
    }

    /// A unary op.
    pub fn un(&mut self, u: UnaryOp, a: ValueId) -> Result<ValueId, AdError> {
        self.op(Op::Unary(u), &[a])
    }

    /// A binary op on two values of one type.
    pub fn bin(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId, AdError> {
        self.op(Op::Binary(b), &[x, y])
    }

    /// `x + y`.
    pub fn add(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, AdError> {
        self.bin(BinaryOp::Add, x, y)
    }

    /// `x - y`.
    pub fn sub(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, AdError> {
        self.bin(BinaryOp::Sub, x, y)
    }

    /// `x * y`.
    pub fn mul(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, AdError> {
        self.bin(BinaryOp::Mul, x, y)
    }

    /// `x / y`.
    pub fn div(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, AdError> {
        self.bin(BinaryOp::Div, x, y)
    }

    /// `x * c` for a constant `c`.
    pub fn scale(&mut self, x: ValueId, c: f64) -> Result<ValueId, AdError> {
        let k = self.like(c, x)?;
        self.mul(x, k)
    }

    /// `-x`.
    pub fn neg(&mut self, x: ValueId) -> Result<ValueId, AdError> {
        self.un(UnaryOp::Neg, x)
    }

    /// Broadcasts to `shape` (no node if the shape already matches).
    pub fn broadcast(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, AdError> {
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
    pub fn reshape(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, AdError> {
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
    ) -> Result<ValueId, AdError> {
        if axes.is_empty() {
            return Ok(x);
        }
        self.op(Op::Reduce { op, axes, keepdim }, &[x])
    }

    /// Sum of every element, as a scalar.
    pub fn sum_all(&mut self, x: ValueId) -> Result<ValueId, AdError> {
        let r = self.ty(x).rank();
        if r == 0 {
            return Ok(x);
        }
        self.reduce(ReduceOp::Sum, x, (0..r).collect(), false)
    }

    /// A permutation of axes.
    pub fn transpose(&mut self, x: ValueId, perm: Vec<usize>) -> Result<ValueId, AdError> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.op(Op::Transpose { perm }, &[x])
    }

    /// `select(c, a, b)`.
    pub fn select(&mut self, c: ValueId, a: ValueId, b: ValueId) -> Result<ValueId, AdError> {
        self.op(Op::Select, &[c, a, b])
    }

    /// A dtype conversion.
    pub fn cast(&mut self, x: ValueId, dtype: DType) -> Result<ValueId, AdError> {
        let ty = self.ty(x);
        if ty.dtype == dtype {
            return Ok(x);
        }
        self.op_typed(Op::Cast, &[x], ty.with_dtype(dtype))
    }

    /// A batched matrix product with transpose flags.
    pub fn matmul(
        &mut self,
        a: ValueId,
        b: ValueId,
        ta: bool,
        tb: bool,
    ) -> Result<ValueId, AdError> {
        self.op(Op::MatMul { ta, tb }, &[a, b])
    }
}
