//! Expression evaluation: compile-time arithmetic on scalars, and tensor expressions that
//! append IR nodes to the function being built (with NumPy broadcasting made explicit).

use super::Elaborator;
use super::value::{Env, Value};
use crate::ast::*;
use crate::diag::Diagnostic;
use graft_ir::{BinaryOp, DType, Op, TensorType, UnaryOp, ValueId, shape_str};
use std::collections::HashMap;

/// An evaluated call argument.
#[derive(Clone, Debug)]
pub struct ArgVal {
    /// The name, for `name: value`.
    pub name: Option<Ident>,
    /// The value.
    pub value: Value,
    /// The argument expression's span.
    pub span: Span,
}

/// A scalar as f64, if it is a number.
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    }
}

/// The closest name to `name` among `options`, if any is close.
pub fn suggest<'n>(name: &str, options: impl Iterator<Item = &'n str>) -> Option<&'n str> {
    options
        .map(|o| (strsim::jaro_winkler(name, o), o))
        .filter(|(s, _)| *s > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| o)
}

impl<'a> Elaborator<'a> {
    /// Evaluates an expression.
    pub(crate) fn eval(&mut self, e: &'a Expr, env: &mut Env) -> Result<Value, Diagnostic> {
        match &e.kind {
            ExprKind::Int(i) => Ok(Value::Int(*i)),
            ExprKind::Float(x) => Ok(Value::Float(*x)),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Name(n) => self.lookup(n, e.span, env),
            ExprKind::List(items) => {
                let mut out = Vec::new();
                for i in items {
                    out.push(self.eval(i, env)?);
                }
                Ok(Value::List(out))
            }
            ExprKind::Unary(op, x) => {
                let v = self.eval(x, env)?;
                self.unary(*op, v, e.span, x.span)
            }
            ExprKind::Binary(op, l, r) => {
                // `&&` and `||` short-circuit at compile time.
                if matches!(op, BinOp::And | BinOp::Or) {
                    let lv = self.eval(l, env)?;
                    if let Value::Bool(b) = lv {
                        if (*op == BinOp::And && !b) || (*op == BinOp::Or && b) {
                            return Ok(Value::Bool(b));
                        }
                        let rv = self.eval(r, env)?;
                        return match rv {
                            Value::Bool(c) => Ok(Value::Bool(c)),
                            other => Err(Diagnostic::error(
                                r.span,
                                format!("`{}` needs bools, this is {}", op.symbol(), other.kind()),
                                "not a bool",
                            )),
                        };
                    }
                    let rv = self.eval(r, env)?;
                    return self.binary(*op, lv, rv, e.span, l.span, r.span);
                }
                let lv = self.eval(l, env)?;
                let rv = self.eval(r, env)?;
                self.binary(*op, lv, rv, e.span, l.span, r.span)
            }
            ExprKind::Transpose(x) => {
                let v = self.eval(x, env)?;
                let t = self.need_tensor(&v, x.span)?;
                let rank = self.fb_ref(e.span)?.func.ty(t).rank();
                if rank < 2 {
                    return Err(Diagnostic::error(
                        e.span,
                        format!("`^T` swaps the last two axes, but this has rank {rank}"),
                        "needs rank 2 or more",
                    )
                    .with_label(
                        self.origin(t),
                        format!("this is {}", self.fb_ref(e.span)?.func.ty(t)),
                    ));
                }
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(rank - 1, rank - 2);
                Ok(Value::Tensor(self.emit(
                    Op::Transpose { perm },
                    &[t],
                    None,
                    e.span,
                )?))
            }
            ExprKind::Call(callee, args) => {
                // A built-in is called by a name that nothing else binds.
                if let ExprKind::Name(n) = &callee.kind {
                    if n == "across" && env.get(n).is_none() && self.after.is_some() {
                        return self.across(args, e.span);
                    }
                    if env.get(n).is_none()
                        && !self.defs.contains_key(n)
                        && !self.consts.contains_key(n)
                        && super::builtins::is_builtin(n)
                    {
                        let args = self.eval_args(args, env)?;
                        return self.call_builtin(n, args, e.span, callee.span);
                    }
                }
                let f = self.eval(callee, env)?;
                let args = self.eval_args(args, env)?;
                self.call(f, args, e.span, callee.span)
            }
            ExprKind::Index(x, i) => {
                let v = self.eval(x, env)?;
                let k = self.eval_int(i, env)?;
                match v {
                    Value::Group(g) => g.get(&k).cloned().ok_or_else(|| {
                        let keys: Vec<String> = g.keys().map(|k| k.to_string()).collect();
                        Diagnostic::error(i.span, format!("no instance with index {k}"), "out of range").with_help(format!("indices: {}", keys.join(", ")))
                    }),
                    Value::List(items) => {
                        let n = items.len() as i64;
                        let j = if k < 0 { k + n } else { k };
                        items.get(j as usize).filter(|_| (0..n).contains(&j)).cloned().ok_or_else(|| Diagnostic::error(i.span, format!("index {k} is out of range for a list of {n}"), "out of range"))
                    }
                    other => Err(Diagnostic::error(x.span, format!("cannot index {}", other.kind()), "not indexable")
                        .with_help("tensors are indexed with `slice(x, axis: a, start: s, end: e)` or `gather`")),
                }
            }
            ExprKind::Field(x, name) => {
                let v = self.eval(x, env)?;
                match v {
                    Value::Inst(i) => self.instances[i]
                        .members
                        .get(&name.name)
                        .cloned()
                        .ok_or_else(|| {
                            let inst = &self.instances[i];
                            let mut d = Diagnostic::error(
                                name.span,
                                format!(
                                    "`{}` (a `{}`) has no member `{}`",
                                    inst.path, inst.def.name.name, name.name
                                ),
                                "unknown member",
                            );
                            if let Some(s) =
                                suggest(&name.name, inst.members.keys().map(|k| k.as_str()))
                            {
                                d = d.with_help(format!("did you mean `{s}`?"));
                            }
                            d
                        }),
                    other => Err(Diagnostic::error(
                        x.span,
                        format!("{} has no members", other.kind()),
                        "not a module instance",
                    )),
                }
            }
            ExprKind::If(c, then, otherwise) => {
                let b = self.eval_bool(c, env)?;
                self.eval_block(if b { then } else { otherwise }, env)
            }
            ExprKind::Block(b) => self.eval_block(b, env),
        }
    }

    fn lookup(&mut self, n: &str, span: Span, env: &Env) -> Result<Value, Diagnostic> {
        if let Some(v) = env.get(n) {
            return Ok(v.clone());
        }
        if let Some(v) = self.consts.get(n) {
            return Ok(v.clone());
        }
        if self.defs.contains_key(n) {
            return Ok(Value::Def(n.to_string()));
        }
        if let Some(d) = DType::from_name(n) {
            return Ok(Value::DType(d));
        }
        match n {
            "inf" => return Ok(Value::Float(f64::INFINITY)),
            "pi" => return Ok(Value::Float(std::f64::consts::PI)),
            // The `train` block's shape, visible everywhere (a module's batch `input`).
            "batch" => return Ok(Value::Int(self.batch)),
            "seq" => return Ok(Value::Int(self.seq)),
            _ => {}
        }
        let mut names = env.names();
        names.extend(self.defs.keys().cloned());
        names.extend(self.consts.keys().cloned());
        let mut d = Diagnostic::error(span, format!("unknown name `{n}`"), "not defined here");
        if super::builtins::is_builtin(n) {
            d = d.with_help(format!(
                "`{n}` is a built-in function: call it, e.g. `{n}(x)`"
            ));
        } else if let Some(s) = suggest(n, names.iter().map(|s| s.as_str())) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        Err(d)
    }

    /// Evaluates a block in a new frame.
    pub(crate) fn eval_block(&mut self, b: &'a Block, env: &mut Env) -> Result<Value, Diagnostic> {
        env.frames.push(HashMap::new());
        let r = self.eval_block_inner(b, env);
        env.frames.pop();
        r
    }

    fn eval_block_inner(&mut self, b: &'a Block, env: &mut Env) -> Result<Value, Diagnostic> {
        self.run_stmts(&b.stmts, env)?;
        match &b.result {
            Some(e) => self.eval(e, env),
            None => Err(Diagnostic::error(
                b.span,
                "this block gives no value",
                "expected a final expression",
            )
            .with_help("end the block with the expression whose value it returns")),
        }
    }

    pub(crate) fn run_stmts(&mut self, stmts: &'a [Stmt], env: &mut Env) -> Result<(), Diagnostic> {
        for s in stmts {
            match s {
                Stmt::Let { name, ty, value } => {
                    let v = self.eval(value, env)?;
                    if let Some(t) = ty {
                        self.check_ann(t, &v, value.span, &name.name, env)?;
                    }
                    env.bind(&name.name, v);
                }
                Stmt::Assign { name, value } => {
                    let v = self.eval(value, env)?;
                    if !env.assign(&name.name, v) {
                        let d = if env.get(&name.name).is_some() {
                            Diagnostic::error(
                                name.span,
                                format!("`{}` is not a local and cannot be assigned", name.name),
                                "not assignable",
                            )
                            .with_help(
                                "only names bound with `let` in this function can be reassigned",
                            )
                        } else {
                            Diagnostic::error(
                                name.span,
                                format!("`{}` is not defined", name.name),
                                "assigned here",
                            )
                            .with_help(format!("declare it first: `let {} = ...`", name.name))
                        };
                        return Err(d);
                    }
                }
                Stmt::For { var, lo, hi, body } => {
                    let span = hi.span;
                    let (lo, hi) = (self.eval_int(lo, env)?, self.eval_int(hi, env)?);
                    self.count_iterations(lo, hi, span)?;
                    for i in lo..hi {
                        env.frames
                            .push(HashMap::from([(var.name.clone(), Value::Int(i))]));
                        let r = self.run_stmts(&body.stmts, env);
                        env.frames.pop();
                        r?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Charges a compile-time loop's iterations to the elaboration's budget (at most
    /// [`super::MAX_LOOP`] for one loop, [`super::MAX_ITERATIONS`] in all), so that no spec
    /// makes the compiler run for hours (a model of a million layers, say).
    pub(crate) fn count_iterations(
        &mut self,
        lo: i64,
        hi: i64,
        span: Span,
    ) -> Result<(), Diagnostic> {
        let n = u64::try_from(hi.saturating_sub(lo)).unwrap_or(0);
        if n > super::MAX_LOOP {
            return Err(Diagnostic::error(
                span,
                format!(
                    "a compile-time loop may run at most {} times",
                    super::MAX_LOOP
                ),
                format!("this one runs {n}"),
            )
            .with_help("a loop bound is far larger than a model's dimensions usually are"));
        }
        self.iterations = self.iterations.saturating_add(n);
        if self.iterations > super::MAX_ITERATIONS {
            return Err(Diagnostic::error(
                span,
                format!(
                    "compile-time loops run more than {} iterations in all",
                    super::MAX_ITERATIONS
                ),
                format!("this loop runs {n}"),
            )
            .with_help("a loop bound is far larger than a model's dimensions usually are"));
        }
        Ok(())
    }

    /// Evaluates call arguments.
    pub(crate) fn eval_args(
        &mut self,
        args: &'a [Arg],
        env: &mut Env,
    ) -> Result<Vec<ArgVal>, Diagnostic> {
        let mut out = Vec::new();
        for a in args {
            let value = self.eval(&a.value, env)?;
            out.push(ArgVal {
                name: a.name.clone(),
                value,
                span: a.value.span,
            });
        }
        Ok(out)
    }

    /// Evaluates an expression that must be an int.
    pub(crate) fn eval_int(&mut self, e: &'a Expr, env: &mut Env) -> Result<i64, Diagnostic> {
        match self.eval(e, env)? {
            Value::Int(i) => Ok(i),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 9e15 => Ok(x as i64),
            other => Err(Diagnostic::error(
                e.span,
                format!("expected an int, found {}", other.kind()),
                "must be a compile-time int",
            )),
        }
    }

    /// Evaluates a dimension: a positive int.
    pub(crate) fn eval_dim(&mut self, e: &'a Expr, env: &mut Env) -> Result<usize, Diagnostic> {
        let i = self.eval_int(e, env)?;
        if i <= 0 {
            return Err(Diagnostic::error(
                e.span,
                format!("a dimension must be positive, this is {i}"),
                "not a valid extent",
            ));
        }
        Ok(i as usize)
    }

    /// Evaluates an expression that must be a bool.
    pub(crate) fn eval_bool(&mut self, e: &'a Expr, env: &mut Env) -> Result<bool, Diagnostic> {
        match self.eval(e, env)? {
            Value::Bool(b) => Ok(b),
            other => Err(Diagnostic::error(e.span, format!("expected a compile-time bool, found {}", other.kind()), "condition")
                .with_help("conditions are decided at compile time; to choose per element use `select(c, a, b)`")),
        }
    }

    /// Calls a value.
    pub(crate) fn call(
        &mut self,
        f: Value,
        args: Vec<ArgVal>,
        span: Span,
        callee_span: Span,
    ) -> Result<Value, Diagnostic> {
        match f {
            Value::Inst(i) => {
                let level = self.instances[i].adapters.len();
                self.call_instance(i, level, args, span)
            }
            Value::Base(i, level) => self.call_instance(i, level, args, span),
            Value::Def(name) => match self.defs.get(&name).copied() {
                Some(super::Def::Fn(f)) => {
                    self.enter(span)?;
                    let r = self.call_fn(f, Env::new(HashMap::new()), args, span);
                    self.depth -= 1;
                    r
                }
                Some(super::Def::Module(m)) => Err(Diagnostic::error(callee_span, format!("`{name}` is a {}; it is instantiated in a module body, not called here", if m.wraps.is_some() { "adapter" } else { "module" }), "cannot call")
                    .with_help(format!("declare an instance: `my_{name} = {name}(...)`, then call `my_{name}(x)` in forward"))),
                _ => Err(Diagnostic::error(callee_span, format!("`{name}` cannot be called"), "not callable")),
            },
            other => Err(Diagnostic::error(callee_span, format!("{} cannot be called", other.kind()), "not callable")),
        }
    }

    /// Calls a graft function (or forward) with its parameters bound in a new frame of `env`.
    pub(crate) fn call_fn(
        &mut self,
        f: &'a FnDef,
        mut env: Env,
        args: Vec<ArgVal>,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        let mut given: Vec<Option<ArgVal>> = vec![None; f.params.len()];
        let mut positional = 0;
        for a in args {
            let idx = match &a.name {
                Some(n) => f
                    .params
                    .iter()
                    .position(|p| p.name.name == n.name)
                    .ok_or_else(|| {
                        Diagnostic::error(
                            n.span,
                            format!("`{}` has no parameter `{}`", f.name.name, n.name),
                            "unknown parameter",
                        )
                        .with_label(f.name.span, "defined here")
                    })?,
                None => {
                    let i = positional;
                    positional += 1;
                    if i >= f.params.len() {
                        return Err(Diagnostic::error(
                            a.span,
                            format!("`{}` takes {} argument(s)", f.name.name, f.params.len()),
                            "extra argument",
                        )
                        .with_label(f.name.span, "defined here"));
                    }
                    i
                }
            };
            if given[idx].is_some() {
                return Err(Diagnostic::error(
                    a.span,
                    format!("argument `{}` is given twice", f.params[idx].name.name),
                    "given again",
                ));
            }
            given[idx] = Some(a);
        }
        for (p, g) in f.params.iter().zip(given) {
            let (v, vspan) = match g {
                Some(a) => (a.value, a.span),
                None => match &p.default {
                    Some(d) => (self.eval(d, &mut env)?, d.span),
                    None => {
                        return Err(Diagnostic::error(
                            span,
                            format!("missing argument `{}` of `{}`", p.name.name, f.name.name),
                            "in this call",
                        )
                        .with_label(p.name.span, "declared here"));
                    }
                },
            };
            if let Some(t) = &p.ty {
                self.check_ann(t, &v, vspan, &p.name.name, &mut env)?;
            }
            env.bind(&p.name.name, v);
        }
        self.eval_block(&f.body, &mut env)
    }

    /// Checks a value against an annotation; unbound single-name dimensions are bound.
    pub(crate) fn check_ann(
        &mut self,
        ann: &'a TypeAnn,
        v: &Value,
        vspan: Span,
        what: &str,
        env: &mut Env,
    ) -> Result<(), Diagnostic> {
        match ann {
            TypeAnn::Scalar(ty, span) => {
                let ok = matches!(
                    (ty, v),
                    (ScalarType::Int, Value::Int(_))
                        | (ScalarType::Float, Value::Int(_) | Value::Float(_))
                        | (ScalarType::Bool, Value::Bool(_))
                        | (ScalarType::String, Value::Str(_))
                );
                if ok {
                    Ok(())
                } else {
                    Err(Diagnostic::error(
                        vspan,
                        format!("`{what}` must be `{}`, this is {}", ty.name(), v.kind()),
                        "wrong kind of value",
                    )
                    .with_label(*span, "expected because of this"))
                }
            }
            TypeAnn::Tensor(t) => {
                let Some(id) = self.as_tensor(v, vspan)? else {
                    return Err(Diagnostic::error(
                        vspan,
                        format!("`{what}` must be a tensor, this is {}", v.kind()),
                        "not a tensor",
                    )
                    .with_label(t.span, "expected because of this"));
                };
                let ty = self.fb_ref(vspan)?.func.ty(id).clone();
                let mismatch = |el: &Self, detail: String| {
                    Diagnostic::error(
                        vspan,
                        format!(
                            "`{what}` has type {ty}, which does not fit {}: {detail}",
                            el.loaded.sources.snippet(t.span)
                        ),
                        format!("this is {ty}"),
                    )
                    .with_label(t.span, "expected because of this")
                    .with_label(el.origin(id), format!("{ty} comes from here"))
                };
                let fits = if t.rest {
                    t.dims.len() <= ty.rank()
                } else {
                    t.dims.len() == ty.rank()
                };
                if !fits {
                    let at_least = if t.rest { "at least " } else { "" };
                    return Err(mismatch(
                        self,
                        format!("rank {} vs {at_least}{}", ty.rank(), t.dims.len()),
                    ));
                }
                let lead = ty.rank() - t.dims.len();
                if let Some(dt) = t.dtype {
                    if dt != ty.dtype {
                        return Err(mismatch(self, format!("dtype {} vs {dt}", ty.dtype)));
                    }
                }
                for (k, (d, &actual)) in t.dims.iter().zip(&ty.shape[lead..]).enumerate() {
                    let axis = lead + k;
                    if let ExprKind::Name(n) = &d.kind {
                        if env.get(n).is_none() && !self.consts.contains_key(n) {
                            env.bind(n, Value::Int(actual as i64));
                            continue;
                        }
                    }
                    let want = self.eval_int(d, env)?;
                    if want != actual as i64 {
                        let name = self.loaded.sources.snippet(d.span).to_string();
                        return Err(mismatch(
                            self,
                            format!("axis {axis} is {actual}, but `{name}` = {want}"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// The source span a value came from.
    pub(crate) fn origin(&self, v: ValueId) -> Span {
        self.fb
            .as_ref()
            .and_then(|fb| fb.origins.get(v.index()).copied())
            .unwrap_or(Span {
                file: self.loaded.entry,
                start: 0,
                end: 0,
            })
    }

    /// The tensor a value denotes, if it is one (a declared weight becomes an input).
    pub(crate) fn as_tensor(
        &mut self,
        v: &Value,
        span: Span,
    ) -> Result<Option<ValueId>, Diagnostic> {
        match v {
            Value::Tensor(t) => Ok(Some(*t)),
            Value::Decl(d) => self.decl_value(*d, span).map(Some),
            Value::Part(d, shape) => self.part_value(*d, shape, span).map(Some),
            Value::Batch(name, ty) => self.batch_value(name, ty, span).map(Some),
            _ => Ok(None),
        }
    }

    /// A module's batch input in the function being built: its input of that name, added on
    /// first use.
    fn batch_value(
        &mut self,
        name: &str,
        ty: &TensorType,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        if let Some(i) = fb.func.input(name) {
            if i.ty != ty {
                let have = i.ty.clone();
                return Err(Diagnostic::error(
                    span,
                    format!("the batch input `{name}` is {ty} here and {have} elsewhere"),
                    "another type",
                ));
            }
            return Ok(i.value);
        }
        let v = fb
            .func
            .add_input(name, graft_ir::InputKind::Data, ty.clone(), Some(loc));
        fb.origins.push(span);
        Ok(v)
    }

    /// The tensor a value denotes, or an error.
    pub(crate) fn need_tensor(&mut self, v: &Value, span: Span) -> Result<ValueId, Diagnostic> {
        self.as_tensor(v, span)?.ok_or_else(|| {
            Diagnostic::error(
                span,
                format!("expected a tensor, found {}", v.kind()),
                "not a tensor",
            )
        })
    }

    /// Appends a node, turning a typing error into a diagnostic at `span` that shows where
    /// each operand came from.
    pub(crate) fn emit(
        &mut self,
        op: Op,
        args: &[ValueId],
        declared: Option<TensorType>,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        match fb.func.add_typed(op, args, declared, Some(loc)) {
            Ok(v) => {
                fb.origins.push(span);
                Ok(v)
            }
            Err(e) => {
                let mut d = Diagnostic::error(
                    span,
                    format!("`{}`: {}", e.op, e.message),
                    "in this expression",
                );
                for (i, a) in args.iter().enumerate() {
                    let ty = self.fb_ref(span)?.func.ty(*a).clone();
                    d = d.with_label(self.origin(*a), format!("operand {} is {ty}", i + 1));
                }
                Err(d)
            }
        }
    }

    /// A tensor of `ty` filled with `x`.
    pub(crate) fn splat(
        &mut self,
        x: f64,
        ty: TensorType,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        self.emit(Op::Constant { value: x }, &[], Some(ty), span)
    }

    /// Broadcasts a tensor to `shape` (no node if it already has it).
    pub(crate) fn broadcast_to(
        &mut self,
        t: ValueId,
        shape: &[usize],
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let ty = self.fb_ref(span)?.func.ty(t).clone();
        if ty.shape == shape {
            return Ok(t);
        }
        if ty.numel() == shape.iter().product::<usize>()
            && ty
                .shape
                .iter()
                .filter(|&&d| d != 1)
                .eq(shape.iter().filter(|&&d| d != 1))
        {
            // Only unit axes differ: a reshape is enough.
            return self.emit(
                Op::Reshape,
                &[t],
                Some(TensorType::new(ty.dtype, shape.to_vec())),
                span,
            );
        }
        self.emit(
            Op::Broadcast,
            &[t],
            Some(TensorType::new(ty.dtype, shape.to_vec())),
            span,
        )
    }

    /// Makes two operands one type: scalars become constants, shapes broadcast (NumPy rules).
    fn unify(
        &mut self,
        l: Value,
        r: Value,
        span: Span,
        lspan: Span,
        rspan: Span,
    ) -> Result<(ValueId, ValueId), Diagnostic> {
        let lt = self.as_tensor(&l, lspan)?;
        let rt = self.as_tensor(&r, rspan)?;
        let (lt, rt) = match (lt, rt) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                let ty = self.fb_ref(span)?.func.ty(a).clone();
                (a, self.scalar_like(&r, &ty, rspan)?)
            }
            (None, Some(b)) => {
                let ty = self.fb_ref(span)?.func.ty(b).clone();
                (self.scalar_like(&l, &ty, lspan)?, b)
            }
            (None, None) => {
                return Err(Diagnostic::error(
                    span,
                    "internal error: no tensor operand",
                    "here",
                ));
            }
        };
        let (a, b) = {
            let fb = self.fb_ref(span)?;
            (fb.func.ty(lt).clone(), fb.func.ty(rt).clone())
        };
        if a.dtype != b.dtype {
            return Err(Diagnostic::error(
                span,
                format!(
                    "operands have different dtypes: {} and {}",
                    a.dtype, b.dtype
                ),
                "mixed dtypes",
            )
            .with_label(self.origin(lt), format!("this is {a}"))
            .with_label(self.origin(rt), format!("this is {b}"))
            .with_help(format!("convert one side, e.g. `cast(x, {})`", a.dtype)));
        }
        let Some(shape) = broadcast_shape(&a.shape, &b.shape) else {
            return Err(Diagnostic::error(
                span,
                format!(
                    "shapes {} and {} do not broadcast",
                    shape_str(&a.shape),
                    shape_str(&b.shape)
                ),
                "incompatible shapes",
            )
            .with_label(self.origin(lt), format!("left is {a}"))
            .with_label(self.origin(rt), format!("right is {b}"))
            .with_help("extents must be equal or 1, aligned from the last axis"));
        };
        Ok((
            self.broadcast_to(lt, &shape, lspan)?,
            self.broadcast_to(rt, &shape, rspan)?,
        ))
    }

    /// A rank-0 constant of `like`'s dtype from a scalar value.
    fn scalar_like(
        &mut self,
        v: &Value,
        like: &TensorType,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let x = match v {
            Value::Int(i) => *i as f64,
            Value::Float(x) if like.dtype.is_float() => *x,
            Value::Bool(b) if like.dtype == DType::Bool => f64::from(u8::from(*b)),
            Value::Float(_) => {
                return Err(Diagnostic::error(
                    span,
                    format!(
                        "a float constant cannot combine with an {} tensor",
                        like.dtype
                    ),
                    "float here",
                )
                .with_help("cast the tensor to a float type first"));
            }
            other => {
                return Err(Diagnostic::error(
                    span,
                    format!("{} cannot combine with a tensor", other.kind()),
                    "not a number",
                ));
            }
        };
        self.splat(x, TensorType::scalar(like.dtype), span)
    }

    fn unary(&mut self, op: UnOp, v: Value, span: Span, xspan: Span) -> Result<Value, Diagnostic> {
        match (op, &v) {
            (UnOp::Neg, Value::Int(i)) => {
                Ok(Value::Int(i.checked_neg().ok_or_else(|| {
                    Diagnostic::error(span, "integer overflow", "here")
                })?))
            }
            (UnOp::Neg, Value::Float(x)) => Ok(Value::Float(-x)),
            (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            _ => {
                let Some(t) = self.as_tensor(&v, xspan)? else {
                    return Err(Diagnostic::error(
                        span,
                        format!(
                            "cannot apply `{}` to {}",
                            if op == UnOp::Neg { "-" } else { "!" },
                            v.kind()
                        ),
                        "here",
                    ));
                };
                let u = if op == UnOp::Neg {
                    UnaryOp::Neg
                } else {
                    UnaryOp::Not
                };
                Ok(Value::Tensor(self.emit(Op::Unary(u), &[t], None, span)?))
            }
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        l: Value,
        r: Value,
        span: Span,
        lspan: Span,
        rspan: Span,
    ) -> Result<Value, Diagnostic> {
        let is_tensor = |v: &Value| {
            matches!(
                v,
                Value::Tensor(_) | Value::Decl(_) | Value::Part(..) | Value::Batch(..)
            )
        };
        if !is_tensor(&l) && !is_tensor(&r) {
            return const_binary(op, &l, &r)
                .map_err(|m| Diagnostic::error(span, m, "in this expression"));
        }
        if op == BinOp::MatMul {
            let a = self.need_tensor(&l, lspan)?;
            let b = self.need_tensor(&r, rspan)?;
            return self.matmul(a, b, span).map(Value::Tensor);
        }
        let (a, b) = self.unify(l, r, span, lspan, rspan)?;
        let Some(bop) = ir_binary(op) else {
            return Err(Diagnostic::error(
                span,
                "`%` is only defined on compile-time ints",
                "on a tensor",
            ));
        };
        Ok(Value::Tensor(self.emit(
            Op::Binary(bop),
            &[a, b],
            None,
            span,
        )?))
    }

    /// `a @ b`, broadcasting batch axes when both operands have them.
    pub(crate) fn matmul(
        &mut self,
        a: ValueId,
        b: ValueId,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let (ta, tb) = {
            let fb = self.fb_ref(span)?;
            (fb.func.ty(a).clone(), fb.func.ty(b).clone())
        };
        let (a, b) = if ta.rank() > 2
            && tb.rank() > 2
            && ta.shape[..ta.rank() - 2] != tb.shape[..tb.rank() - 2]
        {
            let Some(batch) =
                broadcast_shape(&ta.shape[..ta.rank() - 2], &tb.shape[..tb.rank() - 2])
            else {
                return Err(Diagnostic::error(
                    span,
                    format!("batch axes of {ta} and {tb} do not broadcast"),
                    "in this product",
                )
                .with_label(self.origin(a), format!("left is {ta}"))
                .with_label(self.origin(b), format!("right is {tb}")));
            };
            let sa: Vec<usize> = batch
                .iter()
                .chain(&ta.shape[ta.rank() - 2..])
                .copied()
                .collect();
            let sb: Vec<usize> = batch
                .iter()
                .chain(&tb.shape[tb.rank() - 2..])
                .copied()
                .collect();
            (
                self.broadcast_to(a, &sa, span)?,
                self.broadcast_to(b, &sb, span)?,
            )
        } else {
            (a, b)
        };
        self.emit(
            Op::MatMul {
                ta: false,
                tb: false,
            },
            &[a, b],
            None,
            span,
        )
    }
}

/// NumPy's broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i < n - a.len() {
            1
        } else {
            a[i - (n - a.len())]
        };
        let y = if i < n - b.len() {
            1
        } else {
            b[i - (n - b.len())]
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}

/// The IR op a source operator on tensors becomes (`%` and `@` have none).
fn ir_binary(op: BinOp) -> Option<BinaryOp> {
    Some(match op {
        BinOp::Add => BinaryOp::Add,
        BinOp::Sub => BinaryOp::Sub,
        BinOp::Mul => BinaryOp::Mul,
        BinOp::Div => BinaryOp::Div,
        BinOp::Eq => BinaryOp::Eq,
        BinOp::Ne => BinaryOp::Ne,
        BinOp::Lt => BinaryOp::Lt,
        BinOp::Le => BinaryOp::Le,
        BinOp::Gt => BinaryOp::Gt,
        BinOp::Ge => BinaryOp::Ge,
        BinOp::And => BinaryOp::And,
        BinOp::Or => BinaryOp::Or,
        BinOp::Rem | BinOp::MatMul => return None,
    })
}

/// Compile-time arithmetic. Int `/` int is exact when it divides, else a float.
fn const_binary(op: BinOp, l: &Value, r: &Value) -> Result<Value, String> {
    use Value::*;
    let bad = || {
        format!(
            "`{}` is not defined for {} and {}",
            op.symbol(),
            l.kind(),
            r.kind()
        )
    };
    Ok(match (l, r) {
        (Int(a), Int(b)) => {
            let (a, b) = (*a, *b);
            let ovf = || "integer overflow".to_string();
            match op {
                BinOp::Add => Int(a.checked_add(b).ok_or_else(ovf)?),
                BinOp::Sub => Int(a.checked_sub(b).ok_or_else(ovf)?),
                BinOp::Mul => Int(a.checked_mul(b).ok_or_else(ovf)?),
                BinOp::Div if b == 0 => return Err("division by zero".into()),
                BinOp::Div if a % b == 0 => Int(a / b),
                BinOp::Div => Float(a as f64 / b as f64),
                BinOp::Rem if b == 0 => return Err("remainder by zero".into()),
                BinOp::Rem => Int(a.rem_euclid(b)),
                BinOp::Eq => Bool(a == b),
                BinOp::Ne => Bool(a != b),
                BinOp::Lt => Bool(a < b),
                BinOp::Le => Bool(a <= b),
                BinOp::Gt => Bool(a > b),
                BinOp::Ge => Bool(a >= b),
                _ => return Err(bad()),
            }
        }
        // Floats compute by the IR's scalar table, as the same op on a tensor would.
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            let (a, b) = (as_f64(l).unwrap_or(0.0), as_f64(r).unwrap_or(0.0));
            if op == BinOp::Div && b == 0.0 {
                return Err("division by zero".into());
            }
            let bop = ir_binary(op).ok_or_else(bad)?;
            if let Some(c) = bop.compare(a, b) {
                Bool(c)
            } else {
                Float(bop.eval_float(a, b).ok_or_else(bad)?)
            }
        }
        (Bool(a), Bool(b)) => match op {
            BinOp::And => Bool(*a && *b),
            BinOp::Or => Bool(*a || *b),
            BinOp::Eq => Bool(a == b),
            BinOp::Ne => Bool(a != b),
            _ => return Err(bad()),
        },
        (Str(a), Str(b)) => match op {
            BinOp::Add => Str(format!("{a}{b}")),
            BinOp::Eq => Bool(a == b),
            BinOp::Ne => Bool(a != b),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shape(&[2, 3], &[4, 3]), None);
    }

    #[test]
    fn int_division_is_exact_or_float() {
        assert_eq!(
            const_binary(BinOp::Div, &Value::Int(64), &Value::Int(4)),
            Ok(Value::Int(16))
        );
        assert_eq!(
            const_binary(BinOp::Div, &Value::Int(16), &Value::Int(5)),
            Ok(Value::Float(3.2))
        );
        assert!(const_binary(BinOp::Div, &Value::Int(1), &Value::Int(0)).is_err());
        assert!(const_binary(BinOp::Add, &Value::Int(i64::MAX), &Value::Int(1)).is_err());
    }
}
