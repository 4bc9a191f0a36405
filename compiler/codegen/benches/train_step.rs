//! One training step of `dsl-examples/small_lora.graft` (hidden 512, 8 layers, vocabulary
//! 8192, LoRA r = 8 on q/k/v/o, batch 4 × 128) compiled to native code: compile time, step
//! time, and the kernels that take the most time, grouped by op. Weights are seeded stand-ins
//! (the example ships none); the interpreter is not run (it would take minutes).
//!
//! `GRAFT_STEPS=n` sets how many steps are timed (default 5), `GRAFT_SPEC=path` another spec,
//! `GRAFT_TARGET="bind=0"` compiles the step with these blocking parameters (see
//! `GRAFT_VARIANT`), `GRAFT_OPTIMIZE=1` runs the e-graph optimizer first (through the optimized-step cache),
//! `GRAFT_TOP=n` how many of the slowest launches to list, `GRAFT_DUMP_IR=path` writes the
//! compiled graph (whose `%n` the profile names), `GRAFT_VARIANT="kc=512"` times the step
//! alternately with the host's blocking and with these parameters (`kc`, `mc`, and in MiB `budget`
//! and `vocab`, the logits chunk of the vocabulary-chunked loss, 0 for whole logits; `team=0`
//! launches the variant on rayon's pool instead of graft's team of threads;
//! `GRAFT_VARIANT_IR=path` times the step printed in that file, from `graft ir --emit opt`,
//! as the variant).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Stdlib, compile_file};
use graft_interp::Tensor;
use graft_ir::{DType, InputKind};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec = std::env::var_os("GRAFT_SPEC")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("dsl-examples/small_lora.graft"));
    let (_, program) = compile_file(&spec, &Stdlib::Dir(repo.join("stdlib")))
        .unwrap_or_else(|_| panic!("{} does not compile", spec.display()));
    let forward = program.module.function("forward").unwrap();
    let init = program.module.function("init").unwrap();
    let mut step_fn =
        graft_autodiff::train_step(forward, &graft_runtime::step_config(&program)).unwrap();
    if std::env::var_os("GRAFT_OPTIMIZE").is_some() {
        let t = Instant::now();
        let (f, cached) = graft_runtime::cache::optimized_step(
            graft_runtime::cache_dir().as_deref(),
            &program.module.files,
            &step_fn,
            &graft_opt::Options::default(),
        )
        .unwrap();
        eprintln!("optimized (cached: {cached}) in {:?}", t.elapsed());
        step_fn = f;
    }

    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut state = 0x1234_5678u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        graft_interp::splitmix64(state)
    };
    for t in program.tensors.iter().filter(|t| t.from_weights) {
        let n = t.ty.numel();
        let scale = 1.0 / (*t.ty.shape.last().unwrap_or(&1) as f32).sqrt();
        let data: Vec<f32> = if t.ty.rank() >= 2 {
            (0..n)
                .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4 * scale)
                .collect()
        } else {
            vec![1.0; n]
        };
        values.insert(
            t.path.clone(),
            Tensor::f32(t.ty.shape.clone(), data).unwrap(),
        );
    }
    values.insert("seed".into(), Tensor::scalar_i64(0));
    let t = Instant::now();
    let init_c = graft_codegen::compile(init).unwrap();
    for (name, v) in init_c.run(&values).unwrap() {
        values.insert(name, v);
    }
    eprintln!("@init: compiled and run in {:?}", t.elapsed());
    for i in step_fn.inputs() {
        match i.kind {
            InputKind::State => {
                values.insert(i.name.to_string(), Tensor::zeros(i.ty.clone()));
            }
            InputKind::Data if i.ty.dtype == DType::I64 && i.ty.rank() == 2 => {
                let vocab = program
                    .module
                    .function("forward")
                    .and_then(|f| f.output("logits").map(|v| f.ty(v).shape[2] as u64))
                    .unwrap_or(2);
                let ids: Vec<i64> = (0..i.ty.numel()).map(|_| (next() % vocab) as i64).collect();
                values.insert(
                    i.name.to_string(),
                    Tensor::i64(i.ty.shape.clone(), ids).unwrap(),
                );
            }
            InputKind::Data if i.ty.rank() == 0 => {
                values.insert(i.name.to_string(), Tensor::scalar_i64(1));
            }
            _ => {}
        }
    }
    if let (Some(ids), true) = (
        values.get("input_ids").cloned(),
        step_fn.input("labels").is_some(),
    ) {
        values.insert("labels".into(), ids);
    }

    let t = Instant::now();
    // `GRAFT_TARGET="bind=0"`: the profiled step with these blocking parameters.
    let target = graft_codegen::CpuTarget::host()
        .with_blocking(&std::env::var("GRAFT_TARGET").unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let compiled = graft_codegen::compile_with(
        &step_fn,
        &graft_codegen::CompileOptions {
            target,
            ..Default::default()
        },
    )
    .unwrap();
    // The frozen weights are packed once, as a training session does.
    let bound = compiled
        .bind(&mut values.clone(), &[], &mut |_| {})
        .unwrap();
    eprintln!(
        "@train_step: {} nodes, {} kernel launches, compiled and bound ({:.1} MB) in {:?}",
        step_fn.nodes.len(),
        compiled.kernel_count(),
        bound as f64 / 1e6,
        t.elapsed()
    );
    // `GRAFT_VARIANT="kc=512,mc=240"`: also compile the step with these blocking parameters
    // and time both alternately (robust to the machine's drift), then exit.
    if let Ok(spec) = std::env::var("GRAFT_VARIANT") {
        // `team=0`: the variant launches on rayon's pool instead of graft's team.
        let blocking: Vec<&str> = spec.split(',').filter(|i| *i != "team=0").collect();
        let target = graft_codegen::CpuTarget::host()
            .with_blocking(&blocking.join(","))
            .unwrap_or_else(|e| panic!("{e}"));
        let opts = graft_codegen::CompileOptions {
            target,
            ..Default::default()
        };
        // `GRAFT_VARIANT_IR=path`: the variant is that step instead (`graft ir --emit opt`,
        // e.g. from another build of the optimizer), with the blocking parameters above.
        let variant_fn = match std::env::var_os("GRAFT_VARIANT_IR") {
            Some(path) => {
                let text = std::fs::read_to_string(&path).unwrap();
                let module = graft_ir::parse_module(&text).unwrap();
                module.functions.into_iter().next().unwrap()
            }
            None => step_fn.clone(),
        };
        let variant = graft_codegen::compile_with(&variant_fn, &opts)
            .unwrap()
            .with_team(!spec.split(',').any(|i| i == "team=0"));
        variant.bind(&mut values.clone(), &[], &mut |_| {}).unwrap();
        let rounds: usize = std::env::var("GRAFT_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, c) in [&compiled, &variant].into_iter().enumerate() {
                let t = Instant::now();
                c.run(&values).unwrap();
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (name, mut t) in ["host", spec.as_str()].into_iter().zip(times) {
            t.sort_by(f64::total_cmp);
            println!(
                "{name:>16}: min {:.1} ms, median {:.1} ms over {rounds} steps",
                t[0],
                t[t.len() / 2]
            );
        }
        return;
    }
    // `GRAFT_DUMP_IR=path`: the compiled graph as text (what the profile's `%n` index).
    if let Some(path) = std::env::var_os("GRAFT_DUMP_IR") {
        std::fs::write(path, graft_ir::text::print_function(compiled.function())).unwrap();
    }
    let steps: usize = std::env::var("GRAFT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut by_op: HashMap<&'static str, (f64, usize)> = HashMap::new();
    let mut total = Vec::new();
    let mut slowest: Vec<graft_codegen::KernelTime> = Vec::new();
    for s in 0..steps {
        let t = Instant::now();
        let (out, times) = compiled.run_profiled(&values).unwrap();
        total.push(t.elapsed().as_secs_f64());
        let loss = out
            .iter()
            .find(|(n, _)| n == "loss")
            .map(|(_, v)| v.to_f64_vec()[0]);
        eprintln!("step {s}: {:.1} ms, loss {loss:?}", total[s] * 1e3);
        if s + 1 == steps {
            for k in &times {
                let e = by_op.entry(k.op).or_default();
                e.0 += k.seconds;
                e.1 += 1;
            }
            slowest = times;
        }
        for (name, v) in out {
            values.insert(name, v);
        }
    }
    total.sort_by(f64::total_cmp);
    let median = total[total.len() / 2];
    // Dense-layer work: forward and input gradients (2 + 2 FLOP per weight and token; frozen
    // weights get no weight gradient), attention and LoRA left out.
    let flops: f64 =
        4.0 * 512.0 * (8.0 * (4.0 * 512.0 * 512.0 + 3.0 * 512.0 * 1376.0) + 512.0 * 8192.0);
    println!(
        "\nsmall_lora train step: median {:.1} ms over {steps} steps ({:.1} GFLOP/s on the ~{:.1} GFLOP of dense-layer work)",
        median * 1e3,
        flops / median / 1e9,
        flops / 1e9
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("{:>14} {:>10} {:>8} {:>7}", "op", "ms", "share", "launches");
    let sum: f64 = ops.iter().map(|o| o.1.0).sum();
    for (op, (secs, n)) in &ops {
        println!(
            "{op:>14} {:>10.2} {:>7.1}% {n:>7}",
            secs * 1e3,
            100.0 * secs / sum
        );
    }
    // Matmul time by kernel kind (pack / GEMM) and result type.
    let mut mm: HashMap<(String, String), (f64, usize, f64)> = HashMap::new();
    for k in slowest
        .iter()
        .filter(|k| k.op == "matmul" || k.op == "qmatmul")
    {
        let kind = k.kind;
        let e = mm.entry((kind.to_string(), k.ty.clone())).or_default();
        e.0 += k.seconds;
        e.1 += 1;
        e.2 += k.flops;
    }
    let gemm_flops: f64 = slowest.iter().map(|k| k.flops).sum();
    let gemm_secs: f64 = slowest
        .iter()
        .filter(|k| k.flops > 0.0)
        .map(|k| k.seconds)
        .sum();
    println!(
        "GEMM launches: {:.1} GFLOP in {:.1} ms ({:.1} GFLOP/s); the last step took {:.1} ms",
        gemm_flops / 1e9,
        gemm_secs * 1e3,
        gemm_flops / gemm_secs.max(1e-9) / 1e9,
        slowest.iter().map(|k| k.seconds).sum::<f64>() * 1e3
    );
    let mut mm: Vec<_> = mm.into_iter().collect();
    mm.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("\nmatmul time by kind and result type:");
    for ((kind, ty), (secs, n, flops)) in mm.iter().take(16) {
        let rate = if *flops > 0.0 {
            format!("{:>7.1} GFLOP/s", flops / secs / 1e9)
        } else {
            String::new()
        };
        println!("{:>9.2} ms  {kind:<6} {ty:<22} x{n:<4} {rate}", secs * 1e3);
    }
    slowest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    println!("\nslowest launches:");
    for k in slowest.iter().take(
        std::env::var("GRAFT_TOP")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12),
    ) {
        // The operands' types and the op's flags (a matmul's transposes), for telling
        // launches of the same result type apart.
        let f = compiled.function();
        let node = &f.nodes[k.node];
        let args: Vec<String> = node.args.iter().map(|&a| format!("{}", f.ty(a))).collect();
        println!(
            "{:>9.2} ms  %{:<5} {:<14} {:<7} {} <- {:?} ({})",
            k.seconds * 1e3,
            k.node,
            k.op,
            k.kind,
            k.ty,
            node.op,
            args.join(", ")
        );
    }
}
