//! The IR's text form. `print(parse(text)) == text` for every printed module.
//!
//! ```text
//! file 0 = "dsl-examples/tiny_lora.graft"
//!
//! func @forward {
//!   %0: f32[2, 4] = input{name = "x", kind = data} loc(0:3:9)
//!   %1: f32[2, 4] = exp(%0)
//!   return y = %1
//! }
//! ```

use crate::attr::{AttrValue, Attrs};
use crate::dtype::{DType, TensorType};
use crate::graph::{Function, Loc, Module, Node, Output, ValueId};
use crate::op::Op;
use std::fmt::Write;

/// Prints a module in the text form.
pub fn print_module(m: &Module) -> String {
    let mut s = String::new();
    for (i, f) in m.files.iter().enumerate() {
        let _ = writeln!(s, "file {i} = {f:?}");
    }
    for f in &m.functions {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&print_function(f));
    }
    s
}

/// Prints one function in the text form.
pub fn print_function(f: &Function) -> String {
    let mut s = format!("func @{} {{\n", f.name);
    for (i, n) in f.nodes.iter().enumerate() {
        let _ = write!(s, "  %{i}: {} = {}", n.ty, n.op);
        if !n.args.is_empty() {
            let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
            let _ = write!(s, "({})", args.join(", "));
        }
        if let Some(l) = n.loc {
            let _ = write!(s, " loc({}:{}:{})", l.file, l.line, l.col);
        }
        s.push('\n');
    }
    let outs: Vec<String> = f
        .outputs
        .iter()
        .map(|o| format!("{} = {}", o.name, o.value))
        .collect();
    let _ = writeln!(s, "  return {}", outs.join(", "));
    s.push_str("}\n");
    s
}

/// A text-form syntax error with its 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Int(i64),
    Float(f64),
    Str(String),
    Value(u32),
    Func(String),
    Punct(char),
    Eof,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    toks: Vec<(Tok, usize)>,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

impl<'a> Lexer<'a> {
    fn err(&self, at: usize, message: String) -> ParseError {
        let before = &self.src[..at.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ParseError { line, col, message }
    }

    fn run(mut self) -> Result<Vec<(Tok, usize)>, ParseError> {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() {
            let start = self.pos;
            let c = self.src[self.pos..].chars().next().unwrap_or(' ');
            if c.is_whitespace() {
                self.pos += c.len_utf8();
                continue;
            }
            let tok = if c == '"' {
                let mut out = String::new();
                let mut i = self.pos + 1;
                let mut chars = self.src[i..].chars();
                loop {
                    match chars.next() {
                        None => return Err(self.err(start, "unterminated string".into())),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let e = chars
                                .next()
                                .ok_or_else(|| self.err(start, "unterminated string".into()))?;
                            i += 1 + e.len_utf8();
                            out.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '0' => '\0',
                                '\\' | '"' | '\'' => e,
                                // `\u{…}`: how the printer (Rust's `Debug`) writes other
                                // control and non-printable characters.
                                'u' => {
                                    let rest = chars.as_str();
                                    let code = rest
                                        .strip_prefix('{')
                                        .and_then(|r| r.split_once('}'))
                                        .map(|(hex, _)| hex)
                                        .filter(|hex| {
                                            (1..=6).contains(&hex.len())
                                                && hex.chars().all(|c| c.is_ascii_hexdigit())
                                        });
                                    let ch = code
                                        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                                        .and_then(char::from_u32)
                                        .ok_or_else(|| {
                                            self.err(i, "expected `\\u{…}` with 1 to 6 hex digits of a character".into())
                                        })?;
                                    let len = code.map_or(0, str::len) + 2;
                                    chars = rest[len..].chars();
                                    i += len;
                                    ch
                                }
                                _ => return Err(self.err(i, format!("unknown escape `\\{e}`"))),
                            });
                        }
                        Some(ch) => {
                            i += ch.len_utf8();
                            out.push(ch);
                        }
                    }
                }
                self.pos = i;
                Tok::Str(out)
            } else if c == '%' || c == '@' {
                let rest = &self.src[self.pos + 1..];
                let len = rest.find(|ch: char| !is_word(ch)).unwrap_or(rest.len());
                let word = &rest[..len];
                self.pos += 1 + len;
                if c == '@' {
                    Tok::Func(word.to_string())
                } else {
                    Tok::Value(
                        word.parse()
                            .map_err(|_| self.err(start, format!("bad value name `%{word}`")))?,
                    )
                }
            } else if c.is_ascii_digit()
                || (c == '-'
                    && bytes
                        .get(self.pos + 1)
                        .is_some_and(|b| b.is_ascii_alphanumeric()))
            {
                let rest = &self.src[self.pos + 1..];
                let len = rest
                    .char_indices()
                    .find(|&(i, ch)| {
                        !(ch.is_ascii_alphanumeric()
                            || ch == '.'
                            || ((ch == '-' || ch == '+') && rest[..i].ends_with(['e', 'E'])))
                    })
                    .map_or(rest.len(), |(i, _)| i);
                let text = &self.src[self.pos..self.pos + 1 + len];
                self.pos += 1 + len;
                if let Ok(i) = text.parse::<i64>() {
                    Tok::Int(i)
                } else if let Ok(x) = text.parse::<f64>() {
                    Tok::Float(x)
                } else {
                    return Err(self.err(start, format!("bad number `{text}`")));
                }
            } else if is_word(c) {
                let rest = &self.src[self.pos..];
                let len = rest.find(|ch: char| !is_word(ch)).unwrap_or(rest.len());
                self.pos += len;
                let w = &rest[..len];
                match w {
                    "inf" | "NaN" => Tok::Float(w.parse().unwrap_or(f64::NAN)),
                    _ => Tok::Word(w.to_string()),
                }
            } else if "{}()[],=:".contains(c) {
                self.pos += 1;
                Tok::Punct(c)
            } else {
                return Err(self.err(start, format!("unexpected character `{c}`")));
            };
            self.toks.push((tok, start));
        }
        self.toks.push((Tok::Eof, self.src.len()));
        Ok(self.toks)
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    toks: Vec<(Tok, usize)>,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].0
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.i += 1;
        t
    }

    fn err(&self, message: impl Into<String>) -> ParseError {
        let at = self.toks[self.i.min(self.toks.len() - 1)].1;
        self.lex.err(at, message.into())
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if *self.peek() == Tok::Punct(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected `{c}`, found {:?}", self.peek())))
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Tok::Word(w) => Ok(w),
            t => {
                self.i -= 1;
                Err(self.err(format!("expected a word, found {t:?}")))
            }
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Word(w) if w == kw => {
                self.i += 1;
                Ok(())
            }
            t => Err(self.err(format!("expected `{kw}`, found {t:?}"))),
        }
    }

    fn uint(&mut self) -> Result<u64, ParseError> {
        match self.next() {
            Tok::Int(i) if i >= 0 => Ok(i as u64),
            t => {
                self.i -= 1;
                Err(self.err(format!("expected a non-negative integer, found {t:?}")))
            }
        }
    }

    fn value(&mut self) -> Result<ValueId, ParseError> {
        match self.next() {
            Tok::Value(v) => Ok(ValueId(v)),
            t => {
                self.i -= 1;
                Err(self.err(format!("expected a value like `%3`, found {t:?}")))
            }
        }
    }

    fn module(&mut self) -> Result<Module, ParseError> {
        let mut m = Module::default();
        while *self.peek() == Tok::Word("file".into()) {
            self.i += 1;
            let idx = self.uint()?;
            if idx as usize != m.files.len() {
                return Err(self.err(format!("expected file {}", m.files.len())));
            }
            self.expect('=')?;
            match self.next() {
                Tok::Str(s) => m.files.push(s),
                _ => return Err(self.err("expected a quoted file path")),
            }
        }
        while *self.peek() != Tok::Eof {
            m.functions.push(self.function()?);
        }
        Ok(m)
    }

    fn tensor_type(&mut self) -> Result<TensorType, ParseError> {
        let name = self.word()?;
        let dtype =
            DType::from_name(&name).ok_or_else(|| self.err(format!("unknown dtype `{name}`")))?;
        self.expect('[')?;
        let mut shape = Vec::new();
        if !self.eat(']') {
            loop {
                shape.push(self.uint()? as usize);
                if self.eat(']') {
                    break;
                }
                self.expect(',')?;
            }
        }
        Ok(TensorType::new(dtype, shape))
    }

    fn attr_value(&mut self) -> Result<AttrValue, ParseError> {
        Ok(match self.next() {
            Tok::Int(i) => AttrValue::Int(i),
            Tok::Float(x) => AttrValue::Float(x),
            Tok::Str(s) => AttrValue::Str(s),
            Tok::Word(w) if w == "true" => AttrValue::Bool(true),
            Tok::Word(w) if w == "false" => AttrValue::Bool(false),
            Tok::Word(w) => AttrValue::Ident(w),
            Tok::Punct('[') => {
                let mut xs = Vec::new();
                if !self.eat(']') {
                    loop {
                        match self.next() {
                            Tok::Int(i) => xs.push(i),
                            _ => return Err(self.err("expected an integer in the list")),
                        }
                        if self.eat(']') {
                            break;
                        }
                        self.expect(',')?;
                    }
                }
                AttrValue::List(xs)
            }
            t => {
                self.i -= 1;
                return Err(self.err(format!("expected an attribute value, found {t:?}")));
            }
        })
    }

    fn function(&mut self) -> Result<Function, ParseError> {
        self.keyword("func")?;
        let name = match self.next() {
            Tok::Func(n) => n,
            _ => return Err(self.err("expected a function name like `@forward`")),
        };
        self.expect('{')?;
        let mut f = Function::new(name);
        loop {
            if *self.peek() == Tok::Word("return".into()) {
                self.i += 1;
                if !matches!(self.peek(), Tok::Punct('}')) {
                    loop {
                        let name = self.word()?;
                        self.expect('=')?;
                        let value = self.value()?;
                        f.outputs.push(Output { name, value });
                        if !self.eat(',') {
                            break;
                        }
                    }
                }
                self.expect('}')?;
                return Ok(f);
            }
            let id = self.value()?;
            if id.index() != f.nodes.len() {
                return Err(self.err(format!(
                    "expected %{} (values are numbered in order)",
                    f.nodes.len()
                )));
            }
            self.expect(':')?;
            let ty = self.tensor_type()?;
            self.expect('=')?;
            let op_at = self.i;
            let op_name = self.word()?;
            let mut attrs = Attrs::default();
            if self.eat('{') {
                loop {
                    let k = self.word()?;
                    self.expect('=')?;
                    let v = self.attr_value()?;
                    attrs.push(&k, v);
                    if self.eat('}') {
                        break;
                    }
                    self.expect(',')?;
                }
            }
            let op = Op::from_parts(&op_name, attrs).map_err(|e| {
                self.i = op_at;
                self.err(e)
            })?;
            let mut args = Vec::new();
            if self.eat('(') {
                loop {
                    args.push(self.value()?);
                    if self.eat(')') {
                        break;
                    }
                    self.expect(',')?;
                }
            }
            let mut loc = None;
            if *self.peek() == Tok::Word("loc".into()) {
                self.i += 1;
                self.expect('(')?;
                let file = self.uint()? as u32;
                self.expect(':')?;
                let line = self.uint()? as u32;
                self.expect(':')?;
                let col = self.uint()? as u32;
                self.expect(')')?;
                loc = Some(Loc { file, line, col });
            }
            f.nodes.push(Node { op, args, ty, loc });
        }
    }
}

/// Parses the text form. The result is not verified: run [`crate::verify_module`] next.
pub fn parse_module(src: &str) -> Result<Module, ParseError> {
    let lex = Lexer {
        src,
        pos: 0,
        toks: Vec::new(),
    };
    let toks = Lexer {
        src,
        pos: 0,
        toks: Vec::new(),
    }
    .run()?;
    Parser { lex, toks, i: 0 }.module()
}
