//! The parser: the pest grammar in `graft.pest`, and the walk from pest pairs to the AST.

use crate::ast::*;
use crate::diag::Diagnostic;
use pest::Parser as _;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op as POp, PrattParser};
use std::sync::OnceLock;

#[allow(missing_docs)]
mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "graft.pest"]
    pub struct GraftParser;
}
use grammar::{GraftParser, Rule};

/// Deepest bracket nesting accepted, so hostile input cannot exhaust the stack.
const MAX_NESTING: usize = 200;

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(POp::infix(Rule::or_op, Assoc::Left))
            .op(POp::infix(Rule::and_op, Assoc::Left))
            .op(POp::infix(Rule::eq_op, Assoc::Left)
                | POp::infix(Rule::ne_op, Assoc::Left)
                | POp::infix(Rule::lt_op, Assoc::Left)
                | POp::infix(Rule::le_op, Assoc::Left)
                | POp::infix(Rule::gt_op, Assoc::Left)
                | POp::infix(Rule::ge_op, Assoc::Left))
            .op(POp::infix(Rule::add_op, Assoc::Left) | POp::infix(Rule::sub_op, Assoc::Left))
            .op(POp::infix(Rule::mul_op, Assoc::Left)
                | POp::infix(Rule::div_op, Assoc::Left)
                | POp::infix(Rule::rem_op, Assoc::Left)
                | POp::infix(Rule::matmul_op, Assoc::Left))
            .op(POp::prefix(Rule::neg_op) | POp::prefix(Rule::not_op))
    })
}

/// What a grammar rule is called in an "expected ..." message.
fn rule_name(r: Rule) -> &'static str {
    match r {
        Rule::EOI => "end of file",
        Rule::ident => "a name",
        Rule::int | Rule::float => "a number",
        Rule::string => "a string",
        Rule::expr | Rule::postfixed => "an expression",
        Rule::item => {
            "an item (`use`, `const`, `fn`, `module`, `adapter`, `model`, `adapt`, `train`)"
        }
        Rule::member => {
            "a member (`weight`, `param`, `let`, `for`, `if`, `forward`, or `name = kind(...)`)"
        }
        Rule::stmt | Rule::let_stmt | Rule::for_stmt | Rule::assign_stmt => "a statement",
        Rule::type_ann | Rule::tensor_type => "a type like `[B, S, hidden]`",
        Rule::scalar_type => "a type (`int`, `float`, `bool`, `string`)",
        Rule::target => "a target: a regex string or a list of names",
        Rule::call_args => "`(`",
        Rule::else_kw => "`else` (an `if` expression needs both branches)",
        Rule::at_kw => "`at` and a target",
        Rule::dtype => "a dtype",
        Rule::doc => "a doc comment",
        Rule::model_clause => "`weights` or `quantize`",
        Rule::setting => "a setting like `steps 100`",
        Rule::adapt_rule => "a rule like `lora(r: 8) at [\"q_proj\"]`",
        Rule::arg => "an argument",
        Rule::params | Rule::param => "a parameter like `r: int = 8`",
        Rule::fn_params | Rule::fn_param => "a parameter",
        _ => "valid syntax",
    }
}

/// Parses one file's text.
pub fn parse_source(text: &str, file: FileId) -> Result<SourceFile, Diagnostic> {
    check_nesting(text, file)?;
    pest::set_call_limit(std::num::NonZeroUsize::new(20_000_000));
    let mut pairs = GraftParser::parse(Rule::file, text).map_err(|e| pest_error(e, file, text))?;
    let root = pairs
        .next()
        .ok_or_else(|| Diagnostic::error(sp(file, 0, 0), "empty parse", "here"))?;
    let mut items = Vec::new();
    for p in root.into_inner() {
        if p.as_rule() == Rule::item {
            if let Some(inner) = p.into_inner().next() {
                items.push(item(inner, file)?);
            }
        }
    }
    Ok(SourceFile { file, items })
}

fn sp(file: FileId, start: usize, end: usize) -> Span {
    Span {
        file,
        start: start as u32,
        end: end as u32,
    }
}

fn check_nesting(text: &str, file: FileId) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut run = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        run = if c == '-' || c == '!' {
            run + 1
        } else if c.is_whitespace() {
            run
        } else {
            0
        };
        if depth > MAX_NESTING || run > MAX_NESTING {
            return Err(Diagnostic::error(sp(file, i, i + c.len_utf8()), "expression nested too deeply", "nesting limit reached here")
                .with_help(format!("graft accepts at most {MAX_NESTING} levels of nesting; split the expression with `let`")));
        }
    }
    Ok(())
}

fn pest_error(e: pest::error::Error<Rule>, file: FileId, text: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Widen an empty span to the next character so the underline is visible.
    let end = if end > start {
        end
    } else {
        text[start..]
            .chars()
            .next()
            .map_or(start, |c| start + c.len_utf8())
    };
    let found = text[start..]
        .chars()
        .next()
        .map_or("end of file".to_string(), |c| {
            let word: String = text[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if word.is_empty() {
                format!("`{c}`")
            } else {
                format!("`{word}`")
            }
        });
    match e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(|r| rule_name(*r)).collect();
            names.sort();
            names.dedup();
            if names.len() > 1 {
                names.retain(|n| *n != "valid syntax");
            }
            let expected = match names.len() {
                0 => "valid syntax".to_string(),
                1 => names[0].to_string(),
                _ => format!("one of: {}", names.join(", ")),
            };
            let prev = text[..start].chars().last();
            if found == "`\"`" {
                return Diagnostic::error(
                    sp(file, start, end),
                    "syntax error: unterminated string",
                    "this string is not closed",
                )
                .with_help("a string ends with `\"` on the same line");
            }
            if found == "`=`" && !positives.contains(&Rule::expr) {
                return Diagnostic::error(sp(file, start, end), "syntax error: unexpected `=`", "not allowed here")
                    .with_help("comparisons are written `==`; a single `=` only appears in `let`, assignments and declarations");
            }
            if prev.is_some_and(|c| c.is_ascii_digit())
                && found.starts_with('`')
                && found[1..].starts_with(|c: char| c.is_alphabetic())
            {
                return Diagnostic::error(
                    sp(file, start, end),
                    format!("syntax error: a number cannot be followed by {found}"),
                    "malformed number",
                )
                .with_help("an exponent needs digits, e.g. `1e-3`");
            }
            let mut d = Diagnostic::error(
                sp(file, start, end),
                format!("syntax error: expected {expected}, found {found}"),
                format!("expected {expected}"),
            );
            if found == "end of file" {
                d = d
                    .with_help("the file ended early: check that every `{`, `(` and `[` is closed");
            } else if positives.contains(&Rule::EOI) && found == "`}`" {
                d = d.with_help("this `}` has no matching `{`");
            } else if names.contains(&"a name")
                && ["model", "weight", "param", "output", "train"]
                    .iter()
                    .any(|k| found == format!("`{k}`"))
            {
                d = d.with_help(format!("{found} is a keyword here"));
            }
            d
        }
        ErrorVariant::CustomError { message } => Diagnostic::error(
            sp(file, start, end),
            format!("syntax error: {message}"),
            "here",
        ),
    }
}

fn span_of(p: &Pair<Rule>, file: FileId) -> Span {
    let s = p.as_span();
    sp(file, s.start(), s.end())
}

fn bad(p: &Pair<Rule>, file: FileId, what: &str) -> Diagnostic {
    Diagnostic::error(
        span_of(p, file),
        format!("internal parser error: unexpected {what}"),
        "here",
    )
}

fn docs(pairs: &mut std::iter::Peekable<pest::iterators::Pairs<Rule>>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(p) = pairs.peek() {
        if p.as_rule() != Rule::doc {
            break;
        }
        let text = pairs
            .next()
            .and_then(|d| d.into_inner().next())
            .map_or("", |t| t.as_str());
        out.push(
            text.strip_prefix(' ')
                .unwrap_or(text)
                .trim_end()
                .to_string(),
        );
    }
    out
}

fn ident(p: Pair<Rule>, file: FileId) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span_of(&p, file),
    }
}

fn string(p: Pair<Rule>, file: FileId) -> Result<StrLit, Diagnostic> {
    let span = span_of(&p, file);
    let raw = p.into_inner().next().map_or("", |i| i.as_str());
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            // Regex escapes like `\.` pass through unchanged.
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => {
                return Err(Diagnostic::error(
                    span,
                    "string ends in a lone backslash",
                    "here",
                ));
            }
        }
    }
    Ok(StrLit { value: out, span })
}

fn need<'a>(
    it: &mut impl Iterator<Item = Pair<'a, Rule>>,
    parent: Span,
    what: &str,
) -> Result<Pair<'a, Rule>, Diagnostic> {
    it.next().ok_or_else(|| {
        Diagnostic::error(
            parent,
            format!("internal parser error: missing {what}"),
            "here",
        )
    })
}

fn item(p: Pair<Rule>, file: FileId) -> Result<Item, Diagnostic> {
    let span = span_of(&p, file);
    let rule = p.as_rule();
    let mut it = p.into_inner().peekable();
    Ok(match rule {
        Rule::use_item => {
            let t = need(&mut it, span, "use target")?;
            let target = if t.as_rule() == Rule::string {
                UseTarget::File(string(t, file)?)
            } else {
                let mut path = Vec::new();
                let mut group = Vec::new();
                for q in t.into_inner() {
                    match q.as_rule() {
                        Rule::ident => path.push(ident(q, file)),
                        _ => group.extend(q.into_inner().map(|g| ident(g, file))),
                    }
                }
                UseTarget::Path { path, group }
            };
            Item::Use(UseItem { target, span })
        }
        Rule::const_item => {
            let doc = docs(&mut it);
            let name = ident(need(&mut it, span, "name")?, file);
            let value = expr(need(&mut it, span, "value")?, file)?;
            Item::Const(ConstItem {
                doc,
                name,
                value,
                span,
            })
        }
        Rule::fn_item => {
            let doc = docs(&mut it);
            let name = ident(need(&mut it, span, "name")?, file);
            let params = fn_params(need(&mut it, span, "params")?, file)?;
            let body = body(need(&mut it, span, "body")?, file)?;
            Item::Fn(FnDef {
                doc,
                name,
                params,
                body,
                span,
            })
        }
        Rule::module_item | Rule::adapter_item => {
            let doc = docs(&mut it);
            let name = ident(need(&mut it, span, "name")?, file);
            let params = params(need(&mut it, span, "params")?, file)?;
            let wraps = if rule == Rule::adapter_item {
                let kind = ident(need(&mut it, span, "wrapped kind")?, file);
                let names = need(&mut it, span, "wrapped names")?
                    .into_inner()
                    .map(|n| ident(n, file))
                    .collect();
                Some(Wraps { kind, names })
            } else {
                None
            };
            let members = members(need(&mut it, span, "body")?, file)?;
            Item::Module(ModuleDef {
                doc,
                name,
                params,
                wraps,
                members,
                span,
            })
        }
        Rule::model_item => {
            let doc = docs(&mut it);
            it.next(); // the `model` keyword
            let name = ident(need(&mut it, span, "name")?, file);
            let value = expr(need(&mut it, span, "constructor")?, file)?;
            let mut weights = None;
            let mut from = None;
            let mut quantize = Vec::new();
            for clause in it {
                let Some(c) = clause.into_inner().next() else {
                    continue;
                };
                let cspan = span_of(&c, file);
                let mut ci = c.clone().into_inner();
                match c.as_rule() {
                    Rule::weights_clause => {
                        if weights.is_some() {
                            return Err(Diagnostic::error(
                                cspan,
                                "the weights file is given twice",
                                "second `weights` clause",
                            ));
                        }
                        weights = Some(string(need(&mut ci, cspan, "path")?, file)?);
                    }
                    Rule::from_clause => {
                        if from.is_some() {
                            return Err(Diagnostic::error(
                                cspan,
                                "the model folder is given twice",
                                "second `from` clause",
                            ));
                        }
                        ci.next(); // the `from` keyword
                        from = Some(string(need(&mut ci, cspan, "folder")?, file)?);
                    }
                    _ => {
                        let format = expr(need(&mut ci, cspan, "format")?, file)?;
                        let target = target(skip_kw(&mut ci, cspan)?, file)?;
                        quantize.push(QuantizeClause {
                            format,
                            target,
                            span: cspan,
                        });
                    }
                }
            }
            Item::Model(ModelDecl {
                doc,
                name,
                value,
                weights,
                from,
                quantize,
                span,
            })
        }
        Rule::adapt_item => {
            let model = ident(need(&mut it, span, "model name")?, file);
            let mut rules = Vec::new();
            for r in it {
                let rspan = span_of(&r, file);
                let mut ri = r.into_inner();
                let adapter = expr(need(&mut ri, rspan, "adapter")?, file)?;
                let target = target(skip_kw(&mut ri, rspan)?, file)?;
                let mut overrides = Vec::new();
                for o in ri {
                    let ospan = span_of(&o, file);
                    let mut oi = o.into_inner();
                    let pattern = string(need(&mut oi, ospan, "pattern")?, file)?;
                    let args = oi.map(|a| arg(a, file)).collect::<Result<_, _>>()?;
                    overrides.push(Override {
                        pattern,
                        args,
                        span: ospan,
                    });
                }
                rules.push(AdaptRule {
                    adapter,
                    target,
                    overrides,
                    span: rspan,
                });
            }
            Item::Adapt(AdaptBlock { model, rules, span })
        }
        Rule::train_item => {
            let mut settings = Vec::new();
            for s in it {
                let sspan = span_of(&s, file);
                let mut si = s.into_inner();
                let key = ident(need(&mut si, sspan, "key")?, file);
                let value = expr(need(&mut si, sspan, "value")?, file)?;
                settings.push(Setting { key, value });
            }
            Item::Train(TrainBlock { settings, span })
        }
        _ => {
            return Err(Diagnostic::error(
                span,
                "internal parser error: unknown item",
                "here",
            ));
        }
    })
}

/// The next pair after an `at` keyword.
fn skip_kw<'a>(
    it: &mut impl Iterator<Item = Pair<'a, Rule>>,
    span: Span,
) -> Result<Pair<'a, Rule>, Diagnostic> {
    let mut p = need(it, span, "target")?;
    if p.as_rule() == Rule::at_kw {
        p = need(it, span, "target")?;
    }
    Ok(p)
}

fn target(p: Pair<Rule>, file: FileId) -> Result<Target, Diagnostic> {
    let span = span_of(&p, file);
    let inner = need(&mut p.into_inner(), span, "pattern")?;
    let kind = if inner.as_rule() == Rule::string {
        TargetKind::Regex(string(inner, file)?.value)
    } else {
        TargetKind::Names(
            inner
                .into_inner()
                .map(|s| string(s, file))
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(Target { kind, span })
}

fn params(p: Pair<Rule>, file: FileId) -> Result<Vec<Param>, Diagnostic> {
    p.into_inner()
        .map(|q| {
            let span = span_of(&q, file);
            let mut it = q.into_inner();
            let name = ident(need(&mut it, span, "name")?, file);
            let ty = scalar_type(&need(&mut it, span, "type")?);
            let mut config_key = None;
            let mut default = None;
            for q in it {
                if q.as_rule() == Rule::rename {
                    let s = q
                        .into_inner()
                        .next()
                        .ok_or_else(|| Diagnostic::error(span, "expected a config key", "here"))?;
                    config_key = Some(string(s, file)?);
                } else {
                    default = Some(expr(q, file)?);
                }
            }
            Ok(Param {
                name,
                ty,
                config_key,
                default,
            })
        })
        .collect()
}

fn scalar_type(p: &Pair<Rule>) -> ScalarType {
    match p.as_str() {
        "int" => ScalarType::Int,
        "float" => ScalarType::Float,
        "bool" => ScalarType::Bool,
        _ => ScalarType::String,
    }
}

fn fn_params(p: Pair<Rule>, file: FileId) -> Result<Vec<FnParam>, Diagnostic> {
    p.into_inner()
        .map(|q| {
            let span = span_of(&q, file);
            let mut it = q.into_inner().peekable();
            let name = ident(need(&mut it, span, "name")?, file);
            let ty = match it.peek() {
                Some(t) if t.as_rule() == Rule::type_ann => {
                    it.next().map(|t| type_ann(t, file)).transpose()?
                }
                _ => None,
            };
            let default = it.next().map(|d| expr(d, file)).transpose()?;
            Ok(FnParam { name, ty, default })
        })
        .collect()
}

fn type_ann(p: Pair<Rule>, file: FileId) -> Result<TypeAnn, Diagnostic> {
    let span = span_of(&p, file);
    let inner = need(&mut p.into_inner(), span, "type")?;
    Ok(match inner.as_rule() {
        Rule::scalar_type => TypeAnn::Scalar(scalar_type(&inner), span),
        _ => TypeAnn::Tensor(tensor_type(inner, file)?),
    })
}

fn tensor_type(p: Pair<Rule>, file: FileId) -> Result<TensorTypeAnn, Diagnostic> {
    let span = span_of(&p, file);
    let mut dims = Vec::new();
    let mut dtype = None;
    let mut rest = false;
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::dtype => dtype = graft_ir::DType::from_name(q.as_str()),
            Rule::rest_dims => rest = true,
            _ => dims.push(expr(q, file)?),
        }
    }
    Ok(TensorTypeAnn {
        rest,
        dims,
        dtype,
        span,
    })
}

fn body(p: Pair<Rule>, file: FileId) -> Result<Block, Diagnostic> {
    let span = span_of(&p, file);
    let inner = need(&mut p.into_inner(), span, "body")?;
    if inner.as_rule() == Rule::block {
        block(inner, file)
    } else {
        let e = expr(inner, file)?;
        Ok(Block {
            stmts: vec![],
            span: e.span,
            result: Some(Box::new(e)),
        })
    }
}

fn block(p: Pair<Rule>, file: FileId) -> Result<Block, Diagnostic> {
    let span = span_of(&p, file);
    let mut stmts = Vec::new();
    let mut result = None;
    for q in p.into_inner() {
        if q.as_rule() == Rule::expr {
            result = Some(Box::new(expr(q, file)?));
            continue;
        }
        let Some(s) = q.into_inner().next() else {
            continue;
        };
        let sspan = span_of(&s, file);
        let rule = s.as_rule();
        let mut it = s.into_inner().peekable();
        stmts.push(match rule {
            Rule::let_stmt => {
                let name = ident(need(&mut it, sspan, "name")?, file);
                let ty = match it.peek() {
                    Some(t) if t.as_rule() == Rule::type_ann => {
                        it.next().map(|t| type_ann(t, file)).transpose()?
                    }
                    _ => None,
                };
                let value = expr(need(&mut it, sspan, "value")?, file)?;
                Stmt::Let { name, ty, value }
            }
            Rule::assign_stmt => {
                let name = ident(need(&mut it, sspan, "name")?, file);
                let value = expr(need(&mut it, sspan, "value")?, file)?;
                Stmt::Assign { name, value }
            }
            _ => {
                let var = ident(need(&mut it, sspan, "loop variable")?, file);
                let lo = expr(need(&mut it, sspan, "start")?, file)?;
                let hi = expr(need(&mut it, sspan, "end")?, file)?;
                let body = block(need(&mut it, sspan, "body")?, file)?;
                Stmt::For { var, lo, hi, body }
            }
        });
    }
    Ok(Block {
        stmts,
        result,
        span,
    })
}

fn members(p: Pair<Rule>, file: FileId) -> Result<Vec<Member>, Diagnostic> {
    p.into_inner().map(|m| member(m, file)).collect()
}

fn member(p: Pair<Rule>, file: FileId) -> Result<Member, Diagnostic> {
    let span = span_of(&p, file);
    let mut it = p.into_inner().peekable();
    let doc = docs(&mut it);
    let m = need(&mut it, span, "member")?;
    let mspan = span_of(&m, file);
    let rule = m.as_rule();
    let mut it = m.into_inner().peekable();
    let rename = |it: &mut std::iter::Peekable<pest::iterators::Pairs<Rule>>| -> Result<Option<StrLit>, Diagnostic> {
        match it.peek() {
            Some(r) if r.as_rule() == Rule::rename => {
                let r = it.next().and_then(|r| r.into_inner().next());
                r.map(|s| string(s, file)).transpose()
            }
            _ => Ok(None),
        }
    };
    let kind = match rule {
        Rule::weight_decl => {
            let name = ident(need(&mut it, mspan, "name")?, file);
            let ty = tensor_type(need(&mut it, mspan, "type")?, file)?;
            let rename = rename(&mut it)?;
            MemberKind::Weight { name, ty, rename }
        }
        Rule::param_decl => {
            let name = ident(need(&mut it, mspan, "name")?, file);
            let ty = tensor_type(need(&mut it, mspan, "type")?, file)?;
            let rename = rename(&mut it)?;
            let init = expr(need(&mut it, mspan, "initializer")?, file)?;
            MemberKind::Param {
                name,
                ty,
                rename,
                init,
            }
        }
        Rule::shared_decl | Rule::buffer_decl => {
            it.next(); // the `shared` or `buffer` keyword
            let name = ident(need(&mut it, mspan, "name")?, file);
            let ty = tensor_type(need(&mut it, mspan, "type")?, file)?;
            let rename = rename(&mut it)?;
            let init = expr(need(&mut it, mspan, "initializer")?, file)?;
            if rule == Rule::shared_decl {
                MemberKind::Shared {
                    name,
                    ty,
                    rename,
                    init,
                }
            } else {
                MemberKind::Buffer {
                    name,
                    ty,
                    rename,
                    init,
                }
            }
        }
        Rule::state_decl => {
            it.next(); // the `state` keyword
            let name = ident(need(&mut it, mspan, "name")?, file);
            let ty = tensor_type(need(&mut it, mspan, "type")?, file)?;
            let rename = rename(&mut it)?;
            MemberKind::State { name, ty, rename }
        }
        Rule::input_decl => {
            it.next(); // the `input` keyword
            let name = ident(need(&mut it, mspan, "name")?, file);
            let ty = tensor_type(need(&mut it, mspan, "type")?, file)?;
            MemberKind::Input { name, ty }
        }
        Rule::penalty_decl => {
            it.next(); // the `penalty` keyword
            MemberKind::Penalty(expr(need(&mut it, mspan, "value")?, file)?)
        }
        Rule::after_step_decl => {
            let kw = need(&mut it, mspan, "keyword")?;
            let name = ident(kw, file);
            let params = fn_params(need(&mut it, mspan, "params")?, file)?;
            let body = block(need(&mut it, mspan, "body")?, file)?;
            MemberKind::AfterStep(FnDef {
                doc: doc.clone(),
                name,
                params,
                body,
                span: mspan,
            })
        }
        Rule::peft_mask_decl => {
            it.next(); // the `peft_mask` keyword
            let field = string(need(&mut it, mspan, "config field")?, file)?;
            it.next(); // `at`
            let key = ident(need(&mut it, mspan, "key tensor")?, file);
            let axes = it.map(|a| arg(a, file)).collect::<Result<_, _>>()?;
            MemberKind::PeftMask { field, key, axes }
        }
        Rule::peft_stack_decl => {
            it.next(); // the `peft_stack` keyword
            let key = string(need(&mut it, mspan, "PEFT key")?, file)?;
            let parts = it.map(|a| arg(a, file)).collect::<Result<_, _>>()?;
            MemberKind::PeftStack { key, parts }
        }
        Rule::unfreeze_decl => MemberKind::Unfreeze(it.map(|i| ident(i, file)).collect()),
        Rule::replace_decl => {
            it.next(); // the `replace` keyword
            let name = ident(need(&mut it, mspan, "name")?, file);
            let value = expr(need(&mut it, mspan, "value")?, file)?;
            MemberKind::Replace { name, value }
        }
        Rule::require_decl => {
            it.next(); // the `require` keyword
            let cond = expr(need(&mut it, mspan, "condition")?, file)?;
            let message = string(need(&mut it, mspan, "message")?, file)?;
            MemberKind::Require { cond, message }
        }
        Rule::let_member => {
            let name = ident(need(&mut it, mspan, "name")?, file);
            let value = expr(need(&mut it, mspan, "value")?, file)?;
            MemberKind::Let { name, value }
        }
        Rule::for_member => {
            let var = ident(need(&mut it, mspan, "loop variable")?, file);
            let lo = expr(need(&mut it, mspan, "start")?, file)?;
            let hi = expr(need(&mut it, mspan, "end")?, file)?;
            let body = members(need(&mut it, mspan, "body")?, file)?;
            MemberKind::For { var, lo, hi, body }
        }
        Rule::if_member => if_member(&mut it, mspan, file)?,
        Rule::forward_decl => {
            let params = fn_params(need(&mut it, mspan, "params")?, file)?;
            let body = body(need(&mut it, mspan, "body")?, file)?;
            let name = Ident {
                name: "forward".into(),
                span: Span {
                    end: mspan.start + 7,
                    ..mspan
                },
            };
            MemberKind::Forward(FnDef {
                doc: doc.clone(),
                name,
                params,
                body,
                span: mspan,
            })
        }
        Rule::peft_decl => {
            it.next(); // the `peft` keyword
            let peft_type = string(need(&mut it, mspan, "PEFT type")?, file)?;
            let fields = it.map(|a| arg(a, file)).collect::<Result<_, _>>()?;
            MemberKind::Peft { peft_type, fields }
        }
        Rule::instance_decl => {
            let output = it.peek().is_some_and(|p| p.as_rule() == Rule::output_mark);
            if output {
                it.next();
            }
            let name = ident(need(&mut it, mspan, "name")?, file);
            let mut exprs = Vec::new();
            let mut seg = None;
            while let Some(p) = it.peek() {
                if p.as_rule() == Rule::rename {
                    seg = rename(&mut it)?;
                } else {
                    exprs.push(expr(need(&mut it, mspan, "value")?, file)?);
                }
            }
            let value = exprs.pop();
            let value = value.ok_or_else(|| {
                Diagnostic::error(mspan, "internal parser error: missing value", "here")
            })?;
            MemberKind::Instance {
                name,
                index: exprs.pop(),
                output,
                rename: seg,
                value,
            }
        }
        _ => {
            return Err(Diagnostic::error(
                mspan,
                "internal parser error: unknown member",
                "here",
            ));
        }
    };
    Ok(Member { doc, kind, span })
}

fn if_member(
    it: &mut std::iter::Peekable<pest::iterators::Pairs<Rule>>,
    span: Span,
    file: FileId,
) -> Result<MemberKind, Diagnostic> {
    let cond = expr(need(it, span, "condition")?, file)?;
    let then = members(need(it, span, "body")?, file)?;
    let otherwise = match it.next() {
        None => Vec::new(),
        Some(e) if e.as_rule() == Rule::if_member => {
            let espan = span_of(&e, file);
            let kind = if_member(&mut e.into_inner().peekable(), espan, file)?;
            vec![Member {
                doc: vec![],
                kind,
                span: espan,
            }]
        }
        Some(e) => members(e, file)?,
    };
    Ok(MemberKind::If {
        cond,
        then,
        otherwise,
    })
}

fn arg(p: Pair<Rule>, file: FileId) -> Result<Arg, Diagnostic> {
    let span = span_of(&p, file);
    let mut it = p.into_inner().peekable();
    let name = match it.peek() {
        Some(q) if q.as_rule() == Rule::ident => it.next().map(|q| ident(q, file)),
        _ => None,
    };
    let value = expr(need(&mut it, span, "value")?, file)?;
    Ok(Arg { name, value })
}

fn expr(p: Pair<Rule>, file: FileId) -> Result<Expr, Diagnostic> {
    if p.as_rule() != Rule::expr {
        return postfixed(p, file);
    }
    pratt()
        .map_primary(|q| postfixed(q, file))
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let span = Span {
                start: op.as_span().start() as u32,
                ..rhs.span
            };
            let o = if op.as_rule() == Rule::neg_op {
                UnOp::Neg
            } else {
                UnOp::Not
            };
            Ok(Expr {
                kind: ExprKind::Unary(o, Box::new(rhs)),
                span,
            })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let o = match op.as_rule() {
                Rule::or_op => BinOp::Or,
                Rule::and_op => BinOp::And,
                Rule::eq_op => BinOp::Eq,
                Rule::ne_op => BinOp::Ne,
                Rule::lt_op => BinOp::Lt,
                Rule::le_op => BinOp::Le,
                Rule::gt_op => BinOp::Gt,
                Rule::ge_op => BinOp::Ge,
                Rule::add_op => BinOp::Add,
                Rule::sub_op => BinOp::Sub,
                Rule::mul_op => BinOp::Mul,
                Rule::div_op => BinOp::Div,
                Rule::rem_op => BinOp::Rem,
                _ => BinOp::MatMul,
            };
            let span = Span {
                file,
                start: lhs.span.start,
                end: rhs.span.end,
            };
            Ok(Expr {
                kind: ExprKind::Binary(o, Box::new(lhs), Box::new(rhs)),
                span,
            })
        })
        .parse(p.into_inner())
}

fn postfixed(p: Pair<Rule>, file: FileId) -> Result<Expr, Diagnostic> {
    if p.as_rule() != Rule::postfixed {
        return primary(p, file);
    }
    let span = span_of(&p, file);
    let mut it = p.into_inner();
    let mut e = primary(need(&mut it, span, "operand")?, file)?;
    for post in it {
        let pspan = span_of(&post, file);
        let whole = Span {
            file,
            start: e.span.start,
            end: pspan.end,
        };
        let kind = match post.as_rule() {
            Rule::transpose_op => ExprKind::Transpose(Box::new(e)),
            Rule::call_args => {
                let args = post
                    .into_inner()
                    .map(|a| arg(a, file))
                    .collect::<Result<_, _>>()?;
                ExprKind::Call(Box::new(e), args)
            }
            Rule::field => {
                let name = ident(need(&mut post.into_inner(), pspan, "field name")?, file);
                ExprKind::Field(Box::new(e), name)
            }
            _ => {
                let i = expr(need(&mut post.into_inner(), pspan, "index")?, file)?;
                ExprKind::Index(Box::new(e), Box::new(i))
            }
        };
        e = Expr { kind, span: whole };
    }
    Ok(e)
}

fn primary(p: Pair<Rule>, file: FileId) -> Result<Expr, Diagnostic> {
    let span = span_of(&p, file);
    let kind = match p.as_rule() {
        Rule::int => match p.as_str().parse::<i64>() {
            Ok(i) => ExprKind::Int(i),
            Err(_) => {
                return Err(Diagnostic::error(
                    span,
                    "integer literal is too large",
                    "does not fit in 64 bits",
                ));
            }
        },
        Rule::float => match p.as_str().parse::<f64>() {
            Ok(x) if x.is_finite() => ExprKind::Float(x),
            _ => {
                return Err(Diagnostic::error(
                    span,
                    "float literal is out of range",
                    "not a finite f64",
                ));
            }
        },
        Rule::string => ExprKind::Str(string(p, file)?.value),
        Rule::bool => ExprKind::Bool(p.as_str() == "true"),
        Rule::ident => ExprKind::Name(p.as_str().to_string()),
        Rule::paren => return expr(need(&mut p.into_inner(), span, "expression")?, file),
        Rule::list => ExprKind::List(
            p.into_inner()
                .map(|q| expr(q, file))
                .collect::<Result<_, _>>()?,
        ),
        Rule::block_expr => {
            ExprKind::Block(block(need(&mut p.into_inner(), span, "block")?, file)?)
        }
        Rule::if_expr => {
            let mut it = p.into_inner();
            let cond = expr(need(&mut it, span, "condition")?, file)?;
            let then = block(need(&mut it, span, "then block")?, file)?;
            let mut e = need(&mut it, span, "else branch")?;
            if e.as_rule() == Rule::else_kw {
                e = need(&mut it, span, "else branch")?;
            }
            let otherwise = if e.as_rule() == Rule::if_expr {
                let inner = primary(e, file)?;
                Block {
                    stmts: vec![],
                    span: inner.span,
                    result: Some(Box::new(inner)),
                }
            } else {
                block(e, file)?
            };
            ExprKind::If(Box::new(cond), then, otherwise)
        }
        Rule::expr | Rule::postfixed => return expr(p, file),
        _ => return Err(bad(&p, file, "expression")),
    };
    Ok(Expr { kind, span })
}
