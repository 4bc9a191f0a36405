//! Scale rules: scalar factors move through matrix products onto whichever operand is
//! smallest (extraction picks), splat constants fold, and identities disappear.

use super::{Rule, add_op, is_splat, rw_build, rw_if, splat, ty, var};
use graft_ir::{BinaryOp, Op};

fn scale_operand(eg: &mut super::Graph, s: &egg::Subst, which: &str) -> Option<egg::Id> {
    let k = eg[s[var("?k")]].data.splat()?;
    let ta = super::leaf_value(eg, s, var("?ta"))? == "true";
    let tb = super::leaf_value(eg, s, var("?tb"))? == "true";
    let (mut a, mut b) = (s[var("?a")], s[var("?b")]);
    let target = if which == "a" { a } else { b };
    let t = ty(eg, target)?;
    if !t.dtype.is_float() {
        return None;
    }
    let c = splat(eg, k, &t);
    let scaled = add_op(eg, &Op::Binary(BinaryOp::Mul), None, &[target, c]);
    if which == "a" {
        a = scaled;
    } else {
        b = scaled;
    }
    Some(add_op(eg, &Op::MatMul { ta, tb }, None, &[a, b]))
}

/// `A·(s·B)` (or `(s·A)·B`) as `s·(A·B)` when the product is smaller than the scaled
/// operand: the scale moves onto the product (autodiff's LoRA backward scales the
/// `[tokens, features]` output gradient once and feeds it to two rank-`r` products).
fn scale_out(eg: &mut super::Graph, id: egg::Id, s: &egg::Subst, which: &str) -> Option<egg::Id> {
    let k = eg[s[var("?k")]].data.splat()?;
    let ta = super::leaf_value(eg, s, var("?ta"))? == "true";
    let tb = super::leaf_value(eg, s, var("?tb"))? == "true";
    let t = ty(eg, id)?;
    // Only toward the smaller tensor: a product larger than its scaled operand keeps the
    // scale where it is (which also keeps the e-graph from growing every scale both ways).
    if !t.dtype.is_float() || t.numel() >= ty(eg, s[var("?x")])?.numel() {
        return None;
    }
    let (a, b) = if which == "a" {
        (s[var("?x")], s[var("?b")])
    } else {
        (s[var("?a")], s[var("?x")])
    };
    let product = add_op(eg, &Op::MatMul { ta, tb }, None, &[a, b]);
    let c = splat(eg, k, &t);
    Some(add_op(eg, &Op::Binary(BinaryOp::Mul), None, &[product, c]))
}

fn fold(name: &'static str, op: &'static str, identity: &'static str) -> Rule {
    Rule {
        name,
        identity,
        multi: false,
        rewrite: rw_build(name, &format!("({op} ?a ?b)"), |eg, id, _| {
            let v = eg[id].data.splat()?;
            let t = ty(eg, id)?;
            if eg[id]
                .nodes
                .iter()
                .any(|n| crate::lang::op_name(n) == Some("constant"))
            {
                return None;
            }
            Some(splat(eg, v, &t))
        }),
    }
}

/// The scale table.
pub fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "scale-into-matmul-a",
            identity: "(A·B)·s == (s·A)·B",
            multi: false,
            rewrite: rw_build(
                "scale-into-matmul-a",
                "(mul (matmul ?ta ?tb ?a ?b) ?k)",
                |eg, _, s| scale_operand(eg, s, "a"),
            ),
        },
        Rule {
            name: "scale-into-matmul-b",
            identity: "(A·B)·s == A·(s·B)",
            multi: false,
            rewrite: rw_build(
                "scale-into-matmul-b",
                "(mul (matmul ?ta ?tb ?a ?b) ?k)",
                |eg, _, s| scale_operand(eg, s, "b"),
            ),
        },
        Rule {
            name: "scale-out-of-matmul-a",
            identity: "(s·A)·B == (A·B)·s",
            multi: false,
            rewrite: rw_build(
                "scale-out-of-matmul-a",
                "(matmul ?ta ?tb (mul ?x ?k) ?b)",
                |eg, id, s| scale_out(eg, id, s, "a"),
            ),
        },
        Rule {
            name: "scale-out-of-matmul-b",
            identity: "A·(s·B) == (A·B)·s",
            multi: false,
            rewrite: rw_build(
                "scale-out-of-matmul-b",
                "(matmul ?ta ?tb ?a (mul ?x ?k))",
                |eg, id, s| scale_out(eg, id, s, "b"),
            ),
        },
        Rule {
            name: "splat-to-the-right",
            identity: "s·x == x·s",
            multi: false,
            rewrite: rw_if(
                "splat-to-the-right",
                "(mul ?k ?x)",
                "(mul ?x ?k)",
                |eg, s| {
                    eg[s[var("?k")]].data.splat().is_some()
                        && eg[s[var("?x")]].data.splat().is_none()
                },
            ),
        },
        Rule {
            name: "mul-by-one",
            identity: "x·1 == x",
            multi: false,
            rewrite: rw_if("mul-by-one", "(mul ?x ?k)", "?x", |eg, s| {
                is_splat(eg, s[var("?k")], 1.0)
            }),
        },
        Rule {
            name: "add-zero",
            identity: "x + 0 == x",
            multi: false,
            rewrite: rw_if("add-zero", "(add ?x ?k)", "?x", |eg, s| {
                is_splat(eg, s[var("?k")], 0.0)
            }),
        },
        Rule {
            name: "broadcast-of-splat",
            identity: "broadcast(splat(v)) == splat(v)",
            multi: false,
            rewrite: rw_build("broadcast-of-splat", "(broadcast ?t ?x)", |eg, id, s| {
                let v = eg[s[var("?x")]].data.splat()?;
                let t = ty(eg, id)?;
                Some(splat(eg, v, &t))
            }),
        },
        fold("fold-splat-mul", "mul", "splat(a)·splat(b) == splat(a·b)"),
        fold(
            "fold-splat-add",
            "add",
            "splat(a) + splat(b) == splat(a + b)",
        ),
        fold(
            "fold-splat-sub",
            "sub",
            "splat(a) − splat(b) == splat(a − b)",
        ),
        fold(
            "fold-splat-div",
            "div",
            "splat(a) / splat(b) == splat(a / b)",
        ),
    ]
}
