//! Shared-input batching: two products of the same input, `x·W₁ᵀ` and `x·W₂ᵀ`, become one
//! wider product `x·[W₁; W₂]ᵀ` followed by slices (q/k/v, gate/up, and the A matrices of their
//! adapters). It is a multi-pattern rule: it runs in a bounded phase, and the extractor
//! decides per group, counting shared nodes once, whether the wide product pays.

use super::{Rule, add_op, op_node, ty, var};
use crate::analysis::Graph;
use egg::{Id, MultiPattern, Rewrite, Subst};
use graft_ir::Op;
use std::sync::{Arc, Mutex};

/// Groups the batching rule created: the wide product and the classes it now also computes,
/// with the slice standing for each.
#[derive(Clone, Debug, Default)]
pub struct Groups(pub Arc<Mutex<Vec<Vec<(Id, crate::lang::G)>>>>);

fn leaves_of(eg: &Graph, id: Id, out: &mut Vec<Id>) {
    let id = eg.find(id);
    let concat = eg[id]
        .nodes
        .iter()
        .find(|n| crate::lang::op_name(n) == Some("concat"))
        .cloned();
    match concat {
        Some(n) => {
            for c in n.kids().iter().skip(1) {
                leaves_of(eg, *c, out);
            }
        }
        None => out.push(id),
    }
}

fn batch(eg: &mut Graph, s: &Subst, groups: &Groups) -> Option<Vec<Id>> {
    let (m1, m2) = (s[var("?m1")], s[var("?m2")]);
    let (w1, w2, x) = (eg.find(s[var("?w1")]), eg.find(s[var("?w2")]), s[var("?x")]);
    if eg.find(m1) == eg.find(m2) || w1 >= w2 {
        return None;
    }
    let (t1, t2, tx) = (ty(eg, w1)?, ty(eg, w2)?, ty(eg, x)?);
    if t1.rank() != 2 || t2.rank() != 2 || t1.shape[1] != t2.shape[1] || t1.dtype != t2.dtype {
        return None;
    }
    let (mut l1, mut l2) = (Vec::new(), Vec::new());
    leaves_of(eg, w1, &mut l1);
    leaves_of(eg, w2, &mut l2);
    // Only parameters are batched (weights, trainable or frozen, and their concatenations):
    // q/k/v, gate/up and adapters' A matrices, not products of activations.
    let is_input = |eg: &Graph, id: &Id| {
        eg[*id]
            .nodes
            .iter()
            .any(|n| crate::lang::op_name(n) == Some("input"))
    };
    if l1.iter().any(|a| l2.contains(a))
        || l1.len() + l2.len() > 8
        || !l1.iter().chain(&l2).all(|l| is_input(eg, l))
    {
        return None;
    }
    let cat = add_op(eg, &Op::Concat { axis: 0 }, None, &[w1, w2]);
    let wide = add_op(
        eg,
        &Op::MatMul {
            ta: false,
            tb: true,
        },
        None,
        &[x, cat],
    );
    let axis = tx.rank() - 1;
    let (n1, n2) = (t1.shape[0], t2.shape[0]);
    let n1 = op_node(
        eg,
        &Op::Slice {
            axis,
            start: 0,
            end: n1,
        },
        None,
        &[wide],
    );
    let n2 = op_node(
        eg,
        &Op::Slice {
            axis,
            start: t1.shape[0],
            end: t1.shape[0] + n2,
        },
        None,
        &[wide],
    );
    let (s1, s2) = (eg.add(n1.clone()), eg.add(n2.clone()));
    let changed = [(m1, s1), (m2, s2)]
        .iter()
        .filter(|(m, s)| eg.union(*m, *s))
        .map(|(m, _)| *m)
        .collect();
    if let Ok(mut g) = groups.0.lock() {
        g.push(vec![(m1, n1), (m2, n2)]);
    }
    Some(changed)
}

/// Applies [`batch`] to each match of the multi-pattern.
struct Batcher(Groups);

impl egg::Applier<crate::lang::G, crate::analysis::TensorAnalysis> for Batcher {
    fn apply_one(
        &self,
        eg: &mut Graph,
        _eclass: Id,
        s: &Subst,
        _ast: Option<&egg::PatternAst<crate::lang::G>>,
        _rule: egg::Symbol,
    ) -> Vec<Id> {
        batch(eg, s, &self.0).unwrap_or_default()
    }
}

/// The batching table; `groups` collects what the rule did, for the extractor.
pub fn rules(groups: Groups) -> Vec<Rule> {
    // Built directly: egg's text form of multi-patterns splits on `=`, which our leaves use.
    let ast = |s: &str| -> egg::PatternAst<crate::lang::G> { s.parse().expect("a valid pattern") };
    let searcher = MultiPattern::new(vec![
        (var("?m1"), ast("(matmul ta=false tb=true ?x ?w1)")),
        (var("?m2"), ast("(matmul ta=false tb=true ?x ?w2)")),
    ]);
    let applier = Batcher(groups);
    vec![Rule {
        name: "batch-shared-input",
        identity: "(x·W₁ᵀ, x·W₂ᵀ) == split(x·[W₁; W₂]ᵀ)",
        multi: true,
        rewrite: Rewrite::new("batch-shared-input", searcher, applier).expect("a valid rewrite"),
    }]
}
