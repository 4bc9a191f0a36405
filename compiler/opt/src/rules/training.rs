//! Training-step clean-ups. After the backward pass is built `stop_grad` is the identity, so
//! dropping it lets hash-consing share the forward's values with the backward's recomputations
//! (common subexpressions between the passes); a select between equal values is that value.
//! Ops that only fed a frozen weight's gradient never survive: extraction keeps only what the
//! outputs need.

use super::{Rule, rw_if};

/// The training table.
pub fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "drop-stop-grad",
            identity: "stop_grad(x) == x (after differentiation)",
            multi: false,
            rewrite: rw_if("drop-stop-grad", "(stop_grad ?x)", "?x", |_, _| true),
        },
        Rule {
            name: "select-same",
            identity: "select(c, x, x) == x",
            multi: false,
            rewrite: rw_if("select-same", "(select ?c ?x ?x)", "?x", |_, _| true),
        },
    ]
}
