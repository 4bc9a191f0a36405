//! Incremental DAG cost for extraction: the chosen e-node per class, how many chosen parents
//! reference each class, a post-order of the chosen DAG, and the total time with every
//! reachable class counted once. A switch (of one class's node, or of several together) is
//! evaluated by reference counts, visiting only the part of the DAG that becomes reachable
//! or unreachable, and applied by repairing the post-order locally: what the new nodes reach
//! that finishes after the switched class is renumbered below it, which also finds cycles.
//! The whole DAG is walked once, at the start, and again only when a repair cannot be made.

use crate::analysis::Graph;
use crate::cost::Target;
use crate::extract::NodeCosts;
use crate::lang::G;
use egg::{Id, Language};
use std::collections::HashMap;

/// A choice of one e-node per class and its DAG cost.
pub struct Dag<'a> {
    eg: &'a Graph,
    target: Target,
    costs: &'a NodeCosts,
    root: Id,
    /// The chosen node per class (children canonical).
    pub choice: HashMap<Id, G>,
    refs: HashMap<Id, u32>,
    post: HashMap<Id, f64>,
    /// Total seconds of the reachable DAG.
    pub total: f64,
    /// Counters: switches tried, local post-order repairs, full recomputations.
    pub stats: [usize; 3],
}

impl<'a> Dag<'a> {
    /// Evaluates `choice`; `None` if it is cyclic or incomplete.
    pub fn new(
        eg: &'a Graph,
        target: Target,
        costs: &'a NodeCosts,
        root: Id,
        choice: HashMap<Id, G>,
    ) -> Option<Dag<'a>> {
        let mut d = Dag {
            eg,
            target,
            costs,
            root: eg.find(root),
            choice,
            refs: HashMap::new(),
            post: HashMap::new(),
            total: 0.0,
            stats: [0; 3],
        };
        d.recompute().then_some(d)
    }

    fn children(&self, id: Id) -> Vec<Id> {
        self.choice
            .get(&id)
            .map(|n| n.children().iter().map(|c| self.eg.find(*c)).collect())
            .unwrap_or_default()
    }

    fn cost(&self, id: Id) -> f64 {
        self.choice
            .get(&id)
            .map_or(0.0, |n| self.costs.get(self.eg, n, &self.target))
    }

    /// Recomputes reference counts, post-order and total from scratch; false if cyclic.
    fn recompute(&mut self) -> bool {
        self.stats[2] += 1;
        self.refs.clear();
        self.post.clear();
        self.total = 0.0;
        let mut visiting = std::collections::HashSet::new();
        let mut stack: Vec<(Id, bool)> = vec![(self.root, false)];
        self.refs.insert(self.root, 1);
        while let Some((id, done)) = stack.pop() {
            if done {
                visiting.remove(&id);
                let n = self.post.len() as f64;
                self.post.insert(id, n);
                self.total += self.cost(id);
                continue;
            }
            if self.post.contains_key(&id) {
                continue;
            }
            if !self.choice.contains_key(&id) || !visiting.insert(id) {
                return false;
            }
            stack.push((id, true));
            for c in self.children(id) {
                *self.refs.entry(c).or_default() += 1;
                if visiting.contains(&c) {
                    return false;
                }
                if !self.post.contains_key(&c) {
                    stack.push((c, false));
                }
            }
        }
        true
    }

    /// Switches `class` to `node` if that makes the DAG cheaper and keeps it acyclic.
    pub fn try_switch(&mut self, class: Id, node: G) -> bool {
        self.stats[0] += 1;
        let node = node.map_children(|c| self.eg.find(c));
        if self.choice.get(&class).is_none_or(|old| *old == node)
            || self.refs.get(&class).copied().unwrap_or(0) == 0
        {
            return false;
        }
        self.apply_if_cheaper(HashMap::from([(class, node)]))
    }

    /// Applies several switches together if the result is cheaper and acyclic.
    pub fn try_switch_all(&mut self, switches: &[(Id, G)]) -> bool {
        self.stats[0] += 1;
        // Only groups whose members are all computed now, and not already by these slices.
        if !switches
            .iter()
            .all(|(c, _)| self.refs.get(&self.eg.find(*c)).copied().unwrap_or(0) > 0)
        {
            return false;
        }
        let sw: HashMap<Id, G> = switches
            .iter()
            .map(|(c, n)| {
                (
                    self.eg.find(*c),
                    n.clone().map_children(|x| self.eg.find(x)),
                )
            })
            .filter(|(c, n)| self.choice.get(c) != Some(n))
            .collect();
        !sw.is_empty() && self.apply_if_cheaper(sw)
    }

    /// Switches every class in `sw` (all reachable) to its node there when the DAG gets
    /// cheaper and stays acyclic. The cost change comes from reference counts over the part
    /// of the DAG the switches make reachable or unreachable ([`Dag::switch_delta`]), and the
    /// post-order is repaired locally ([`Dag::reorder`]); only when that repair cannot be
    /// done (a cycle, or post-order numbers worn too fine) is everything recomputed.
    fn apply_if_cheaper(&mut self, sw: HashMap<Id, G>) -> bool {
        let (delta, over) = self.switch_delta(&sw);
        if delta >= -1e-12 {
            return false;
        }
        let saved: Vec<(Id, G)> = sw
            .keys()
            .filter_map(|c| self.choice.get(c).map(|o| (*c, o.clone())))
            .collect();
        for (c, n) in &sw {
            self.choice.insert(*c, n.clone());
        }
        if self.reorder(&sw) {
            for (k, d) in over {
                let r = self.refs.entry(k).or_default();
                *r = (i64::from(*r) + d).max(0) as u32;
            }
            self.total += delta;
            return true;
        }
        let before = self.total;
        if self.recompute() && self.total + 1e-12 < before {
            return true;
        }
        for (c, o) in saved {
            self.choice.insert(c, o);
        }
        self.recompute();
        false
    }

    /// Repairs the post-order after the classes in `sw` switched (their new nodes already
    /// chosen): for each, earliest first, the classes its new node reaches that are unnumbered
    /// or finish after it are renumbered, in their own post-order, into the gap between the
    /// latest of their other children and the switched class. Numbers only move down, each
    /// above its children, so every untouched class stays after its children. False on a
    /// cycle (the switched class reaches itself) or when the gap is too narrow to number in.
    fn reorder(&mut self, sw: &HashMap<Id, G>) -> bool {
        self.stats[1] += 1;
        let mut order: Vec<(f64, Id)> = sw
            .keys()
            .filter_map(|c| self.post.get(c).map(|p| (*p, *c)))
            .collect();
        if order.len() != sw.len() {
            return false;
        }
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(_, c) in &order {
            let Some(&pc) = self.post.get(&c) else {
                return false;
            };
            // Classes to move below `pc`, children first.
            let mut moved: Vec<Id> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut stack: Vec<(Id, bool)> =
                self.children(c).into_iter().map(|k| (k, false)).collect();
            let must_move = |d: &Self, k: Id| match d.post.get(&k) {
                None => true,
                Some(p) => *p >= pc && !d.children(k).is_empty(),
            };
            while let Some((k, done)) = stack.pop() {
                if done {
                    moved.push(k);
                    continue;
                }
                if k == c {
                    return false;
                }
                if !must_move(self, k) || !seen.insert(k) {
                    continue;
                }
                stack.push((k, true));
                for g in self.children(k) {
                    if !seen.contains(&g) {
                        stack.push((g, false));
                    }
                }
            }
            if moved.is_empty() {
                continue;
            }
            let set: std::collections::HashSet<Id> = moved.iter().copied().collect();
            let low = moved
                .iter()
                .flat_map(|m| self.children(*m))
                .filter(|g| !set.contains(g) && !self.children(*g).is_empty())
                .filter_map(|g| self.post.get(&g).copied())
                .fold(f64::NEG_INFINITY, f64::max);
            let low = if low.is_finite() { low } else { pc - 1.0 };
            let step = (pc - low) / (moved.len() as f64 + 1.0);
            if low >= pc || step <= pc.abs().max(1.0) * 1e-12 {
                return false;
            }
            for (i, m) in moved.into_iter().enumerate() {
                self.post.insert(m, low + step * (i as f64 + 1.0));
            }
        }
        // Every switched class now finishes after its new children (renumbered classes do
        // by construction); anything else is a cycle the walks above did not see.
        sw.keys().all(|c| {
            let pc = self.post[c];
            self.children(*c)
                .iter()
                .all(|k| self.children(*k).is_empty() || self.post.get(k).is_some_and(|p| *p < pc))
        })
    }

    /// The change in total time, and in reference counts, if every class in `sw` (all
    /// reachable now) switched to its node there: edges from the old nodes are removed and
    /// edges from the new ones added, and classes whose count of readers crosses zero enter
    /// or leave with their own cost and edges (under the new choice). Exact for an acyclic
    /// result.
    fn switch_delta(&self, sw: &HashMap<Id, G>) -> (f64, HashMap<Id, i64>) {
        let kids = |n: &G| -> Vec<Id> { n.children().iter().map(|c| self.eg.find(*c)).collect() };
        let new_kids = |id: Id| sw.get(&id).map_or_else(|| self.children(id), kids);
        let new_cost = |id: Id| {
            sw.get(&id).map_or_else(
                || self.cost(id),
                |n| self.costs.get(self.eg, n, &self.target),
            )
        };
        let mut over: HashMap<Id, i64> = HashMap::new();
        let count = |over: &HashMap<Id, i64>, k: Id| {
            i64::from(*self.refs.get(&k).unwrap_or(&0)) + over.get(&k).copied().unwrap_or(0)
        };
        let mut delta: f64 = sw.keys().map(|&c| new_cost(c) - self.cost(c)).sum();
        let mut stack: Vec<Id> = sw.values().flat_map(kids).collect();
        while let Some(k) = stack.pop() {
            let before = count(&over, k);
            *over.entry(k).or_default() += 1;
            if before == 0 {
                delta += new_cost(k);
                stack.extend(new_kids(k));
            }
        }
        let mut stack: Vec<Id> = sw.keys().flat_map(|&c| self.children(c)).collect();
        while let Some(k) = stack.pop() {
            *over.entry(k).or_default() -= 1;
            if count(&over, k) == 0 {
                delta -= new_cost(k);
                stack.extend(new_kids(k));
            }
        }
        (delta, over)
    }

    /// For every reachable class, the reachable classes whose chosen node reads it.
    pub fn readers(&self) -> HashMap<Id, Vec<Id>> {
        let mut map: HashMap<Id, Vec<Id>> = HashMap::new();
        for p in self.reachable() {
            for c in self.children(p) {
                let v = map.entry(c).or_default();
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
        map
    }

    /// Whether `reader`'s chosen node reads `class`.
    pub fn reads(&self, reader: Id, class: Id) -> bool {
        self.children(reader).contains(&class)
    }

    /// The classes reachable from the root.
    pub fn reachable(&self) -> Vec<Id> {
        let mut v: Vec<(f64, Id)> = self
            .post
            .iter()
            .filter(|(id, _)| self.refs.get(id).copied().unwrap_or(0) > 0)
            .map(|(id, p)| (*p, *id))
            .collect();
        v.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        v.into_iter().rev().map(|(_, id)| id).collect()
    }
}
