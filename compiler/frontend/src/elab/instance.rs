//! Building the instance tree: module bodies run at compile time, quantize clauses and adapt
//! rules attach to the instances their targets match, and instance calls run forwards through
//! their adapters.

use super::eval::{ArgVal, as_f64};
use super::target::{Candidate, Matcher, nearest, override_regex};
use super::value::{DeclId, Env, InstId, Value};
use super::{
    AdapterInst, ConfigValue, Decl, DeclKind, Elaborator, Instance, PeftExport, QuantSpec,
};
use crate::ast::*;
use crate::diag::{Diagnostic, Label};
use graft_ir::{DType, InputKind, Op, QuantFormat, TensorType, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Where a member walk declares things.
struct WalkCx<'a> {
    /// Path prefix for declared tensors and child instances.
    path: String,
    /// True inside an adapter body.
    adapter: bool,
    /// The adapter's forward, once seen.
    forward: Option<usize>,
    /// The adapter's `peft` declaration, evaluated.
    peft: Option<PeftExport>,
    /// The adapter's `penalty` terms.
    penalties: Vec<&'a Expr>,
    /// The adapter's `after_step`.
    after_step: Option<&'a FnDef>,
    /// The adapter's `peft_mask` declarations.
    masks: Vec<super::PeftMask>,
    /// The adapter's `peft_stack` declarations.
    stacks: Vec<super::PeftStack>,
}

fn join(prefix: &str, seg: &str) -> String {
    if prefix.is_empty() {
        seg.to_string()
    } else {
        format!("{prefix}.{seg}")
    }
}

impl<'a> Elaborator<'a> {
    /// Binds a module's parameters from call arguments, with defaults and type checks.
    pub(crate) fn bind_params(
        &mut self,
        def: &'a ModuleDef,
        args: Vec<ArgVal>,
        call_span: Span,
    ) -> Result<HashMap<String, Value>, Diagnostic> {
        let mut env = Env::new(HashMap::new());
        let mut given: Vec<Option<ArgVal>> = vec![None; def.params.len()];
        let mut positional = 0;
        for a in args {
            let idx = match &a.name {
                Some(n) => def
                    .params
                    .iter()
                    .position(|p| p.name.name == n.name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            def.params.iter().map(|p| p.name.name.as_str()).collect();
                        let mut d = Diagnostic::error(
                            n.span,
                            format!("`{}` has no parameter `{}`", def.name.name, n.name),
                            "unknown parameter",
                        )
                        .with_label(def.name.span, "defined here");
                        d = d.with_help(
                            match super::eval::suggest(&n.name, names.iter().copied()) {
                                Some(s) => {
                                    format!("did you mean `{s}`? parameters: {}", names.join(", "))
                                }
                                None => format!("parameters: {}", names.join(", ")),
                            },
                        );
                        d
                    })?,
                None => {
                    let i = positional;
                    positional += 1;
                    if i >= def.params.len() {
                        return Err(Diagnostic::error(
                            a.span,
                            format!(
                                "`{}` takes {} parameter(s)",
                                def.name.name,
                                def.params.len()
                            ),
                            "extra argument",
                        )
                        .with_label(def.name.span, "defined here"));
                    }
                    i
                }
            };
            if given[idx].is_some() {
                return Err(Diagnostic::error(
                    a.span,
                    format!("parameter `{}` is given twice", def.params[idx].name.name),
                    "given again",
                ));
            }
            given[idx] = Some(a);
        }
        for (p, g) in def.params.iter().zip(given) {
            let (v, span) = match g {
                Some(a) => (a.value, a.span),
                None => match &p.default {
                    Some(d) => (self.eval(d, &mut env)?, d.span),
                    None => {
                        return Err(Diagnostic::error(
                            call_span,
                            format!(
                                "missing parameter `{}: {}` of `{}`",
                                p.name.name,
                                p.ty.name(),
                                def.name.name
                            ),
                            "in this call",
                        )
                        .with_label(p.name.span, "declared here without a default"));
                    }
                },
            };
            let v = match (p.ty, v) {
                (ScalarType::Int, Value::Int(i)) => Value::Int(i),
                (ScalarType::Float, v @ (Value::Int(_) | Value::Float(_))) => {
                    Value::Float(as_f64(&v).unwrap_or(0.0))
                }
                (ScalarType::Bool, Value::Bool(b)) => Value::Bool(b),
                (ScalarType::String, Value::Str(s)) => Value::Str(s),
                (ty, v) => {
                    return Err(Diagnostic::error(
                        span,
                        format!(
                            "parameter `{}` is `{}`, but this is {}",
                            p.name.name,
                            ty.name(),
                            v.kind()
                        ),
                        format!("expected {}", ty.name()),
                    )
                    .with_label(p.name.span, "declared here"));
                }
            };
            env.bind(&p.name.name, v);
        }
        Ok(env.frames.pop().unwrap_or_default())
    }

    /// Instantiates the spec's model; with `from "folder"`, the folder's `config.json` (read
    /// relative to `base`, the spec's folder) sets the parameters that name a config key and
    /// that the call does not give (`llama from "folder"` needs no parentheses).
    pub(super) fn instantiate_model(
        &mut self,
        model: &'a ModelDecl,
        base: &std::path::Path,
    ) -> Result<InstId, Diagnostic> {
        let (callee, args): (&'a Expr, &'a [crate::ast::Arg]) = match &model.value.kind {
            ExprKind::Call(callee, args) => (callee.as_ref(), args.as_slice()),
            ExprKind::Name(_) if model.from.is_some() => (&model.value, &[]),
            _ => {
                return Err(Diagnostic::error(
                    model.value.span,
                    "a model is declared by calling a module",
                    "expected `kind(args)`",
                )
                .with_help("or `kind from \"hf-folder\"` to read its settings from config.json"));
            }
        };
        let def = self.module_def(callee, false)?;
        let mut args = self.eval_args(args, &mut Env::new(HashMap::new()))?;
        if let Some(from) = &model.from {
            let dir = super::hf_config::folder(from, base);
            let more = super::hf_config::config_args(def, from, &dir, &args)?;
            args.extend(more);
        }
        self.instantiate(def, args, String::new(), model.value.span, false)
    }

    /// Resolves a callee expression to a module (or, with `adapter`, an adapter) definition.
    pub(crate) fn module_def(
        &mut self,
        callee: &'a Expr,
        adapter: bool,
    ) -> Result<&'a ModuleDef, Diagnostic> {
        let want = if adapter { "adapter" } else { "module" };
        let ExprKind::Name(name) = &callee.kind else {
            return Err(Diagnostic::error(
                callee.span,
                format!("expected the name of a {want}"),
                "not a name",
            ));
        };
        match self.defs.get(name) {
            Some(super::Def::Module(m)) if m.wraps.is_some() == adapter => Ok(m),
            Some(super::Def::Module(m)) => Err(Diagnostic::error(
                callee.span,
                format!(
                    "`{name}` is {}, not {}",
                    if adapter { "a module" } else { "an adapter" },
                    if adapter { "an adapter" } else { "a module" }
                ),
                format!("expected {want}"),
            )
            .with_label(m.name.span, "defined here")),
            Some(other) => Err(Diagnostic::error(
                callee.span,
                format!("`{name}` is not a {want}"),
                format!("expected {want}"),
            )
            .with_label(other.span(), "defined here")),
            None => {
                let candidates: Vec<&str> = self
                    .defs
                    .iter()
                    .filter(
                        |(_, d)| matches!(d, super::Def::Module(m) if m.wraps.is_some() == adapter),
                    )
                    .map(|(k, _)| k.as_str())
                    .collect();
                let mut d = Diagnostic::error(
                    callee.span,
                    format!("unknown {want} `{name}`"),
                    format!("no {want} with this name"),
                );
                d = d.with_help(
                    match super::eval::suggest(name, candidates.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "import it with `use`, e.g. `use {}`",
                            if adapter { "peft.lora" } else { "models.llama" }
                        ),
                    },
                );
                Err(d)
            }
        }
    }

    pub(crate) fn instantiate(
        &mut self,
        def: &'a ModuleDef,
        args: Vec<ArgVal>,
        path: String,
        span: Span,
        output: bool,
    ) -> Result<InstId, Diagnostic> {
        self.enter(span)?;
        let params = self.bind_params(def, args, span)?;
        let id = self.instances.len();
        self.instances.push(Instance {
            path: path.clone(),
            def,
            members: HashMap::new(),
            forward: None,
            output,
            adapters: Vec::new(),
            task: None,
            span,
        });
        let mut env = Env {
            base: params,
            frames: Vec::new(),
        };
        let mut cx = WalkCx {
            path,
            adapter: false,
            forward: None,
            peft: None,
            penalties: Vec::new(),
            after_step: None,
            masks: Vec::new(),
            stacks: Vec::new(),
        };
        self.walk_members(&def.members, &mut env, &mut cx)?;
        self.instances[id].members = env.base;
        self.instances[id].task = cx.peft.map(|p| p.peft_type);
        self.instances[id].forward =
            cx.forward
                .and_then(|i| match &def.members.get(i).map(|m| &m.kind) {
                    Some(MemberKind::Forward(f)) => Some(f),
                    _ => None,
                });
        self.depth -= 1;
        Ok(id)
    }

    fn walk_members(
        &mut self,
        members: &'a [Member],
        env: &mut Env,
        cx: &mut WalkCx<'a>,
    ) -> Result<(), Diagnostic> {
        for (i, m) in members.iter().enumerate() {
            if let (false, Some(what)) = (cx.adapter, m.kind.adapter_only()) {
                return Err(Diagnostic::error(
                    m.span,
                    format!("`{what}` is only allowed in adapters"),
                    "in a module",
                )
                .with_help("training state, penalties and after-step updates belong to adapters"));
            }
            match &m.kind {
                MemberKind::Weight { name, ty, rename }
                | MemberKind::State { name, ty, rename }
                | MemberKind::Param {
                    name, ty, rename, ..
                }
                | MemberKind::Buffer {
                    name, ty, rename, ..
                } => {
                    no_rest(ty)?;
                    let mut shape = Vec::new();
                    for d in &ty.dims {
                        shape.push(self.eval_dim(d, env)?);
                    }
                    let path = decl_path(&cx.path, name, rename.as_ref());
                    if let Some(prev) = self.decls.iter().find(|d| d.path == path) {
                        return Err(Diagnostic::error(
                            name.span,
                            format!("`{path}` is declared twice"),
                            "second declaration",
                        )
                        .with_label(prev.span, "first declaration"));
                    }
                    let (kind, init) = match &m.kind {
                        MemberKind::Param { init, .. } => {
                            (DeclKind::Param, Some((init, env.clone())))
                        }
                        MemberKind::Buffer { init, .. } => {
                            (DeclKind::Buffer, Some((init, env.clone())))
                        }
                        MemberKind::State { .. } => (DeclKind::State, None),
                        _ => (DeclKind::Weight, None),
                    };
                    self.decls.push(Decl {
                        path,
                        kind,
                        ty: TensorType::new(ty.dtype.unwrap_or(DType::F32), shape),
                        span: m.span,
                        doc: m.doc.clone(),
                        init,
                        quant: None,
                        replace: None,
                    });
                    env.base
                        .insert(name.name.clone(), Value::Decl(self.decls.len() - 1));
                }
                MemberKind::Shared {
                    name,
                    ty,
                    rename,
                    init,
                } => {
                    let v = self.declare_shared(name, ty, rename.as_ref(), init, m, env, cx)?;
                    env.base.insert(name.name.clone(), v);
                }
                MemberKind::Unfreeze(names) => {
                    if !cx.adapter {
                        return Err(Diagnostic::error(
                            m.span,
                            "`unfreeze` is only allowed in adapters",
                            "in a module",
                        )
                        .with_help(
                            "a module's own tensors are trainable when declared with `param`",
                        ));
                    }
                    for n in names {
                        match env.get(&n.name) {
                            Some(Value::Decl(id)) => {
                                let id = *id;
                                if self.decls[id].quant.is_some() {
                                    return Err(Diagnostic::error(
                                        n.span,
                                        format!(
                                            "`{}` is quantized and cannot be trained",
                                            self.decls[id].path
                                        ),
                                        "quantized weight",
                                    )
                                    .with_label(self.decls[id].span, "declared here"));
                                }
                                self.decls[id].kind = DeclKind::Param;
                            }
                            _ => {
                                return Err(Diagnostic::error(
                                    n.span,
                                    format!("`{}` is not a weight of the wrapped module", n.name),
                                    "not a weight",
                                ));
                            }
                        }
                    }
                }
                MemberKind::Replace { name, value } => {
                    self.declare_replace(name, value, m.span, env, cx)?;
                }
                MemberKind::Require { cond, message } => {
                    if !self.eval_bool(cond, env)? {
                        return Err(Diagnostic::error(
                            message.span,
                            message.value.clone(),
                            "required here",
                        )
                        .with_label(cond.span, "this is false"));
                    }
                }
                MemberKind::Let { name, value } => {
                    let v = self.eval(value, env)?;
                    env.base.insert(name.name.clone(), v);
                }
                MemberKind::For { var, lo, hi, body } => {
                    let span = hi.span;
                    let (lo, hi) = (self.eval_int(lo, env)?, self.eval_int(hi, env)?);
                    self.count_iterations(lo, hi, span)?;
                    for i in lo..hi {
                        env.frames
                            .push(HashMap::from([(var.name.clone(), Value::Int(i))]));
                        let r = self.walk_members(body, env, cx);
                        env.frames.pop();
                        r?;
                    }
                }
                MemberKind::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let c = self.eval_bool(cond, env)?;
                    self.walk_members(if c { then } else { otherwise }, env, cx)?;
                }
                MemberKind::Input { name, ty } => {
                    no_rest(ty)?;
                    let mut shape = Vec::new();
                    for d in &ty.dims {
                        shape.push(self.eval_dim(d, env)?);
                    }
                    let t = TensorType::new(ty.dtype.unwrap_or(graft_ir::DType::F32), shape);
                    env.base
                        .insert(name.name.clone(), Value::Batch(name.name.clone(), t));
                }
                MemberKind::Penalty(e) => cx.penalties.push(e),
                MemberKind::PeftMask { field, key, axes } => {
                    let mask = self.peft_mask(field, key, axes, env)?;
                    cx.masks.push(mask);
                }
                MemberKind::PeftStack { key, parts } => {
                    let stack = self.peft_stack(key, parts, env)?;
                    cx.stacks.push(stack);
                }
                MemberKind::AfterStep(f) => {
                    if let Some(prev) = cx.after_step {
                        return Err(Diagnostic::error(
                            f.name.span,
                            "an adapter has one `after_step`",
                            "second after_step",
                        )
                        .with_label(prev.name.span, "first after_step"));
                    }
                    cx.after_step = Some(f);
                }
                MemberKind::Forward(f) => {
                    if let Some(prev) = cx.forward.and_then(|p| members.get(p)) {
                        return Err(Diagnostic::error(
                            f.name.span,
                            "a module has one `forward`",
                            "second forward",
                        )
                        .with_label(prev.span, "first forward"));
                    }
                    cx.forward = Some(i);
                }
                MemberKind::Peft { peft_type, fields } => {
                    // In a model: its PEFT task type (`peft "SEQ_CLS" {}`), with no fields.
                    if !cx.adapter && !fields.is_empty() {
                        return Err(Diagnostic::error(
                            m.span,
                            "a module's `peft` declaration names its PEFT task type, with no fields",
                            "fields in a module",
                        )
                        .with_help("e.g. `peft \"SEQ_CLS\" {}`; method settings belong to adapters"));
                    }
                    if cx.peft.is_some() {
                        return Err(Diagnostic::error(
                            m.span,
                            "an adapter has one `peft` declaration",
                            "second one",
                        ));
                    }
                    let mut out = Vec::new();
                    for f in fields {
                        let Some(key) = &f.name else {
                            return Err(Diagnostic::error(
                                f.value.span,
                                "`peft` fields are named",
                                "unnamed",
                            )
                            .with_help("e.g. `peft \"LORA\" { r: r, lora_alpha: alpha }`"));
                        };
                        let v = self.eval(&f.value, env)?;
                        let cv = config_value(&v).ok_or_else(|| Diagnostic::error(f.value.span, format!("a `peft` field must be a number, bool, string or list, this is {}", v.kind()), "not a config value"))?;
                        out.push((key.name.clone(), cv));
                    }
                    cx.peft = Some(PeftExport {
                        peft_type: peft_type.value.clone(),
                        fields: out,
                    });
                }
                MemberKind::Instance {
                    name,
                    index,
                    output,
                    rename,
                    value,
                } => {
                    let ExprKind::Call(callee, args) = &value.kind else {
                        return Err(Diagnostic::error(
                            value.span,
                            "an instance is declared by calling a module",
                            "expected `kind(args)`",
                        ));
                    };
                    let def = self.module_def(callee, false)?;
                    let args = self.eval_args(args, env)?;
                    let stem = rename.as_ref().map_or(&name.name, |r| &r.value);
                    let seg = match index {
                        Some(ix) => format!("{stem}.{}", self.eval_int(ix, env)?),
                        None => stem.clone(),
                    };
                    let path = join(&cx.path, &seg);
                    let child = self.instantiate(def, args, path, m.span, *output)?;
                    match index {
                        None => {
                            env.base.insert(name.name.clone(), Value::Inst(child));
                        }
                        Some(ix) => {
                            let k = self.eval_int(ix, env)?;
                            let slot = env
                                .base
                                .entry(name.name.clone())
                                .or_insert_with(|| Value::Group(BTreeMap::new()));
                            match slot {
                                Value::Group(g) => {
                                    g.insert(k, Value::Inst(child));
                                }
                                other => {
                                    return Err(Diagnostic::error(
                                        name.span,
                                        format!(
                                            "`{}` is {} and cannot hold indexed instances",
                                            name.name,
                                            other.kind()
                                        ),
                                        "indexed here",
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every instance as a target candidate.
    fn candidates(&self) -> Vec<Candidate<'_>> {
        self.instances
            .iter()
            .filter(|i| !i.path.is_empty())
            .map(|i| Candidate {
                path: &i.path,
                kind: &i.def.name.name,
                output: i.output,
            })
            .collect()
    }

    fn no_match(&self, target: &Target, what: &str) -> Diagnostic {
        let text = match &target.kind {
            TargetKind::Regex(s) => s.clone(),
            TargetKind::Names(n) => n
                .iter()
                .map(|s| s.value.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let cands = self.candidates();
        let near = nearest(&text, cands.iter().map(|c| c.path), 4);
        Diagnostic::error(target.span, format!("target matches no module for {what}"), "matches nothing")
            .with_help(format!("nearest module paths: {}. A string is a regex over the whole path (PEFT's rule); a list matches names or dotted suffixes", near.join(", ")))
    }

    pub(super) fn apply_quantize(
        &mut self,
        _root: InstId,
        q: &'a QuantizeClause,
    ) -> Result<(), Diagnostic> {
        let ExprKind::Call(callee, args) = &q.format.kind else {
            return Err(Diagnostic::error(
                q.format.span,
                "expected a quantization format like `nf4(block: 64)`",
                "not a call",
            ));
        };
        let ExprKind::Name(fmt) = &callee.kind else {
            return Err(Diagnostic::error(
                callee.span,
                "expected a format name",
                "not a name",
            ));
        };
        let Some(format) = QuantFormat::from_name(fmt) else {
            return Err(Diagnostic::error(
                callee.span,
                format!("unknown quantization format `{fmt}`"),
                "unknown format",
            )
            .with_help("supported: nf4 (4-bit NormalFloat), int8 (symmetric, blockwise absmax)"));
        };
        let mut block = 64usize;
        let mut nested = 0usize;
        let mut env = Env::new(HashMap::new());
        for a in args {
            let Some(name) = &a.name else {
                return Err(Diagnostic::error(
                    a.value.span,
                    "quantization options are named",
                    "unnamed",
                )
                .with_help("e.g. `nf4(block: 64, double_quant: true)`"));
            };
            let v = self.eval(&a.value, &mut env)?;
            match (name.name.as_str(), v) {
                ("block", Value::Int(b)) if b > 0 => block = b as usize,
                ("double_quant", Value::Bool(b)) if !b || format == QuantFormat::Nf4 => {
                    nested = if b { 256 } else { 0 }
                }
                (other, v) => {
                    return Err(Diagnostic::error(
                        a.value.span,
                        format!("bad option `{other}` = {}", v.kind()),
                        "invalid",
                    )
                    .with_help("options: block: int (64), double_quant: bool (false)"));
                }
            }
        }
        let matcher = Matcher::new(&q.target, "linear")?;
        let hits: Vec<InstId> = (0..self.instances.len())
            .filter(|&i| {
                let inst = &self.instances[i];
                !inst.path.is_empty()
                    && matcher.matches(&Candidate {
                        path: &inst.path,
                        kind: &inst.def.name.name,
                        output: inst.output,
                    })
            })
            .collect();
        if hits.is_empty() {
            return Err(self.no_match(&q.target, "`quantize`"));
        }
        for i in hits {
            let decls: Vec<DeclId> = self.instances[i]
                .members
                .values()
                .filter_map(|v| {
                    if let Value::Decl(d) = v {
                        Some(*d)
                    } else {
                        None
                    }
                })
                .collect();
            for d in decls {
                let decl = &mut self.decls[d];
                // Matrices are quantized; vectors (norms, biases) stay in full precision.
                if decl.kind == DeclKind::Weight && decl.ty.rank() == 2 {
                    decl.quant = Some(QuantSpec {
                        format,
                        block,
                        nested,
                    });
                }
            }
        }
        Ok(())
    }

    pub(super) fn apply_adapt_rule(&mut self, rule: &'a AdaptRule) -> Result<(), Diagnostic> {
        let (callee, call_args) = match &rule.adapter.kind {
            ExprKind::Call(c, a) => (&**c, a.as_slice()),
            ExprKind::Name(_) => (&rule.adapter, &[][..]),
            _ => {
                return Err(Diagnostic::error(
                    rule.adapter.span,
                    "expected an adapter like `lora(r: 8)`",
                    "not an adapter",
                ));
            }
        };
        let def = self.module_def(callee, true)?;
        let wraps = def.wraps.as_ref().ok_or_else(|| {
            Diagnostic::error(callee.span, "internal error: adapter without wraps", "here")
        })?;
        let matcher = Matcher::new(&rule.target, &wraps.kind.name)?;
        let mut overrides = Vec::new();
        for o in &rule.overrides {
            let re = override_regex(&o.pattern.value)
                .map_err(|e| Diagnostic::error(o.pattern.span, "invalid override pattern", e))?;
            overrides.push((re, o));
        }
        let hits: Vec<InstId> = (0..self.instances.len())
            .filter(|&i| {
                let inst = &self.instances[i];
                !inst.path.is_empty()
                    && matcher.matches(&Candidate {
                        path: &inst.path,
                        kind: &inst.def.name.name,
                        output: inst.output,
                    })
            })
            .collect();
        if hits.is_empty() {
            return Err(self.no_match(&rule.target, &format!("adapter `{}`", def.name.name)));
        }
        let mut used_override = vec![false; overrides.len()];
        for i in hits {
            let inst_kind = &self.instances[i].def.name.name;
            if *inst_kind != wraps.kind.name {
                return Err(Diagnostic::error(
                    rule.target.span,
                    format!(
                        "`{}` wraps `{}`, but `{}` is a `{inst_kind}`",
                        def.name.name, wraps.kind.name, self.instances[i].path
                    ),
                    "matches it",
                )
                .with_label(wraps.kind.span, "the adapter wraps this kind")
                .with_help(
                    "narrow the target so that it selects only modules of the wrapped kind",
                ));
            }
            // Arguments: the rule's, with the first matching override's replacing them.
            let mut env = Env::new(HashMap::new());
            let mut args = self.eval_args(call_args, &mut env)?;
            if let Some(k) = overrides
                .iter()
                .position(|(re, _)| re.is_match(&self.instances[i].path))
            {
                used_override[k] = true;
                for a in self.eval_args(&overrides[k].1.args, &mut env)? {
                    let Some(n) = &a.name else {
                        return Err(Diagnostic::error(
                            a.span,
                            "override arguments are named",
                            "unnamed",
                        )
                        .with_help("e.g. `where \"q_proj\" { r: 16 }`"));
                    };
                    args.retain(|b| b.name.as_ref().map(|x| &x.name) != Some(&n.name));
                    args.push(a);
                }
            }
            self.attach_adapter(i, def, args, rule.span)?;
        }
        for (k, used) in used_override.iter().enumerate() {
            if !used {
                let o = overrides[k].1;
                self.warnings.push(Diagnostic::warning(
                    o.pattern.span,
                    "override pattern matches no adapted module",
                    "matches nothing",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn attach_adapter(
        &mut self,
        inst: InstId,
        def: &'a ModuleDef,
        args: Vec<ArgVal>,
        span: Span,
    ) -> Result<(), Diagnostic> {
        let mut base = self.bind_params(def, args, span)?;
        let wraps = def.wraps.as_ref().ok_or_else(|| {
            Diagnostic::error(span, "internal error: adapter without wraps", "here")
        })?;
        let wrapped = &self.instances[inst];
        for n in &wraps.names {
            let Some(v) = wrapped.members.get(&n.name) else {
                return Err(Diagnostic::error(
                    n.span,
                    format!(
                        "`{}` has no parameter or member `{}`",
                        wrapped.def.name.name, n.name
                    ),
                    "not found",
                )
                .with_label(wrapped.def.name.span, "wrapped module defined here"));
            };
            base.insert(n.name.clone(), v.clone());
        }
        // The wrapped module's weights are visible by their member names.
        for (k, v) in &wrapped.members {
            if matches!(v, Value::Decl(_) | Value::Part(..)) {
                base.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let path = wrapped.path.clone();
        base.insert("module_path".into(), Value::Str(path.clone()));
        base.insert(
            "module_name".into(),
            Value::Str(path.rsplit('.').next().unwrap_or(&path).to_string()),
        );
        let mut env = Env {
            base,
            frames: Vec::new(),
        };
        let mut cx = WalkCx {
            path,
            adapter: true,
            forward: None,
            peft: None,
            penalties: Vec::new(),
            after_step: None,
            masks: Vec::new(),
            stacks: Vec::new(),
        };
        // An error in the adapter's body also points at the rule that applied it; when the
        // body is a library's, the rule in the spec is the primary location.
        let entry = self.loaded.entry;
        self.walk_members(&def.members, &mut env, &mut cx)
            .map_err(|mut d| {
                let label = Label {
                    span,
                    message: format!(
                        "`{}` applied to `{}` here",
                        def.name.name,
                        cx_path(&self.instances[inst].path)
                    ),
                };
                let at = usize::from(d.labels.first().is_some_and(|l| l.span.file == entry));
                d.labels.insert(at.min(d.labels.len()), label);
                d
            })?;
        let forward = cx
            .forward
            .and_then(|i| match &def.members.get(i).map(|m| &m.kind) {
                Some(MemberKind::Forward(f)) => Some(f),
                _ => None,
            });
        self.instances[inst].adapters.push(AdapterInst {
            def,
            members: env.base,
            forward,
            peft: cx.peft,
            penalties: cx.penalties,
            after_step: cx.after_step,
            masks: cx.masks,
            stacks: cx.stacks,
        });
        Ok(())
    }

    /// Calls an instance's forward with the adapters below `level` applied (`level` =
    /// number of adapters means all of them).
    pub(crate) fn call_instance(
        &mut self,
        inst: InstId,
        level: usize,
        args: Vec<ArgVal>,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        // The reference forward runs the base model alone.
        let level = if self.adapters_off { 0 } else { level };
        self.enter(span)?;
        let r = if level == 0 {
            let i = &self.instances[inst];
            let Some(f) = i.forward else {
                return Err(Diagnostic::error(
                    span,
                    format!("module `{}` has no `forward`", i.def.name.name),
                    "called here",
                )
                .with_label(i.def.name.span, "defined here"));
            };
            let env = Env::new(i.members.clone());
            self.call_fn(f, env, args, span)
        } else {
            let a = &self.instances[inst].adapters[level - 1];
            match a.forward {
                Some(f) => {
                    let mut base = a.members.clone();
                    base.insert("base".into(), Value::Base(inst, level - 1));
                    self.call_fn(f, Env::new(base), args, span)
                }
                None => self.call_instance(inst, level - 1, args, span),
            }
        };
        self.depth -= 1;
        r.map_err(|mut d| {
            if d.context.is_empty() {
                let i = &self.instances[inst];
                let adapters: Vec<&str> = i.adapters[..level]
                    .iter()
                    .map(|a| a.def.name.name.as_str())
                    .collect();
                let with = if adapters.is_empty() {
                    String::new()
                } else {
                    format!(" adapted by {}", adapters.join(", "))
                };
                let path = if i.path.is_empty() {
                    "the model"
                } else {
                    &i.path
                };
                d.context.push(format!(
                    "in the forward of `{path}` (a `{}`{with})",
                    i.def.name.name
                ));
            }
            d
        })
    }

    /// The trainable param of this adapter called `n` (a `peft_mask`/`peft_stack` entry).
    fn adapter_param(&self, env: &Env, n: &Ident, member: &str) -> Result<DeclId, Diagnostic> {
        match env.get(&n.name) {
            Some(Value::Decl(id)) if self.decls[*id].kind == DeclKind::Param => Ok(*id),
            _ => Err(Diagnostic::error(
                n.span,
                format!("`{}` is not a trainable param of this adapter", n.name),
                "not a param",
            )
            .with_help(format!("`{member}` names params declared before it"))),
        }
    }

    /// A `param: axis` entry of `member`: the param and an axis in range for it. `example`
    /// completes the help's `member "…`.
    fn param_axis(
        &mut self,
        a: &'a Arg,
        env: &mut Env,
        member: &str,
        example: &str,
    ) -> Result<(DeclId, usize), Diagnostic> {
        let Some(name) = &a.name else {
            return Err(Diagnostic::error(
                a.value.span,
                format!("`{member}` lists `param: axis` pairs"),
                "unnamed",
            )
            .with_help(format!("e.g. `{member} \"{example}`")));
        };
        let id = self.adapter_param(env, name, member)?;
        let axis = self.eval_int(&a.value, env)?;
        let rank = self.decls[id].ty.rank() as i64;
        if !(0..rank).contains(&axis) {
            return Err(Diagnostic::error(
                a.value.span,
                format!(
                    "axis {axis} is out of range for `{}`, of rank {rank}",
                    name.name
                ),
                "bad axis",
            ));
        }
        Ok((id, axis as usize))
    }

    /// A `peft_stack` member: its key, its parts' paths and their one axis.
    fn peft_stack(
        &mut self,
        key: &StrLit,
        parts: &'a [Arg],
        env: &mut Env,
    ) -> Result<super::PeftStack, Diagnostic> {
        if key.value.is_empty() || key.value.contains('.') {
            return Err(Diagnostic::error(
                key.span,
                format!("`{}` is not a root-level PEFT key", key.value),
                "key",
            )
            .with_help(
                "a stacked tensor is stored at the root of the file, like `prompt_embeddings`",
            ));
        }
        let mut paths = Vec::new();
        let mut axis: Option<(i64, Span)> = None;
        for a in parts {
            let (id, ax) =
                self.param_axis(a, env, "peft_stack", "prompt_embeddings\" { K: 1, V: 1 }")?;
            let ax = ax as i64;
            match axis {
                Some((first, at)) if first != ax => {
                    return Err(Diagnostic::error(
                        a.value.span,
                        format!("the parts of a stack share one axis; this is {ax}, the first is {first}"),
                        "another axis",
                    )
                    .with_label(at, "the first part's"));
                }
                _ => axis = Some((ax, a.value.span)),
            }
            paths.push(self.decls[id].path.clone());
        }
        let Some((axis, _)) = axis else {
            return Err(Diagnostic::error(
                key.span,
                "`peft_stack` lists no params",
                "empty",
            ));
        };
        Ok(super::PeftStack {
            key: key.value.clone(),
            axis: axis as usize,
            parts: paths,
        })
    }

    /// A `peft_mask` member: the key tensor's path and each cut tensor's path and axis.
    fn peft_mask(
        &mut self,
        field: &StrLit,
        key: &Ident,
        axes: &'a [Arg],
        env: &mut Env,
    ) -> Result<super::PeftMask, Diagnostic> {
        let key = self.decls[self.adapter_param(env, key, "peft_mask")?]
            .path
            .clone();
        let mut cut = Vec::new();
        for a in axes {
            let (id, axis) = self.param_axis(
                a,
                env,
                "peft_mask",
                "rank_pattern\" at E { A: 0, E: 0, B: 1 }",
            )?;
            cut.push((self.decls[id].path.clone(), axis));
        }
        Ok(super::PeftMask {
            field: field.value.clone(),
            key,
            cut,
        })
    }

    /// A `shared` member: the tensor at its path is declared by the first instance and grows
    /// to the largest extent any later declaration asks for along each axis; the instance
    /// gets a view of its own leading block (`Value::Part`).
    #[allow(clippy::too_many_arguments)]
    fn declare_shared(
        &mut self,
        name: &Ident,
        ty: &'a TensorTypeAnn,
        rename: Option<&StrLit>,
        init: &'a Expr,
        m: &'a Member,
        env: &mut Env,
        cx: &WalkCx,
    ) -> Result<Value, Diagnostic> {
        no_rest(ty)?;
        let mut shape = Vec::new();
        for d in &ty.dims {
            shape.push(self.eval_dim(d, env)?);
        }
        let dtype = ty.dtype.unwrap_or(DType::F32);
        let path = decl_path(&cx.path, name, rename);
        let Some(id) = self.decls.iter().position(|d| d.path == path) else {
            self.decls.push(Decl {
                path,
                kind: DeclKind::Buffer,
                ty: TensorType::new(dtype, shape.clone()),
                span: m.span,
                doc: m.doc.clone(),
                init: Some((init, env.clone())),
                quant: None,
                replace: None,
            });
            return Ok(Value::Part(self.decls.len() - 1, shape));
        };
        let prev = &self.decls[id];
        if prev.kind != DeclKind::Buffer || prev.ty.rank() != shape.len() || prev.ty.dtype != dtype
        {
            let message = if prev.kind == DeclKind::Buffer {
                format!(
                    "`{path}` is shared with a rank or dtype of its own: {} here, {} before",
                    TensorType::new(dtype, shape.clone()),
                    prev.ty
                )
            } else {
                format!("`{path}` is declared twice: shared here, a weight or param before")
            };
            return Err(Diagnostic::error(name.span, message, "second declaration")
                .with_label(prev.span, "first declaration"));
        }
        let grown: Vec<usize> = prev
            .ty
            .shape
            .iter()
            .zip(&shape)
            .map(|(a, b)| *a.max(b))
            .collect();
        self.decls[id].ty = TensorType::new(dtype, grown);
        Ok(Value::Part(id, shape))
    }

    /// One instance's block of a shared tensor: the whole tensor sliced to `shape` along
    /// every axis where it is larger.
    pub(crate) fn part_value(
        &mut self,
        id: DeclId,
        shape: &[usize],
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        let mut v = self.decl_value(id, span)?;
        let full = self.decls[id].ty.shape.clone();
        for (axis, (&want, &have)) in shape.iter().zip(&full).enumerate() {
            if want < have {
                v = self.emit(
                    Op::Slice {
                        axis,
                        start: 0,
                        end: want,
                    },
                    &[v],
                    None,
                    span,
                )?;
            }
        }
        Ok(v)
    }

    /// The value of a declared tensor in the function being built: an input, dequantized if
    /// the weight is quantized.
    pub(crate) fn decl_value(&mut self, id: DeclId, span: Span) -> Result<ValueId, Diagnostic> {
        if let Some(v) = self.fb_ref(span)?.decl_inputs.get(&id) {
            return Ok(*v);
        }
        let d = self.decls[id].clone();
        let is_init = self.fb_ref(span)?.is_init;
        let kind = match d.kind {
            DeclKind::State if self.after.is_some() => InputKind::State,
            DeclKind::State => {
                return Err(Diagnostic::error(
                    span,
                    format!("`{}` is training state, read only by `after_step`", d.path),
                    "read here",
                )
                .with_label(d.span, "declared here")
                .with_help("a value `forward` needs is a param or a buffer"));
            }
            DeclKind::Param if !is_init => InputKind::Param,
            DeclKind::Param | DeclKind::Buffer if is_init && d.init.is_some() => {
                return Err(Diagnostic::error(
                    span,
                    format!(
                        "the initializer reads `{}`, which is initialized after it",
                        d.path
                    ),
                    "read here",
                )
                .with_label(d.span, "declared here")
                .with_help(
                    "initializers run in declaration order: they may read frozen weights and \
                     the tensors initialized before them",
                ));
            }
            _ => InputKind::Weight,
        };
        let loc = self.loc(d.span);
        let v = match d.quant {
            Some(q) if kind == InputKind::Weight => {
                let fb = self.fb_mut(span)?;
                let codes = fb.func.add_input(
                    d.path.clone(),
                    kind,
                    d.ty.with_dtype(q.format.code_dtype()),
                    Some(loc),
                );
                fb.origins.push(d.span);
                let blocks = d.ty.numel().div_ceil(q.block);
                let mut args = vec![codes];
                let scales: Vec<(String, TensorType)> = if q.nested == 0 {
                    vec![(
                        format!("{}.absmax", d.path),
                        TensorType::new(DType::F32, vec![blocks]),
                    )]
                } else {
                    vec![
                        (
                            format!("{}.absmax", d.path),
                            TensorType::new(DType::U8, vec![blocks]),
                        ),
                        (
                            format!("{}.nested_absmax", d.path),
                            TensorType::new(DType::F32, vec![blocks.div_ceil(q.nested)]),
                        ),
                        (
                            format!("{}.nested_offset", d.path),
                            TensorType::scalar(DType::F32),
                        ),
                    ]
                };
                for (name, ty) in scales {
                    let fb = self.fb_mut(span)?;
                    args.push(fb.func.add_input(name, kind, ty, Some(loc)));
                    fb.origins.push(d.span);
                }
                self.emit(
                    Op::Dequantize {
                        format: q.format,
                        block: q.block,
                        nested: q.nested,
                    },
                    &args,
                    Some(d.ty.clone()),
                    d.span,
                )?
            }
            _ => {
                let fb = self.fb_mut(span)?;
                let v = fb
                    .func
                    .add_input(d.path.clone(), kind, d.ty.clone(), Some(loc));
                fb.origins.push(d.span);
                v
            }
        };
        self.fb_mut(span)?.decl_inputs.insert(id, v);
        Ok(v)
    }

    /// `replace name = value` in an adapter: `name` must be a frozen, unquantized weight of
    /// the wrapped module that no other adapter replaces.
    fn declare_replace(
        &mut self,
        name: &Ident,
        value: &'a Expr,
        span: Span,
        env: &Env,
        cx: &WalkCx,
    ) -> Result<(), Diagnostic> {
        if !cx.adapter {
            return Err(Diagnostic::error(
                span,
                "`replace` is only allowed in adapters",
                "in a module",
            )
            .with_help("a module computes its own tensors with `param` or `shared`"));
        }
        let Some(Value::Decl(id)) = env.get(&name.name) else {
            return Err(Diagnostic::error(
                name.span,
                format!("`{}` is not a weight of the wrapped module", name.name),
                "not a weight",
            ));
        };
        let d = &self.decls[*id];
        let problem = if d.kind != DeclKind::Weight {
            Some("is trainable, not a frozen weight")
        } else if d.quant.is_some() {
            Some("is quantized: its codes are loaded as stored and cannot be replaced")
        } else if d.replace.is_some() {
            Some("is replaced twice")
        } else {
            None
        };
        if let Some(p) = problem {
            let mut e = Diagnostic::error(name.span, format!("`{}` {p}", d.path), "replaced here")
                .with_label(d.span, "declared here");
            if let Some((_, _, prev)) = &d.replace {
                e = e.with_label(*prev, "first replaced here");
            }
            return Err(e);
        }
        self.decls[*id].replace = Some((value, env.clone(), span));
        Ok(())
    }

    /// Reads a weight as a frozen input (for the initial value of an unfrozen weight).
    pub(super) fn frozen_input(&mut self, id: DeclId, span: Span) -> Result<ValueId, Diagnostic> {
        let d = self.decls[id].clone();
        let loc = self.loc(d.span);
        let fb = self.fb_mut(span)?;
        let v = fb
            .func
            .add_input(d.path.clone(), InputKind::Weight, d.ty.clone(), Some(loc));
        fb.origins.push(d.span);
        Ok(v)
    }

    /// Guards against runaway recursion.
    pub(crate) fn enter(&mut self, span: Span) -> Result<(), Diagnostic> {
        if self.depth >= super::MAX_DEPTH {
            return Err(Diagnostic::error(
                span,
                "calls nest too deeply",
                "while elaborating this call",
            )
            .with_help(format!(
                "graft functions and modules may nest at most {} calls; is something recursive?",
                super::MAX_DEPTH
            )));
        }
        self.depth += 1;
        Ok(())
    }
}

/// A compile-time value as a config value, if it is one.
fn config_value(v: &Value) -> Option<ConfigValue> {
    Some(match v {
        Value::Int(i) => ConfigValue::Int(*i),
        Value::Float(x) => ConfigValue::Float(*x),
        Value::Bool(b) => ConfigValue::Bool(*b),
        Value::Str(s) => ConfigValue::Str(s.clone()),
        Value::List(items) => {
            ConfigValue::List(items.iter().map(config_value).collect::<Option<_>>()?)
        }
        _ => return None,
    })
}

/// A module path as messages name it.
fn cx_path(path: &str) -> &str {
    if path.is_empty() { "the model" } else { path }
}

/// A declared tensor's type names every axis: `[.., d]` is for parameter annotations.
pub(crate) fn no_rest(ty: &TensorTypeAnn) -> Result<(), Diagnostic> {
    if ty.rest {
        return Err(Diagnostic::error(
            ty.span,
            "a declared tensor needs every axis: `..` only annotates parameters",
            "`..` here",
        ));
    }
    Ok(())
}

/// A declared tensor's path: its name (or `as` segment) under the module's path, or, for
/// `as "/name"`, from the root.
fn decl_path(module: &str, name: &Ident, rename: Option<&StrLit>) -> String {
    let seg = rename.map_or(name.name.as_str(), |r| r.value.as_str());
    match seg.strip_prefix('/') {
        Some(abs) => abs.to_string(),
        None => join(module, seg),
    }
}
