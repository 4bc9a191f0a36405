//! Bit-exact comparison with bitsandbytes' own outputs, saved by `scripts/make_fixtures.py`.
//!
//! Tolerance everywhere: exact. Floats are compared by bit pattern (so `-0.0 != 0.0` and a
//! one-ulp difference fails), codes byte for byte. The reference is bitsandbytes 0.50.2 run on
//! the CPU (torch 2.15); see `tests/fixtures/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use graft_quant::{
    DYNAMIC_SIGNED_CODE, NESTED_BLOCK, NF4_CODE, NestedAbsmax, dequantize_absmax,
    dequantize_blockwise_dynamic, dequantize_nf4, dequantize_nf4_nested,
    double_quantize_with_offset, quantize_blockwise_dynamic, quantize_nf4, quantize_nf4_nested,
    torch_cpu_mean,
};
use safetensors::{Dtype, SafeTensors};

const NF4_BLOCK: usize = 64;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{path}: {e} (regenerate with scripts/make_fixtures.py, see tests/fixtures/README.md)"
        )
    })
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn u8s(st: &SafeTensors<'_>, name: &str) -> Vec<u8> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    t.data().to_vec()
}

/// Asserts two float slices are identical bit for bit, reporting the first difference.
fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}[{i}]: got {:e} ({:#010x}), bitsandbytes has {:e} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}[{i}]: got {:#04x}, bitsandbytes has {:#04x}",
            got[i], want[i]
        );
    }
}

/// Every tensor the fixture script quantized: `(record name, input values)`.
fn records<'a>(nf4: &SafeTensors<'a>, base: &SafeTensors<'a>) -> Vec<(String, Vec<f32>)> {
    let names: BTreeSet<String> = nf4
        .names()
        .into_iter()
        .filter_map(|k| k.strip_suffix(".packed"))
        .filter(|k| !k.ends_with(".dq"))
        .map(str::to_owned)
        .collect();
    names
        .into_iter()
        .map(|name| {
            let input = if name.starts_with("edge.") {
                f32s(nf4, &format!("{name}.input"))
            } else {
                f32s(base, &name)
            };
            (name, input)
        })
        .collect()
}

#[test]
fn code_tables_match_bitsandbytes() {
    let bytes = fixture("nf4.safetensors");
    let nf4 = SafeTensors::deserialize(&bytes).unwrap();
    assert_bits_eq("nf4.code", &NF4_CODE, &f32s(&nf4, "nf4.code"));
    assert_bits_eq(
        "dynamic.code",
        &DYNAMIC_SIGNED_CODE,
        &f32s(&nf4, "dynamic.code"),
    );
}

#[test]
fn nf4_quantize_and_dequantize_are_bit_exact() {
    let nf4_bytes = fixture("nf4.safetensors");
    let base_bytes = fixture("base.safetensors");
    let nf4 = SafeTensors::deserialize(&nf4_bytes).unwrap();
    let base = SafeTensors::deserialize(&base_bytes).unwrap();
    let recs = records(&nf4, &base);
    // 2 layers x 7 decoder linears, plus the edge cases
    assert_eq!(
        recs.iter()
            .filter(|(n, _)| n.starts_with("model.layers."))
            .count(),
        14
    );
    assert!(recs.iter().filter(|(n, _)| n.starts_with("edge.")).count() >= 6);
    for (name, input) in &recs {
        let n = input.len();
        let (packed, absmax) = quantize_nf4(input, NF4_BLOCK).unwrap();
        assert_bytes_eq(
            &format!("{name}.packed"),
            &packed,
            &u8s(&nf4, &format!("{name}.packed")),
        );
        assert_bits_eq(
            &format!("{name}.absmax"),
            &absmax,
            &f32s(&nf4, &format!("{name}.absmax")),
        );

        // dequantize bitsandbytes' own state, and ours (identical inputs, so identical output)
        let want = f32s(&nf4, &format!("{name}.dequant"));
        let bnb_state = dequantize_nf4(
            &u8s(&nf4, &format!("{name}.packed")),
            &f32s(&nf4, &format!("{name}.absmax")),
            NF4_BLOCK,
            n,
        )
        .unwrap();
        assert_bits_eq(&format!("{name}.dequant (bnb state)"), &bnb_state, &want);
        let ours = dequantize_nf4(&packed, &absmax, NF4_BLOCK, n).unwrap();
        assert_bits_eq(&format!("{name}.dequant"), &ours, &want);
    }
}

#[test]
fn double_quantization_is_bit_exact() {
    let nf4_bytes = fixture("nf4.safetensors");
    let base_bytes = fixture("base.safetensors");
    let nf4 = SafeTensors::deserialize(&nf4_bytes).unwrap();
    let base = SafeTensors::deserialize(&base_bytes).unwrap();
    let mut nested_blocks_seen = 0;
    for (name, input) in records(&nf4, &base) {
        let n = input.len();
        let (packed, nested) = quantize_nf4_nested(&input, NF4_BLOCK).unwrap();
        let dq = |k: &str| format!("{name}.dq.{k}");
        assert_bytes_eq(&dq("packed"), &packed, &u8s(&nf4, &dq("packed")));
        let want_offset = f32s(&nf4, &dq("offset"));
        assert_bits_eq(&dq("offset"), &[nested.offset], &want_offset);
        assert_bytes_eq(
            &dq("absmax_u8"),
            &nested.codes,
            &u8s(&nf4, &dq("absmax_u8")),
        );
        assert_bits_eq(&dq("absmax2"), &nested.absmax2, &f32s(&nf4, &dq("absmax2")));
        assert_bits_eq(
            &dq("absmax_deq"),
            &dequantize_absmax(&nested).unwrap(),
            &f32s(&nf4, &dq("absmax_deq")),
        );
        assert_bits_eq(
            &dq("dequant"),
            &dequantize_nf4_nested(&packed, &nested, NF4_BLOCK, n).unwrap(),
            &f32s(&nf4, &dq("dequant")),
        );

        // bitsandbytes' stored state dequantizes the same way
        let stored = NestedAbsmax {
            codes: u8s(&nf4, &dq("absmax_u8")),
            absmax2: f32s(&nf4, &dq("absmax2")),
            offset: want_offset[0],
        };
        assert_bits_eq(
            &dq("dequant (bnb state)"),
            &dequantize_nf4_nested(&u8s(&nf4, &dq("packed")), &stored, NF4_BLOCK, n).unwrap(),
            &f32s(&nf4, &dq("dequant")),
        );
        // and re-quantizing around the stored offset reproduces the stored codes
        let (_, absmax) = quantize_nf4(&input, NF4_BLOCK).unwrap();
        assert_eq!(
            double_quantize_with_offset(&absmax, stored.offset).unwrap(),
            stored
        );
        nested_blocks_seen = nested_blocks_seen.max(nested.absmax2.len());
    }
    // the many-blocks case covers several nested blocks with a partial, non-multiple-of-8 tail
    assert!(nested_blocks_seen >= 3, "{nested_blocks_seen}");
}

#[test]
fn blockwise_8bit_is_bit_exact() {
    let bytes = fixture("nf4.safetensors");
    let nf4 = SafeTensors::deserialize(&bytes).unwrap();
    let input = f32s(&nf4, "q8.input");
    assert_ne!(input.len() % NESTED_BLOCK, 0, "want a partial last block");
    let (codes, absmax) = quantize_blockwise_dynamic(&input, NESTED_BLOCK).unwrap();
    assert_bytes_eq("q8.codes", &codes, &u8s(&nf4, "q8.codes"));
    assert_bits_eq("q8.absmax", &absmax, &f32s(&nf4, "q8.absmax"));
    assert_bits_eq(
        "q8.dequant",
        &dequantize_blockwise_dynamic(&codes, &absmax, NESTED_BLOCK).unwrap(),
        &f32s(&nf4, "q8.dequant"),
    );
}

#[test]
fn torch_cpu_mean_is_bit_exact() {
    let bytes = fixture("nf4.safetensors");
    let nf4 = SafeTensors::deserialize(&bytes).unwrap();
    let mut seen = 0;
    for name in nf4.names() {
        let Some(n) = name
            .strip_prefix("mean.")
            .and_then(|s| s.strip_suffix(".input"))
        else {
            continue;
        };
        let input = f32s(&nf4, name);
        let want = f32s(&nf4, &format!("mean.{n}.mean"));
        assert_bits_eq(&format!("mean.{n}"), &[torch_cpu_mean(&input)], &want);
        seen += 1;
    }
    assert!(seen >= 8, "{seen}");
}
