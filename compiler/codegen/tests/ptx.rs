//! PTX without a GPU: the training step of every shipped example and of the benchmark
//! models has its elementwise, reduction and softmax kernels lowered to PTX for sm_80 and
//! sm_90 (`emit_ptx`), and `ptxas` (from NVIDIA's PyPI wheel, which `scripts/setup.sh`
//! fetches into `target/cuda-tools`) assembles each module; its report gives every kernel's
//! registers and spills, and a spill fails the test (one per thread, these kernels hold a
//! handful of values: a spill means the code went wrong).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_codegen::{GPU_ARCHS, emit_ptx};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `ptxas` and `libdevice.10.bc`: `$GRAFT_CUDA_TOOLS`, else `target/cuda-tools`.
fn tools() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("GRAFT_CUDA_TOOLS")
        .map_or_else(|| repo().join("target/cuda-tools"), PathBuf::from);
    let (ptxas, libdevice) = (dir.join("bin/ptxas"), dir.join("libdevice.10.bc"));
    assert!(
        ptxas.is_file() && libdevice.is_file(),
        "no ptxas or libdevice in {} (scripts/setup.sh fetches them)",
        dir.display()
    );
    (ptxas, libdevice)
}

/// One kernel's line of `ptxas -v`: registers, and bytes of spill stores and loads.
#[derive(Debug, Default)]
struct Usage {
    registers: usize,
    spill_stores: usize,
    spill_loads: usize,
}

fn number_before(s: &str, what: &str) -> Option<usize> {
    let at = s.find(what)?;
    s[..at].split_whitespace().last()?.parse().ok()
}

/// Parses `ptxas -v`'s report into (kernel, usage).
fn usage(report: &str) -> Vec<(String, Usage)> {
    let mut out: Vec<(String, Usage)> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push((name, Usage::default()));
        } else if let Some((_, u)) = out.last_mut() {
            if let Some(n) = number_before(line, "bytes spill stores") {
                u.spill_stores = n;
                u.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
            if let Some(n) = number_before(line, "registers") {
                u.registers = n;
            }
        }
    }
    out
}

#[test]
fn every_example_step_assembles_for_sm_80_and_sm_90_without_spills() {
    let (ptxas, libdevice) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let stdlib = graft_frontend::Stdlib::Dir(repo().join("stdlib"));
    let mut specs: Vec<PathBuf> = std::fs::read_dir(repo().join("dsl-examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "graft"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 30, "{specs:?}");
    // The benchmark models (scripts/bench.py's sizes), LoRA r = 16 on every linear layer.
    for (name, vocab, hidden, layers, heads, ffn) in [
        ("tiny", 2048, 256, 4, 4, 688),
        ("small", 8192, 512, 8, 8, 1376),
        ("mid", 16384, 1024, 8, 16, 2752),
    ] {
        let p = tmp.path().join(format!("bench_{name}.graft"));
        std::fs::write(
            &p,
            format!(
                "use models.llama\nuse peft.lora\n\
                 model base = llama(vocab: {vocab}, hidden: {hidden}, layers: {layers}, heads: {heads}, ffn: {ffn})\n\
                 adapt base {{\n    lora(r: 16, alpha: 32.0) at \"all-linear\"\n}}\n\
                 train {{\n    optimizer adamw(lr: 1e-4, weight_decay: 0.0)\n    batch 4  seq 128\n}}\n"
            ),
        )
        .unwrap();
        specs.push(p);
    }
    let (mut modules, mut kernels, mut most) = (0, 0, (0, String::new()));
    for spec in &specs {
        let (_, program) = graft_frontend::compile_file(spec, &stdlib)
            .unwrap_or_else(|e| panic!("{}: {e}", spec.display()));
        let step = graft_runtime::step_function(&program).unwrap();
        for arch in GPU_ARCHS {
            let ptx = emit_ptx(&step, arch, Some(&libdevice))
                .unwrap_or_else(|e| panic!("{} for {}: {e}", spec.display(), arch.chip));
            assert!(!ptx.kernels.is_empty(), "{}", spec.display());
            let file = tmp.path().join(format!("{}.ptx", arch.chip));
            std::fs::write(&file, &ptx.text).unwrap();
            let out = Command::new(&ptxas)
                .args(["-v", "-arch", arch.chip, "-o"])
                .arg(tmp.path().join("k.cubin"))
                .arg(&file)
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                out.status.success(),
                "ptxas {} for {}: {report}",
                spec.display(),
                arch.chip
            );
            let used = usage(&report);
            assert_eq!(used.len(), ptx.kernels.len(), "{report}");
            for (name, u) in &used {
                assert!(
                    u.spill_stores == 0 && u.spill_loads == 0,
                    "{} for {}: `{name}` spills ({u:?})",
                    spec.display(),
                    arch.chip
                );
                if u.registers > most.0 {
                    most = (u.registers, format!("{name} in {}", spec.display()));
                }
            }
            modules += 1;
            kernels += used.len();
        }
    }
    eprintln!(
        "{modules} PTX modules, {kernels} kernels assembled without spills; most registers: {} ({})",
        most.0, most.1
    );
}
