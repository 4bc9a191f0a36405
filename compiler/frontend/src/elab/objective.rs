//! The training objective as graft source: when the `train` block's `loss` names a function
//! (not the built-in `causal_lm`), `@loss` is that function applied to its parameters, bound
//! by name, and its result, output `loss` (`f32[]`), is what the training step
//! differentiates. Each of the `train` block's `metrics` is built the same way, as
//! `@metric_<name>` with output `value`, for evaluation. A parameter is:
//! - a setting the `train` block passes (`loss dpo(beta: 0.5)`), else its default: a
//!   compile-time value;
//! - `logits`: the forward's, of their type;
//! - `ema_logits`: the forward's logits with every trainable tensor replaced by its moving
//!   average (`ema.<path>`, a state the step updates after each optimizer step with the
//!   `train` block's `ema` decay, starting at the initial value): a momentum teacher;
//! - `ref_logits`: the logits of the same model with every adapter disabled (a frozen
//!   reference, as DPO's): the base model's forward elaborated inside `@loss`, reading the
//!   same weights and batch inputs, so it has no gradient;
//! - any other name with a tensor type (`pairs: [N] i64`): a batch input of that type, its
//!   named dimensions bound by the logits' annotation. A name the forward reads too (like
//!   `attention_mask`) is the same input;
//! - `labels` without a tensor type: `i64`, the logits' shape without its last axis (a class
//!   per example for sequence and image classification, a class per token for seq2seq).

use super::Elaborator;
use super::eval::ArgVal;
use super::train::LOSS_HELP;
use super::value::{Env, Value};
use crate::ast::{ExprKind, FnParam, TypeAnn};
use crate::diag::Diagnostic;
use graft_ir::{DType, Function, InputKind, TensorType, ValueId};
use std::collections::HashMap;

impl<'a> Elaborator<'a> {
    /// `@loss` for the `train` block's `loss` function `name`, or `None` for `causal_lm`.
    pub(super) fn build_loss(&mut self, name: &str) -> Result<Option<Function>, Diagnostic> {
        let Some((span, settings)) = self.loss_at else {
            return Ok(None);
        };
        self.build_objective(name, "loss", "loss", span, settings)
            .map(Some)
    }

    /// `@metric_<name>` for each of the `train` block's `metrics` (output `value`, `f32[]`):
    /// evaluation reports them beside the loss.
    pub(super) fn build_metrics(&mut self) -> Result<Vec<Function>, Diagnostic> {
        let metrics = self.metrics_at.clone();
        metrics
            .into_iter()
            .map(|(name, span, settings)| {
                self.build_objective(&name, &format!("metric_{name}"), "value", span, settings)
            })
            .collect()
    }

    /// The graft function `name` as the IR function `func` with its parameters bound as the
    /// module docs say; its f32 scalar result is output `output`.
    fn build_objective(
        &mut self,
        name: &str,
        func: &str,
        output: &str,
        span: crate::ast::Span,
        settings: &'a [crate::ast::Arg],
    ) -> Result<Function, Diagnostic> {
        let Some(super::Def::Fn(def)) = self.defs.get(name).copied() else {
            return Err(Diagnostic::error(
                span,
                format!("no function `{name}` to use as the {output}"),
                format!("unknown {output}"),
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
        self.start_function(func, false);
        let mut args = Vec::new();
        // Settings first, by name: `call_fn` reports an unknown one against the function.
        let mut env = Env::new(HashMap::new());
        for a in settings {
            let value = self.eval(&a.value, &mut env)?;
            args.push(ArgVal {
                name: a.name.clone(),
                value,
                span: a.value.span,
            });
        }
        let given = |p: &FnParam| {
            settings
                .iter()
                .any(|a| a.name.as_ref().is_some_and(|n| n.name == p.name.name))
        };
        // Named dimensions of the logits' annotation, for the other inputs' annotations.
        let mut dims = Env::new(HashMap::new());
        if let Some(p) = def.params.iter().find(|p| p.name.name == "logits") {
            bind_dims(p, &logits_ty, &mut dims);
        }
        let mut reference = None;
        for p in &def.params {
            if given(p) {
                continue;
            }
            let pname = p.name.name.as_str();
            let v = match pname {
                "logits" => self.loss_input(pname, logits_ty.clone(), p.name.span)?,
                "ema_logits" => self.teacher_logits(p.name.span)?,
                "ref_logits" => match reference {
                    Some(v) => v,
                    None => {
                        let v = self.reference_logits(p.name.span)?;
                        reference = Some(v);
                        v
                    }
                },
                _ => match &p.ty {
                    Some(TypeAnn::Tensor(t)) => {
                        let mut env = dims.clone();
                        let (arg, _) = self.data_input(&p.name, t, Vec::new(), &mut env)?;
                        self.need_tensor(&arg.value, p.name.span)?
                    }
                    _ if p.default.is_some() => continue,
                    _ if pname == "labels" => {
                        let Some((_, lead)) = logits_ty.shape.split_last() else {
                            return Err(Diagnostic::error(
                                span,
                                format!(
                                    "`labels` without a type need logits with a class axis, \
                                     these are {logits_ty}"
                                ),
                                "here",
                            ));
                        };
                        let ty = TensorType::new(DType::I64, lead.to_vec());
                        self.loss_input(pname, ty, p.name.span)?
                    }
                    _ => {
                        return Err(Diagnostic::error(
                            p.name.span,
                            format!("the loss cannot bind `{pname}`"),
                            "unbound parameter",
                        )
                        .with_label(span, "used as the loss here")
                        .with_help(
                            "a loss parameter is `logits`, `ref_logits` (the model without \
                             adapters), `labels`, a batch input with a tensor type such as \
                             `mask: [B] f32`, or a setting with a default or given in the \
                             `train` block as `loss f(name: value)`",
                        ));
                    }
                },
            };
            args.push(ArgVal {
                name: Some(p.name.clone()),
                value: Value::Tensor(v),
                span: p.name.span,
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
                format!("`{name}` returns {ty}, not an f32 scalar"),
                format!("this {output}"),
            )
            .with_label(def.name.span, "defined here"));
        }
        self.finish_function(vec![(output.into(), t)])
    }

    /// A data input of `@loss`.
    fn loss_input(
        &mut self,
        name: &str,
        ty: TensorType,
        span: crate::ast::Span,
    ) -> Result<ValueId, Diagnostic> {
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        let v = fb.func.add_input(name, InputKind::Data, ty, Some(loc));
        fb.origins.push(span);
        Ok(v)
    }

    /// The forward's logits with every trainable tensor read from its moving average
    /// (`ema.<path>`, a state the training step updates: the `train` block's `ema`): a
    /// momentum teacher, with no gradient.
    fn teacher_logits(&mut self, span: crate::ast::Span) -> Result<ValueId, Diagnostic> {
        let forward = self
            .module
            .function("forward")
            .ok_or_else(|| {
                Diagnostic::error(span, "the teacher needs the model's forward", "here")
            })?
            .clone();
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        let mut averages: HashMap<String, ValueId> = HashMap::new();
        for i in forward.inputs().filter(|i| i.kind == InputKind::Param) {
            let name = format!("ema.{}", i.name);
            let v = match fb.func.input(&name) {
                Some(e) => e.value,
                None => {
                    let v = fb
                        .func
                        .add_input(name, InputKind::State, i.ty.clone(), Some(loc));
                    fb.origins.push(span);
                    v
                }
            };
            averages.insert(i.name.to_string(), v);
        }
        let outs = fb
            .func
            .inline(&forward, |name, kind| {
                (kind == InputKind::Param)
                    .then(|| averages.get(name).copied())
                    .flatten()
            })
            .map_err(|e| Diagnostic::error(span, e.to_string(), "the teacher's forward"))?;
        let grown = fb.func.nodes.len();
        fb.origins.resize(grown, span);
        outs.into_iter()
            .find(|(n, _)| n == "logits")
            .map(|(_, v)| v)
            .ok_or_else(|| Diagnostic::error(span, "the forward has no `logits`", "here"))
    }

    /// The model's logits with every adapter disabled (PEFT's `disable_adapter()`), built in
    /// the function being built from its own batch inputs and frozen weights.
    fn reference_logits(&mut self, span: crate::ast::Span) -> Result<ValueId, Diagnostic> {
        let (root, model_span) = self
            .root
            .ok_or_else(|| Diagnostic::error(span, "the reference needs the model", "here"))?;
        let fwd = self.instances[root]
            .forward
            .ok_or_else(|| Diagnostic::error(span, "the model has no forward", "here"))?;
        let args = self.forward_inputs(root, fwd)?;
        self.adapters_off = true;
        let out = self.call_instance(root, 0, args, model_span);
        self.adapters_off = false;
        let out = out?;
        self.need_tensor(&out, span)
    }
}

/// Binds the plain names among `p`'s annotated dimensions to `ty`'s extents.
fn bind_dims(p: &FnParam, ty: &TensorType, env: &mut Env) {
    let Some(TypeAnn::Tensor(t)) = &p.ty else {
        return;
    };
    if t.rest || t.dims.len() != ty.shape.len() {
        return;
    }
    for (d, &n) in t.dims.iter().zip(&ty.shape) {
        if let ExprKind::Name(name) = &d.kind {
            env.bind(name, Value::Int(n as i64));
        }
    }
}
