//! Shared test helpers: seeded random tensors and comparison of compiled results with the
//! reference interpreter.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_codegen::compile;
use graft_interp::{Data, Tensor};
use graft_ir::{DType, Function, TensorType};
use std::collections::HashMap;

/// A small seeded generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        graft_interp::splitmix64(self.0)
    }

    /// Uniform on [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// A random tensor of `ty`: floats uniform on [lo, hi), integers uniform on
    /// [lo, hi) truncated, u4 codes in 0..16, bools fair.
    pub fn tensor(&mut self, ty: &TensorType, lo: f64, hi: f64) -> Tensor {
        let n = ty.numel();
        let data = match ty.dtype {
            DType::F32 | DType::BF16 | DType::F16 => {
                Data::F32((0..n).map(|_| self.uniform(lo, hi) as f32).collect())
            }
            DType::F64 => Data::F64((0..n).map(|_| self.uniform(lo, hi)).collect()),
            DType::I64 => Data::I64(
                (0..n)
                    .map(|_| self.uniform(lo, hi).floor() as i64)
                    .collect(),
            ),
            DType::I32 => Data::I32(
                (0..n)
                    .map(|_| self.uniform(lo, hi).floor() as i32)
                    .collect(),
            ),
            DType::U8 => Data::U8((0..n).map(|_| (self.next() & 0xff) as u8).collect()),
            DType::U4 => Data::U4((0..n).map(|_| (self.next() & 0xf) as u8).collect()),
            DType::Bool => Data::Bool((0..n).map(|_| self.next() & 1 == 1).collect()),
        };
        Tensor::new(ty.clone(), data).unwrap()
    }
}

/// Random inputs for every input of `f` (floats uniform on [lo, hi)).
pub fn random_inputs(f: &Function, seed: u64, lo: f64, hi: f64) -> HashMap<String, Tensor> {
    let mut rng = Rng(seed);
    f.inputs()
        .map(|i| (i.name.to_string(), rng.tensor(i.ty, lo, hi)))
        .collect()
}

/// Largest element-wise error of `got` against `want`, relative to `max(|want|, floor)`;
/// NaNs must match. Non-float tensors must be equal.
pub fn rel_err(got: &Tensor, want: &Tensor, floor: f64) -> f64 {
    assert_eq!(got.ty(), want.ty(), "types differ");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    if !want.dtype().is_float() {
        assert_eq!(g, w, "non-float results differ");
        return 0.0;
    }
    let mut worst = 0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if a.is_nan() || b.is_nan() {
            assert!(a.is_nan() && b.is_nan(), "element {i}: {a} vs {b}");
            continue;
        }
        if a == b {
            continue;
        }
        let e = (a - b).abs() / b.abs().max(floor);
        worst = worst.max(e);
    }
    worst
}

/// Compiles and runs `f`, runs the interpreter, and checks every output within `tol`
/// (relative, with absolute floor `floor`). Returns the worst error.
pub fn check_with(f: &Function, inputs: &HashMap<String, Tensor>, tol: f64, floor: f64) -> f64 {
    let want = graft_interp::run(f, inputs).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let compiled = compile(f).unwrap_or_else(|e| panic!("compile: {e}"));
    let got = compiled
        .run(inputs)
        .unwrap_or_else(|e| panic!("run: {e}\n{}", compiled.mlir()));
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for ((gn, g), (wn, w)) in got.iter().zip(&want) {
        assert_eq!(gn, wn);
        let e = rel_err(g, w, floor);
        assert!(
            e <= tol,
            "output `{gn}` differs by {e:e} (tolerance {tol:e})\n{}",
            compiled.mlir()
        );
        worst = worst.max(e);
    }
    worst
}

/// [`check_with`] with an absolute floor of 1e-6: element-wise relative error.
pub fn check(f: &Function, inputs: &HashMap<String, Tensor>, tol: f64) -> f64 {
    check_with(f, inputs, tol, 1e-6)
}

/// Norm-wise relative error `max |got - want| / max |want|` for every output (matmuls,
/// reductions: the sum's rounding error scales with the terms, not the result).
pub fn check_norm(f: &Function, inputs: &HashMap<String, Tensor>, tol: f64) -> f64 {
    let want = graft_interp::run(f, inputs).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let compiled = compile(f).unwrap_or_else(|e| panic!("compile: {e}"));
    let got = compiled.run(inputs).unwrap_or_else(|e| panic!("run: {e}"));
    let mut worst = 0f64;
    for ((gn, g), (_, w)) in got.iter().zip(&want) {
        let scale = w
            .to_f64_vec()
            .iter()
            .fold(0f64, |m, x| m.max(x.abs()))
            .max(1e-30);
        let e = rel_err(g, w, scale);
        assert!(
            e <= tol,
            "output `{gn}` differs by {e:e} norm-wise (tolerance {tol:e})"
        );
        worst = worst.max(e);
    }
    worst
}

/// A tensor of `t`'s type holding `v` (rounded to its dtype).
pub fn with_values(t: &Tensor, v: Vec<f64>) -> Tensor {
    let shape = t.ty().shape.clone();
    let f32s = || v.iter().map(|&x| x as f32).collect();
    match t.dtype() {
        DType::F64 => Tensor::f64(shape, v),
        DType::F32 => Tensor::f32(shape, f32s()),
        DType::BF16 => Tensor::bf16(shape, f32s()),
        DType::F16 => Tensor::f16(shape, f32s()),
        DType::I64 => Tensor::i64(shape, v.iter().map(|&x| x as i64).collect()),
        DType::I32 => Tensor::i32(shape, v.iter().map(|&x| x as i32).collect()),
        other => panic!("cannot set elements of a {other} tensor"),
    }
    .unwrap()
}
