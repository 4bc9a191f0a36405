//! Helpers shared by the interpreter's integration tests: run IR text, compare numbers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_interp::{InterpError, Tensor};
use std::collections::HashMap;

/// Parses `func @f { <body> }` and runs it on `inputs`.
pub fn run_body(
    body: &str,
    inputs: Vec<(&str, Tensor)>,
) -> Result<Vec<(String, Tensor)>, InterpError> {
    let text = format!("func @f {{\n{body}\n}}\n");
    let m = graft_ir::parse_module(&text).unwrap_or_else(|e| panic!("parse error {e} in\n{text}"));
    let inputs: HashMap<String, Tensor> = inputs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    graft_interp::run_module_fn(&m, "f", &inputs)
}

/// Runs and returns the single output (panics on an error).
pub fn run1(body: &str, inputs: Vec<(&str, Tensor)>) -> Tensor {
    let mut outs = run_body(body, inputs).unwrap_or_else(|e| panic!("run failed: {e}"));
    assert_eq!(outs.len(), 1);
    outs.remove(0).1
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise (and equal lengths).
pub fn assert_close(got: &[f64], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan()) || g == w;
        assert!(
            ok,
            "{what}[{i}]: got {g}, want {w} (rtol {rtol}, atol {atol})"
        );
    }
}

/// A deterministic pseudo-random f32 vector in about [-scale, scale] (no RNG dependency).
pub fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| scale * ((i as f32 * 0.7371 + 0.3).sin()))
        .collect()
}

/// Reads a file from the repository's `tests/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (see tests/fixtures/README.md)"))
}

/// A safetensors tensor as an interpreter tensor (F32, I64 and U8 only).
pub fn st_tensor(st: &safetensors::SafeTensors<'_>, name: &str) -> Tensor {
    use safetensors::Dtype;
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let shape = t.shape().to_vec();
    let d = t.data();
    match t.dtype() {
        Dtype::F32 => Tensor::f32(
            shape,
            d.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::I64 => Tensor::i64(
            shape,
            d.chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ),
        Dtype::U8 => Tensor::u8(shape, d.to_vec()),
        other => panic!("{name}: unexpected dtype {other:?}"),
    }
    .unwrap()
}

/// Asserts two f32 slices are identical bit for bit (tolerance: none), naming the first
/// difference.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}[{i}]: got {:e}, want {:e}", got[i], want[i]);
    }
}
