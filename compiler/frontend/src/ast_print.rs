//! The AST's printed form (`graft ir --emit=ast`): one line per item and member with its
//! `line:col`, expressions fully parenthesized so precedence is visible.

use crate::ast::*;
use crate::source::SourceMap;
use std::fmt::Write;

/// Prints one file's AST.
pub fn print_ast(f: &SourceFile, sources: &SourceMap) -> String {
    let mut p = Printer {
        out: String::new(),
        sources,
    };
    let _ = writeln!(p.out, "file {}", sources.file(f.file).name);
    for item in &f.items {
        p.item(item);
    }
    p.out
}

struct Printer<'s> {
    out: String,
    sources: &'s SourceMap,
}

impl Printer<'_> {
    fn line(&mut self, depth: usize, span: Span, text: &str) {
        let (l, c) = self.sources.line_col(span.file, span.start);
        let _ = writeln!(self.out, "{}{text}  @{l}:{c}", "  ".repeat(depth));
    }

    fn docs(&mut self, depth: usize, doc: &[String]) {
        for d in doc {
            let _ = writeln!(self.out, "{}/// {d}", "  ".repeat(depth));
        }
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Use(u) => {
                let t = match &u.target {
                    UseTarget::File(s) => format!("{:?}", s.value),
                    UseTarget::Path { path, group } => {
                        let p: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
                        let g: Vec<&str> = group.iter().map(|i| i.name.as_str()).collect();
                        if g.is_empty() {
                            p.join(".")
                        } else {
                            format!("{}.{{{}}}", p.join("."), g.join(", "))
                        }
                    }
                };
                self.line(1, u.span, &format!("use {t}"));
            }
            Item::Const(c) => {
                self.docs(1, &c.doc);
                self.line(
                    1,
                    c.span,
                    &format!("const {} = {}", c.name.name, expr(&c.value)),
                );
            }
            Item::Fn(f) => {
                self.docs(1, &f.doc);
                self.line(
                    1,
                    f.span,
                    &format!("fn {}({})", f.name.name, fn_params(&f.params)),
                );
                self.block(2, &f.body);
            }
            Item::Module(m) => {
                self.docs(1, &m.doc);
                let params: Vec<String> = m
                    .params
                    .iter()
                    .map(|p| {
                        let key = p
                            .config_key
                            .as_ref()
                            .map_or_else(String::new, |k| format!(" as {:?}", k.value));
                        match &p.default {
                            Some(d) => {
                                format!("{}: {}{key} = {}", p.name.name, p.ty.name(), expr(d))
                            }
                            None => format!("{}: {}{key}", p.name.name, p.ty.name()),
                        }
                    })
                    .collect();
                let head = match &m.wraps {
                    Some(w) => {
                        let names: Vec<&str> = w.names.iter().map(|n| n.name.as_str()).collect();
                        format!(
                            "adapter {}({}) wraps {}({})",
                            m.name.name,
                            params.join(", "),
                            w.kind.name,
                            names.join(", ")
                        )
                    }
                    None => format!("module {}({})", m.name.name, params.join(", ")),
                };
                self.line(1, m.span, &head);
                self.members(2, &m.members);
            }
            Item::Model(m) => {
                self.docs(1, &m.doc);
                self.line(
                    1,
                    m.span,
                    &format!("model {} = {}", m.name.name, expr(&m.value)),
                );
                if let Some(f) = &m.from {
                    self.line(2, f.span, &format!("from {:?}", f.value));
                }
                if let Some(w) = &m.weights {
                    self.line(2, w.span, &format!("weights {:?}", w.value));
                }
                for q in &m.quantize {
                    self.line(
                        2,
                        q.span,
                        &format!("quantize {} at {}", expr(&q.format), target(&q.target)),
                    );
                }
            }
            Item::Adapt(a) => {
                self.line(1, a.span, &format!("adapt {}", a.model.name));
                for r in &a.rules {
                    self.line(
                        2,
                        r.span,
                        &format!("{} at {}", expr(&r.adapter), target(&r.target)),
                    );
                    for o in &r.overrides {
                        self.line(
                            3,
                            o.span,
                            &format!("where {:?} {{{}}}", o.pattern.value, args(&o.args)),
                        );
                    }
                }
            }
            Item::Train(t) => {
                self.line(1, t.span, "train");
                for s in &t.settings {
                    self.line(2, s.key.span, &format!("{} {}", s.key.name, expr(&s.value)));
                }
            }
        }
    }

    fn members(&mut self, depth: usize, ms: &[Member]) {
        for m in ms {
            self.docs(depth, &m.doc);
            match &m.kind {
                MemberKind::Weight { name, ty, rename } => {
                    self.line(
                        depth,
                        m.span,
                        &format!(
                            "weight {}: {}{}",
                            name.name,
                            tensor_ty(ty),
                            rename
                                .as_ref()
                                .map_or(String::new(), |r| format!(" as {:?}", r.value))
                        ),
                    );
                }
                MemberKind::Param {
                    name,
                    ty,
                    rename,
                    init,
                }
                | MemberKind::Shared {
                    name,
                    ty,
                    rename,
                    init,
                }
                | MemberKind::Buffer {
                    name,
                    ty,
                    rename,
                    init,
                } => {
                    let kw = match m.kind {
                        MemberKind::Shared { .. } => "shared",
                        MemberKind::Buffer { .. } => "buffer",
                        _ => "param",
                    };
                    self.line(
                        depth,
                        m.span,
                        &format!(
                            "{kw} {}: {}{} = {}",
                            name.name,
                            tensor_ty(ty),
                            rename
                                .as_ref()
                                .map_or(String::new(), |r| format!(" as {:?}", r.value)),
                            expr(init)
                        ),
                    );
                }
                MemberKind::Input { name, ty } => self.line(
                    depth,
                    m.span,
                    &format!("input {}: {}", name.name, tensor_ty(ty)),
                ),
                MemberKind::State { name, ty, rename } => self.line(
                    depth,
                    m.span,
                    &format!(
                        "state {}: {}{}",
                        name.name,
                        tensor_ty(ty),
                        rename
                            .as_ref()
                            .map_or(String::new(), |r| format!(" as {:?}", r.value))
                    ),
                ),
                MemberKind::Penalty(e) => self.line(depth, m.span, &format!("penalty {}", expr(e))),
                MemberKind::AfterStep(f) => {
                    self.line(
                        depth,
                        m.span,
                        &format!("after_step({})", fn_params(&f.params)),
                    );
                    self.block(depth + 1, &f.body);
                }
                MemberKind::PeftMask { field, key, axes } => self.line(
                    depth,
                    m.span,
                    &format!(
                        "peft_mask {:?} at {} {{{}}}",
                        field.value,
                        key.name,
                        args(axes)
                    ),
                ),
                MemberKind::PeftStack { key, parts } => self.line(
                    depth,
                    m.span,
                    &format!("peft_stack {:?} {{{}}}", key.value, args(parts)),
                ),
                MemberKind::Unfreeze(ns) => {
                    let names: Vec<&str> = ns.iter().map(|n| n.name.as_str()).collect();
                    self.line(depth, m.span, &format!("unfreeze {}", names.join(", ")));
                }
                MemberKind::Replace { name, value } => self.line(
                    depth,
                    m.span,
                    &format!("replace {} = {}", name.name, expr(value)),
                ),
                MemberKind::Require { cond, message } => self.line(
                    depth,
                    m.span,
                    &format!("require {}, {:?}", expr(cond), message.value),
                ),
                MemberKind::Let { name, value } => self.line(
                    depth,
                    m.span,
                    &format!("let {} = {}", name.name, expr(value)),
                ),
                MemberKind::For { var, lo, hi, body } => {
                    self.line(
                        depth,
                        m.span,
                        &format!("for {} in {}..{}", var.name, expr(lo), expr(hi)),
                    );
                    self.members(depth + 1, body);
                }
                MemberKind::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    self.line(depth, m.span, &format!("if {}", expr(cond)));
                    self.members(depth + 1, then);
                    if !otherwise.is_empty() {
                        let _ = writeln!(self.out, "{}else", "  ".repeat(depth));
                        self.members(depth + 1, otherwise);
                    }
                }
                MemberKind::Forward(f) => {
                    self.line(depth, m.span, &format!("forward({})", fn_params(&f.params)));
                    self.block(depth + 1, &f.body);
                }
                MemberKind::Peft { peft_type, fields } => {
                    self.line(
                        depth,
                        m.span,
                        &format!("peft {:?} {{{}}}", peft_type.value, args(fields)),
                    );
                }
                MemberKind::Instance {
                    name,
                    index,
                    output,
                    rename,
                    value,
                } => {
                    let mut idx = index
                        .as_ref()
                        .map_or(String::new(), |i| format!("[{}]", expr(i)));
                    if let Some(r) = rename {
                        idx += &format!(" as {:?}", r.value);
                    }
                    self.line(
                        depth,
                        m.span,
                        &format!(
                            "{}{}{} = {}",
                            if *output { "output " } else { "" },
                            name.name,
                            idx,
                            expr(value)
                        ),
                    );
                }
            }
        }
    }

    fn block(&mut self, depth: usize, b: &Block) {
        for s in &b.stmts {
            self.stmt(depth, s);
        }
        if let Some(r) = &b.result {
            self.line(depth, r.span, &format!("=> {}", expr(r)));
        }
    }

    fn stmt(&mut self, depth: usize, s: &Stmt) {
        match s {
            Stmt::Let { name, ty, value } => {
                let t = ty
                    .as_ref()
                    .map_or(String::new(), |t| format!(": {}", type_ann(t)));
                self.line(
                    depth,
                    name.span,
                    &format!("let {}{t} = {}", name.name, expr(value)),
                );
            }
            Stmt::Assign { name, value } => self.line(
                depth,
                name.span,
                &format!("{} = {}", name.name, expr(value)),
            ),
            Stmt::For { var, lo, hi, body } => {
                self.line(
                    depth,
                    var.span,
                    &format!("for {} in {}..{}", var.name, expr(lo), expr(hi)),
                );
                self.block(depth + 1, body);
            }
        }
    }
}

fn target(t: &Target) -> String {
    match &t.kind {
        TargetKind::Regex(s) => format!("{s:?}"),
        TargetKind::Names(ns) => format!(
            "[{}]",
            ns.iter()
                .map(|n| format!("{:?}", n.value))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn tensor_ty(t: &TensorTypeAnn) -> String {
    let rest = t.rest.then(|| "..".to_string());
    let dims: Vec<String> = rest.into_iter().chain(t.dims.iter().map(expr)).collect();
    format!(
        "[{}]{}",
        dims.join(", "),
        t.dtype.map_or(String::new(), |d| format!(" {d}"))
    )
}

fn type_ann(t: &TypeAnn) -> String {
    match t {
        TypeAnn::Scalar(s, _) => s.name().to_string(),
        TypeAnn::Tensor(t) => tensor_ty(t),
    }
}

fn fn_params(ps: &[FnParam]) -> String {
    ps.iter()
        .map(|p| {
            let mut s = p.name.name.clone();
            if let Some(t) = &p.ty {
                s += &format!(": {}", type_ann(t));
            }
            if let Some(d) = &p.default {
                s += &format!(" = {}", expr(d));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn args(a: &[Arg]) -> String {
    a.iter()
        .map(|a| match &a.name {
            Some(n) => format!("{}: {}", n.name, expr(&a.value)),
            None => expr(&a.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn block_inline(b: &Block) -> String {
    let mut parts: Vec<String> = b
        .stmts
        .iter()
        .map(|s| match s {
            Stmt::Let { name, value, .. } => format!("let {} = {}", name.name, expr(value)),
            Stmt::Assign { name, value } => format!("{} = {}", name.name, expr(value)),
            Stmt::For { var, lo, hi, body } => format!(
                "for {} in {}..{} {}",
                var.name,
                expr(lo),
                expr(hi),
                block_inline(body)
            ),
        })
        .collect();
    if let Some(r) = &b.result {
        parts.push(expr(r));
    }
    format!("{{ {} }}", parts.join("; "))
}

/// An expression, fully parenthesized.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Float(x) => graft_ir::attr::fmt_float(*x),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(xs) => format!("[{}]", xs.iter().map(expr).collect::<Vec<_>>().join(", ")),
        ExprKind::Unary(op, x) => {
            format!("({}{})", if *op == UnOp::Neg { "-" } else { "!" }, expr(x))
        }
        ExprKind::Binary(op, l, r) => format!("({} {} {})", expr(l), op.symbol(), expr(r)),
        ExprKind::Transpose(x) => format!("{}^T", expr(x)),
        ExprKind::Call(f, a) => format!("{}({})", expr(f), args(a)),
        ExprKind::Index(x, i) => format!("{}[{}]", expr(x), expr(i)),
        ExprKind::Field(x, n) => format!("{}.{}", expr(x), n.name),
        ExprKind::If(c, t, o) => format!(
            "if {} {} else {}",
            expr(c),
            block_inline(t),
            block_inline(o)
        ),
        ExprKind::Block(b) => block_inline(b),
    }
}
