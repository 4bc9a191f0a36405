//! Incremental DAG cost for extraction: the chosen e-node per class, how many chosen parents
//! reference each class, a post-order of the chosen DAG, and the total time with every
//! reachable class counted once. Switching one class's node is evaluated by reference counts
//! (only the part of the DAG that becomes reachable or unreachable is visited) and checked for
//! cycles with the post-order (a child that finishes before the class cannot reach it).

use crate::analysis::Graph;
use crate::cost::Target;
use crate::extract::node_seconds;
use crate::lang::G;
use egg::{Id, Language};
use std::collections::HashMap;

/// A choice of one e-node per class and its DAG cost.
pub struct Dag<'a> {
    eg: &'a Graph,
    target: Target,
    root: Id,
    /// The chosen node per class (children canonical).
    pub choice: HashMap<Id, G>,
    refs: HashMap<Id, u32>,
    post: HashMap<Id, f64>,
    /// Total seconds of the reachable DAG.
    pub total: f64,
    /// Counters: switches tried, cycle searches, full recomputations.
    pub stats: [usize; 3],
}

impl<'a> Dag<'a> {
    /// Evaluates `choice`; `None` if it is cyclic or incomplete.
    pub fn new(eg: &'a Graph, target: Target, root: Id, choice: HashMap<Id, G>) -> Option<Dag<'a>> {
        let mut d = Dag {
            eg,
            target,
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
            .map_or(0.0, |n| node_seconds(self.eg, n, &self.target))
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

    /// Whether `from` reaches `to` through chosen nodes. The post-order is topological, so a
    /// class that finishes before `to` cannot reach it and is not expanded.
    fn reaches(&mut self, from: Id, to: Id) -> bool {
        self.stats[1] += 1;
        let limit = self.post.get(&to).copied().unwrap_or(f64::INFINITY);
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![from];
        while let Some(id) = stack.pop() {
            if id == to {
                return true;
            }
            if self.post.get(&id).is_some_and(|p| *p < limit) {
                continue;
            }
            if seen.insert(id) {
                stack.extend(self.children(id));
            }
        }
        false
    }

    /// Switches `class` to `node` if that makes the DAG cheaper and keeps it acyclic.
    pub fn try_switch(&mut self, class: Id, node: G) -> bool {
        self.stats[0] += 1;
        let node = node.map_children(|c| self.eg.find(c));
        let Some(old) = self.choice.get(&class).cloned() else {
            return false;
        };
        if old == node {
            return false;
        }
        let Some(&pc) = self.post.get(&class) else {
            return false;
        };
        if self.refs.get(&class).copied().unwrap_or(0) == 0 {
            return false;
        }
        let new_kids: Vec<Id> = node.children().to_vec();
        let mut all_safe = true;
        for k in &new_kids {
            let safe = self.post.get(k).is_some_and(|pk| *pk < pc);
            all_safe &= safe || !self.post.contains_key(k);
            if !safe && self.reaches(*k, class) {
                return false;
            }
        }
        let mut over: HashMap<Id, i64> = HashMap::new();
        let mut delta =
            node_seconds(self.eg, &node, &self.target) - node_seconds(self.eg, &old, &self.target);
        let count = |d: &Self, over: &HashMap<Id, i64>, k: Id| {
            *d.refs.get(&k).unwrap_or(&0) as i64 + over.get(&k).copied().unwrap_or(0)
        };
        let mut stack = new_kids.clone();
        while let Some(k) = stack.pop() {
            let before = count(self, &over, k);
            *over.entry(k).or_default() += 1;
            if before == 0 {
                delta += self.cost(k);
                stack.extend(self.children(k));
            }
        }
        let mut stack: Vec<Id> = old.children().iter().map(|c| self.eg.find(*c)).collect();
        while let Some(k) = stack.pop() {
            *over.entry(k).or_default() -= 1;
            if count(self, &over, k) == 0 {
                delta -= self.cost(k);
                stack.extend(self.children(k));
            }
        }
        if delta >= -1e-12 {
            return false;
        }
        if all_safe && self.number_new(&new_kids, pc) {
            // Every new child finishes before `class` (newly reachable ones were just numbered
            // below it), so the post-order stays topological: update counts in place. Classes
            // that became unreachable keep stale entries, which only make checks conservative.
            for (k, d) in over {
                let r = self.refs.entry(k).or_default();
                *r = (*r as i64 + d).max(0) as u32;
            }
            self.choice.insert(class, node);
            self.total += delta;
            return true;
        }
        self.choice.insert(class, node);
        if !self.recompute() {
            self.choice.insert(class, old);
            self.recompute();
            return false;
        }
        true
    }

    /// Gives post-order numbers below `upper` to the classes reachable from `roots` that have
    /// none, children first; false if some child already finishes at or after `upper`.
    fn number_new(&mut self, roots: &[Id], upper: f64) -> bool {
        let mut stack: Vec<(Id, bool)> = roots
            .iter()
            .filter(|r| !self.post.contains_key(r))
            .map(|r| (*r, false))
            .collect();
        let mut pending = std::collections::HashSet::new();
        while let Some((id, done)) = stack.pop() {
            if self.post.contains_key(&id) {
                continue;
            }
            let kids = self.children(id);
            if done {
                let below = kids
                    .iter()
                    .filter_map(|k| self.post.get(k))
                    .fold(f64::NEG_INFINITY, |a, b| a.max(*b));
                if below >= upper {
                    return false;
                }
                let lo = if below.is_finite() {
                    below
                } else {
                    upper - 1.0
                };
                let p = (lo + upper) / 2.0;
                if !(p > lo && p < upper) {
                    return false;
                }
                self.post.insert(id, p);
                continue;
            }
            if !pending.insert(id) {
                return false;
            }
            stack.push((id, true));
            for k in kids {
                if !self.post.contains_key(&k) {
                    stack.push((k, false));
                }
            }
        }
        true
    }

    /// Applies several switches together if the result is cheaper and acyclic.
    pub fn try_switch_all(&mut self, switches: &[(Id, G)]) -> bool {
        // Only groups whose members are all computed now, and not already by these slices.
        let relevant = switches
            .iter()
            .all(|(c, _)| self.refs.get(&self.eg.find(*c)).copied().unwrap_or(0) > 0)
            && switches.iter().any(|(c, n)| {
                self.choice.get(&self.eg.find(*c))
                    != Some(&n.clone().map_children(|x| self.eg.find(x)))
            });
        if !relevant {
            return false;
        }
        let (before, saved) = (self.total, self.choice.clone());
        for (c, n) in switches {
            self.choice.insert(
                self.eg.find(*c),
                n.clone().map_children(|x| self.eg.find(x)),
            );
        }
        if self.recompute() && self.total + 1e-12 < before {
            return true;
        }
        self.choice = saved;
        self.recompute();
        false
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
