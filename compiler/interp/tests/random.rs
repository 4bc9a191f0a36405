//! Random ops and dropout: reproducibility, independence of streams, the exported generator
//! functions, and statistical checks with stated bounds (5 standard errors: a correct
//! generator fails one of them with probability below about 1e-6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::run_body;
use graft_interp::{Tensor, dropout_keep, int_value, normal_value, uniform_value};

const N: usize = 100_000;

fn draw(op: &str, ty: &str, seed: i64) -> Tensor {
    let body = format!(
        "  %0: i64[] = input{{name = \"seed\", kind = data}}\n  %1: {ty} = {op}(%0)\n  return y = %1"
    );
    run_body(&body, vec![("seed", Tensor::scalar_i64(seed))])
        .unwrap()
        .remove(0)
        .1
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

#[test]
fn same_seed_and_stream_reproduce_and_other_streams_differ() {
    let u = |seed, stream| {
        draw(
            &format!("random_uniform{{lo = 0.0, hi = 1.0, stream = {stream}}}"),
            "f32[64]",
            seed,
        )
    };
    assert_eq!(u(42, 1), u(42, 1), "same seed and stream: same values");
    let (a, b, c) = (
        u(42, 1).to_f64_vec(),
        u(42, 2).to_f64_vec(),
        u(43, 1).to_f64_vec(),
    );
    assert!(
        a.iter().zip(&b).all(|(x, y)| x != y),
        "another stream: every value differs"
    );
    assert!(
        a.iter().zip(&c).all(|(x, y)| x != y),
        "another seed: every value differs"
    );
}

#[test]
fn ops_match_the_exported_generator() {
    let u = draw(
        "random_uniform{lo = -2.0, hi = 3.0, stream = 5}",
        "f64[100]",
        -7,
    );
    for (i, &x) in u.as_f64().unwrap().iter().enumerate() {
        assert_eq!(x, uniform_value(-7, 5, i as u64, -2.0, 3.0), "uniform {i}");
    }
    let z = draw(
        "random_normal{mean = 1.0, std = 0.5, stream = 9}",
        "f32[100]",
        3,
    );
    for (i, &x) in z.as_f32().unwrap().iter().enumerate() {
        assert_eq!(
            x,
            normal_value(3, 9, i as u64, 1.0, 0.5) as f32,
            "normal {i}"
        );
    }
    let k = draw("random_int{lo = -3, hi = 4, stream = 0}", "i64[100]", 11);
    for (i, &x) in k.as_i64().unwrap().iter().enumerate() {
        assert_eq!(x, int_value(11, 0, i as u64, -3, 4), "int {i}");
    }
}

#[test]
fn uniform_is_in_range_with_the_right_mean() {
    let u = draw(
        "random_uniform{lo = -1.0, hi = 3.0, stream = 1}",
        &format!("f64[{N}]"),
        1234,
    )
    .to_f64_vec();
    assert!(u.iter().all(|&x| (-1.0..3.0).contains(&x)));
    let (m, s) = mean_std(&u);
    // U(-1, 3): mean 1, std 4/sqrt(12) = 1.1547; standard error of the mean 1.1547/sqrt(N)
    let se = 4.0 / 12f64.sqrt() / (N as f64).sqrt();
    assert!((m - 1.0).abs() < 5.0 * se, "mean {m}, bound {}", 5.0 * se);
    assert!(
        (s - 4.0 / 12f64.sqrt()).abs() < 0.01,
        "std {s} (bound 0.01, ~5 standard errors)"
    );
}

#[test]
fn normal_has_the_requested_mean_and_std() {
    let z = draw(
        "random_normal{mean = 2.0, std = 3.0, stream = 17}",
        &format!("f32[{N}]"),
        99,
    )
    .to_f64_vec();
    let (m, s) = mean_std(&z);
    // standard errors: mean 3/sqrt(N) = 0.0095, std 3/sqrt(2N) = 0.0067
    let n = N as f64;
    assert!((m - 2.0).abs() < 5.0 * 3.0 / n.sqrt(), "mean {m}");
    assert!((s - 3.0).abs() < 5.0 * 3.0 / (2.0 * n).sqrt(), "std {s}");
    // tails exist but are thin: |z - mean| > 3 std has probability 0.0027 (binomial bound)
    let tail = z.iter().filter(|&&x| (x - 2.0).abs() > 9.0).count() as f64 / n;
    assert!(
        (tail - 0.0027).abs() < 5.0 * (0.0027 * 0.9973 / n).sqrt(),
        "3-sigma tail {tail}"
    );
}

#[test]
fn random_int_covers_its_range_uniformly() {
    let k = draw(
        "random_int{lo = 0, hi = 10, stream = 4}",
        &format!("i32[{N}]"),
        5,
    );
    let mut counts = [0usize; 10];
    for &v in k.as_i32().unwrap() {
        counts[usize::try_from(v).unwrap()] += 1;
    }
    // each count is Binomial(N, 0.1): mean 10000, std 94.9; bound 5 std
    for (v, &c) in counts.iter().enumerate() {
        assert!((c as f64 - 10_000.0).abs() < 5.0 * 94.9, "value {v}: {c}");
    }
}

#[test]
fn dropout_keeps_the_right_fraction_and_scales_kept_values() {
    let p = 0.3;
    let x: Vec<f32> = (0..N).map(|i| 1.0 + (i % 7) as f32).collect();
    let body = format!(
        "  %0: f32[{N}] = input{{name = \"x\", kind = data}}\n  %1: i64[] = input{{name = \"seed\", kind = data}}\n  %2: f32[{N}] = dropout{{p = {p}, stream = 8}}(%0, %1)\n  return y = %2"
    );
    let y = run_body(
        &body,
        vec![
            ("x", Tensor::f32([N], x.clone()).unwrap()),
            ("seed", Tensor::scalar_i64(21)),
        ],
    )
    .unwrap()
    .remove(0)
    .1;
    let y = y.as_f32().unwrap();
    let mut kept = 0usize;
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        if dropout_keep(21, 8, i as u64, p) {
            kept += 1;
            // x / (1 - p) computed in f64, rounded once to f32
            assert_eq!(b, (f64::from(a) / (1.0 - p)) as f32, "kept element {i}");
        } else {
            assert_eq!(b, 0.0, "dropped element {i}");
        }
    }
    // kept ~ Binomial(N, 0.7): standard error of the fraction sqrt(0.21 / N) = 0.00145
    let frac = kept as f64 / N as f64;
    assert!(
        (frac - 0.7).abs() < 5.0 * (0.21 / N as f64).sqrt(),
        "kept fraction {frac}"
    );
    // p = 0 keeps everything unchanged
    let body0 = "  %0: f32[3] = input{name = \"x\", kind = data}\n  %1: i64[] = input{name = \"seed\", kind = data}\n  %2: f32[3] = dropout{p = 0.0, stream = 1}(%0, %1)\n  return y = %2";
    let x3 = Tensor::f32([3], vec![1.5, -2.0, 0.1]).unwrap();
    let y0 = run_body(
        body0,
        vec![("x", x3.clone()), ("seed", Tensor::scalar_i64(0))],
    )
    .unwrap();
    assert_eq!(y0[0].1, x3);
}

/// `random_torch_randperm` gives distinct entries of `0..n`; with k = n all of them; the seed
/// and the skipped draws change it. (Its values against PyTorch's: `mt19937.rs`'s unit test
/// and `runtime/tests/parity.rs`'s FourierFT case.)
#[test]
fn torch_randperm_is_a_permutation_prefix() {
    let op =
        |n: usize, stream: usize| format!("random_torch_randperm{{n = {n}, stream = {stream}}}");
    let mut all: Vec<i64> = draw(&op(50, 0), "i64[50]", 3)
        .to_f64_vec()
        .iter()
        .map(|x| *x as i64)
        .collect();
    all.sort();
    assert_eq!(all, (0..50).collect::<Vec<i64>>());
    let head = draw(&op(1000, 0), "i64[40]", 3).to_f64_vec();
    let mut seen = head.clone();
    seen.sort_by(f64::total_cmp);
    seen.dedup();
    assert_eq!(seen.len(), 40, "distinct");
    assert!(head.iter().all(|x| (0.0..1000.0).contains(x)));
    assert_ne!(
        head,
        draw(&op(1000, 0), "i64[40]", 4).to_f64_vec(),
        "the seed matters"
    );
    assert_ne!(
        head,
        draw(&op(1000, 1), "i64[40]", 3).to_f64_vec(),
        "so does the skip"
    );
}

/// `random_torch_uniform` continues one MT19937 stream: `stream = k` is the draw after the
/// first k, so a tensor of 2n equals the n-draw tensor followed by the one that skips n.
/// (Bit-exactness against PyTorch itself is `runtime/tests/parity.rs`'s VeRA case.)
#[test]
fn torch_uniform_skips_draws_and_stays_in_range() {
    let op =
        |stream: usize| format!("random_torch_uniform{{lo = -0.25, hi = 0.75, stream = {stream}}}");
    let whole = draw(&op(0), "f32[2, 500]", 7).to_f64_vec();
    let head = draw(&op(0), "f32[500]", 7).to_f64_vec();
    let tail = draw(&op(500), "f32[500]", 7).to_f64_vec();
    assert_eq!(whole, [head, tail].concat());
    assert!(whole.iter().all(|x| (-0.25..0.75).contains(x)));
    assert_ne!(
        whole,
        draw(&op(0), "f32[2, 500]", 8).to_f64_vec(),
        "the seed matters"
    );
    let (m, _) = mean_std(&draw(&op(0), &format!("f32[{N}]"), 1).to_f64_vec());
    // mean 0.25, standard error 1/√12/√N ≈ 0.0009: within 5 of them.
    assert!(
        (m - 0.25).abs() < 5.0 * (1.0 / 12f64.sqrt()) / (N as f64).sqrt(),
        "mean {m}"
    );
}
