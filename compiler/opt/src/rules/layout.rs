//! Layout rules: transposes compose and fold into matmul flags; reshapes and broadcasts that
//! change nothing disappear.

use super::{Rule, add_op, leaf_value, rw_build, rw_if, ty, var};
use graft_ir::Op;

fn perm(s: &str) -> Option<Vec<usize>> {
    s.strip_prefix('[')?
        .strip_suffix(']')?
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().ok())
        .collect()
}

fn swaps_last_two(p: &[usize]) -> bool {
    let r = p.len();
    r >= 2
        && p[r - 1] == r - 2
        && p[r - 2] == r - 1
        && p[..r - 2].iter().enumerate().all(|(i, &x)| i == x)
}

/// True when the declared type leaf `?t` equals the type of `?x` (a no-op layout change).
fn same_type(eg: &super::Graph, s: &egg::Subst) -> bool {
    leaf_value(eg, s, var("?t")).and_then(|t| crate::lang::decode_type(&t)) == ty(eg, s[var("?x")])
}

/// Folds a last-two-axes transpose of operand `a` or `b` into the matmul's flag.
fn fold_transpose(eg: &mut super::Graph, s: &egg::Subst, operand_a: bool) -> Option<egg::Id> {
    if !swaps_last_two(&perm(&leaf_value(eg, s, var("?p"))?)?) {
        return None;
    }
    let ta = leaf_value(eg, s, var("?ta"))? == "true";
    let tb = leaf_value(eg, s, var("?tb"))? == "true";
    let (a, b) = (s[var("?a")], s[var("?b")]);
    let op = if operand_a {
        Op::MatMul { ta: !ta, tb }
    } else {
        Op::MatMul { ta, tb: !tb }
    };
    Some(add_op(eg, &op, None, &[a, b]))
}

/// The layout table.
pub fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "transpose-of-transpose",
            identity: "Tₚ(T_q(x)) == T_{q∘p}(x)",
            multi: false,
            rewrite: rw_build(
                "transpose-of-transpose",
                "(transpose ?p (transpose ?q ?x))",
                |eg, _, s| {
                    let p = perm(&leaf_value(eg, s, var("?p"))?)?;
                    let q = perm(&leaf_value(eg, s, var("?q"))?)?;
                    let r: Vec<usize> = p.iter().map(|&i| q[i]).collect();
                    let x = s[var("?x")];
                    if r.iter().enumerate().all(|(i, &v)| i == v) {
                        Some(x)
                    } else {
                        Some(add_op(eg, &Op::Transpose { perm: r }, None, &[x]))
                    }
                },
            ),
        },
        Rule {
            name: "transpose-identity",
            identity: "T_id(x) == x",
            multi: false,
            rewrite: rw_if("transpose-identity", "(transpose ?p ?x)", "?x", |eg, s| {
                leaf_value(eg, s, var("?p"))
                    .and_then(|p| perm(&p))
                    .is_some_and(|p| p.iter().enumerate().all(|(i, &v)| i == v))
            }),
        },
        Rule {
            name: "reshape-of-reshape",
            identity: "reshape(reshape(x, u), t) == reshape(x, t)",
            multi: false,
            rewrite: rw_if(
                "reshape-of-reshape",
                "(reshape ?t (reshape ?u ?x))",
                "(reshape ?t ?x)",
                |_, _| true,
            ),
        },
        Rule {
            name: "reshape-identity",
            identity: "reshape(x, shape(x)) == x",
            multi: false,
            rewrite: rw_if("reshape-identity", "(reshape ?t ?x)", "?x", same_type),
        },
        Rule {
            name: "broadcast-identity",
            identity: "broadcast(x, shape(x)) == x",
            multi: false,
            rewrite: rw_if("broadcast-identity", "(broadcast ?t ?x)", "?x", same_type),
        },
        Rule {
            name: "matmul-fold-transpose-b",
            identity: "A'·(Bᵀ) == matmul{tb = !tb}(A, B)",
            multi: false,
            rewrite: rw_build(
                "matmul-fold-transpose-b",
                "(matmul ?ta ?tb ?a (transpose ?p ?b))",
                |eg, _, s| fold_transpose(eg, s, false),
            ),
        },
        Rule {
            name: "matmul-fold-transpose-a",
            identity: "(Aᵀ)·B' == matmul{ta = !ta}(A, B)",
            multi: false,
            rewrite: rw_build(
                "matmul-fold-transpose-a",
                "(matmul ?ta ?tb (transpose ?p ?a) ?b)",
                |eg, _, s| fold_transpose(eg, s, true),
            ),
        },
    ]
}
