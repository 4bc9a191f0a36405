//! Rewrite rules as data: one table per topic, each row a stable kebab-case name, the identity
//! it states, and the egg rewrite. Tables combine by concatenation. Rules only go one way and
//! never make a term worse by themselves; extraction decides what is cheaper.

#![allow(clippy::expect_used)] // Rule patterns are string constants, checked by the tests.

pub mod batching;
pub mod layout;
pub mod lowrank;
pub mod quant;
pub mod scale;
pub mod training;

use crate::analysis::{Graph, Info, TensorAnalysis, split_children};
use crate::lang::{G, encode_type, op_leaves};
use egg::{Applier, Condition, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use graft_ir::{Op, TensorType};

/// A row of a rule table.
pub struct Rule {
    /// Stable kebab-case name (shown by `graft explain`).
    pub name: &'static str,
    /// The identity, e.g. `(x·Aᵀ)·Bᵀ == x·(B·A)ᵀ`.
    pub identity: &'static str,
    /// The rewrite.
    pub rewrite: Rewrite<G, TensorAnalysis>,
    /// Multi-pattern rules run only in a bounded phase (see [`crate::run`]).
    pub multi: bool,
}

/// A var by name.
pub fn var(s: &str) -> Var {
    s.parse().expect("a pattern variable")
}

/// A pattern from text.
pub fn pat(s: &str) -> Pattern<G> {
    s.parse().expect("a valid pattern")
}

/// The type of a tensor class.
pub fn ty(egraph: &Graph, id: Id) -> Option<TensorType> {
    egraph[id].data.ty().cloned()
}

/// The text of a leaf class.
pub fn leaf(egraph: &Graph, id: Id) -> Option<String> {
    egraph[id].data.leaf().map(str::to_string)
}

/// The value part of a `key=value` leaf bound to `v`.
pub fn leaf_value(egraph: &Graph, subst: &Subst, v: Var) -> Option<String> {
    leaf(egraph, subst[v]).and_then(|l| l.split_once('=').map(|(_, x)| x.to_string()))
}

/// The e-node for `op` (with its declared type when it needs one) over `args`, its leaves
/// added to the e-graph.
pub fn op_node(egraph: &mut Graph, op: &Op, declared: Option<&TensorType>, args: &[Id]) -> G {
    let mut children: Vec<Id> = op_leaves(op)
        .into_iter()
        .map(|l| egraph.add(G::Leaf(Symbol::from(l))))
        .collect();
    if op.needs_declared_type() {
        let t = declared.map(encode_type).unwrap_or_default();
        children.push(egraph.add(G::Leaf(Symbol::from(format!("ty={t}")))));
    }
    children.extend_from_slice(args);
    G::Node(Symbol::from(op.name()), children)
}

/// Adds a node for `op` (with its declared type when it needs one) over `args`.
pub fn add_op(egraph: &mut Graph, op: &Op, declared: Option<&TensorType>, args: &[Id]) -> Id {
    let n = op_node(egraph, op, declared, args);
    egraph.add(n)
}

/// A splat constant of type `t`.
pub fn splat(egraph: &mut Graph, value: f64, t: &TensorType) -> Id {
    add_op(egraph, &Op::Constant { value }, Some(t), &[])
}

/// The decoded op of an e-node, with its operand classes.
pub fn node_op(egraph: &Graph, n: &G) -> Option<(Op, Option<TensorType>, Vec<Id>)> {
    let G::Node(name, children) = n else {
        return None;
    };
    let (leaves, args) = split_children(egraph, children);
    crate::lang::op_from_leaves(name.as_str(), &leaves)
        .ok()
        .map(|(op, t)| (op, t, args))
}

/// An applier that builds a replacement class with a function, then unions it with the match.
pub struct Build<F>(pub F);

impl<F> Applier<G, TensorAnalysis> for Build<F>
where
    F: Fn(&mut Graph, Id, &Subst) -> Option<Id> + Send + Sync,
{
    fn apply_one(
        &self,
        egraph: &mut Graph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<G>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        match (self.0)(egraph, eclass, subst) {
            Some(new) if egraph.union(eclass, new) => vec![eclass],
            _ => vec![],
        }
    }
}

/// A condition from a function of the e-graph and the substitution.
pub struct When<F>(pub F);

impl<F> Condition<G, TensorAnalysis> for When<F>
where
    F: Fn(&Graph, &Subst) -> bool,
{
    fn check(&self, egraph: &mut Graph, _eclass: Id, subst: &Subst) -> bool {
        (self.0)(egraph, subst)
    }
}

/// A rewrite from patterns with a condition.
pub fn rw_if(
    name: &'static str,
    lhs: &str,
    rhs: &str,
    cond: impl Fn(&Graph, &Subst) -> bool + Send + Sync + 'static,
) -> Rewrite<G, TensorAnalysis> {
    Rewrite::new(
        name,
        pat(lhs),
        egg::ConditionalApplier {
            condition: When(cond),
            applier: pat(rhs),
        },
    )
    .expect("a valid rewrite")
}

/// A rewrite from a pattern to a builder function.
pub fn rw_build(
    name: &'static str,
    lhs: &str,
    build: impl Fn(&mut Graph, Id, &Subst) -> Option<Id> + Send + Sync + 'static,
) -> Rewrite<G, TensorAnalysis> {
    Rewrite::new(name, pat(lhs), Build(build)).expect("a valid rewrite")
}

/// The rules for a training step (no `merge`); `groups` logs what batching did.
pub fn training_rules(groups: &batching::Groups) -> Vec<Rule> {
    [
        layout::rules(),
        scale::rules(),
        lowrank::rules(),
        quant::rules(),
        training::rules(),
        batching::rules(groups.clone()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The rules for inference with adapters folded into the weights (`--merge`).
pub fn merge_rules(groups: &batching::Groups) -> Vec<Rule> {
    let mut r = training_rules(groups);
    r.extend(lowrank::merge_rules());
    r
}

/// Whether a class is a splat constant equal to `x`.
pub fn is_splat(egraph: &Graph, id: Id, x: f64) -> bool {
    egraph[id].data.splat() == Some(x)
}

/// The class's info.
pub fn info(egraph: &Graph, id: Id) -> &Info {
    &egraph[id].data
}
