//! Extraction: pick one e-node per e-class to minimize the cost model's time.
//!
//! First a greedy bottom-up pass (egg's extractor, tree cost). Tree cost counts a shared
//! subterm once per use, which is wrong for the multi-pattern batching rule (one wide product
//! feeding several slices), so a second pass works on the DAG: for each batching group it
//! tries choosing the slices for every member at once, counts every class once, rejects
//! choices that would make the term cyclic, and keeps the change only when the DAG is cheaper.

use crate::analysis::{Graph, Info};
use crate::cost::{Target, seconds, work};
use crate::lang::{G, op_from_leaves};
use crate::rules::batching::Groups;
use egg::{CostFunction, Extractor, Id, Language, RecExpr};
use graft_ir::TensorType;
use std::collections::HashMap;

/// The time of one e-node on a target (0 for leaves, views and step-invariant values).
pub fn node_seconds(eg: &Graph, n: &G, target: &Target) -> f64 {
    let G::Node(name, children) = n else {
        return 0.0;
    };
    if name.as_str() == "results" {
        return 0.0;
    }
    let (leaves, args) = crate::analysis::split_children(eg, children);
    let Ok((op, declared)) = op_from_leaves(name.as_str(), &leaves) else {
        return f64::INFINITY;
    };
    let infos: Vec<&Info> = args.iter().map(|a| &eg[*a].data).collect();
    if !matches!(
        op,
        graft_ir::Op::Random { .. } | graft_ir::Op::Dropout { .. } | graft_ir::Op::Input { .. }
    ) && infos.iter().all(|i| {
        matches!(
            i,
            Info::Tensor {
                invariant: true,
                ..
            }
        )
    }) {
        return 0.0;
    }
    let tys: Vec<&TensorType> = infos.iter().filter_map(|i| i.ty()).collect();
    match op.result_type(&tys, declared.as_ref()) {
        Ok(out) => seconds(&work(&op, &tys, &out), target),
        Err(_) => f64::INFINITY,
    }
}

struct TreeCost<'a> {
    eg: &'a Graph,
    target: Target,
}

impl CostFunction<G> for TreeCost<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &G, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let own = node_seconds(self.eg, enode, &self.target);
        enode.children().iter().fold(own, |acc, c| acc + costs(*c))
    }
}

/// The DAG cost of a choice: every reachable class counted once; `None` if it is cyclic.
fn dag_cost(eg: &Graph, choice: &HashMap<Id, G>, root: Id, target: &Target) -> Option<f64> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Visiting,
        Done,
    }
    let mut state: HashMap<Id, State> = HashMap::new();
    let mut total = 0.0;
    let mut stack: Vec<(Id, bool)> = vec![(eg.find(root), false)];
    while let Some((id, children_done)) = stack.pop() {
        let node = choice.get(&id)?;
        if children_done {
            state.insert(id, State::Done);
            total += node_seconds(eg, node, target);
            continue;
        }
        match state.get(&id) {
            Some(State::Done) => continue,
            Some(State::Visiting) => return None,
            None => {}
        }
        state.insert(id, State::Visiting);
        stack.push((id, true));
        for c in node.children() {
            let c = eg.find(*c);
            match state.get(&c) {
                Some(State::Visiting) => return None,
                Some(State::Done) => {}
                None => stack.push((c, false)),
            }
        }
    }
    Some(total)
}

/// Builds the expression a choice denotes.
fn build(eg: &Graph, choice: &HashMap<Id, G>, root: Id) -> Option<RecExpr<G>> {
    let mut expr = RecExpr::default();
    let mut done: HashMap<Id, Id> = HashMap::new();
    let mut stack: Vec<(Id, bool)> = vec![(eg.find(root), false)];
    while let Some((id, ready)) = stack.pop() {
        if done.contains_key(&id) {
            continue;
        }
        let node = choice.get(&id)?;
        if ready {
            let n = node.clone().map_children(|c| done[&eg.find(c)]);
            done.insert(id, expr.add(n));
        } else {
            stack.push((id, true));
            for c in node.children() {
                let c = eg.find(*c);
                if !done.contains_key(&c) {
                    stack.push((c, false));
                }
            }
        }
    }
    Some(expr)
}

/// What extraction produced.
pub struct Extracted {
    /// The chosen term.
    pub expr: RecExpr<G>,
    /// Batching groups adopted.
    pub groups_used: usize,
}

/// Extracts the cheapest term under `root`.
pub fn extract(eg: &Graph, root: Id, target: Target, groups: &Groups) -> Option<Extracted> {
    let extractor = Extractor::new(eg, TreeCost { eg, target });
    let mut choice: HashMap<Id, G> = eg
        .classes()
        .map(|c| (c.id, extractor.find_best_node(c.id).clone()))
        .collect();
    let mut best = dag_cost(eg, &choice, root, &target)?;
    let mut used = 0;
    let groups: Vec<Vec<(Id, Id)>> = groups.0.lock().map(|g| g.clone()).unwrap_or_default();
    for _ in 0..3 {
        let mut improved = false;
        for g in &groups {
            let mut trial = choice.clone();
            for (m, s) in g {
                let class = eg.find(*m);
                let slice_class = eg.find(*s);
                if class != slice_class {
                    continue;
                }
                if let Some(n) = eg[class]
                    .nodes
                    .iter()
                    .find(|n| crate::lang::op_name(n) == Some("slice"))
                {
                    trial.insert(class, n.clone());
                }
            }
            if let Some(c) = dag_cost(eg, &trial, root, &target) {
                if c + 1e-12 < best {
                    best = c;
                    choice = trial;
                    used += 1;
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
    build(eg, &choice, root).map(|expr| Extracted {
        expr,
        groups_used: used,
    })
}
