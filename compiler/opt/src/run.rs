//! Running the rules: three phases under explicit node, iteration and time limits —
//! single-pattern rules, then a bounded number of iterations with the multi-pattern rules
//! added (TENSAT's approach to their blow-up), then single-pattern rules again — and a report
//! of how often each rule fired and why each phase stopped.

use crate::analysis::Graph;
use crate::rules::Rule;
use egg::{Runner, StopReason};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Limits for the equality-saturation run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Maximum e-nodes.
    pub nodes: usize,
    /// Maximum iterations per phase.
    pub iterations: usize,
    /// Iterations in which multi-pattern rules run.
    pub multi_iterations: usize,
    /// Wall-clock limit for the whole run.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nodes: 200_000,
            iterations: 12,
            multi_iterations: 2,
            time: Duration::from_secs(20),
        }
    }
}

/// What the run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// Times each rule fired (unions that changed the e-graph).
    pub applied: BTreeMap<String, usize>,
    /// Iterations over all phases.
    pub iterations: usize,
    /// Why each phase stopped.
    pub stops: Vec<String>,
    /// E-nodes and e-classes at the end.
    pub nodes: usize,
    /// E-classes at the end.
    pub classes: usize,
    /// Wall time.
    pub time: Duration,
}

fn stop_text(s: &Option<StopReason>) -> String {
    match s {
        Some(StopReason::Saturated) => "saturated".into(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(StopReason::TimeLimit(t)) => format!("time limit ({t:.1}s)"),
        Some(StopReason::Other(o)) => o.clone(),
        None => "not run".into(),
    }
}

/// Runs `rules` on `eg` in three phases.
pub fn saturate(mut eg: Graph, rules: &[Rule], limits: &Limits) -> (Graph, RunReport) {
    let start = Instant::now();
    let mut report = RunReport::default();
    let single: Vec<_> = rules
        .iter()
        .filter(|r| !r.multi)
        .map(|r| &r.rewrite)
        .collect();
    let all: Vec<_> = rules.iter().map(|r| &r.rewrite).collect();
    let phases: [(&Vec<_>, usize, bool); 3] = [
        (&single, limits.iterations, false),
        (&all, limits.multi_iterations, true),
        (&single, limits.iterations, false),
    ];
    for (rws, iters, multi) in phases {
        let left = limits.time.saturating_sub(start.elapsed());
        // The backoff scheduler would ban the multi-pattern rule for its many matches; its
        // phase is bounded by the iteration and node limits instead. A single-pattern rule is
        // banned when it matches more than a few times per e-node of the program: a fixed
        // limit would ban the ordinary rules of a deep model (each layer matches them
        // alike), and every ban costs a whole iteration over the graph, so the phase's time
        // would grow with the square of the depth.
        let per_node = 2 * eg.total_number_of_nodes();
        let scheduler = egg::BackoffScheduler::default().with_initial_match_limit(if multi {
            1_000_000
        } else {
            per_node.max(2_000)
        });
        let runner = Runner::default()
            .with_egraph(eg)
            .with_node_limit(limits.nodes)
            .with_iter_limit(iters)
            .with_time_limit(left)
            .with_scheduler(scheduler)
            .run(rws.iter().copied());
        if std::env::var_os("GRAFT_OPT_DEBUG").is_some() {
            for it in &runner.iterations {
                eprintln!(
                    "iteration (multi-pattern rules: {multi}): {} nodes, search {:.3} s, apply {:.3} s, rebuild {:.3} s",
                    it.egraph_nodes, it.search_time, it.apply_time, it.rebuild_time
                );
            }
        }
        for it in &runner.iterations {
            for (name, n) in &it.applied {
                *report.applied.entry(name.to_string()).or_default() += n;
            }
        }
        report.iterations += runner.iterations.len();
        report.stops.push(stop_text(&runner.stop_reason));
        eg = runner.egraph;
    }
    report.applied.retain(|_, n| *n > 0);
    report.nodes = eg.total_number_of_nodes();
    report.classes = eg.number_of_classes();
    report.time = start.elapsed();
    (eg, report)
}
