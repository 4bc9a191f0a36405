//! File tests: each `tests/filetests/**/*.ir` is IR text with `// test:` lines at its top
//! saying what to do with every function in it; what the tests print is compared with the
//! file's `.expected` sibling (Cranelift's filetests, rust-analyzer's expect files).
//!
//! Tests that print (their outputs concatenated, each under a `// ----` line naming it):
//! - `opt`: the e-graph optimizer (graft-opt, default options, the CPU's cost model);
//! - `pass NAME`: one lowering pass ([`graft_codegen::PASSES`]) on the input;
//! - `passes`: every lowering pass in order, the IR after each;
//! - `schedule`: the kernel schedule after lowering;
//! - `mlir`: the MLIR module before the pass pipeline.
//!
//! Tests that check numbers instead: `run TOL` compiles every function for the host and
//! compares its outputs on seeded inputs in [-1, 1) with the interpreter's, element-wise
//! relative (floor 1e-6); `run-norm TOL` relative to each output's largest reference value
//! (for sums of many terms: matmuls, reductions). `TOL` is stated in the file.
//!
//! The vector shape is fixed (AVX2's: 8 lanes, 6×16 GEMM tiles), so schedules and MLIR do
//! not depend on the host. A missing `.expected` is written (and fails under `CI`);
//! `GRAFT_BLESS=1` rewrites every one that differs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_codegen::{CpuTarget, PASSES, emit_mlir_for, pass, schedule_text};
use graft_ir::{Function, parse_module, print_function, verify_function};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/filetests")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "ir") {
            out.push(p);
        }
    }
}

fn target() -> CpuTarget {
    CpuTarget::from_features(|f| f == "avx2")
}

/// What one `// test:` line prints for `f`, or `None` for a test that prints nothing.
fn run_test(test: &str, f: &Function, file: &Path) -> Option<String> {
    let words: Vec<&str> = test.split_whitespace().collect();
    let at = |e: &dyn std::fmt::Display| -> ! {
        panic!("{}: `{test}` on @{}: {e}", file.display(), f.name)
    };
    match words.as_slice() {
        ["opt"] => {
            let o =
                graft_opt::optimize(f, &graft_opt::Options::default()).unwrap_or_else(|e| at(&e));
            verify_function(&o.func, usize::MAX).unwrap_or_else(|e| at(&e));
            Some(print_function(&o.func))
        }
        ["pass", name] => {
            let p = pass(name).unwrap_or_else(|| {
                let names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
                at(&format!("no pass `{name}` (passes: {})", names.join(", ")))
            });
            let g = p.run(f, &target()).unwrap_or_else(|e| at(&e));
            verify_function(&g, usize::MAX).unwrap_or_else(|e| at(&e));
            Some(print_function(&g))
        }
        ["passes"] => {
            let mut text = String::new();
            graft_codegen::run_passes(f, &target(), true, &mut |name, g| {
                text.push_str(&format!("// after {name}\n{}", print_function(g)));
            })
            .unwrap_or_else(|e| at(&e));
            Some(text)
        }
        ["schedule"] => Some(schedule_text(f, &target()).unwrap_or_else(|e| at(&e))),
        ["mlir"] => Some(emit_mlir_for(f, &target()).unwrap_or_else(|e| at(&e))),
        ["run", tol] | ["run-norm", tol] => {
            let tol: f64 = tol.parse().unwrap_or_else(|e| at(&e));
            let inputs = common::random_inputs(f, 7, -1.0, 1.0);
            if words[0] == "run" {
                common::check(f, &inputs, tol);
            } else {
                common::check_norm(f, &inputs, tol);
            }
            None
        }
        _ => at(&"unknown test (opt, pass NAME, passes, schedule, mlir, run TOL, run-norm TOL)"),
    }
}

#[test]
fn every_ir_file_gives_its_expected_output() {
    let mut all = Vec::new();
    files(&root(), &mut all);
    assert!(!all.is_empty(), "no file tests under {}", root().display());
    let bless = std::env::var_os("GRAFT_BLESS").is_some();
    let mut failures = Vec::new();
    for file in &all {
        let text = std::fs::read_to_string(file).unwrap();
        let tests: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("// test:").map(str::trim))
            .collect();
        assert!(!tests.is_empty(), "{}: no `// test:` line", file.display());
        let ir: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        let module = parse_module(&ir).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut got = String::new();
        for test in &tests {
            for f in &module.functions {
                verify_function(f, usize::MAX)
                    .unwrap_or_else(|e| panic!("{}: @{}: {e}", file.display(), f.name));
                if let Some(out) = run_test(test, f, file) {
                    got.push_str(&format!("// ---- {test} @{}\n{out}", f.name));
                }
            }
        }
        if got.is_empty() {
            continue;
        }
        let expected = file.with_extension("expected");
        match std::fs::read_to_string(&expected) {
            Ok(want) if want == got => {}
            Ok(_) if bless => std::fs::write(&expected, &got).unwrap(),
            Ok(want) => failures.push(format!(
                "{}: output differs from {} (GRAFT_BLESS=1 rewrites it)\n{}",
                file.display(),
                expected.display(),
                first_difference(&want, &got)
            )),
            Err(_) => {
                std::fs::write(&expected, &got).unwrap();
                if std::env::var_os("CI").is_some() {
                    failures.push(format!(
                        "{}: no {} (written now; commit it)",
                        file.display(),
                        expected.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The first line where `want` and `got` differ, with both versions.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let i = w
        .iter()
        .zip(&g)
        .position(|(a, b)| a != b)
        .unwrap_or(w.len().min(g.len()));
    format!(
        "line {}:\n  expected: {}\n  got:      {}",
        i + 1,
        w.get(i).unwrap_or(&"<end>"),
        g.get(i).unwrap_or(&"<end>")
    )
}
