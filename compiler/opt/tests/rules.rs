//! One line per rule: it fires on its target (`start` and `goal` end up in one e-class) and
//! not on a near miss. Inputs are written with the helpers below; leaves are `key=value`.

use egg::{RecExpr, Runner};
use graft_opt::analysis::Graph;
use graft_opt::lang::G;
use graft_opt::rules::{batching::Groups, merge_rules};

fn inp(name: &str, ty: &str) -> String {
    format!("(input kind=data name=s:{name} ty={ty})")
}

/// Runs only rule `rule` (3 iterations) on an e-graph holding `start` and `goal`; true when
/// they end up equal.
fn equal_after(rule: &str, start: &str, goal: &str) -> bool {
    let groups = Groups::default();
    let rules: Vec<_> = merge_rules(&groups)
        .into_iter()
        .filter(|r| r.name == rule)
        .collect();
    assert_eq!(rules.len(), 1, "no rule named {rule}");
    let mut eg = Graph::default();
    let s: RecExpr<G> = start.parse().unwrap_or_else(|e| panic!("{start}: {e}"));
    let g: RecExpr<G> = goal.parse().unwrap_or_else(|e| panic!("{goal}: {e}"));
    let (si, gi) = (eg.add_expr(&s), eg.add_expr(&g));
    let runner = Runner::default()
        .with_egraph(eg)
        .with_iter_limit(3)
        .run(rules.iter().map(|r| &r.rewrite));
    runner.egraph.find(si) == runner.egraph.find(gi)
}

macro_rules! check_rewrite {
    ($test:ident, $rule:expr, $start:expr => $goal:expr, near miss $miss:expr => $miss_goal:expr) => {
        #[test]
        fn $test() {
            assert!(
                equal_after($rule, &$start, &$goal),
                "{} did not rewrite\n  {}\nto\n  {}",
                $rule,
                $start,
                $goal
            );
            assert!(
                !equal_after($rule, &$miss, &$miss_goal),
                "{} fired on the near miss\n  {}",
                $rule,
                $miss
            );
        }
    };
}

fn x() -> String {
    inp("x", "f32[2,3]")
}
fn w() -> String {
    inp("w", "f32[4,3]")
}
fn c(v: &str, ty: &str) -> String {
    format!("(constant value=f:{v} ty={ty})")
}

check_rewrite!(transpose_of_transpose, "transpose-of-transpose",
    format!("(transpose perm=[1,0] (transpose perm=[1,0] {}))", x()) => x(),
    near miss format!("(transpose perm=[1,0,2] (transpose perm=[0,2,1] {}))", inp("y", "f32[2,3,4]")) => inp("y", "f32[2,3,4]"));
check_rewrite!(transpose_identity, "transpose-identity",
    format!("(transpose perm=[0,1] {})", x()) => x(),
    near miss format!("(transpose perm=[1,0] {})", inp("s", "f32[3,3]")) => inp("s", "f32[3,3]"));
check_rewrite!(reshape_of_reshape, "reshape-of-reshape",
    format!("(reshape ty=f32[6] (reshape ty=f32[3,2] {}))", x()) => format!("(reshape ty=f32[6] {})", x()),
    near miss format!("(reshape ty=f32[6] (transpose perm=[1,0] {}))", x()) => format!("(reshape ty=f32[6] {})", x()));
check_rewrite!(reshape_identity, "reshape-identity",
    format!("(reshape ty=f32[2,3] {})", x()) => x(),
    near miss format!("(reshape ty=f32[3,2] {})", x()) => x());
check_rewrite!(broadcast_identity, "broadcast-identity",
    format!("(broadcast ty=f32[2,3] {})", x()) => x(),
    near miss format!("(broadcast ty=f32[4,2,3] {})", x()) => x());
check_rewrite!(fold_transpose_b, "matmul-fold-transpose-b",
    format!("(matmul ta=false tb=false {} (transpose perm=[1,0] {}))", x(), w()) => format!("(matmul ta=false tb=true {} {})", x(), w()),
    near miss format!("(matmul ta=false tb=false {} (transpose perm=[1,0,2] {}))", inp("b", "f32[2,2,3]"), inp("v", "f32[3,2,4]")) => format!("(matmul ta=false tb=true {} {})", inp("b", "f32[2,2,3]"), inp("v2", "f32[2,4,3]")));
check_rewrite!(fold_transpose_a, "matmul-fold-transpose-a",
    format!("(matmul ta=false tb=true (transpose perm=[1,0] {}) {})", inp("a", "f32[3,2]"), w()) => format!("(matmul ta=true tb=true {} {})", inp("a", "f32[3,2]"), w()),
    near miss format!("(matmul ta=false tb=true (neg {}) {})", x(), w()) => format!("(matmul ta=true tb=true {} {})", inp("a", "f32[3,2]"), w()));
check_rewrite!(scale_into_matmul_a, "scale-into-matmul-a",
    format!("(mul (matmul ta=false tb=true {} {}) {})", x(), w(), c("2.0", "f32[2,4]")) => format!("(matmul ta=false tb=true (mul {} {}) {})", x(), c("2.0", "f32[2,3]"), w()),
    near miss format!("(mul (matmul ta=false tb=true {} {}) {})", x(), w(), inp("k", "f32[2,4]")) => format!("(matmul ta=false tb=true (mul {} {}) {})", x(), c("2.0", "f32[2,3]"), w()));
check_rewrite!(scale_into_matmul_b, "scale-into-matmul-b",
    format!("(mul (matmul ta=false tb=true {} {}) {})", x(), w(), c("0.5", "f32[2,4]")) => format!("(matmul ta=false tb=true {} (mul {} {}))", x(), w(), c("0.5", "f32[4,3]")),
    near miss format!("(mul (neg {}) {})", x(), c("0.5", "f32[2,3]")) => format!("(neg (mul {} {}))", x(), c("0.5", "f32[2,3]")));
check_rewrite!(scale_out_of_matmul_a, "scale-out-of-matmul-a",
    format!("(matmul ta=false tb=true (mul {} {}) {})", x(), c("2.0", "f32[2,3]"), inp("v", "f32[1,3]")) => format!("(mul (matmul ta=false tb=true {} {}) {})", x(), inp("v", "f32[1,3]"), c("2.0", "f32[2,1]")),
    // The product ([2, 4]) is larger than the scaled operand ([2, 3]): the scale stays.
    near miss format!("(matmul ta=false tb=true (mul {} {}) {})", x(), c("2.0", "f32[2,3]"), w()) => format!("(mul (matmul ta=false tb=true {} {}) {})", x(), w(), c("2.0", "f32[2,4]")));
check_rewrite!(scale_out_of_matmul_b, "scale-out-of-matmul-b",
    format!("(matmul ta=false tb=true {} (mul {} {}))", x(), w(), c("0.5", "f32[4,3]")) => format!("(mul (matmul ta=false tb=true {} {}) {})", x(), w(), c("0.5", "f32[2,4]")),
    near miss format!("(matmul ta=false tb=true {} (neg {}))", x(), w()) => format!("(neg (matmul ta=false tb=true {} {}))", x(), w()));
check_rewrite!(splat_to_the_right, "splat-to-the-right",
    format!("(mul {} {})", c("3.0", "f32[2,3]"), x()) => format!("(mul {} {})", x(), c("3.0", "f32[2,3]")),
    near miss format!("(mul {} {})", inp("y", "f32[2,3]"), x()) => format!("(mul {} {})", x(), inp("y", "f32[2,3]")));
check_rewrite!(mul_by_one, "mul-by-one",
    format!("(mul {} {})", x(), c("1.0", "f32[2,3]")) => x(),
    near miss format!("(mul {} {})", x(), c("2.0", "f32[2,3]")) => x());
check_rewrite!(add_zero, "add-zero",
    format!("(add {} {})", x(), c("0.0", "f32[2,3]")) => x(),
    near miss format!("(add {} {})", x(), c("1.0", "f32[2,3]")) => x());
check_rewrite!(broadcast_of_splat, "broadcast-of-splat",
    format!("(broadcast ty=f32[2,3] {})", c("1.5", "f32[]")) => c("1.5", "f32[2,3]"),
    near miss format!("(broadcast ty=f32[2,3] {})", inp("s", "f32[]")) => c("1.5", "f32[2,3]"));
check_rewrite!(fold_splat_mul, "fold-splat-mul",
    format!("(mul {} {})", c("2.0", "f32[2]"), c("3.0", "f32[2]")) => c("6.0", "f32[2]"),
    near miss format!("(mul {} {})", c("2.0", "f32[2]"), inp("y", "f32[2]")) => c("6.0", "f32[2]"));
check_rewrite!(fold_splat_add, "fold-splat-add",
    format!("(add {} {})", c("2.0", "f32[2]"), c("3.0", "f32[2]")) => c("5.0", "f32[2]"),
    near miss format!("(sub {} {})", c("2.0", "f32[2]"), c("3.0", "f32[2]")) => c("5.0", "f32[2]"));
check_rewrite!(fold_splat_sub, "fold-splat-sub",
    format!("(sub {} {})", c("2.0", "f32[2]"), c("3.0", "f32[2]")) => c("-1.0", "f32[2]"),
    near miss format!("(add {} {})", c("2.0", "f32[2]"), c("3.0", "f32[2]")) => c("-1.0", "f32[2]"));
check_rewrite!(fold_splat_div, "fold-splat-div",
    format!("(div {} {})", c("3.0", "f32[2]"), c("2.0", "f32[2]")) => c("1.5", "f32[2]"),
    near miss format!("(div {} {})", c("3.0", "f32[2]"), c("0.0", "f32[2]")) => c("inf", "f32[2]"));
check_rewrite!(lowrank_reassociate, "lowrank-reassociate",
    format!("(matmul ta=false tb=true (matmul ta=false tb=true {} {}) {})", inp("x", "f32[5,8]"), inp("a", "f32[2,8]"), inp("b", "f32[6,2]"))
        => format!("(matmul ta=false tb=true {} (matmul ta=false tb=false {} {}))", inp("x", "f32[5,8]"), inp("b", "f32[6,2]"), inp("a", "f32[2,8]")),
    near miss format!("(matmul ta=false tb=true (matmul ta=false tb=false {} {}) {})", inp("x", "f32[5,8]"), inp("a", "f32[8,2]"), inp("b", "f32[6,2]"))
        => format!("(matmul ta=false tb=true {} (matmul ta=false tb=false {} {}))", inp("x", "f32[5,8]"), inp("b", "f32[6,2]"), inp("a2", "f32[2,8]")));
check_rewrite!(lowrank_reassociate_back, "lowrank-reassociate-back",
    format!("(matmul ta=false tb=true {} (matmul ta=false tb=false {} {}))", inp("x", "f32[5,8]"), inp("b", "f32[6,2]"), inp("a", "f32[2,8]"))
        => format!("(matmul ta=false tb=true (matmul ta=false tb=true {} {}) {})", inp("x", "f32[5,8]"), inp("a", "f32[2,8]"), inp("b", "f32[6,2]")),
    near miss format!("(matmul ta=false tb=true {} (matmul ta=true tb=false {} {}))", inp("x", "f32[5,8]"), inp("b", "f32[2,6]"), inp("a", "f32[2,8]"))
        => format!("(matmul ta=false tb=true (matmul ta=false tb=true {} {}) {})", inp("x", "f32[5,8]"), inp("a", "f32[2,8]"), inp("b", "f32[6,2]")));
check_rewrite!(matmul_distribute, "matmul-distribute",
    format!("(add (matmul ta=false tb=true {x} {}) (matmul ta=false tb=true {x} {}))", w(), inp("v", "f32[4,3]"), x = x()) => format!("(matmul ta=false tb=true {} (add {} {}))", x(), w(), inp("v", "f32[4,3]")),
    near miss format!("(add (matmul ta=false tb=true {} {}) (matmul ta=false tb=true {} {}))", x(), w(), inp("x2", "f32[2,3]"), inp("v", "f32[4,3]")) => format!("(matmul ta=false tb=true {} (add {} {}))", x(), w(), inp("v", "f32[4,3]")));

fn dq(nested: &str) -> String {
    if nested == "0" {
        format!(
            "(dequantize block=64 format=nf4 nested=0 ty=f32[4,64] {} {})",
            inp("q", "u4[4,64]"),
            inp("s", "f32[4]")
        )
    } else {
        format!(
            "(dequantize block=64 format=nf4 nested=256 ty=f32[4,64] {} {} {} {})",
            inp("q", "u4[4,64]"),
            inp("s8", "u8[4]"),
            inp("s2", "f32[1]"),
            inp("mu", "f32[]")
        )
    }
}

check_rewrite!(fuse_quantized_matmul, "fuse-quantized-matmul",
    format!("(matmul ta=false tb=true {} {})", inp("x", "f32[2,64]"), dq("0")) => format!("(qmatmul block=64 format=nf4 nested=0 ta=false tb=true {} {} {})", inp("x", "f32[2,64]"), inp("q", "u4[4,64]"), inp("s", "f32[4]")),
    near miss format!("(matmul ta=false tb=true {} {})", inp("x", "f32[2,64]"), inp("w", "f32[4,64]")) => format!("(qmatmul block=64 format=nf4 nested=0 ta=false tb=true {} {} {})", inp("x", "f32[2,64]"), inp("q", "u4[4,64]"), inp("s", "f32[4]")));
check_rewrite!(fuse_double_quantized_matmul, "fuse-double-quantized-matmul",
    format!("(matmul ta=false tb=false {} {})", inp("g", "f32[2,4]"), dq("256")) => format!("(qmatmul block=64 format=nf4 nested=256 ta=false tb=false {} {} {} {} {})", inp("g", "f32[2,4]"), inp("q", "u4[4,64]"), inp("s8", "u8[4]"), inp("s2", "f32[1]"), inp("mu", "f32[]")),
    near miss format!("(matmul ta=false tb=true {} {})", inp("x", "f32[2,64]"), dq("0")) => format!("(qmatmul block=64 format=nf4 nested=0 ta=false tb=true {} {} {})", inp("x", "f32[2,64]"), inp("q", "u4[4,64]"), inp("s", "f32[4]")));
check_rewrite!(drop_stop_grad, "drop-stop-grad",
    format!("(stop_grad {})", x()) => x(),
    near miss format!("(neg {})", x()) => x());
check_rewrite!(select_same, "select-same",
    format!("(select {} {x} {x})", inp("c", "bool[2,3]"), x = x()) => x(),
    near miss format!("(select {} {} {})", inp("c", "bool[2,3]"), x(), inp("y", "f32[2,3]")) => x());
/// Batching is a multi-pattern rule: the context holds both products; the first one must
/// become a slice of the wide product.
fn batched(context: &str, m1: &str, goal: &str) -> bool {
    let groups = Groups::default();
    let rules: Vec<_> = merge_rules(&groups)
        .into_iter()
        .filter(|r| r.name == "batch-shared-input")
        .collect();
    let mut eg = Graph::default();
    for e in [context, m1, goal] {
        let r: RecExpr<G> = e.parse().unwrap_or_else(|err| panic!("{e}: {err}"));
        eg.add_expr(&r);
    }
    let (m1e, ge): (RecExpr<G>, RecExpr<G>) =
        (m1.parse().expect("m1"), goal.parse().expect("goal"));
    let runner = Runner::default()
        .with_egraph(eg)
        .with_iter_limit(2)
        .run(rules.iter().map(|r| &r.rewrite));
    let eg = runner.egraph;
    eg.lookup_expr(&m1e).map(|i| eg.find(i)) == eg.lookup_expr(&ge).map(|i| eg.find(i))
        && eg.lookup_expr(&ge).is_some()
}

#[test]
fn batch_shared_input() {
    let (w2, x2) = (inp("w2", "f32[5,3]"), inp("x2", "f32[2,3]"));
    let m1 = format!("(matmul ta=false tb=true {} {})", x(), w());
    let goal = format!(
        "(slice axis=1 end=4 start=0 (matmul ta=false tb=true {} (concat axis=0 {} {})))",
        x(),
        w(),
        w2
    );
    let both = format!("(results {m1} (matmul ta=false tb=true {} {w2}))", x());
    assert!(
        batched(&both, &m1, &goal),
        "batch-shared-input did not batch x·Wᵀ and x·W₂ᵀ"
    );
    let miss = format!("(results {m1} (matmul ta=false tb=true {x2} {w2}))");
    assert!(
        !batched(&miss, &m1, &goal),
        "batch-shared-input fired on products of different inputs"
    );
}

#[test]
fn every_rule_has_a_test_and_a_stated_identity() {
    let src = include_str!("rules.rs");
    for r in merge_rules(&Groups::default()) {
        assert!(
            src.contains(&format!("\"{}\"", r.name)),
            "rule {} has no check_rewrite test",
            r.name
        );
        assert!(
            !r.identity.is_empty() && r.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "rule {} needs a kebab-case name and an identity",
            r.name
        );
    }
}
