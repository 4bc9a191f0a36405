//! matmul (batched, transposed, rank-2 sharing), reductions and softmax, checked against
//! straightforward f64 loops written in the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{assert_close, ramp, run1};
use graft_interp::Tensor;

/// Swaps the last two axes of a row-major `[batch.., r, c]` buffer.
fn swap_last2(x: &[f32], shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let n = shape.len();
    let (r, c) = (shape[n - 2], shape[n - 1]);
    let batches = x.len() / (r * c);
    let mut out = vec![0.0; x.len()];
    for b in 0..batches {
        for i in 0..r {
            for j in 0..c {
                out[b * r * c + j * r + i] = x[b * r * c + i * c + j];
            }
        }
    }
    let mut s = shape.to_vec();
    s.swap(n - 2, n - 1);
    (out, s)
}

/// Reference: untransposed operands `a: [batch.., m, k]`, `b: [batch.., k, n]`, where a
/// rank-2 operand is repeated for every batch.
fn reference(a: &[f32], sa: &[usize], b: &[f32], sb: &[usize]) -> Vec<f64> {
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let n = sb[sb.len() - 1];
    let batches = (a.len() / (m * k)).max(b.len() / (k * n));
    let mut out = Vec::new();
    for bt in 0..batches {
        let ao = if sa.len() == 2 { 0 } else { bt * m * k };
        let bo = if sb.len() == 2 { 0 } else { bt * k * n };
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| f64::from(a[ao + i * k + p]) * f64::from(b[bo + p * n + j]))
                    .sum();
                out.push(f64::from(s as f32));
            }
        }
    }
    out
}

fn dims(s: &[usize]) -> String {
    let v: Vec<String> = s.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// Runs `matmul{ta, tb}` on operands given untransposed (the test stores them transposed
/// when asked) and compares with [`reference`].
fn check_matmul(sa: &[usize], sb: &[usize], ta: bool, tb: bool, out: &[usize]) {
    let a: Vec<f32> = ramp(sa.iter().product(), 1.5);
    let b: Vec<f32> = ramp(sb.iter().product(), 0.75).into_iter().rev().collect();
    let want = reference(&a, sa, &b, sb);
    let (a_st, sa_st) = if ta {
        swap_last2(&a, sa)
    } else {
        (a.clone(), sa.to_vec())
    };
    let (b_st, sb_st) = if tb {
        swap_last2(&b, sb)
    } else {
        (b.clone(), sb.to_vec())
    };
    let mut attrs = Vec::new();
    if ta {
        attrs.push("ta = true");
    }
    if tb {
        attrs.push("tb = true");
    }
    let attrs = if attrs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", attrs.join(", "))
    };
    let body = format!(
        "  %0: f32[{}] = input{{name = \"a\", kind = data}}\n  %1: f32[{}] = input{{name = \"b\", kind = data}}\n  %2: f32[{}] = matmul{attrs}(%0, %1)\n  return y = %2",
        dims(&sa_st),
        dims(&sb_st),
        dims(out)
    );
    let y = run1(
        &body,
        vec![
            ("a", Tensor::f32(sa_st, a_st).unwrap()),
            ("b", Tensor::f32(sb_st, b_st).unwrap()),
        ],
    );
    assert_eq!(y.shape(), out);
    // f64 accumulation rounded once to f32 on both sides: equal up to summation order.
    assert_close(
        &y.to_f64_vec(),
        &want,
        1e-6,
        1e-6,
        &format!("matmul {sa:?} {sb:?} ta={ta} tb={tb}"),
    );
}

#[test]
fn matmul_plain_and_transposed() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        check_matmul(&[3, 4], &[4, 5], ta, tb, &[3, 5]);
        check_matmul(&[2, 3, 4], &[2, 4, 5], ta, tb, &[2, 3, 5]);
    }
}

#[test]
fn matmul_shares_a_rank_2_operand_across_batches() {
    for (ta, tb) in [(false, false), (true, true), (false, true)] {
        check_matmul(&[2, 2, 3, 4], &[4, 5], ta, tb, &[2, 2, 3, 5]);
        check_matmul(&[3, 4], &[2, 2, 4, 5], ta, tb, &[2, 2, 3, 5]);
    }
}

#[test]
fn bf16_matmul_rounds_the_f64_sum_once() {
    let a = Tensor::bf16([2, 3], ramp(6, 1.0)).unwrap();
    let b = Tensor::bf16([3, 2], ramp(6, 2.0)).unwrap();
    let want = reference(a.as_f32().unwrap(), &[2, 3], b.as_f32().unwrap(), &[3, 2]);
    let y = run1(
        "  %0: bf16[2, 3] = input{name = \"a\", kind = data}\n  %1: bf16[3, 2] = input{name = \"b\", kind = data}\n  %2: bf16[2, 2] = matmul(%0, %1)\n  return y = %2",
        vec![("a", a), ("b", b)],
    );
    for (&g, &w) in y.as_f32().unwrap().iter().zip(&want) {
        assert_eq!(g.to_bits() & 0xffff, 0, "{g} is not a bf16 value");
        // one bf16 rounding (8 significant bits): relative error at most 2^-8
        assert!(
            (f64::from(g) - w).abs() <= w.abs() * 2f64.powi(-8),
            "{g} vs {w}"
        );
    }
}

#[test]
fn reductions_with_and_without_keepdim() {
    let x = ramp(24, 3.0);
    let at = |a: usize, b: usize, c: usize| f64::from(x[a * 12 + b * 4 + c]);
    let input = || vec![("x", Tensor::f32([2, 3, 4], x.clone()).unwrap())];
    let head = "  %0: f32[2, 3, 4] = input{name = \"x\", kind = data}\n";

    let y = run1(
        &format!(
            "{head}  %1: f32[2, 1, 4] = reduce_sum{{axes = [1], keepdim = true}}(%0)\n  return y = %1"
        ),
        input(),
    );
    let want: Vec<f64> = (0..2)
        .flat_map(|a| (0..4).map(move |c| (0..3).map(|b| at(a, b, c)).sum()))
        .collect();
    assert_eq!(y.shape(), &[2, 1, 4]);
    assert_close(&y.to_f64_vec(), &want, 1e-6, 1e-6, "sum over axis 1");

    let y = run1(
        &format!("{head}  %1: f32[3] = reduce_mean{{axes = [0, 2]}}(%0)\n  return y = %1"),
        input(),
    );
    let want: Vec<f64> = (0..3)
        .map(|b| {
            (0..2)
                .flat_map(|a| (0..4).map(move |c| at(a, b, c)))
                .sum::<f64>()
                / 8.0
        })
        .collect();
    assert_close(&y.to_f64_vec(), &want, 1e-6, 1e-6, "mean over axes 0, 2");

    let y = run1(
        &format!("{head}  %1: f32[2, 3] = reduce_max{{axes = [2]}}(%0)\n  return y = %1"),
        input(),
    );
    let want: Vec<f64> = (0..2)
        .flat_map(|a| (0..3).map(move |b| (0..4).map(|c| at(a, b, c)).fold(f64::MIN, f64::max)))
        .collect();
    assert_eq!(y.to_f64_vec(), want, "max is exact");

    let y = run1(
        &format!(
            "{head}  %1: f32[1, 1, 1] = reduce_min{{axes = [0, 1, 2], keepdim = true}}(%0)\n  return y = %1"
        ),
        input(),
    );
    let want = x.iter().map(|&v| f64::from(v)).fold(f64::MAX, f64::min);
    assert_eq!(y.to_f64_vec(), vec![want], "min is exact");

    let y = run1(
        &format!("{head}  %1: f32[2, 3, 4] = reduce_sum{{axes = []}}(%0)\n  return y = %1"),
        input(),
    );
    assert_eq!(y.as_f32().unwrap(), &x[..], "no axes: identity");

    let y = run1(
        "  %0: i64[2, 2] = input{name = \"x\", kind = data}\n  %1: i64[2] = reduce_max{axes = [1]}(%0)\n  return y = %1",
        vec![("x", Tensor::i64([2, 2], vec![-5, -9, 7, 3]).unwrap())],
    );
    assert_eq!(y.as_i64().unwrap(), &[-5, 7]);
    let y = run1(
        "  %0: f32[3] = input{name = \"x\", kind = data}\n  %1: f32[] = reduce_max{axes = [0]}(%0)\n  return y = %1",
        vec![("x", Tensor::f32([3], vec![1.0, f32::NAN, 2.0]).unwrap())],
    );
    assert!(y.as_f32().unwrap()[0].is_nan(), "max propagates NaN");
}

fn ref_softmax(row: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
    (
        row.iter().map(|v| (v - m).exp() / s).collect(),
        row.iter().map(|v| v - m - s.ln()).collect(),
    )
}

#[test]
fn softmax_and_log_softmax_are_stable_for_large_inputs() {
    let rows = [[1000.0f32, 1001.0, 1002.0], [-3.0, 0.5, f32::NEG_INFINITY]];
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let input = || vec![("x", Tensor::f32([2, 3], flat.clone()).unwrap())];
    let head = "  %0: f32[2, 3] = input{name = \"x\", kind = data}\n";
    let sm = run1(
        &format!("{head}  %1: f32[2, 3] = softmax{{axis = 1}}(%0)\n  return y = %1"),
        input(),
    );
    let ls = run1(
        &format!("{head}  %1: f32[2, 3] = log_softmax{{axis = 1}}(%0)\n  return y = %1"),
        input(),
    );
    let (mut want_s, mut want_l) = (Vec::new(), Vec::new());
    for r in &rows {
        let (s, l) = ref_softmax(&r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        want_s.extend(s);
        want_l.extend(l);
    }
    // f64 computation rounded once to f32: within one f32 rounding (2^-24 relative).
    assert_close(&sm.to_f64_vec(), &want_s, 1e-7, 0.0, "softmax");
    assert_eq!(
        sm.as_f32().unwrap()[5],
        0.0,
        "a -inf logit gets probability 0"
    );
    assert_close(&ls.to_f64_vec(), &want_l, 1e-7, 0.0, "log_softmax");
    assert_eq!(ls.as_f32().unwrap()[5], f32::NEG_INFINITY);

    // along axis 0 of a [3, 2] tensor: columns are normalized
    let x = ramp(6, 4.0);
    let y = run1(
        "  %0: f32[3, 2] = input{name = \"x\", kind = data}\n  %1: f32[3, 2] = softmax{axis = 0}(%0)\n  return y = %1",
        vec![("x", Tensor::f32([3, 2], x.clone()).unwrap())],
    );
    let mut want = vec![0.0; 6];
    for c in 0..2 {
        let col: Vec<f64> = (0..3).map(|r| f64::from(x[r * 2 + c])).collect();
        for (r, v) in ref_softmax(&col).0.into_iter().enumerate() {
            want[r * 2 + c] = v;
        }
    }
    assert_close(&y.to_f64_vec(), &want, 1e-7, 0.0, "softmax axis 0");
}
