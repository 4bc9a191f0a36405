//! Low-rank algebra: chains of matrix products reassociate (extraction picks `(x·Aᵀ)·Bᵀ` or
//! `x·(B·A)ᵀ` by cost), and for inference a sum of products of one input folds into one
//! product (`merge`: an adapter folded into the frozen weight). None of these rules knows a
//! method's name: they fire on any adapter with this algebraic shape.

use super::{Rule, rw_if, ty, var};

fn rank2(eg: &super::Graph, s: &egg::Subst, vars: &[&str]) -> bool {
    vars.iter()
        .all(|v| ty(eg, s[var(v)]).is_some_and(|t| t.rank() == 2))
}

/// The low-rank table used in training and inference.
pub fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "lowrank-reassociate",
            identity: "(x·Aᵀ)·Bᵀ == x·(B·A)ᵀ",
            multi: false,
            rewrite: rw_if(
                "lowrank-reassociate",
                "(matmul ta=false tb=true (matmul ta=false tb=true ?x ?a) ?b)",
                "(matmul ta=false tb=true ?x (matmul ta=false tb=false ?b ?a))",
                |eg, s| rank2(eg, s, &["?a", "?b"]),
            ),
        },
        Rule {
            name: "lowrank-reassociate-back",
            identity: "x·(B·A)ᵀ == (x·Aᵀ)·Bᵀ",
            multi: false,
            rewrite: rw_if(
                "lowrank-reassociate-back",
                "(matmul ta=false tb=true ?x (matmul ta=false tb=false ?b ?a))",
                "(matmul ta=false tb=true (matmul ta=false tb=true ?x ?a) ?b)",
                |eg, s| rank2(eg, s, &["?a", "?b"]),
            ),
        },
    ]
}

/// Rules that fold adapters into weights; for inference only (`graft explain --merge`).
pub fn merge_rules() -> Vec<Rule> {
    vec![Rule {
        name: "matmul-distribute",
        identity: "x·Wᵀ + x·Vᵀ == x·(W + V)ᵀ",
        multi: false,
        rewrite: rw_if(
            "matmul-distribute",
            "(add (matmul ?ta ?tb ?x ?w) (matmul ?ta ?tb ?x ?v))",
            "(matmul ?ta ?tb ?x (add ?w ?v))",
            |eg, s| ty(eg, s[var("?w")]) == ty(eg, s[var("?v")]),
        ),
    }]
}
