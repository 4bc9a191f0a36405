//! The generated `f32` GEMM against the `gemm` crate on the small Llama's shapes
//! (`[512 tokens × 512] · [512 × 512]`, `· [512 × 1376]`, `[512 × 1376] · [1376 × 512]`,
//! `[512 × 512] · [512 × 8192]`), single-threaded and on every thread of rayon's pool.
//!
//! Criterion reports each measurement (throughput in GFLOP/s as "Gelem/s"); a summary table
//! with GFLOP/s and the ratio graft / gemm is printed at the end, from the best time of each
//! contender timed round-robin (robust to other processes on the machine). Besides the host's
//! own vector shape, graft is also run with the AVX2 shape (8 lanes, 6×16 tiles) on AVX-512
//! hosts: the gemm crate's AVX-512 kernels need its nightly feature, so that row is the
//! like-for-like comparison. `GRAFT_BENCH_QUICK=1` shortens the runs; `GRAFT_BENCH_TABLE=1`
//! prints only the table.
#![allow(
    missing_docs,
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use criterion::{BenchmarkId, Criterion, Throughput};
use graft_codegen::{CpuTarget, Gemm};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize, usize); 4] = [
    (512, 512, 512),
    (512, 512, 1376),
    (512, 1376, 512),
    (512, 512, 8192),
];

fn data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// `c = a · b` with the `gemm` crate (row-major, no accumulation).
fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold m·k, k·n and m·n elements with the strides given.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Best seconds per call of each contender, timed round-robin (one call of each per round)
/// until `budget` has passed: interference from other processes hits every contender alike,
/// and the best time is the least disturbed one.
fn race(contenders: &mut [&mut dyn FnMut()], budget: Duration) -> Vec<f64> {
    for f in contenders.iter_mut() {
        f();
    }
    let mut best = vec![f64::INFINITY; contenders.len()];
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < 10 || (start.elapsed() < budget && rounds < 500) {
        for (i, f) in contenders.iter_mut().enumerate() {
            let t = Instant::now();
            f();
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
        rounds += 1;
    }
    best
}

fn main() {
    let quick = std::env::var_os("GRAFT_BENCH_QUICK").is_some();
    let table_only = std::env::var_os("GRAFT_BENCH_TABLE").is_some();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_millis(if quick { 500 } else { 3000 }))
        .configure_from_args();
    let all = rayon::current_num_threads().max(1);
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let host = CpuTarget::host();
    // The host's shape, and the AVX2 shape (8 lanes) for a like-for-like comparison with the
    // gemm crate, whose AVX-512 kernels need its nightly feature.
    let mut targets = vec![("host", host)];
    if host.lanes != 8 {
        targets.push(("avx2", CpuTarget::from_features(|f| f == "avx2")));
    }
    // `GRAFT_BENCH_VARIANTS="kc=128,mc=240;mr=8"`: host shapes with these blocking
    // parameters changed, raced alongside (for tuning `CpuTarget`).
    if let Ok(v) = std::env::var("GRAFT_BENCH_VARIANTS") {
        for spec in v.split(';').filter(|s| !s.is_empty()) {
            let tg = host.with_blocking(spec).unwrap_or_else(|e| panic!("{e}"));
            targets.push((Box::leak(spec.to_string().into_boxed_str()), tg));
        }
    }
    // `GRAFT_BENCH_SHAPES="512x1536x512,..."` (m×k×n) replaces the default shapes.
    let shapes: Vec<(usize, usize, usize)> = match std::env::var("GRAFT_BENCH_SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let d: Vec<usize> = s
                    .split('x')
                    .map(|x| x.parse().expect("m x k x n"))
                    .collect();
                (d[0], d[1], d[2])
            })
            .collect(),
        Err(_) => SHAPES.to_vec(),
    };
    let mut rows = Vec::new();
    for (m, k, n) in shapes {
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let mut out = vec![0f32; m * n];
        let mut want = vec![0f32; m * n];
        reference(m, k, n, &a, &b, &mut want, 1);
        let flops = 2.0 * (m * n * k) as f64;
        let mut group = c.benchmark_group(format!("gemm {m}x{k} * {k}x{n}"));
        group.throughput(Throughput::Elements(flops as u64));
        for &t in &threads {
            let budget = Duration::from_millis(if quick { 500 } else { 3000 });
            let mut gemms: Vec<Gemm> = targets
                .iter()
                .map(|(_, target)| {
                    Gemm::new_for(m, k, n, target)
                        .expect("compile")
                        .with_threads(t)
                })
                .collect();
            for g in &mut gemms {
                g.run(&a, &b, &mut out).expect("run");
                let err = out
                    .iter()
                    .zip(&want)
                    .fold(0f32, |e, (x, y)| e.max((x - y).abs()));
                assert!(err < 1e-3, "graft GEMM differs from gemm by {err}");
            }
            if !table_only {
                group.bench_function(BenchmarkId::new("gemm-crate", t), |bench| {
                    bench.iter(|| reference(m, k, n, black_box(&a), black_box(&b), &mut want, t))
                });
                for ((label, _), g) in targets.iter().zip(gemms.iter_mut()) {
                    group.bench_function(BenchmarkId::new(format!("graft-{label}"), t), |bench| {
                        bench.iter(|| g.run(black_box(&a), black_box(&b), &mut out).expect("run"))
                    });
                }
            }
            let mut outs = vec![vec![0f32; m * n]; gemms.len()];
            let mut reference_run = || reference(m, k, n, &a, &b, &mut want, t);
            let mut runs: Vec<Box<dyn FnMut() + '_>> = gemms
                .iter_mut()
                .zip(outs.iter_mut())
                .map(|(g, out)| {
                    let (a, b) = (&a, &b);
                    Box::new(move || g.run(a, b, out).expect("run")) as Box<dyn FnMut() + '_>
                })
                .collect();
            let mut all: Vec<&mut dyn FnMut()> = vec![&mut reference_run];
            all.extend(runs.iter_mut().map(|r| &mut **r as &mut dyn FnMut()));
            let best = race(&mut all, budget);
            for (i, (label, target)) in targets.iter().enumerate() {
                rows.push((
                    m,
                    k,
                    n,
                    t,
                    *label,
                    *target,
                    flops / best[i + 1] / 1e9,
                    flops / best[0] / 1e9,
                ));
            }
        }
        group.finish();
    }
    c.final_summary();
    println!(
        "\nGEMM f32 (host: {} lanes, MR {} NR {} KC {})",
        host.lanes, host.mr, host.nr, host.kc
    );
    println!(
        "{:>22} {:>7} {:>18} {:>13} {:>12} {:>6}",
        "shape (m×k · k×n)", "threads", "graft shape", "graft GFLOP/s", "gemm GFLOP/s", "ratio"
    );
    for (m, k, n, t, label, tg, g, r) in rows {
        println!(
            "{:>22} {t:>7} {:>18} {g:>13.1} {r:>12.1} {:>6.2}",
            format!("{m}x{k} · {k}x{n}"),
            format!("{label} {}x{}", tg.mr, tg.nr),
            g / r
        );
    }
}
