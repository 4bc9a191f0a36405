//! `@merge`: the weights of every adapted `linear` with its adapters folded in, for exporting
//! a merged model. Nothing here knows a method: the adapted module is run as the forward runs
//! it, on probe inputs. If `f` is the adapted map (dropout off, as the runtime strips it),
//! affine in its input x as every reparameterization of a linear layer is, then
//!
//!   b' = f(0),   W'ᵀ = f(I) − b'
//!
//! and `merge_residual.<path>` = max |f(p) − (p·W'ᵀ + b')| on a fixed probe p: zero (up to
//! rounding) exactly when `f` is affine, so an adapter that is not (a nonlinearity on x)
//! is refused instead of exported wrong.

use super::Elaborator;
use super::eval::ArgVal;
use super::value::Value;
use crate::ast::Span;
use crate::diag::Diagnostic;
use graft_ir::{BinaryOp, DType, Function, Op, ReduceOp, TensorType, UnaryOp, ValueId};

impl<'a> Elaborator<'a> {
    /// Builds `@merge` (see the module docs): outputs `<path>.weight` (and `.bias` when the
    /// linear has one) for each adapted `linear`, and `merge_residual.<path>`.
    pub(super) fn build_merge(&mut self) -> Result<Function, Diagnostic> {
        self.start_function("merge", false);
        let mut outputs = Vec::new();
        for inst in 0..self.instances.len() {
            let i = &self.instances[inst];
            if i.adapters.is_empty() || i.def.name.name != "linear" {
                continue;
            }
            let (path, span, levels) = (i.path.clone(), i.span, i.adapters.len());
            let prefix = format!("{path}.");
            let weight = self
                .decls
                .iter()
                .find(|d| d.path.strip_prefix(&prefix).is_some() && d.ty.shape.len() == 2);
            let Some(w) = weight else {
                continue;
            };
            let (w_path, out, inp) = (w.path.clone(), w.ty.shape[0], w.ty.shape[1]);
            let bias = self
                .decls
                .iter()
                .find(|d| d.path.strip_prefix(&prefix).is_some() && d.ty.shape == [out])
                .map(|d| d.path.clone());
            let f32 = |s: &[usize]| TensorType::new(DType::F32, s.to_vec());
            // I: [in, in] from two iotas; 0: [1, in]; p: [3, in], sin of an index mix.
            let rows = self.emit(Op::Iota { axis: 0 }, &[], Some(f32(&[inp, inp])), span)?;
            let cols = self.emit(Op::Iota { axis: 1 }, &[], Some(f32(&[inp, inp])), span)?;
            let eq = self.emit(Op::Binary(BinaryOp::Eq), &[rows, cols], None, span)?;
            let eye = self.emit(Op::Cast, &[eq], Some(f32(&[inp, inp])), span)?;
            let zero = self.splat(0.0, f32(&[1, inp]), span)?;
            let pr = self.emit(Op::Iota { axis: 0 }, &[], Some(f32(&[3, inp])), span)?;
            let pc = self.emit(Op::Iota { axis: 1 }, &[], Some(f32(&[3, inp])), span)?;
            let k = self.splat(0.37, f32(&[3, inp]), span)?;
            let pc = self.emit(Op::Binary(BinaryOp::Mul), &[pc, k], None, span)?;
            let mix = self.emit(Op::Binary(BinaryOp::Add), &[pr, pc], None, span)?;
            let probe = self.emit(Op::Unary(UnaryOp::Sin), &[mix], None, span)?;

            let fi = self.call_linear(inst, levels, eye, span)?;
            let b = self.call_linear(inst, levels, zero, span)?;
            let fp = self.call_linear(inst, levels, probe, span)?;
            let bb = self.broadcast_to(b, &[inp, out], span)?;
            let wt = self.emit(Op::Binary(BinaryOp::Sub), &[fi, bb], None, span)?;
            let w_new = self.emit(Op::Transpose { perm: vec![1, 0] }, &[wt], None, span)?;
            // p·W'ᵀ + b' against f(p).
            let lin = self.emit(
                Op::MatMul {
                    ta: false,
                    tb: false,
                },
                &[probe, wt],
                None,
                span,
            )?;
            let b3 = self.broadcast_to(b, &[3, out], span)?;
            let lin = self.emit(Op::Binary(BinaryOp::Add), &[lin, b3], None, span)?;
            let d = self.emit(Op::Binary(BinaryOp::Sub), &[fp, lin], None, span)?;
            let d = self.emit(Op::Unary(UnaryOp::Abs), &[d], None, span)?;
            let resid = self.emit(
                Op::Reduce {
                    op: ReduceOp::Max,
                    axes: vec![0, 1],
                    keepdim: false,
                },
                &[d],
                None,
                span,
            )?;
            outputs.push((w_path, w_new));
            if let Some(bp) = bias {
                let b1 = self.emit(Op::Reshape, &[b], Some(f32(&[out])), span)?;
                outputs.push((bp, b1));
            }
            outputs.push((format!("merge_residual.{path}"), resid));
        }
        self.finish_function(outputs)
    }

    /// The adapted linear `inst` (all its adapters) on `x`, as a tensor.
    fn call_linear(
        &mut self,
        inst: super::InstId,
        levels: usize,
        x: ValueId,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let arg = ArgVal {
            name: None,
            value: Value::Tensor(x),
            span,
        };
        let v = self.call_instance(inst, levels, vec![arg], span)?;
        self.need_tensor(&v, span)
    }
}
