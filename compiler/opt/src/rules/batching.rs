//! Shared-input batching: two products of the same input, `x·W₁ᵀ` and `x·W₂ᵀ`, become one
//! wider product `x·[W₁; W₂]ᵀ` followed by slices (q/k/v, gate/up, and the A matrices of their
//! adapters). It is a multi-pattern rule (two products joined on their input, found through
//! an index by input, [`SharedInput`]): it runs in a bounded phase, and the extractor decides
//! per group, counting shared nodes once, whether the wide product pays.

use super::{Rule, add_op, op_node, ty, var};
use crate::analysis::Graph;
use egg::{Id, Rewrite, Subst};
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

/// Finds the pairs of products `(matmul ta=false tb=true ?x ?w1)` and
/// `(matmul ta=false tb=true ?x ?w2)` of one input `?x`, as egg's two-pattern
/// `MultiPattern` would, but through an index of products by input: egg joins a multi-pattern
/// by scanning every class for the second pattern per match of the first, which is quadratic
/// in the number of products (in the model's depth); grouped by input, it is linear.
struct SharedInput;

/// `(matmul ta=false tb=true x w)`'s `x` and `w`.
fn transposed_product(eg: &Graph, n: &crate::lang::G) -> Option<(Id, Id)> {
    let crate::lang::G::Node(name, kids) = n else {
        return None;
    };
    let leaf =
        |id: Id, want: &str| matches!(&eg[id].data, crate::analysis::Info::Leaf(s) if s == want);
    (name.as_str() == "matmul"
        && kids.len() == 4
        && leaf(kids[0], "ta=false")
        && leaf(kids[1], "tb=true"))
    .then(|| (eg.find(kids[2]), eg.find(kids[3])))
}

impl egg::Searcher<crate::lang::G, crate::analysis::TensorAnalysis> for SharedInput {
    fn search_eclass_with_limit(
        &self,
        eg: &Graph,
        eclass: Id,
        limit: usize,
    ) -> Option<egg::SearchMatches<'_, crate::lang::G>> {
        self.search_with_limit(eg, usize::MAX)
            .into_iter()
            .find(|m| m.eclass == eg.find(eclass))
            .map(|mut m| {
                m.substs.truncate(limit);
                m
            })
    }

    fn search_with_limit(
        &self,
        eg: &Graph,
        limit: usize,
    ) -> Vec<egg::SearchMatches<'_, crate::lang::G>> {
        // Every product, in class order, and the products of each input.
        let mut products: Vec<(Id, Id, Id)> = Vec::new();
        let mut by_input: std::collections::HashMap<Id, Vec<(Id, Id)>> = Default::default();
        for c in eg.classes() {
            for n in &c.nodes {
                if let Some((x, w)) = transposed_product(eg, n) {
                    products.push((c.id, x, w));
                    by_input.entry(x).or_default().push((c.id, w));
                }
            }
        }
        let mut out: Vec<egg::SearchMatches<'_, crate::lang::G>> = Vec::new();
        let mut found = 0;
        for (m1, x, w1) in products {
            if found >= limit {
                break;
            }
            let mut substs = Vec::new();
            for &(m2, w2) in by_input.get(&x).into_iter().flatten() {
                let mut s = Subst::with_capacity(5);
                s.insert(var("?m1"), m1);
                s.insert(var("?m2"), m2);
                s.insert(var("?x"), x);
                s.insert(var("?w1"), w1);
                s.insert(var("?w2"), w2);
                substs.push(s);
            }
            found += substs.len();
            match out.last_mut() {
                Some(last) if last.eclass == m1 => last.substs.extend(substs),
                _ => out.push(egg::SearchMatches {
                    eclass: m1,
                    substs,
                    ast: None,
                }),
            }
        }
        out
    }

    fn vars(&self) -> Vec<egg::Var> {
        ["?m1", "?m2", "?x", "?w1", "?w2"]
            .into_iter()
            .map(var)
            .collect()
    }
}

/// The batching table; `groups` collects what the rule did, for the extractor.
pub fn rules(groups: Groups) -> Vec<Rule> {
    let searcher = SharedInput;
    let applier = Batcher(groups);
    vec![Rule {
        name: "batch-shared-input",
        identity: "(x·W₁ᵀ, x·W₂ᵀ) == split(x·[W₁; W₂]ᵀ)",
        multi: true,
        rewrite: Rewrite::new("batch-shared-input", searcher, applier).expect("a valid rewrite"),
    }]
}
