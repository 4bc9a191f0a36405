//! The on-disk kernel cache: a second compile of the same function loads every module from
//! the cache instead of compiling it, and runs to the same results; a damaged cache file is
//! rebuilt; with the cache off nothing is written.
//!
//! Tolerance: compiled results are compared with the interpreter norm-wise within 1e-4 (as in
//! `compute.rs`), and the cached and freshly compiled runs must agree bit for bit (same
//! machine code).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_codegen::{CompileOptions, CpuTarget, compile_with};
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, TensorType, UnaryOp};

/// A function with a GEMM (pack + tiled kernel) and a fused elementwise epilogue.
fn function() -> Function {
    let mut f = Function::new("cached");
    let t = |s: &[usize]| TensorType::new(DType::F32, s.to_vec());
    let x = f.add_input("x", InputKind::Data, t(&[24, 40]), None);
    let w = f.add_input("w", InputKind::Weight, t(&[40, 56]), None);
    let mm = Op::MatMul {
        ta: false,
        tb: false,
    };
    let y = f.add(mm, &[x, w], None).unwrap();
    let e = f.add(Op::Unary(UnaryOp::Exp), &[y], None).unwrap();
    let z = f.add(Op::Binary(BinaryOp::Mul), &[e, y], None).unwrap();
    f.add_output("z", z);
    f
}

fn opts(dir: Option<&std::path::Path>) -> CompileOptions {
    CompileOptions {
        target: CpuTarget::host(),
        cache_dir: dir.map(std::path::Path::to_path_buf),
        objects: None,
    }
}

fn so_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "sha256"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_compile_loads_every_module_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let f = function();
    let inputs = common::random_inputs(&f, 7, -0.5, 0.5);

    let first = compile_with(&f, &opts(Some(dir.path()))).unwrap();
    let info = first.compile_info().clone();
    assert_eq!(info.cache_error, None);
    assert!(info.modules >= 1);
    assert_eq!((info.cached, info.stored), (0, info.modules), "{info:?}");
    let files = so_files(dir.path());
    assert_eq!(files.len(), info.modules, "{files:?}");
    assert!(
        files
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "so"))
    );
    let want = first.run(&inputs).unwrap();

    let second = compile_with(&f, &opts(Some(dir.path()))).unwrap();
    let again = second.compile_info();
    assert_eq!((again.cached, again.stored), (info.modules, 0), "{again:?}");
    assert_eq!(so_files(dir.path()), files, "nothing new is written");
    let got = second.run(&inputs).unwrap();
    assert_eq!(got, want, "cached code computes exactly what the JIT's did");
    common::check_norm(&f, &inputs, 1e-4);
    // Dropping the first (JIT) function leaves the cached one working.
    drop(first);
    assert_eq!(second.run(&inputs).unwrap(), want);
}

#[test]
fn a_damaged_cache_file_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let f = function();
    let inputs = common::random_inputs(&f, 8, -0.5, 0.5);
    let want = compile_with(&f, &opts(Some(dir.path())))
        .unwrap()
        .run(&inputs)
        .unwrap();
    // Each damage is one a loader without a digest would trust: not an object at all; a
    // truncated object (SIGBUS when its pages are touched); the same length with code bytes
    // zeroed (SIGSEGV, SIGILL or silently wrong numbers).
    let damages: [(&str, fn(&mut Vec<u8>)); 3] = [
        ("replaced", |b| *b = b"not a shared object".to_vec()),
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("zeroed", |b| {
            let n = b.len();
            b[n / 3..n / 3 + n / 4].fill(0);
        }),
    ];
    for (what, damage) in damages {
        for p in so_files(dir.path()) {
            let mut bytes = std::fs::read(&p).unwrap();
            damage(&mut bytes);
            std::fs::write(&p, bytes).unwrap();
        }
        let rebuilt = compile_with(&f, &opts(Some(dir.path()))).unwrap();
        let info = rebuilt.compile_info();
        assert_eq!(
            (info.cached, info.stored),
            (0, info.modules),
            "{what}: {info:?}"
        );
        assert_eq!(rebuilt.run(&inputs).unwrap(), want, "{what}");
        let reloaded = compile_with(&f, &opts(Some(dir.path()))).unwrap();
        assert_eq!(reloaded.compile_info().cached, info.modules, "{what}");
        assert_eq!(reloaded.run(&inputs).unwrap(), want, "{what}");
    }
}

#[test]
fn with_the_cache_off_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let f = function();
    let c = compile_with(&f, &opts(None)).unwrap();
    let info = c.compile_info();
    assert_eq!(
        (info.cached, info.stored, info.cache_dir.is_none()),
        (0, 0, true)
    );
    assert!(so_files(dir.path()).is_empty());
}
