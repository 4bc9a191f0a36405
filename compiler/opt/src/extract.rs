//! Extraction: pick one e-node per e-class to minimize the cost model's time.
//!
//! Tree cost (egg's greedy extractor) counts a shared subterm once per use, which misjudges
//! programs where the forward's values feed the backward, and the multi-pattern batching rule
//! (one wide product feeding several slices). So extraction works on the DAG, counting every
//! class once: it starts from the better of the original program and the greedy tree
//! extraction, then hill-climbs — switching one class's node, or a whole batching group's
//! slices at once, or every reader of a scaled value at once — keeping a change only when the
//! DAG gets cheaper and stays acyclic. The result is never costlier than the input program.
//!
//! Every step is linear in the graph (or in the part of it a switch touches): node costs are
//! computed once ([`NodeCosts`]), the greedy start is a worklist, and a switch is evaluated by
//! reference counts over what it makes reachable or unreachable, so the optimizer's time grows
//! with the model's depth, not with its square.

use crate::analysis::{Graph, Info};
use crate::cost::{Target, seconds, work};
use crate::dag::Dag;
use crate::lang::{G, op_from_leaves};
use crate::rules::batching::Groups;
use egg::{Id, Language, RecExpr};
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

/// Every canonical e-node's own time, computed once: extraction asks for the same nodes'
/// costs over and over (typing an op is not free), and the answer never changes.
pub struct NodeCosts(HashMap<G, f64>);

impl NodeCosts {
    /// The costs of every node of `eg` on `target`.
    pub fn new(eg: &Graph, target: &Target) -> NodeCosts {
        let mut m = HashMap::new();
        for c in eg.classes() {
            for n in &c.nodes {
                let n = n.clone().map_children(|x| eg.find(x));
                let t = node_seconds(eg, &n, target);
                m.insert(n, t);
            }
        }
        NodeCosts(m)
    }

    /// The own time of a canonical node (computed when the table lacks it).
    pub fn get(&self, eg: &Graph, n: &G, target: &Target) -> f64 {
        self.0
            .get(n)
            .copied()
            .unwrap_or_else(|| node_seconds(eg, n, target))
    }
}

/// Greedy tree extraction (each class's cheapest node counting its children's best trees in
/// full), as egg's `Extractor` computes it, by a worklist: a class is looked at again only
/// when one of its children got cheaper. egg's extractor sweeps every class until nothing
/// changes, which takes as many sweeps as the graph is deep: quadratic in the model's depth.
fn greedy(eg: &Graph, costs: &NodeCosts, target: &Target) -> HashMap<Id, G> {
    let mut parents: HashMap<Id, Vec<Id>> = HashMap::new();
    for c in eg.classes() {
        for n in &c.nodes {
            for k in n.children() {
                let v = parents.entry(eg.find(*k)).or_default();
                if v.last() != Some(&c.id) {
                    v.push(c.id);
                }
            }
        }
    }
    let mut best: HashMap<Id, (f64, G)> = HashMap::new();
    let eval = |best: &HashMap<Id, (f64, G)>, class: Id| -> Option<(f64, G)> {
        let mut out: Option<(f64, G)> = None;
        for n in &eg[class].nodes {
            let n = n.clone().map_children(|x| eg.find(x));
            let mut total = costs.get(eg, &n, target);
            let mut complete = true;
            for k in n.children() {
                match best.get(k) {
                    Some((c, _)) => total += c,
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete && out.as_ref().is_none_or(|(c, _)| total < *c) {
                out = Some((total, n));
            }
        }
        out
    };
    let mut queue: std::collections::VecDeque<Id> = eg.classes().map(|c| c.id).collect();
    let mut queued: std::collections::HashSet<Id> = queue.iter().copied().collect();
    while let Some(class) = queue.pop_front() {
        queued.remove(&class);
        let Some((cost, node)) = eval(&best, class) else {
            continue;
        };
        if best.get(&class).is_some_and(|(c, _)| *c <= cost) {
            continue;
        }
        best.insert(class, (cost, node));
        for p in parents.get(&class).into_iter().flatten() {
            if queued.insert(*p) {
                queue.push_back(*p);
            }
        }
    }
    best.into_iter().map(|(c, (_, n))| (c, n)).collect()
}

/// The DAG cost of a choice: every reachable class counted once; `None` if it is cyclic.
fn dag_cost(
    eg: &Graph,
    costs: &NodeCosts,
    choice: &HashMap<Id, G>,
    root: Id,
    target: &Target,
) -> Option<f64> {
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
            total += costs.get(eg, node, target);
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
    /// Switches tried, local post-order repairs, and full recomputations of the chosen DAG
    /// (the one linear-time step that must stay rare for extraction to stay linear).
    pub work: [usize; 3],
}

/// Extracts the cheapest term under `root`; `original` is the input program's term, whose
/// choice is the starting point that guarantees no regression.
pub fn extract(
    eg: &Graph,
    root: Id,
    original: &RecExpr<G>,
    target: Target,
    groups: &Groups,
) -> Option<Extracted> {
    let t0 = std::time::Instant::now();
    let costs = NodeCosts::new(eg, &target);
    let greedy = greedy(eg, &costs, &target);
    // The original program's choice, over canonical classes. When rules merged several of its
    // nodes into one class, the first (innermost) one is kept, which keeps the choice acyclic.
    let mut orig = greedy.clone();
    let mut fixed = std::collections::HashSet::new();
    let mut ids: Vec<Id> = Vec::new();
    for n in original.as_ref() {
        let canon = n.clone().map_children(|c| eg.find(ids[usize::from(c)]));
        let class = eg.lookup(canon.clone()).map(|c| eg.find(c))?;
        if fixed.insert(class) {
            orig.insert(class, canon);
        }
        ids.push(class);
    }
    let g_cost = dag_cost(eg, &costs, &greedy, root, &target).unwrap_or(f64::INFINITY);
    let o_cost = dag_cost(eg, &costs, &orig, root, &target)?;
    let start = if g_cost < o_cost { greedy } else { orig };
    let mut dag = Dag::new(eg, target, &costs, root, start)?;
    let t1 = t0.elapsed();
    // Hill-climb one class at a time.
    for _ in 0..3 {
        let mut improved = false;
        for class in dag.reachable() {
            for alt in &eg[class].nodes {
                if dag.try_switch(class, alt.clone()) {
                    improved = true;
                    break;
                }
            }
        }
        if !improved {
            break;
        }
    }
    let t2 = t0.elapsed();
    unscale_shared(eg, &mut dag, &costs, &target);
    let t3 = t0.elapsed();
    // Batching groups switch together.
    let mut used = 0;
    let mut groups: Vec<Vec<(Id, G)>> = groups.0.lock().map(|g| g.clone()).unwrap_or_default();
    for g in &mut groups {
        for (c, n) in g.iter_mut() {
            *c = eg.find(*c);
            *n = n.clone().map_children(|x| eg.find(x));
        }
    }
    groups.sort_by_key(|g| format!("{g:?}"));
    groups.dedup();
    for _ in 0..3 {
        let mut improved = false;
        for g in &groups {
            if dag.try_switch_all(g) {
                used += 1;
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    if std::env::var_os("GRAFT_OPT_DEBUG").is_some() {
        eprintln!(
            "extraction: {} switches tried, {} post-order repairs, {} recomputations",
            dag.stats[0], dag.stats[1], dag.stats[2]
        );
        eprintln!(
            "extraction times: start {:.3} s, hill-climb {:.3} s, unscale {:.3} s, groups {:.3} s",
            t1.as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t0.elapsed() - t3).as_secs_f64()
        );
    }
    let work = dag.stats;
    let choice = dag.choice;
    build(eg, &choice, root).map(|expr| Extracted {
        expr,
        groups_used: used,
        work,
    })
}

/// A scaled value (`x · splat`) read by several classes stays as long as one reader does, so
/// switching readers one at a time never removes it. This switches all its readers at once
/// to their cheapest nodes that do not read it (the scale moved onto each product: autodiff's
/// LoRA backward scales a `[tokens, features]` gradient once for two rank-r products, whose
/// results are far smaller), when the DAG gets cheaper.
fn unscale_shared(eg: &Graph, dag: &mut Dag<'_>, costs: &NodeCosts, target: &Target) {
    for _ in 0..2 {
        let mut improved = false;
        let readers_of = dag.readers();
        for x in dag.reachable() {
            let scaled = dag.choice.get(&x).is_some_and(|n| {
                crate::lang::op_name(n) == Some("mul")
                    && n.children().iter().any(|c| eg[*c].data.splat().is_some())
            });
            if !scaled {
                continue;
            }
            // (Readers as of the pass's start, less those a switch since moved off `x`.)
            let readers: Vec<Id> = readers_of
                .get(&x)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&p| dag.reads(p, x))
                .collect();
            if readers.len() < 2 {
                continue;
            }
            let switches: Option<Vec<(Id, G)>> = readers
                .iter()
                .map(|&p| {
                    eg[p]
                        .nodes
                        .iter()
                        .filter(|n| n.children().iter().all(|c| ![x, p].contains(&eg.find(*c))))
                        .min_by(|a, b| {
                            let (a, b) = (
                                (*a).clone().map_children(|k| eg.find(k)),
                                (*b).clone().map_children(|k| eg.find(k)),
                            );
                            costs
                                .get(eg, &a, target)
                                .total_cmp(&costs.get(eg, &b, target))
                        })
                        .map(|n| (p, n.clone()))
                })
                .collect();
            if let Some(switches) = switches
                && dag.try_switch_all(&switches)
            {
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
}
