//! Property tests of the NF4 format that need no fixtures: packing order, odd lengths,
//! round-trip error bounds and error reporting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_quant::{
    NF4_CODE, QuantError, dequantize_nf4, dequantize_nf4_nested, nf4_index, packed_len,
    quantize_nf4, quantize_nf4_nested,
};

/// A small deterministic generator (xorshift64*) so the tests need no dependencies.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Roughly normal: sum of four uniforms, centred.
    fn normal(&mut self) -> f32 {
        let u = |r: &mut Self| (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (u(self) + u(self) + u(self) + u(self) - 2.0) * 1.7
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// Half the widest gap between consecutive NF4 codes (between 0.7229568 and 1.0).
fn max_half_gap() -> f32 {
    NF4_CODE
        .windows(2)
        .map(|w| (w[1] - w[0]) / 2.0)
        .fold(0.0, f32::max)
}

#[test]
fn high_nibble_holds_the_even_element() {
    // code(1.0) = 15, code(-1.0) = 0, code(0.0) = 7
    let (packed, absmax) = quantize_nf4(&[1.0, -1.0], 2).unwrap();
    assert_eq!(packed, vec![0xF0]);
    assert_eq!(absmax, vec![1.0]);
    let (packed, _) = quantize_nf4(&[-1.0, 1.0, 0.0, 1.0], 4).unwrap();
    assert_eq!(packed, vec![0x0F, 0x7F]);
    let out = dequantize_nf4(&[0x0F, 0x7F], &[2.0], 4, 4).unwrap();
    assert_eq!(out, vec![-2.0, 2.0, 0.0, 2.0]);
}

#[test]
fn odd_count_pads_the_last_low_nibble_with_zero_code() {
    let (packed, _) = quantize_nf4(&[1.0, -1.0, 1.0], 64).unwrap();
    assert_eq!(packed, vec![0xF0, 0xF0 | nf4_index(0.0)]);
    assert_eq!(nf4_index(0.0), 7);
}

#[test]
fn lengths_not_a_multiple_of_the_block() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (n, block) in [
        (1usize, 64usize),
        (5, 64),
        (63, 64),
        (65, 64),
        (999, 64),
        (1000, 128),
        (257, 7),
    ] {
        let w = rng.vec(n, 0.5);
        let (packed, absmax) = quantize_nf4(&w, block).unwrap();
        assert_eq!(packed.len(), packed_len(n), "n {n}");
        assert_eq!(absmax.len(), n.div_ceil(block), "n {n}");
        let back = dequantize_nf4(&packed, &absmax, block, n).unwrap();
        assert_eq!(back.len(), n);
        // the partial last block gets its own absmax
        let tail = &w[(absmax.len() - 1) * block..];
        let tail_max = tail.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert_eq!(absmax[absmax.len() - 1], tail_max, "n {n}");
    }
}

#[test]
fn round_trip_error_is_bounded_per_block() {
    let mut rng = Rng(42);
    let bound = max_half_gap();
    for &(n, block, scale) in &[
        (4096usize, 64usize, 0.02f32),
        (999, 64, 3.0),
        (5000, 128, 1e-3),
        (777, 32, 50.0),
    ] {
        let w = rng.vec(n, scale);
        let (packed, absmax) = quantize_nf4(&w, block).unwrap();
        let back = dequantize_nf4(&packed, &absmax, block, n).unwrap();
        for (i, (&x, &y)) in w.iter().zip(&back).enumerate() {
            let am = absmax[i / block];
            // nearest-code error is at most half a gap of the scaled grid (plus rounding)
            let limit = am * bound * (1.0 + 1e-5) + am * 1e-6;
            assert!(
                (x - y).abs() <= limit,
                "n {n} i {i}: {x} -> {y}, absmax {am}"
            );
            // and the chosen code is the nearest one (ties may go either way by an ulp)
            let s = x / am;
            let best = NF4_CODE
                .iter()
                .map(|c| (c - s).abs())
                .fold(f32::INFINITY, f32::min);
            assert!((y / am - s).abs() <= best + 1e-6, "n {n} i {i}");
        }
        // each block's absmax element is reproduced exactly (code +-1 times absmax)
        for (b, chunk) in w.chunks(block).enumerate() {
            let (j, _) = chunk
                .iter()
                .enumerate()
                .fold((0, 0.0f32), |(bj, bm), (j, x)| {
                    if x.abs() > bm { (j, x.abs()) } else { (bj, bm) }
                });
            assert_eq!(back[b * block + j], chunk[j], "block {b}");
        }
    }
}

#[test]
fn nested_round_trip_error_is_bounded() {
    let mut rng = Rng(7);
    let w = rng.vec(64 * 700, 1.0);
    let (packed, absmax) = quantize_nf4(&w, 64).unwrap();
    let (packed2, nested) = quantize_nf4_nested(&w, 64).unwrap();
    assert_eq!(packed, packed2);
    assert_eq!(nested.absmax2.len(), 700usize.div_ceil(256));
    let back = dequantize_nf4_nested(&packed2, &nested, 64, w.len()).unwrap();
    let plain = dequantize_nf4(&packed, &absmax, 64, w.len()).unwrap();
    for (i, (&a, &b)) in plain.iter().zip(&back).enumerate() {
        // the nested absmax is within 1% of the true one here, so values are too
        assert!(
            (a - b).abs() <= 0.01 * absmax[i / 64] + 1e-6,
            "i {i}: {a} vs {b}"
        );
    }
}

#[test]
fn zero_blocks_and_empty_input() {
    let (packed, absmax) = quantize_nf4(&[0.0; 70], 64).unwrap();
    assert!(packed.iter().all(|&b| b == 0x77));
    // a zero full block stores 0; a zero partial last block stores bnb's 1e-38 clamp
    assert_eq!(absmax[0], 0.0);
    assert_eq!(absmax[1], 1e-38);
    let back = dequantize_nf4(&packed, &absmax, 64, 70).unwrap();
    assert!(back.iter().all(|&x| x.to_bits() == 0));

    let (packed, absmax) = quantize_nf4(&[], 64).unwrap();
    assert!(packed.is_empty() && absmax.is_empty());
    assert_eq!(dequantize_nf4(&[], &[], 64, 0).unwrap(), Vec::<f32>::new());
    assert_eq!(quantize_nf4_nested(&[], 64), Err(QuantError::Empty));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert_eq!(quantize_nf4(&[1.0], 0), Err(QuantError::ZeroBlockSize));
    assert!(matches!(
        quantize_nf4(&[1.0, f32::INFINITY], 64),
        Err(QuantError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        quantize_nf4(&[f32::NAN], 64),
        Err(QuantError::NonFinite { index: 0, .. })
    ));
    assert_eq!(
        dequantize_nf4(&[0u8; 3], &[1.0], 64, 7),
        Err(QuantError::LengthMismatch {
            what: "packed",
            expected: 4,
            actual: 3
        })
    );
    assert_eq!(
        dequantize_nf4(&[0u8; 4], &[1.0], 4, 7),
        Err(QuantError::LengthMismatch {
            what: "absmax",
            expected: 2,
            actual: 1
        })
    );
    assert_eq!(
        dequantize_nf4(&[0u8; 4], &[1.0], 0, 7),
        Err(QuantError::ZeroBlockSize)
    );
    let msg = QuantError::NonFinite {
        what: "weights",
        index: 3,
        value: f32::NAN,
    }
    .to_string();
    assert!(msg.contains("weights[3]"), "{msg}");
}
