//! The training objective as graft source: when the `train` block's `loss` names a function
//! (not the built-in `causal_lm`), `@loss` is that function applied to two inputs and its
//! result, output `loss` (`f32[]`), is what the training step differentiates.
//!
//! - `logits`: the forward's `logits`, of their type;
//! - `labels`: `i64`, the logits' shape without its last axis (a class per example for
//!   sequence and image classification, a class per token for token classification).

use super::Elaborator;
use super::eval::ArgVal;
use super::train::LOSS_HELP;
use super::value::{Env, Value};
use crate::diag::Diagnostic;
use graft_ir::{DType, Function, InputKind, TensorType};
use std::collections::HashMap;

impl<'a> Elaborator<'a> {
    /// `@loss` for the `train` block's `loss` function `name`, or `None` for `causal_lm`.
    pub(super) fn build_loss(&mut self, name: &str) -> Result<Option<Function>, Diagnostic> {
        let Some(span) = self.loss_at else {
            return Ok(None);
        };
        let Some(super::Def::Fn(def)) = self.defs.get(name).copied() else {
            return Err(Diagnostic::error(
                span,
                format!("no function `{name}` to use as the loss"),
                "unknown loss",
            )
            .with_help(LOSS_HELP));
        };
        let forward = self
            .module
            .function("forward")
            .ok_or_else(|| Diagnostic::error(span, "the loss needs the model's forward", "here"))?;
        let logits_ty = forward
            .output("logits")
            .map(|v| forward.ty(v).clone())
            .ok_or_else(|| Diagnostic::error(span, "the forward has no `logits`", "here"))?;
        let Some((_, lead)) = logits_ty.shape.split_last() else {
            return Err(Diagnostic::error(
                span,
                format!("a loss function needs logits with a class axis, these are {logits_ty}"),
                "here",
            ));
        };
        let labels_ty = TensorType::new(DType::I64, lead.to_vec());
        self.start_function("loss", false);
        let loc = self.loc(span);
        let mut args = Vec::new();
        for (input, ty) in [("logits", logits_ty), ("labels", labels_ty)] {
            let fb = self.fb_mut(span)?;
            let v = fb.func.add_input(input, InputKind::Data, ty, Some(loc));
            fb.origins.push(span);
            args.push(ArgVal {
                name: None,
                value: Value::Tensor(v),
                span,
            });
        }
        self.enter(span)?;
        let r = self.call_fn(def, Env::new(HashMap::new()), args, span);
        self.depth -= 1;
        let v = r?;
        let t = self.need_tensor(&v, span)?;
        let ty = self.fb_ref(span)?.func.ty(t).clone();
        if ty != TensorType::scalar(DType::F32) {
            return Err(Diagnostic::error(
                span,
                format!("the loss `{name}` returns {ty}, not an f32 scalar"),
                "this loss",
            )
            .with_label(def.name.span, "defined here"));
        }
        self.finish_function(vec![("loss".into(), t)]).map(Some)
    }
}
