//! NF4 `quantize`/`dequantize` through the interpreter: bit-for-bit equal to graft-quant's
//! direct results, and to bitsandbytes' own outputs in `tests/fixtures/nf4.safetensors`.
//! Tolerance everywhere: exact (floats compared by bit pattern, codes by value).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{assert_bits_eq, fixture, ramp, run_body, st_tensor};
use graft_interp::{InterpError, Tensor};
use graft_quant::{dequantize_nf4, dequantize_nf4_nested, quantize_nf4, quantize_nf4_nested};
use safetensors::SafeTensors;

fn unpack(packed: &[u8], n: usize) -> Vec<u8> {
    packed
        .iter()
        .flat_map(|&b| [b >> 4, b & 0x0f])
        .take(n)
        .collect()
}

/// `quantize` (codes and absmax) then `dequantize` of an `f32[n]` input, block 64.
fn round_trip(w: &[f32]) -> (Tensor, Tensor, Tensor) {
    let n = w.len();
    let blocks = n.div_ceil(64);
    let body = format!(
        "  %0: f32[{n}] = input{{name = \"w\", kind = weight}}\n  %1: u4[{n}] = quantize{{format = nf4, block = 64, part = codes}}(%0)\n  %2: f32[{blocks}] = quantize{{format = nf4, block = 64, part = absmax}}(%0)\n  %3: f32[{n}] = dequantize{{format = nf4, block = 64}}(%1, %2)\n  return codes = %1, absmax = %2, w = %3"
    );
    let mut o = run_body(&body, vec![("w", Tensor::f32([n], w.to_vec()).unwrap())]).unwrap();
    let w = o.remove(2).1;
    let absmax = o.remove(1).1;
    (o.remove(0).1, absmax, w)
}

#[test]
fn dequantize_of_quantize_equals_graft_quant() {
    // odd length with a partial last block, a zero block, and a 2-D shape
    let mut w = ramp(64 * 3 + 37, 0.8);
    w[64..128].fill(0.0);
    let (codes, absmax, deq) = round_trip(&w);
    let (packed, want_absmax) = quantize_nf4(&w, 64).unwrap();
    assert_eq!(codes.as_u4().unwrap(), &unpack(&packed, w.len())[..]);
    assert_bits_eq("absmax", absmax.as_f32().unwrap(), &want_absmax);
    let want = dequantize_nf4(&packed, &want_absmax, 64, w.len()).unwrap();
    assert_bits_eq("dequant", deq.as_f32().unwrap(), &want);

    // a 2-D weight keeps its logical shape in the codes
    let w2 = ramp(6 * 20, 1.3);
    let body = "  %0: f32[6, 20] = input{name = \"w\", kind = weight}\n  %1: u4[6, 20] = quantize{format = nf4, block = 32, part = codes}(%0)\n  %2: f32[4] = quantize{format = nf4, block = 32, part = absmax}(%0)\n  %3: bf16[6, 20] = dequantize{format = nf4, block = 32}(%1, %2)\n  return w = %3";
    let y = run_body(body, vec![("w", Tensor::f32([6, 20], w2.clone()).unwrap())]).unwrap();
    let (p, a) = quantize_nf4(&w2, 32).unwrap();
    let want = dequantize_nf4(&p, &a, 32, w2.len()).unwrap();
    let want_bf16 = Tensor::bf16([6, 20], want).unwrap();
    assert_eq!(
        y[0].1, want_bf16,
        "dequantize to bf16 rounds the f32 result"
    );
}

#[test]
fn nested_dequantize_equals_graft_quant() {
    // 300 blocks of 64: two nested blocks of 256 absmax values, the second partial
    let w: Vec<f32> = (0..64 * 300)
        .map(|i| (i as f32 * 0.013).sin() * (1.0 + (i / 64) as f32 * 0.01))
        .collect();
    let n = w.len();
    let (packed, nested) = quantize_nf4_nested(&w, 64).unwrap();
    let body = format!(
        "  %0: u4[{n}] = input{{name = \"codes\", kind = weight}}\n  %1: u8[300] = input{{name = \"q\", kind = weight}}\n  %2: f32[2] = input{{name = \"a2\", kind = weight}}\n  %3: f32[] = input{{name = \"off\", kind = weight}}\n  %4: f32[{n}] = dequantize{{format = nf4, block = 64, nested = 256}}(%0, %1, %2, %3)\n  return w = %4"
    );
    let y = run_body(
        &body,
        vec![
            ("codes", Tensor::u4([n], unpack(&packed, n)).unwrap()),
            ("q", Tensor::u8([300], nested.codes.clone()).unwrap()),
            ("a2", Tensor::f32([2], nested.absmax2.clone()).unwrap()),
            ("off", Tensor::scalar_f32(nested.offset)),
        ],
    )
    .unwrap();
    let want = dequantize_nf4_nested(&packed, &nested, 64, n).unwrap();
    assert_bits_eq("nested dequant", y[0].1.as_f32().unwrap(), &want);
}

#[test]
fn matches_bitsandbytes_fixtures() {
    let nf4_bytes = fixture("nf4.safetensors");
    let base_bytes = fixture("base.safetensors");
    let nf4 = SafeTensors::deserialize(&nf4_bytes).unwrap();
    let base = SafeTensors::deserialize(&base_bytes).unwrap();
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "edge.ties",
        "edge.zero_block",
        "edge.odd_999",
        "edge.tiny_5",
        "edge.zero_tail",
        "edge.many_blocks",
    ] {
        let input = if name.starts_with("edge.") {
            st_tensor(&nf4, &format!("{name}.input"))
        } else {
            st_tensor(&base, name)
        };
        let w = input.as_f32().unwrap().to_vec();
        let n = w.len();
        let (codes, absmax, deq) = round_trip(&w);
        let want_codes = unpack(
            st_tensor(&nf4, &format!("{name}.packed")).as_u8().unwrap(),
            n,
        );
        assert_eq!(codes.as_u4().unwrap(), &want_codes[..], "{name}: codes");
        let want_absmax = st_tensor(&nf4, &format!("{name}.absmax"));
        assert_bits_eq(
            &format!("{name}.absmax"),
            absmax.as_f32().unwrap(),
            want_absmax.as_f32().unwrap(),
        );
        let want = st_tensor(&nf4, &format!("{name}.dequant"));
        assert_bits_eq(
            &format!("{name}.dequant"),
            deq.as_f32().unwrap(),
            want.as_f32().unwrap(),
        );

        // nested: bitsandbytes' stored double-quant state through the IR's nested dequantize
        let q = st_tensor(&nf4, &format!("{name}.dq.absmax_u8"));
        let a2 = st_tensor(&nf4, &format!("{name}.dq.absmax2"));
        let off = st_tensor(&nf4, &format!("{name}.dq.offset"))
            .as_f32()
            .unwrap()[0];
        let (blocks, nb) = (q.numel(), a2.numel());
        let body = format!(
            "  %0: u4[{n}] = input{{name = \"codes\", kind = weight}}\n  %1: u8[{blocks}] = input{{name = \"q\", kind = weight}}\n  %2: f32[{nb}] = input{{name = \"a2\", kind = weight}}\n  %3: f32[] = input{{name = \"off\", kind = weight}}\n  %4: f32[{n}] = dequantize{{format = nf4, block = 64, nested = 256}}(%0, %1, %2, %3)\n  return w = %4"
        );
        let y = run_body(
            &body,
            vec![
                ("codes", codes),
                ("q", q),
                ("a2", a2),
                ("off", Tensor::scalar_f32(off)),
            ],
        )
        .unwrap();
        let want = st_tensor(&nf4, &format!("{name}.dq.dequant"));
        assert_bits_eq(
            &format!("{name}.dq.dequant"),
            y[0].1.as_f32().unwrap(),
            want.as_f32().unwrap(),
        );
    }
}

#[test]
fn quantizing_a_non_finite_weight_is_an_error() {
    let body = "  %0: f32[3] = input{name = \"w\", kind = weight}\n  %1: f32[1] = quantize{format = nf4, block = 64, part = absmax}(%0)\n  return a = %1";
    let e = run_body(
        body,
        vec![(
            "w",
            Tensor::f32([3], vec![1.0, f32::INFINITY, 0.0]).unwrap(),
        )],
    )
    .unwrap_err();
    assert!(matches!(e, InterpError::Quant { node: 1, .. }), "{e}");
    assert!(e.to_string().contains("finite"), "{e}");
}
