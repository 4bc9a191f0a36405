//! What adapters add to the training step besides their forward: `penalty` terms, summed
//! into `@penalty` (one `f32[]` output, `penalty`, that the training loss adds), and
//! `after_step` blocks, built into `@after_step` (run after the optimizer update).
//!
//! `@after_step` reads every param of the adapters that have one (kind param, by path, as
//! the optimizer left them), `grad.<path>` (data: the gradient that update used), every
//! state (kind state, by path), `step` (state, `f32[]`: optimizer steps done before this
//! one, so 0 on the first) and whatever frozen weights it uses. It outputs each param an
//! `after_step` assigns and every state, under their paths.
//!
//! An adapter's `after_step` runs in lockstep over the instances of that adapter: each
//! statement runs for every instance, in model order, before the next statement, so
//! `across(x)` can list the value `x` has in every instance after the statements before
//! it (a budget shared by all layers, as AdaLoRA's, is one `sort` of that list).
//! Both kinds of body see `instance_count`, the number of instances of their adapter.

use super::value::{DeclId, Env, InstId, Value};
use super::{DeclKind, Elaborator};
use crate::ast::{Arg, Expr, ExprKind, Span};
use crate::diag::Diagnostic;
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, TensorType, ValueId};
use std::collections::HashMap;

/// What `grad` and `across` read while `@after_step` is built.
#[derive(Default)]
pub(crate) struct AfterCx {
    /// The value each param has on entry, with its decl.
    params: HashMap<ValueId, DeclId>,
    /// Every instance's scope before the statement running now.
    across: Vec<Env>,
}

/// An adapter on an instance: (instance, index in its adapters).
type AdapterAt = (InstId, usize);

impl<'a> Elaborator<'a> {
    /// The adapters `pick` selects, grouped by definition (groups in order of first use,
    /// instances in model order).
    fn adapter_groups(
        &self,
        pick: impl Fn(&super::AdapterInst<'a>) -> bool,
    ) -> Vec<Vec<AdapterAt>> {
        let mut groups: Vec<Vec<AdapterAt>> = Vec::new();
        for (i, inst) in self.instances.iter().enumerate() {
            for (l, a) in inst.adapters.iter().enumerate() {
                if !pick(a) {
                    continue;
                }
                let same = |g: &&mut Vec<AdapterAt>| {
                    let (gi, gl) = g[0];
                    std::ptr::eq(self.instances[gi].adapters[gl].def, a.def)
                };
                match groups.iter_mut().find(same) {
                    Some(g) => g.push((i, l)),
                    None => groups.push(vec![(i, l)]),
                }
            }
        }
        groups
    }

    /// "in the penalty of `lora` on `model.layers.0.q_proj`", for diagnostics.
    fn hook_context(&self, what: &str, (i, l): AdapterAt) -> String {
        let inst = &self.instances[i];
        format!(
            "in the {what} of `{}` on `{}`",
            inst.adapters[l].def.name.name, inst.path
        )
    }

    /// `@penalty`: the sum of every adapter instance's `penalty` terms, or `None` when no
    /// adapter has one.
    pub(super) fn build_penalty(&mut self) -> Result<Option<Function>, Diagnostic> {
        let groups = self.adapter_groups(|a| !a.penalties.is_empty());
        if groups.is_empty() {
            return Ok(None);
        }
        self.start_function("penalty", false);
        let mut total: Option<ValueId> = None;
        for group in &groups {
            for &at in group {
                let a = &self.instances[at.0].adapters[at.1];
                let terms = a.penalties.clone();
                let mut env = Env::new(a.members.clone());
                env.bind("instance_count", Value::Int(group.len() as i64));
                for e in terms {
                    let t = self
                        .penalty_term(e, &mut env)
                        .map_err(|d| with_context(d, self.hook_context("penalty", at)))?;
                    total = Some(match total {
                        None => t,
                        Some(s) => self.emit(Op::Binary(BinaryOp::Add), &[s, t], None, e.span)?,
                    });
                }
            }
        }
        // Every group has a term.
        let Some(total) = total else {
            self.fb = None;
            return Ok(None);
        };
        self.finish_function(vec![("penalty".into(), total)])
            .map(Some)
    }

    /// One `penalty` expression as an `f32[]` tensor.
    fn penalty_term(&mut self, e: &'a Expr, env: &mut Env) -> Result<ValueId, Diagnostic> {
        let v = self.eval(e, env)?;
        let scalar = TensorType::scalar(DType::F32);
        if let Some(x) = super::eval::as_f64(&v) {
            return self.splat(x, scalar, e.span);
        }
        let t = self.need_tensor(&v, e.span)?;
        let ty = self.fb_ref(e.span)?.func.ty(t).clone();
        if ty.rank() != 0 || !ty.dtype.is_float() {
            return Err(Diagnostic::error(
                e.span,
                format!("a penalty is a float scalar, this is {ty}"),
                "not a scalar",
            )
            .with_help("reduce it, e.g. `sum(x * x)` or `mean(abs(x))`"));
        }
        if ty.dtype == DType::F32 {
            Ok(t)
        } else {
            self.emit(Op::Cast, &[t], Some(scalar), e.span)
        }
    }

    /// `@after_step`, or `None` when no adapter has an `after_step`.
    pub(super) fn build_after_step(&mut self) -> Result<Option<Function>, Diagnostic> {
        let groups = self.adapter_groups(|a| a.after_step.is_some());
        if groups.is_empty() {
            return Ok(None);
        }
        self.start_function("after_step", false);
        self.after = Some(AfterCx::default());
        let mut outputs = Vec::new();
        let mut r = Ok(());
        for group in &groups {
            r = self.after_step_group(group, &mut outputs);
            if r.is_err() {
                break;
            }
        }
        self.after = None;
        r?;
        self.finish_function(outputs).map(Some)
    }

    /// One adapter's `after_step` over all its instances, in lockstep.
    fn after_step_group(
        &mut self,
        group: &[AdapterAt],
        outputs: &mut Vec<(String, ValueId)>,
    ) -> Result<(), Diagnostic> {
        let (i0, l0) = group[0];
        let Some(f) = self.instances[i0].adapters[l0].after_step else {
            return Ok(());
        };
        if let Some(r) = &f.body.result {
            return Err(Diagnostic::error(
                r.span,
                "`after_step` gives no value",
                "a final expression",
            )
            .with_help("assign the params and states it changes, e.g. `E = E * keep`"));
        }
        if f.params.len() > 1 {
            return Err(Diagnostic::error(
                f.params[1].name.span,
                "`after_step` takes one parameter: the optimizer steps done before this one",
                "extra parameter",
            ));
        }
        let step = self.step_input(f.span)?;
        let mut envs = Vec::new();
        let mut bound: Vec<Vec<(String, DeclId, ValueId)>> = Vec::new();
        for &(i, l) in group {
            let members = self.instances[i].adapters[l].members.clone();
            // Params and states by name, each decl once (under its first name).
            let mut named: Vec<(String, DeclId)> = members
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Decl(id)
                        if matches!(self.decls[*id].kind, DeclKind::Param | DeclKind::State) =>
                    {
                        Some((k.clone(), *id))
                    }
                    _ => None,
                })
                .collect();
            named.sort();
            let mut seen = std::collections::HashSet::new();
            named.retain(|(_, id)| seen.insert(*id));
            let mut frame = HashMap::new();
            let mut names = Vec::new();
            for (k, id) in named {
                let v = self.decl_value(id, f.span)?;
                if self.decls[id].kind == DeclKind::Param {
                    if let Some(a) = self.after.as_mut() {
                        a.params.insert(v, id);
                    }
                }
                frame.insert(k.clone(), Value::Tensor(v));
                names.push((k, id, v));
            }
            if let Some(p) = f.params.first() {
                frame.insert(p.name.name.clone(), Value::Tensor(step));
            }
            let mut env = Env {
                base: members,
                frames: vec![frame, HashMap::new()],
            };
            env.base
                .insert("instance_count".into(), Value::Int(group.len() as i64));
            envs.push(env);
            bound.push(names);
        }
        for k in 0..f.body.stmts.len() {
            if let Some(a) = self.after.as_mut() {
                a.across = envs.clone();
            }
            for (env, &at) in envs.iter_mut().zip(group) {
                self.run_stmts(&f.body.stmts[k..=k], env)
                    .map_err(|d| with_context(d, self.hook_context("after_step", at)))?;
            }
        }
        for ((env, names), &at) in envs.iter().zip(bound).zip(group) {
            for (k, id, v0) in names {
                let d = self.decls[id].clone();
                let v = env.get(&k).cloned().unwrap_or(Value::Tensor(v0));
                if d.kind == DeclKind::Param && v == Value::Tensor(v0) {
                    continue;
                }
                if let Some(t) = self.as_tensor(&v, f.span)? {
                    let got = self.fb_ref(f.span)?.func.ty(t).clone();
                    if got.dtype != d.ty.dtype || !graft_ir::broadcastable(&got.shape, &d.ty.shape)
                    {
                        let at_span = last_assignment(&f.body.stmts, &k).unwrap_or(f.name.span);
                        let e = Diagnostic::error(
                            at_span,
                            format!(
                                "`after_step` gives `{}` a {got}, but it is {}",
                                d.path, d.ty
                            ),
                            "assigned in this after_step",
                        )
                        .with_label(d.span, format!("declared as {}", d.ty));
                        return Err(with_context(e, self.hook_context("after_step", at)));
                    }
                }
                let t = self
                    .coerce_init(v, &d, f.span)
                    .map_err(|e| with_context(e, self.hook_context("after_step", at)))?;
                outputs.push((d.path.clone(), t));
            }
        }
        Ok(())
    }

    /// The `step` input of `@after_step`.
    fn step_input(&mut self, span: Span) -> Result<ValueId, Diagnostic> {
        if let Some(i) = self.fb_ref(span)?.func.input("step") {
            return Ok(i.value);
        }
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        let v = fb.func.add_input(
            "step",
            InputKind::State,
            TensorType::scalar(DType::F32),
            Some(loc),
        );
        fb.origins.push(span);
        Ok(v)
    }

    /// `grad(p)` in an `after_step`: the gradient the optimizer just used for param `p`.
    pub(crate) fn grad_of(&mut self, p: ValueId, span: Span) -> Result<ValueId, Diagnostic> {
        let Some(after) = &self.after else {
            return Err(Diagnostic::error(
                span,
                "`grad` is only available in `after_step`",
                "here",
            )
            .with_help("`after_step(step) { ... }` runs after each optimizer step and may read `grad(p)` of its params"));
        };
        let Some(&id) = after.params.get(&p) else {
            return Err(Diagnostic::error(
                span,
                "`grad` takes a trainable param of this adapter, as `after_step` received it",
                "not a param",
            ));
        };
        let d = &self.decls[id];
        let (name, ty) = (format!("grad.{}", d.path), d.ty.clone());
        if let Some(i) = self.fb_ref(span)?.func.input(&name) {
            return Ok(i.value);
        }
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        let v = fb.func.add_input(name, InputKind::Data, ty, Some(loc));
        fb.origins.push(span);
        Ok(v)
    }

    /// `across(x)` in an `after_step`: the list of `x`'s values in every instance of the
    /// adapter, in model order, as the statements before this one left them.
    pub(crate) fn across(&mut self, args: &'a [Arg], span: Span) -> Result<Value, Diagnostic> {
        let Some(after) = &self.after else {
            return Err(Diagnostic::error(
                span,
                "`across` is only available in `after_step`",
                "here",
            ));
        };
        let [
            Arg {
                name: None,
                value:
                    Expr {
                        kind: ExprKind::Name(x),
                        span: xspan,
                        ..
                    },
            },
        ] = args
        else {
            return Err(Diagnostic::error(
                span,
                "`across` takes one name, e.g. `across(score)`",
                "here",
            ));
        };
        let mut out = Vec::new();
        for env in &after.across {
            match env.get(x) {
                Some(v) => out.push(v.clone()),
                None => {
                    return Err(Diagnostic::error(
                        *xspan,
                        format!("`{x}` is not bound before this statement"),
                        "not bound yet",
                    )
                    .with_help(
                        "`across` reads a name bound by an earlier statement of `after_step`",
                    ));
                }
            }
        }
        Ok(Value::List(out))
    }
}

fn with_context(mut d: Diagnostic, context: String) -> Diagnostic {
    if d.context.is_empty() {
        d.context.push(context);
    }
    d
}

/// The span of the last top-level `name = ...` in `stmts`.
fn last_assignment(stmts: &[crate::ast::Stmt], name: &str) -> Option<Span> {
    stmts.iter().rev().find_map(|s| match s {
        crate::ast::Stmt::Assign { name: n, .. } if n.name == name => Some(n.span),
        _ => None,
    })
}
