//! Elementwise ops, fills and casts, checked against values computed independently here
//! (hand-written expectations or straightforward f64 formulas).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{assert_close, ramp, run_body, run1};
use graft_interp::{InterpError, Tensor};

const X: &str = "  %0: f32[6] = input{name = \"x\", kind = data}";

fn unary(op: &str, x: Vec<f32>) -> Vec<f64> {
    let body = format!("{X}\n  %1: f32[6] = {op}(%0)\n  return y = %1");
    run1(&body, vec![("x", Tensor::f32([6], x).unwrap())]).to_f64_vec()
}

#[test]
fn unary_float_ops_match_their_definitions() {
    let x = vec![-2.5f32, -0.75, -0.0, 0.5, 1.25, 3.0];
    let pos = vec![0.125f32, 0.5, 1.0, 2.0, 3.5, 9.0];
    type F = fn(f64) -> f64;
    let cases: [(&str, &Vec<f32>, F); 13] = [
        ("neg", &x, |v| -v),
        ("exp", &x, f64::exp),
        ("log", &pos, f64::ln),
        ("sqrt", &pos, f64::sqrt),
        ("rsqrt", &pos, |v| 1.0 / v.sqrt()),
        ("sin", &x, f64::sin),
        ("cos", &x, f64::cos),
        ("tanh", &x, f64::tanh),
        ("sigmoid", &x, |v| 1.0 / (1.0 + (-v).exp())),
        ("silu", &x, |v| v / (1.0 + (-v).exp())),
        ("relu", &x, |v| v.max(0.0)),
        ("abs", &x, f64::abs),
        ("recip", &pos, |v| 1.0 / v),
    ];
    for (op, input, f) in cases {
        let want: Vec<f64> = input.iter().map(|&v| f(f64::from(v))).collect();
        // f32 compute of a correctly rounded libm result: within a few f32 ulps.
        assert_close(&unary(op, input.clone()), &want, 1e-6, 1e-7, op);
    }
}

#[test]
fn unary_on_integers_and_bools() {
    let y = run1(
        "  %0: i64[3] = input{name = \"x\", kind = data}\n  %1: i64[3] = neg(%0)\n  %2: i64[3] = abs(%1)\n  return y = %2",
        vec![("x", Tensor::i64([3], vec![-4, 0, i64::MIN]).unwrap())],
    );
    // abs(neg(x)); i64::MIN wraps to itself both times.
    assert_eq!(y.as_i64().unwrap(), &[4, 0, i64::MIN]);
    let y = run1(
        "  %0: bool[2] = input{name = \"x\", kind = data}\n  %1: bool[2] = not(%0)\n  return y = %1",
        vec![("x", Tensor::bool([2], vec![true, false]).unwrap())],
    );
    assert_eq!(y.as_bool().unwrap(), &[false, true]);
}

fn binary(op: &str, ty: &str, a: Tensor, b: Tensor) -> Result<Tensor, InterpError> {
    let rt = if ["eq", "ne", "lt", "le", "gt", "ge"].contains(&op) {
        ty.replacen(ty.split('[').next().unwrap_or(""), "bool", 1)
    } else {
        ty.to_string()
    };
    let body = format!(
        "  %0: {ty} = input{{name = \"a\", kind = data}}\n  %1: {ty} = input{{name = \"b\", kind = data}}\n  %2: {rt} = {op}(%0, %1)\n  return y = %2"
    );
    run_body(&body, vec![("a", a), ("b", b)]).map(|mut o| o.remove(0).1)
}

#[test]
fn binary_float_ops() {
    let a = vec![1.5f32, -2.0, 0.25, 3.0, f32::NAN, 2.0];
    let b = vec![0.5f32, 4.0, -0.75, 3.0, 1.0, 0.5];
    let ta = || Tensor::f32([6], a.clone()).unwrap();
    let tb = || Tensor::f32([6], b.clone()).unwrap();
    type F = fn(f64, f64) -> f64;
    let cases: [(&str, F); 5] = [
        ("add", |x, y| x + y),
        ("sub", |x, y| x - y),
        ("mul", |x, y| x * y),
        ("div", |x, y| x / y),
        ("pow", |x, y| x.abs().powf(y)),
    ];
    for (op, f) in cases {
        let (a, b) = if op == "pow" {
            // pow on a non-negative base only
            (a.iter().map(|v| v.abs()).collect::<Vec<_>>(), b.clone())
        } else {
            (a.clone(), b.clone())
        };
        let got = binary(
            op,
            "f32[6]",
            Tensor::f32([6], a.clone()).unwrap(),
            Tensor::f32([6], b.clone()).unwrap(),
        )
        .unwrap();
        let want: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f(f64::from(x), f64::from(y)))
            .collect();
        // one f32 rounding of the exact result (powf: a few ulps)
        assert_close(&got.to_f64_vec(), &want, 1e-6, 0.0, op);
    }
    // max/min propagate NaN (index 4)
    let mx = binary("max", "f32[6]", ta(), tb()).unwrap().to_f64_vec();
    assert_eq!(&mx[..4], &[1.5, 4.0, 0.25, 3.0]);
    assert!(mx[4].is_nan());
    let mn = binary("min", "f32[6]", ta(), tb()).unwrap().to_f64_vec();
    assert_eq!(&mn[..4], &[0.5, -2.0, -0.75, 3.0]);
    assert!(mn[4].is_nan());
    // comparisons: NaN compares false except `ne`
    let cmp = |op| {
        binary(op, "f32[6]", ta(), tb())
            .unwrap()
            .as_bool()
            .unwrap()
            .to_vec()
    };
    assert_eq!(cmp("lt"), [false, true, false, false, false, false]);
    assert_eq!(cmp("le"), [false, true, false, true, false, false]);
    assert_eq!(cmp("gt"), [true, false, true, false, false, true]);
    assert_eq!(cmp("ge"), [true, false, true, true, false, true]);
    assert_eq!(cmp("eq"), [false, false, false, true, false, false]);
    assert_eq!(cmp("ne"), [true, true, true, false, true, true]);
}

#[test]
fn integer_arithmetic_wraps_and_division_by_zero_fails() {
    let a = || Tensor::i64([4], vec![i64::MAX, -7, 6, i64::MIN]).unwrap();
    let b = || Tensor::i64([4], vec![1, 2, -4, -1]).unwrap();
    let get = |op| {
        binary(op, "i64[4]", a(), b())
            .unwrap()
            .as_i64()
            .unwrap()
            .to_vec()
    };
    assert_eq!(get("add"), [i64::MIN, -5, 2, i64::MAX]);
    assert_eq!(get("sub"), [i64::MAX - 1, -9, 10, i64::MIN + 1]);
    assert_eq!(get("mul"), [i64::MAX, -14, -24, i64::MIN]);
    assert_eq!(get("div"), [i64::MAX, -3, -1, i64::MIN]);
    assert_eq!(get("max"), [i64::MAX, 2, 6, -1]);
    let i32s = |v: Vec<i32>| Tensor::i32([2], v).unwrap();
    let e = binary("div", "i32[2]", i32s(vec![1, 2]), i32s(vec![1, 0])).unwrap_err();
    assert!(matches!(e, InterpError::DivisionByZero { node: 2 }), "{e}");
    let lt = binary("lt", "i32[2]", i32s(vec![1, 5]), i32s(vec![2, 5])).unwrap();
    assert_eq!(lt.as_bool().unwrap(), &[true, false]);
}

#[test]
fn logic_and_select() {
    let p = || Tensor::bool([4], vec![true, true, false, false]).unwrap();
    let q = || Tensor::bool([4], vec![true, false, true, false]).unwrap();
    let and = binary("and", "bool[4]", p(), q()).unwrap();
    assert_eq!(and.as_bool().unwrap(), &[true, false, false, false]);
    let or = binary("or", "bool[4]", p(), q()).unwrap();
    assert_eq!(or.as_bool().unwrap(), &[true, true, true, false]);
    let y = run1(
        "  %0: bool[4] = input{name = \"c\", kind = data}\n  %1: f32[4] = input{name = \"a\", kind = data}\n  %2: f32[4] = input{name = \"b\", kind = data}\n  %3: f32[4] = select(%0, %1, %2)\n  return y = %3",
        vec![
            ("c", q()),
            ("a", Tensor::f32([4], vec![1.0, 2.0, 3.0, 4.0]).unwrap()),
            ("b", Tensor::f32([4], vec![-1.0, -2.0, -3.0, -4.0]).unwrap()),
        ],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0, -2.0, 3.0, -4.0]);
}

#[test]
fn constants_and_iota() {
    let y = run1(
        "  %0: f32[2, 2] = constant{value = 0.1}\n  return y = %0",
        vec![],
    );
    assert_eq!(y.as_f32().unwrap(), &[0.1f32; 4]);
    let outs = common::run_body(
        "  %0: i32[2] = constant{value = -2.9}\n  %1: bool[2] = constant{value = 0.5}\n  %2: bf16[] = constant{value = 0.1}\n  %3: f32[] = constant{value = -inf}\n  return a = %0, b = %1, c = %2, d = %3",
        vec![],
    )
    .unwrap();
    assert_eq!(
        outs[0].1.as_i32().unwrap(),
        &[-2, -2],
        "truncates toward zero"
    );
    assert_eq!(outs[1].1.as_bool().unwrap(), &[true, true]);
    // bf16(0.1): 0.1 = 1.6 * 2^-4; 7 mantissa bits: 0x3DCD = 205/2048 = 0.10009765625
    assert_eq!(outs[2].1.as_f32().unwrap(), &[205.0 / 2048.0]);
    assert_eq!(outs[3].1.as_f32().unwrap(), &[f32::NEG_INFINITY]);
    let y = run1("  %0: i64[2, 3] = iota{axis = 1}\n  return y = %0", vec![]);
    assert_eq!(y.as_i64().unwrap(), &[0, 1, 2, 0, 1, 2]);
    let y = run1("  %0: f32[2, 3] = iota{axis = 0}\n  return y = %0", vec![]);
    assert_eq!(y.as_f32().unwrap(), &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
}

#[test]
fn bf16_arithmetic_rounds_to_nearest_even() {
    // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even gives 1.
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even gives 1 + 2^-6.
    // 1 + 2^-8 + 2^-12 is above the tie: rounds up to 1 + 2^-7.
    let a = Tensor::bf16([3], vec![1.0, 1.0, 1.0]).unwrap();
    let b_vals = vec![
        2f32.powi(-8),
        3.0 * 2f32.powi(-8),
        2f32.powi(-8) + 2f32.powi(-12),
    ];
    // b itself must be representable in bf16 (all three are: few significant bits)
    let b = Tensor::bf16([3], b_vals.clone()).unwrap();
    assert_eq!(b.as_f32().unwrap(), &b_vals[..]);
    let y = binary("add", "bf16[3]", a, b).unwrap();
    assert_eq!(
        y.as_f32().unwrap(),
        &[1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7)]
    );
}

#[test]
fn casts() {
    let x = Tensor::f32([6], vec![-2.7, -0.5, 0.0, 1.9, 300.0, f32::NAN]).unwrap();
    let body = |to: &str| {
        format!(
            "  %0: f32[6] = input{{name = \"x\", kind = data}}\n  %1: {to}[6] = cast(%0)\n  return y = %1"
        )
    };
    let y = run1(&body("i64"), vec![("x", x.clone())]);
    assert_eq!(
        y.as_i64().unwrap(),
        &[-2, 0, 0, 1, 300, 0],
        "toward zero, NaN -> 0"
    );
    let y = run1(&body("u8"), vec![("x", x.clone())]);
    assert_eq!(
        y.as_u8().unwrap(),
        &[0, 0, 0, 1, 255, 0],
        "saturating like Rust `as`"
    );
    let y = run1(&body("bool"), vec![("x", x.clone())]);
    assert_eq!(y.as_bool().unwrap(), &[true, true, false, true, true, true]);
    let y = run1(&body("f64"), vec![("x", x.clone())]);
    assert_eq!(y.to_f64_vec()[0], f64::from(-2.7f32), "f32 -> f64 is exact");
    // f32 -> bf16: 1 + 2^-8 (a tie) -> 1; 1 + 2^-8 + 2^-20 -> 1 + 2^-7
    let t = Tensor::f32(
        [2],
        vec![1.0 + 2f32.powi(-8), 1.0 + 2f32.powi(-8) + 2f32.powi(-20)],
    )
    .unwrap();
    let y = run1(
        "  %0: f32[2] = input{name = \"x\", kind = data}\n  %1: bf16[2] = cast(%0)\n  return y = %1",
        vec![("x", t)],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0, 1.0 + 2f32.powi(-7)]);
    // f64 -> bf16 rounds once: 1 + 2^-8 + 2^-40 is above the tie (half's from_f64 would drop
    // the 2^-40 and round down).
    let t = Tensor::f64([1], vec![1.0 + 2f64.powi(-8) + 2f64.powi(-40)]).unwrap();
    let y = run1(
        "  %0: f64[1] = input{name = \"x\", kind = data}\n  %1: bf16[1] = cast(%0)\n  return y = %1",
        vec![("x", t)],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0 + 2f32.powi(-7)]);
    // bool -> f32 gives 0/1; i64 -> u4 wraps modulo 16
    let y = run1(
        "  %0: bool[2] = input{name = \"x\", kind = data}\n  %1: f32[2] = cast(%0)\n  return y = %1",
        vec![("x", Tensor::bool([2], vec![true, false]).unwrap())],
    );
    assert_eq!(y.as_f32().unwrap(), &[1.0, 0.0]);
    let y = run1(
        "  %0: i64[3] = input{name = \"x\", kind = data}\n  %1: u4[3] = cast(%0)\n  return y = %1",
        vec![("x", Tensor::i64([3], vec![3, 17, -1]).unwrap())],
    );
    assert_eq!(y.as_u4().unwrap(), &[3, 1, 15]);
}

#[test]
fn f64_tensors_compute_in_f64_and_stop_grad_is_identity() {
    let x: Vec<f64> = ramp(6, 2.0).into_iter().map(f64::from).collect();
    let y = run1(
        "  %0: f64[6] = input{name = \"x\", kind = data}\n  %1: f64[6] = exp(%0)\n  %2: f64[6] = stop_grad(%1)\n  return y = %2",
        vec![("x", Tensor::f64([6], x.clone()).unwrap())],
    );
    let want: Vec<f64> = x.iter().map(|v| v.exp()).collect();
    assert_close(
        &y.to_f64_vec(),
        &want,
        0.0,
        0.0,
        "f64 exp is f64::exp exactly",
    );
}
