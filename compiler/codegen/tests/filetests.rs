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
//! Tests that check instead of printing:
//! - `run TOL` compiles every function for the host and compares its outputs with the
//!   interpreter's, element-wise relative (floor 1e-6); `run-floor TOL FLOOR` with another
//!   floor; `run-norm TOL` relative to each output's largest reference value (for sums of
//!   many terms: matmuls, reductions). `TOL` is stated in the file.
//! - `mlir-has TEXT`: the MLIR module holds `TEXT`.
//!
//! `// target: vocab_chunk BYTES` or `// target: pack_budget BYTES` changes that setting of
//! the target every test of the file compiles for. Inputs of `run` tests are seeded uniform
//! draws ([`Draws`]): `// inputs: LO HI` (default
//! -1 1), `// seed: N` (default 7), `// input NAME: LO HI` for one input (integers are the
//! draws rounded down), and `// set NAME[I] = V` or `// set NAME[I..J] = V` to place a
//! value (a number, `nan`, `inf`, `-inf`) in the flattened tensor.
//!
//! The vector shape is fixed (AVX2's: 8 lanes, 6×16 GEMM tiles), so schedules and MLIR do
//! not depend on the host. A missing `.expected` is written (and fails under `CI`);
//! `GRAFT_BLESS=1` rewrites every one that differs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_codegen::{CpuTarget, PASSES, emit_mlir_for, pass, schedule_text};
use graft_interp::Tensor;
use graft_ir::{Function, parse_module, print_function, verify_function};
use std::collections::HashMap;
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

/// The fixed vector shape printing tests use, with the file's `// target:` settings.
fn target(d: &Draws) -> CpuTarget {
    d.adjust(CpuTarget::from_features(|f| f == "avx2"))
}

/// What one `// test:` line prints for `f`, or `None` for a test that prints nothing.
fn run_test(test: &str, f: &Function, file: &Path, draws: &Draws) -> Option<String> {
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
            let g = p
                .run(f, &target(draws).lowering())
                .unwrap_or_else(|e| at(&e));
            verify_function(&g, usize::MAX).unwrap_or_else(|e| at(&e));
            Some(print_function(&g))
        }
        ["passes"] => {
            let mut text = String::new();
            graft_codegen::run_passes(f, &target(draws), true, &mut |name, g| {
                text.push_str(&format!("// after {name}\n{}", print_function(g)));
            })
            .unwrap_or_else(|e| at(&e));
            Some(text)
        }
        ["schedule"] => Some(schedule_text(f, &target(draws)).unwrap_or_else(|e| at(&e))),
        ["mlir"] => Some(emit_mlir_for(f, &target(draws)).unwrap_or_else(|e| at(&e))),
        ["run", tol] | ["run-norm", tol] | ["run-floor", tol, _] => {
            let num = |w: &str| -> f64 { w.parse().unwrap_or_else(|e| at(&e)) };
            let tol = num(tol);
            let inputs = draws.inputs(f).unwrap_or_else(|e| at(&e));
            let want = graft_interp::run(f, &inputs).unwrap_or_else(|e| at(&e));
            let compiled = graft_codegen::compile_for(f, &draws.adjust(CpuTarget::host()))
                .unwrap_or_else(|e| at(&e));
            let got = compiled.run(&inputs).unwrap_or_else(|e| at(&e));
            for ((name, g), (_, w)) in got.iter().zip(&want) {
                let floor = match words[0] {
                    "run" => 1e-6,
                    "run-floor" => num(words[2]),
                    _ => w.to_f64_vec().iter().fold(1e-30_f64, |m, x| m.max(x.abs())),
                };
                let e = common::rel_err(g, w, floor);
                if e > tol {
                    at(&format!(
                        "output `{name}` differs by {e:e} (tolerance {tol:e})"
                    ));
                }
            }
            None
        }
        ["mlir-has", ..] => {
            let want = test["mlir-has".len()..].trim();
            let mlir = emit_mlir_for(f, &target(draws)).unwrap_or_else(|e| at(&e));
            if !mlir.contains(want) {
                at(&format!("the MLIR has no `{want}`"));
            }
            None
        }
        _ => at(
            &"unknown test (opt, pass NAME, passes, schedule, mlir, mlir-has TEXT, \
                 run TOL, run-floor TOL FLOOR, run-norm TOL)",
        ),
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
        let draws = Draws::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
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
                if let Some(out) = run_test(test, f, file, &draws) {
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

/// How a file's `run` tests draw their inputs (the directives in the module docs).
struct Draws {
    seed: u64,
    range: (f64, f64),
    ranges: HashMap<String, (f64, f64)>,
    /// Input, first and last-plus-one flat index, value.
    sets: Vec<(String, usize, usize, f64)>,
    /// `// target:` settings.
    vocab_chunk: Option<usize>,
    pack_budget: Option<usize>,
}

impl Draws {
    fn parse(text: &str) -> Result<Draws, String> {
        let mut d = Draws {
            seed: 7,
            range: (-1.0, 1.0),
            ranges: HashMap::new(),
            sets: Vec::new(),
            vocab_chunk: None,
            pack_budget: None,
        };
        let num = |w: &str| -> Result<f64, String> {
            match w {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => w.parse().map_err(|e| format!("`{w}`: {e}")),
            }
        };
        let pair = |rest: &str| -> Result<(f64, f64), String> {
            match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
                [lo, hi] => Ok((num(lo)?, num(hi)?)),
                _ => Err(format!("`{rest}`: expected LO HI")),
            }
        };
        for line in text.lines().filter_map(|l| l.trim().strip_prefix("//")) {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("target:") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let bytes = |w: &str| w.parse::<usize>().map_err(|e| format!("target: {e}"));
                match words.as_slice() {
                    ["vocab_chunk", b] => d.vocab_chunk = Some(bytes(b)?),
                    ["pack_budget", b] => d.pack_budget = Some(bytes(b)?),
                    _ => return Err(format!("`target:{rest}`: vocab_chunk or pack_budget")),
                }
            } else if let Some(rest) = line.strip_prefix("inputs:") {
                d.range = pair(rest)?;
            } else if let Some(rest) = line.strip_prefix("seed:") {
                d.seed = rest.trim().parse().map_err(|e| format!("seed: {e}"))?;
            } else if let Some(rest) = line.strip_prefix("input ") {
                let (name, r) = rest.split_once(':').ok_or("input NAME: LO HI")?;
                d.ranges.insert(name.trim().to_string(), pair(r)?);
            } else if let Some(rest) = line.strip_prefix("set ") {
                let bad = || format!("`set {rest}`: expected NAME[I] = V or NAME[I..J] = V");
                let (target, v) = rest.split_once('=').ok_or_else(bad)?;
                let (name, idx) = target.trim().split_once('[').ok_or_else(bad)?;
                let idx = idx.strip_suffix(']').ok_or_else(bad)?;
                let at = |w: &str| w.trim().parse::<usize>().map_err(|_| bad());
                let (lo, hi) = match idx.split_once("..") {
                    Some((a, b)) => (at(a)?, at(b)?),
                    None => (at(idx)?, at(idx)? + 1),
                };
                d.sets.push((name.to_string(), lo, hi, num(v.trim())?));
            }
        }
        Ok(d)
    }

    /// `t` with the file's target settings.
    fn adjust(&self, mut t: CpuTarget) -> CpuTarget {
        t.vocab_chunk = self.vocab_chunk.unwrap_or(t.vocab_chunk);
        t.pack_budget = self.pack_budget.unwrap_or(t.pack_budget);
        t
    }

    /// Inputs for `f`: one seeded generator drawn in input order, then the `set` values.
    fn inputs(&self, f: &Function) -> Result<HashMap<String, Tensor>, String> {
        let mut rng = common::Rng(self.seed);
        let mut out: HashMap<String, Tensor> = f
            .inputs()
            .map(|i| {
                let (lo, hi) = self.ranges.get(i.name).copied().unwrap_or(self.range);
                (i.name.to_string(), rng.tensor(i.ty, lo, hi))
            })
            .collect();
        for (name, lo, hi, v) in &self.sets {
            let t = out
                .get(name)
                .ok_or_else(|| format!("`set {name}`: @{} has no such input", f.name))?;
            let mut vals = t.to_f64_vec();
            if *hi > vals.len() || lo >= hi {
                return Err(format!("`set {name}[{lo}..{hi}]`: {} elements", vals.len()));
            }
            vals[*lo..*hi].fill(*v);
            let t = common::with_values(t, vals);
            out.insert(name.clone(), t);
        }
        Ok(out)
    }
}
