//! Layout ops (reshape, transpose, broadcast, concat, slice, gather), checked against index
//! arithmetic written out in the test. Layout ops copy values, so every check is exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{run_body, run1};
use graft_interp::{InterpError, Tensor};

/// 0, 1, 2, ... as f32 (each element's value is its row-major index).
fn counting(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::f32(shape.to_vec(), (0..n).map(|i| i as f32).collect()).unwrap()
}

#[test]
fn reshape_keeps_row_major_order() {
    let y = run1(
        "  %0: f32[2, 3] = input{name = \"x\", kind = data}\n  %1: f32[3, 1, 2] = reshape(%0)\n  return y = %1",
        vec![("x", counting(&[2, 3]))],
    );
    assert_eq!(y.shape(), &[3, 1, 2]);
    assert_eq!(y.as_f32().unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn transpose_result_axis_i_is_operand_axis_perm_i() {
    // x: [2, 3, 4]; perm [2, 0, 1] gives y: [4, 2, 3] with y[a, b, c] = x[b, c, a].
    let y = run1(
        "  %0: f32[2, 3, 4] = input{name = \"x\", kind = data}\n  %1: f32[4, 2, 3] = transpose{perm = [2, 0, 1]}(%0)\n  return y = %1",
        vec![("x", counting(&[2, 3, 4]))],
    );
    let mut want = Vec::new();
    for a in 0..4 {
        for b in 0..2 {
            for c in 0..3 {
                want.push((b * 12 + c * 4 + a) as f64);
            }
        }
    }
    assert_eq!(y.to_f64_vec(), want);
}

#[test]
fn broadcast_aligns_trailing_axes_and_repeats_extent_one() {
    // x: [3, 1] -> [2, 3, 4]: y[a, b, c] = x[b, 0]
    let y = run1(
        "  %0: f32[3, 1] = input{name = \"x\", kind = data}\n  %1: f32[2, 3, 4] = broadcast(%0)\n  return y = %1",
        vec![("x", counting(&[3, 1]))],
    );
    let mut want = Vec::new();
    for _a in 0..2 {
        for b in 0..3 {
            for _c in 0..4 {
                want.push(b as f64);
            }
        }
    }
    assert_eq!(y.to_f64_vec(), want);
    // a scalar fills everything; a row [4] repeats over the leading axes
    let y = run1(
        "  %0: i64[4] = input{name = \"x\", kind = data}\n  %1: i64[2, 4] = broadcast(%0)\n  return y = %1",
        vec![("x", Tensor::i64([4], vec![7, 8, 9, 10]).unwrap())],
    );
    assert_eq!(y.as_i64().unwrap(), &[7, 8, 9, 10, 7, 8, 9, 10]);
    let y = run1(
        "  %0: f32[] = constant{value = 2.5}\n  %1: f32[2, 2] = broadcast(%0)\n  return y = %1",
        vec![],
    );
    assert_eq!(y.as_f32().unwrap(), &[2.5; 4]);
}

#[test]
fn concat_and_slice() {
    // concat along axis 1 of [2,1], [2,2], [2,0]
    let y = run1(
        "  %0: f32[2, 1] = input{name = \"a\", kind = data}\n  %1: f32[2, 2] = input{name = \"b\", kind = data}\n  %2: f32[2, 0] = input{name = \"c\", kind = data}\n  %3: f32[2, 3] = concat{axis = 1}(%0, %1, %2)\n  return y = %3",
        vec![
            ("a", Tensor::f32([2, 1], vec![1.0, 2.0]).unwrap()),
            (
                "b",
                Tensor::f32([2, 2], vec![10.0, 11.0, 20.0, 21.0]).unwrap(),
            ),
            ("c", Tensor::f32([2, 0], vec![]).unwrap()),
        ],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0, 10.0, 11.0, 2.0, 20.0, 21.0]);
    // concat along axis 0 is plain appending
    let y = run1(
        "  %0: f32[1, 2] = input{name = \"a\", kind = data}\n  %1: f32[2, 2] = input{name = \"b\", kind = data}\n  %2: f32[3, 2] = concat{axis = 0}(%0, %1)\n  return y = %2",
        vec![
            ("a", Tensor::f32([1, 2], vec![1.0, 2.0]).unwrap()),
            ("b", Tensor::f32([2, 2], vec![3.0, 4.0, 5.0, 6.0]).unwrap()),
        ],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // slice [2, 5] along axis 1, elements 1..4: y[i, j] = x[i, j + 1]
    let y = run1(
        "  %0: f32[2, 5] = input{name = \"x\", kind = data}\n  %1: f32[2, 3] = slice{axis = 1, start = 1, end = 4}(%0)\n  return y = %1",
        vec![("x", counting(&[2, 5]))],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0, 2.0, 3.0, 6.0, 7.0, 8.0]);
}

#[test]
fn gather_takes_rows_and_inner_axes() {
    // embedding lookup: table [4, 2], ids [2, 3] -> [2, 3, 2]
    let ids = vec![3i64, 0, 1, 1, 2, 3];
    let y = run1(
        "  %0: f32[4, 2] = input{name = \"t\", kind = data}\n  %1: i64[2, 3] = input{name = \"i\", kind = data}\n  %2: f32[2, 3, 2] = gather{axis = 0}(%0, %1)\n  return y = %2",
        vec![
            ("t", counting(&[4, 2])),
            ("i", Tensor::i64([2, 3], ids.clone()).unwrap()),
        ],
    );
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&r| [(2 * r) as f64, (2 * r + 1) as f64])
        .collect();
    assert_eq!(y.to_f64_vec(), want);
    // axis 1 with i32 indices: table [2, 3, 2], idx [2] -> [2, 2, 2]; y[a, j, c] = t[a, idx[j], c]
    let idx = [2i32, 0];
    let y = run1(
        "  %0: f32[2, 3, 2] = input{name = \"t\", kind = data}\n  %1: i32[2] = input{name = \"i\", kind = data}\n  %2: f32[2, 2, 2] = gather{axis = 1}(%0, %1)\n  return y = %2",
        vec![
            ("t", counting(&[2, 3, 2])),
            ("i", Tensor::i32([2], idx.to_vec()).unwrap()),
        ],
    );
    let mut want = Vec::new();
    for a in 0..2 {
        for &j in &idx {
            for c in 0..2 {
                want.push((a * 6 + j as usize * 2 + c) as f64);
            }
        }
    }
    assert_eq!(y.to_f64_vec(), want);
}

#[test]
fn gather_rejects_negative_and_out_of_range_indices() {
    let body = "  %0: f32[4, 2] = input{name = \"t\", kind = data}\n  %1: i64[3] = input{name = \"i\", kind = data}\n  %2: f32[3, 2] = gather{axis = 0}(%0, %1)\n  return y = %2";
    for (bad, value) in [
        (vec![0i64, 4, 1], 4i64),
        (vec![1, -1, 0], -1),
        (vec![i64::MAX, 0, 0], i64::MAX),
    ] {
        let e = run_body(
            body,
            vec![
                ("t", counting(&[4, 2])),
                ("i", Tensor::i64([3], bad).unwrap()),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(e, InterpError::IndexOutOfRange { node: 2, value: v, extent: 4 } if v == value),
            "{e}"
        );
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}
