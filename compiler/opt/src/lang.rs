//! The e-graph language: one e-node per IR node, `(op attr-leaves… operands…)`. Attributes
//! and declared types are leaf e-nodes (`ta=true`, `perm=[0,2,1,3]`, `ty=f32[2,8,64]`), so
//! rewrite rules can match them in ordinary egg patterns. Going IR → e-graph → IR keeps every
//! input's name and kind and every output's name.

use egg::{Id, Language, RecExpr, Symbol};
use graft_ir::{AttrValue, Attrs, DType, Function, Op, TensorType, ValueId};
use std::collections::HashMap;

#[allow(missing_docs)]
mod language {
    use egg::{Id, Symbol, define_language};
    define_language! {
        /// A tensor op applied to leaves and operands (`Node`: name, leaves, operands), or an
        /// attribute leaf (`Leaf`: `key=value`).
        pub enum G {
            Leaf(Symbol),
            Node(Symbol, Vec<Id>),
        }
    }
}
pub use language::G;

/// Escapes characters egg's s-expression reader treats specially.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_whitespace() || "()\"%;".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hex: String = chars.by_ref().take(2).collect();
            if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                out.push(ch);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Encodes one attribute value without spaces.
pub fn encode_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(x) => format!("f:{}", graft_ir::attr::fmt_float(*x)),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Str(s) => format!("s:{}", escape(s)),
        AttrValue::Ident(s) => s.clone(),
        AttrValue::List(xs) => format!(
            "[{}]",
            xs.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Decodes [`encode_value`].
pub fn decode_value(s: &str) -> Option<AttrValue> {
    if let Some(f) = s.strip_prefix("f:") {
        return f.parse().ok().map(AttrValue::Float);
    }
    if let Some(st) = s.strip_prefix("s:") {
        return Some(AttrValue::Str(unescape(st)));
    }
    if let Some(l) = s.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        if l.is_empty() {
            return Some(AttrValue::List(vec![]));
        }
        return l
            .split(',')
            .map(|x| x.parse().ok())
            .collect::<Option<Vec<i64>>>()
            .map(AttrValue::List);
    }
    match s {
        "true" => return Some(AttrValue::Bool(true)),
        "false" => return Some(AttrValue::Bool(false)),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(AttrValue::Int(i));
    }
    Some(AttrValue::Ident(s.to_string()))
}

/// Encodes a tensor type as a leaf value: `f32[2,8,64]`.
pub fn encode_type(t: &TensorType) -> String {
    format!(
        "{}[{}]",
        t.dtype,
        t.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Decodes [`encode_type`].
pub fn decode_type(s: &str) -> Option<TensorType> {
    let (d, rest) = s.split_once('[')?;
    let dims = rest.strip_suffix(']')?;
    let shape = if dims.is_empty() {
        vec![]
    } else {
        dims.split(',')
            .map(|x| x.parse().ok())
            .collect::<Option<Vec<usize>>>()?
    };
    Some(TensorType::new(DType::from_name(d)?, shape))
}

/// The leaves of an op in canonical form: defaults spelled out (`ta=false`, `nested=0`,
/// `keepdim=false`) and sorted by key, so patterns can match them.
pub fn op_leaves(op: &Op) -> Vec<String> {
    let mut attrs = op.attrs();
    let mut set = |k: &str, v: AttrValue| {
        attrs.0.retain(|(key, _)| key != k);
        attrs.push(k, v);
    };
    match op {
        Op::MatMul { ta, tb } => {
            set("ta", AttrValue::Bool(*ta));
            set("tb", AttrValue::Bool(*tb));
        }
        Op::QuantMatMul { ta, tb, nested, .. } => {
            set("ta", AttrValue::Bool(*ta));
            set("tb", AttrValue::Bool(*tb));
            set("nested", AttrValue::Int(*nested as i64));
        }
        Op::Reduce { keepdim, .. } => set("keepdim", AttrValue::Bool(*keepdim)),
        Op::Dequantize { nested, .. } => set("nested", AttrValue::Int(*nested as i64)),
        _ => {}
    }
    let mut leaves: Vec<String> = attrs
        .0
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_value(v)))
        .collect();
    leaves.sort();
    leaves
}

/// Rebuilds an op from its name and leaves.
pub fn op_from_leaves(name: &str, leaves: &[&str]) -> Result<(Op, Option<TensorType>), String> {
    let mut attrs = Attrs::default();
    let mut ty = None;
    for l in leaves {
        let (k, v) = l.split_once('=').ok_or_else(|| format!("bad leaf `{l}`"))?;
        if k == "ty" {
            ty = Some(decode_type(v).ok_or_else(|| format!("bad type leaf `{l}`"))?);
            continue;
        }
        attrs.push(k, decode_value(v).ok_or_else(|| format!("bad leaf `{l}`"))?);
    }
    Ok((Op::from_parts(name, attrs)?, ty))
}

/// The e-graph term of a function: one expression whose root is a `results` node over the
/// outputs, so the whole DAG is one [`RecExpr`] with sharing.
pub struct Term {
    /// The expression.
    pub expr: RecExpr<G>,
    /// Output names, in order (the root's operands).
    pub outputs: Vec<String>,
}

/// Converts a function to a term.
pub fn to_term(f: &Function) -> Term {
    let mut expr = RecExpr::default();
    let mut ids: Vec<Id> = Vec::with_capacity(f.nodes.len());
    let mut leaf_ids: HashMap<String, Id> = HashMap::new();
    let mut leaf = |expr: &mut RecExpr<G>, s: String| -> Id {
        *leaf_ids
            .entry(s.clone())
            .or_insert_with(|| expr.add(G::Leaf(Symbol::from(s))))
    };
    for n in &f.nodes {
        let mut children: Vec<Id> = op_leaves(&n.op)
            .into_iter()
            .map(|s| leaf(&mut expr, s))
            .collect();
        if n.op.needs_declared_type() {
            children.push(leaf(&mut expr, format!("ty={}", encode_type(&n.ty))));
        }
        children.extend(n.args.iter().map(|a| ids[a.index()]));
        ids.push(expr.add(G::Node(Symbol::from(n.op.name()), children)));
    }
    let roots: Vec<Id> = f.outputs.iter().map(|o| ids[o.value.index()]).collect();
    expr.add(G::Node(Symbol::from("results"), roots));
    Term {
        expr,
        outputs: f.outputs.iter().map(|o| o.name.clone()).collect(),
    }
}

/// Converts a term back to a function (its root must be `results`).
pub fn from_term(name: &str, term: &Term) -> Result<Function, String> {
    let nodes = term.expr.as_ref();
    let mut f = Function::new(name);
    let mut vals: Vec<Option<ValueId>> = vec![None; nodes.len()];
    let root = nodes.len().checked_sub(1).ok_or("empty term")?;
    for (i, n) in nodes.iter().enumerate() {
        let G::Node(op, children) = n else { continue };
        if i == root {
            for (name, c) in term.outputs.iter().zip(children) {
                let v = vals[usize::from(*c)].ok_or("an output is a leaf")?;
                f.add_output(name.clone(), v);
            }
            break;
        }
        let mut leaves = Vec::new();
        let mut args = Vec::new();
        for c in children {
            match &nodes[usize::from(*c)] {
                G::Leaf(s) => leaves.push(s.as_str()),
                G::Node(..) => args.push(vals[usize::from(*c)].ok_or("operand before definition")?),
            }
        }
        let (op, ty) = op_from_leaves(op.as_str(), &leaves)?;
        let v = f
            .add_typed(op, &args, ty, None)
            .map_err(|e| e.to_string())?;
        vals[i] = Some(v);
    }
    Ok(f)
}

/// The op name of an e-node (`None` for leaves).
pub fn op_name(n: &G) -> Option<&str> {
    match n {
        G::Node(s, _) => Some(s.as_str()),
        G::Leaf(_) => None,
    }
}

impl G {
    /// The children of a node.
    pub fn kids(&self) -> &[Id] {
        self.children()
    }
}
