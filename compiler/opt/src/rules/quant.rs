//! Quantization: a product with a dequantized weight becomes one fused quantized matmul, in
//! the forward pass (`x·dequant(W)ᵀ`) and in the backward pass (`dY·dequant(W)`), so the
//! full-precision weight never exists.

use super::{Rule, add_op, leaf_value, rw_build, var};
use graft_ir::{Op, QuantFormat};

fn fuse(eg: &mut super::Graph, s: &egg::Subst, scales: &[&str]) -> Option<egg::Id> {
    let format = QuantFormat::from_name(&leaf_value(eg, s, var("?fmt"))?)?;
    let block = leaf_value(eg, s, var("?blk"))?.parse().ok()?;
    let nested = leaf_value(eg, s, var("?nst"))?.parse().ok()?;
    let ta = leaf_value(eg, s, var("?ta"))? == "true";
    let tb = leaf_value(eg, s, var("?tb"))? == "true";
    let mut args = vec![s[var("?x")], s[var("?c")]];
    args.extend(scales.iter().map(|v| s[var(v)]));
    Some(add_op(
        eg,
        &Op::QuantMatMul {
            format,
            block,
            nested,
            ta,
            tb,
        },
        None,
        &args,
    ))
}

/// The quantization table.
pub fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "fuse-quantized-matmul",
            identity: "x·dequant(q, s)' == qmatmul(x, q, s)",
            multi: false,
            rewrite: rw_build(
                "fuse-quantized-matmul",
                "(matmul ?ta ?tb ?x (dequantize ?blk ?fmt ?nst ?ty ?c ?s))",
                |eg, _, s| fuse(eg, s, &["?s"]),
            ),
        },
        Rule {
            name: "fuse-double-quantized-matmul",
            identity: "x·dequant(q, s₈, s₂, μ)' == qmatmul(x, q, s₈, s₂, μ)",
            multi: false,
            rewrite: rw_build(
                "fuse-double-quantized-matmul",
                "(matmul ?ta ?tb ?x (dequantize ?blk ?fmt ?nst ?ty ?c ?s1 ?s2 ?s3))",
                |eg, _, s| fuse(eg, s, &["?s1", "?s2", "?s3"]),
            ),
        },
    ]
}
