//! One element of each elementwise op, as MLIR `arith`/`math` operations, with the
//! interpreter's exact semantics (see `graft_interp`'s crate docs): float ops in `f32` (or
//! `f64` for `f64`), each result rounded to the node dtype; integer arithmetic wrapping;
//! casts saturating like Rust's `as`; NaN-propagating `max`/`min`.
//!
//! Values are SSA names of their register type ([`crate::text::reg_ty`]). Functions return
//! `Err(message)` for op/dtype combinations the interpreter does not define.

use crate::text::{Body, reg_ty};
use graft_ir::{BinaryOp, DType, UnaryOp};

/// True for dtypes stored as `f32` (`f32`, `bf16`, `f16`).
pub(crate) fn is_f32_storage(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::BF16 | DType::F16)
}

/// Rounds an `f32` value to `dt` (`bf16`/`f16` round to nearest even; identity otherwise).
pub(crate) fn round_f32(b: &mut Body, dt: DType, x: &str) -> String {
    match dt {
        DType::BF16 => {
            // half's rule: NaN keeps its sign and becomes quiet; otherwise add 0x7fff plus
            // the lowest kept bit and truncate (round to nearest even, overflow to inf).
            let bits = b.op(format!("arith.bitcast {x} : f32 to i32"));
            let c16 = b.int(16, "i32");
            let one = b.int(1, "i32");
            let half = b.int(0x7fff, "i32");
            let mask = b.int(0xffff_0000u32 as i32 as i64, "i32");
            let quiet = b.int(0x0040_0000, "i32");
            let hi = b.op(format!("arith.shrui {bits}, {c16} : i32"));
            let lsb = b.op(format!("arith.andi {hi}, {one} : i32"));
            let inc = b.op(format!("arith.addi {half}, {lsb} : i32"));
            let sum = b.op(format!("arith.addi {bits}, {inc} : i32"));
            let r = b.op(format!("arith.andi {sum}, {mask} : i32"));
            let q = b.op(format!("arith.ori {bits}, {quiet} : i32"));
            let qn = b.op(format!("arith.andi {q}, {mask} : i32"));
            let nan = b.op(format!("arith.cmpf uno, {x}, {x} : f32"));
            let sel = b.op(format!("arith.select {nan}, {qn}, {r} : i32"));
            b.op(format!("arith.bitcast {sel} : i32 to f32"))
        }
        DType::F16 => {
            let h = b.op(format!("arith.truncf {x} : f32 to f16"));
            b.op(format!("arith.extf {h} : f16 to f32"))
        }
        _ => x.to_string(),
    }
}

/// Rounds an `f64` once to `dt` and returns it in `dt`'s register type. For `bf16`/`f16` the
/// value goes through `f32` rounded to odd (no double rounding), as the interpreter does.
pub(crate) fn round_f64(b: &mut Body, dt: DType, x: &str) -> String {
    match dt {
        DType::F64 => x.to_string(),
        DType::BF16 | DType::F16 => {
            let r = b.op(format!("arith.truncf {x} : f64 to f32"));
            let back = b.op(format!("arith.extf {r} : f32 to f64"));
            let exact = b.op(format!("arith.cmpf ueq, {back}, {x} : f64"));
            let ab = b.op(format!("math.absf {back} : f64"));
            let ax = b.op(format!("math.absf {x} : f64"));
            let above = b.op(format!("arith.cmpf ogt, {ab}, {ax} : f64"));
            let bits = b.op(format!("arith.bitcast {r} : f32 to i32"));
            let one = b.int(1, "i32");
            let down = b.op(format!("arith.subi {bits}, {one} : i32"));
            let t = b.op(format!("arith.select {above}, {down}, {bits} : i32"));
            let odd = b.op(format!("arith.ori {t}, {one} : i32"));
            let oddf = b.op(format!("arith.bitcast {odd} : i32 to f32"));
            let r = b.op(format!("arith.select {exact}, {r}, {oddf} : f32"));
            round_f32(b, dt, &r)
        }
        _ => b.op(format!("arith.truncf {x} : f64 to f32")),
    }
}

/// Widens a float register value to `f64` (exact).
pub(crate) fn to_f64(b: &mut Body, dt: DType, x: &str) -> String {
    if dt == DType::F64 {
        x.to_string()
    } else {
        b.op(format!("arith.extf {x} : f32 to f64"))
    }
}

/// True for the integer dtypes the interpreter treats as unsigned codes.
fn unsigned(dt: DType) -> bool {
    matches!(dt, DType::U8 | DType::U4 | DType::Bool)
}

/// `eˣ` for an `f32` `x` in arithmetic only (no libm call), so that LLVM vectorizes the loops
/// it is in: Cephes' `expf` (range reduction `x = n·ln 2 + r` with ln 2 split in two,
/// a degree-5 polynomial on `|r| ≤ ln 2 / 2`, scaling by `2ⁿ` in two halves so that the
/// subnormal range is right). Within 2 ulp of a correctly rounded `expf` (the tests check
/// 1e-6 relative); NaN stays NaN, `exp(+inf) = inf`, `exp(-inf) = 0`.
pub(crate) fn exp_f32(b: &mut Body, x: &str) -> String {
    let c = |b: &mut Body, v: f64| b.fc(v, "f32");
    let (lo, hi) = (c(b, -104.0), c(b, 89.0));
    let xc = b.op(format!("arith.maximumf {x}, {lo} : f32"));
    let xc = b.op(format!("arith.minimumf {xc}, {hi} : f32"));
    let log2e = c(b, std::f64::consts::LOG2_E);
    let t = b.op(format!("arith.mulf {xc}, {log2e} : f32"));
    let n = b.op(format!("math.roundeven {t} : f32"));
    let (c1, c2) = (c(b, -0.693_359_375), c(b, 2.121_944_4e-4));
    let r = b.op(format!("math.fma {n}, {c1}, {xc} : f32"));
    let r = b.op(format!("math.fma {n}, {c2}, {r} : f32"));
    let coeffs = [
        1.987_569_15e-4,
        1.398_199_950_7e-3,
        8.333_451_907_3e-3,
        4.166_579_589_4e-2,
        1.666_666_545_9e-1,
        5.000_000_120_1e-1,
    ];
    let mut p = c(b, coeffs[0]);
    for &k in &coeffs[1..] {
        let k = c(b, k);
        p = b.op(format!("math.fma {p}, {r}, {k} : f32"));
    }
    let r2 = b.op(format!("arith.mulf {r}, {r} : f32"));
    let one = c(b, 1.0);
    let y = b.op(format!("math.fma {p}, {r2}, {r} : f32"));
    let y = b.op(format!("arith.addf {y}, {one} : f32"));
    // 2ⁿ = 2^⌊n/2⌋ · 2^(n - ⌊n/2⌋), each a normal number for n in [-150, 129].
    let ni = b.op(format!("arith.fptosi {n} : f32 to i32"));
    let one_i = b.int(1, "i32");
    let n1 = b.op(format!("arith.shrsi {ni}, {one_i} : i32"));
    let n2 = b.op(format!("arith.subi {ni}, {n1} : i32"));
    let (bias, shift) = (b.int(127, "i32"), b.int(23, "i32"));
    let mut scaled = y;
    for half in [n1, n2] {
        let e = b.op(format!("arith.addi {half}, {bias} : i32"));
        let e = b.op(format!("arith.shli {e}, {shift} : i32"));
        let s = b.op(format!("arith.bitcast {e} : i32 to f32"));
        scaled = b.op(format!("arith.mulf {scaled}, {s} : f32"));
    }
    let nan = b.op(format!("arith.cmpf uno, {x}, {x} : f32"));
    b.op(format!("arith.select {nan}, {x}, {scaled} : f32"))
}

/// [`exp_f32`] flushing results below `2⁻¹²⁵` (`x < -86.5`) to zero, for `exp(x - max)` in
/// softmax: no operation of it ever produces a subnormal number. x86 cores handle subnormal
/// results with a microcode assist (~100 cycles per instruction), and attention's causal
/// mask (`-1e30` logits) sends half of every score row there: the masked softmax ran 4×
/// slower. A value under `2⁻¹²⁵` that is added to a sum ≥ 1 (the max's own term) and divided
/// by it changes no output by more than `2⁻¹²⁵`.
pub(crate) fn exp_f32_flushed(b: &mut Body, x: &str) -> String {
    let lo = b.fc(-86.5, "f32");
    let xc = b.op(format!("arith.maximumf {x}, {lo} : f32"));
    let e = exp_f32(b, &xc);
    let under = b.op(format!("arith.cmpf olt, {x}, {lo} : f32"));
    let zero = b.fc(0.0, "f32");
    b.op(format!("arith.select {under}, {zero}, {e} : f32"))
}

/// `eˣ` of a register of type `t`: [`exp_f32`] for `f32`, `math.exp` (libm) for `f64`.
fn exp(b: &mut Body, x: &str, t: &str) -> String {
    if t == "f32" {
        exp_f32(b, x)
    } else {
        b.op(format!("math.exp {x} : {t}"))
    }
}

/// An elementwise unary op on one element of dtype `dt`.
pub(crate) fn unary(b: &mut Body, u: UnaryOp, dt: DType, x: &str) -> Result<String, String> {
    let undefined = || Err(format!("`{}` is not defined on {dt}", u.name()));
    if dt.is_float() {
        let t = reg_ty(dt);
        let one = b.fc(1.0, t);
        let r = match u {
            UnaryOp::Neg => b.op(format!("arith.negf {x} : {t}")),
            UnaryOp::Exp => exp(b, x, t),
            UnaryOp::Log => b.op(format!("math.log {x} : {t}")),
            UnaryOp::Sqrt => b.op(format!("math.sqrt {x} : {t}")),
            UnaryOp::Rsqrt => {
                let s = b.op(format!("math.sqrt {x} : {t}"));
                b.op(format!("arith.divf {one}, {s} : {t}"))
            }
            UnaryOp::Sin => b.op(format!("math.sin {x} : {t}")),
            UnaryOp::Cos => b.op(format!("math.cos {x} : {t}")),
            UnaryOp::Tanh => b.op(format!("math.tanh {x} : {t}")),
            UnaryOp::Sigmoid | UnaryOp::Silu => {
                let n = b.op(format!("arith.negf {x} : {t}"));
                let e = exp(b, &n, t);
                let d = b.op(format!("arith.addf {one}, {e} : {t}"));
                let num = if u == UnaryOp::Silu {
                    x.to_string()
                } else {
                    one
                };
                b.op(format!("arith.divf {num}, {d} : {t}"))
            }
            UnaryOp::Relu => {
                let zero = b.fc(0.0, t);
                let neg = b.op(format!("arith.cmpf olt, {x}, {zero} : {t}"));
                b.op(format!("arith.select {neg}, {zero}, {x} : {t}"))
            }
            UnaryOp::Abs => b.op(format!("math.absf {x} : {t}")),
            UnaryOp::Recip => b.op(format!("arith.divf {one}, {x} : {t}")),
            // Lowered to libm's erff/erf (convert-math-to-libm).
            UnaryOp::Erf => b.op(format!("math.erf {x} : {t}")),
            UnaryOp::Not => return undefined(),
        };
        return Ok(round_f32(b, dt, &r));
    }
    let t = reg_ty(dt);
    match (u, dt) {
        (UnaryOp::Neg | UnaryOp::Abs, DType::I64 | DType::I32) => {
            let zero = b.int(0, t);
            let n = b.op(format!("arith.subi {zero}, {x} : {t}"));
            if u == UnaryOp::Neg {
                return Ok(n);
            }
            let lt = b.op(format!("arith.cmpi slt, {x}, {zero} : {t}"));
            Ok(b.op(format!("arith.select {lt}, {n}, {x} : {t}")))
        }
        (UnaryOp::Abs, DType::U8 | DType::U4) => Ok(x.to_string()),
        (UnaryOp::Not, DType::Bool) => {
            let tru = b.int(1, "i1");
            Ok(b.op(format!("arith.xori {x}, {tru} : i1")))
        }
        _ => undefined(),
    }
}

/// An elementwise binary op on two elements of dtype `dt`. `div_err` receives the condition
/// under which an integer division by zero happened (the divisor is replaced by 1).
pub(crate) fn binary(
    b: &mut Body,
    op: BinaryOp,
    dt: DType,
    x: &str,
    y: &str,
    div_err: &mut Option<String>,
) -> Result<String, String> {
    let t = reg_ty(dt);
    let undefined = || Err(format!("`{}` is not defined on {dt}", op.name()));
    if op.is_comparison() {
        let pred = |f: &str, s: &str, u: &str| -> String {
            if dt.is_float() {
                f.to_string()
            } else if unsigned(dt) {
                u.to_string()
            } else {
                s.to_string()
            }
        };
        let p = match op {
            BinaryOp::Eq => pred("oeq", "eq", "eq"),
            BinaryOp::Ne => pred("une", "ne", "ne"),
            BinaryOp::Lt => pred("olt", "slt", "ult"),
            BinaryOp::Le => pred("ole", "sle", "ule"),
            BinaryOp::Gt => pred("ogt", "sgt", "ugt"),
            _ => pred("oge", "sge", "uge"),
        };
        let kind = if dt.is_float() { "cmpf" } else { "cmpi" };
        return Ok(b.op(format!("arith.{kind} {p}, {x}, {y} : {t}")));
    }
    if dt.is_float() {
        let r = match op {
            BinaryOp::Add => b.op(format!("arith.addf {x}, {y} : {t}")),
            BinaryOp::Sub => b.op(format!("arith.subf {x}, {y} : {t}")),
            BinaryOp::Mul => b.op(format!("arith.mulf {x}, {y} : {t}")),
            BinaryOp::Div => b.op(format!("arith.divf {x}, {y} : {t}")),
            BinaryOp::Pow => b.op(format!("math.powf {x}, {y} : {t}")),
            BinaryOp::Max | BinaryOp::Min => {
                // NaN if either is NaN; else the larger (smaller), `x` on ties.
                let p = if op == BinaryOp::Max { "ogt" } else { "olt" };
                let better = b.op(format!("arith.cmpf {p}, {y}, {x} : {t}"));
                let r = b.op(format!("arith.select {better}, {y}, {x} : {t}"));
                let nan = b.op(format!("arith.cmpf uno, {x}, {y} : {t}"));
                let qnan = b.fc(f64::NAN, t);
                b.op(format!("arith.select {nan}, {qnan}, {r} : {t}"))
            }
            _ => return undefined(),
        };
        return Ok(round_f32(b, dt, &r));
    }
    match dt {
        DType::Bool => match op {
            BinaryOp::And | BinaryOp::Min => Ok(b.op(format!("arith.andi {x}, {y} : i1"))),
            BinaryOp::Or | BinaryOp::Max => Ok(b.op(format!("arith.ori {x}, {y} : i1"))),
            _ => undefined(),
        },
        DType::U8 | DType::U4 => match op {
            BinaryOp::Max => Ok(b.op(format!("arith.maxui {x}, {y} : {t}"))),
            BinaryOp::Min => Ok(b.op(format!("arith.minui {x}, {y} : {t}"))),
            _ => undefined(),
        },
        _ => match op {
            BinaryOp::Add => Ok(b.op(format!("arith.addi {x}, {y} : {t}"))),
            BinaryOp::Sub => Ok(b.op(format!("arith.subi {x}, {y} : {t}"))),
            BinaryOp::Mul => Ok(b.op(format!("arith.muli {x}, {y} : {t}"))),
            BinaryOp::Max => Ok(b.op(format!("arith.maxsi {x}, {y} : {t}"))),
            BinaryOp::Min => Ok(b.op(format!("arith.minsi {x}, {y} : {t}"))),
            BinaryOp::Div => {
                // Truncating division; `MIN / -1` wraps (computed as `0 - x`); a zero divisor
                // is reported and replaced by 1 (LLVM's sdiv is undefined on both).
                let zero = b.int(0, t);
                let one = b.int(1, t);
                let m1 = b.int(-1, t);
                let is0 = b.op(format!("arith.cmpi eq, {y}, {zero} : {t}"));
                let ism1 = b.op(format!("arith.cmpi eq, {y}, {m1} : {t}"));
                let bad = b.op(format!("arith.ori {is0}, {ism1} : i1"));
                let safe = b.op(format!("arith.select {bad}, {one}, {y} : {t}"));
                let q = b.op(format!("arith.divsi {x}, {safe} : {t}"));
                let neg = b.op(format!("arith.subi {zero}, {x} : {t}"));
                let r = b.op(format!("arith.select {ism1}, {neg}, {q} : {t}"));
                *div_err = Some(match div_err.take() {
                    Some(prev) => b.op(format!("arith.ori {prev}, {is0} : i1")),
                    None => is0,
                });
                Ok(r)
            }
            _ => undefined(),
        },
    }
}

/// The saturating float-to-integer conversion of Rust's `as` (NaN gives 0), from `f64`.
fn f64_to_int(b: &mut Body, x: &str, to: DType) -> String {
    let t = reg_ty(to);
    match to {
        DType::I64 => {
            let hi = b.f64c(9_223_372_036_854_775_808.0);
            let lo = b.f64c(-9_223_372_036_854_775_808.0);
            let zero = b.f64c(0.0);
            let nan = b.op(format!("arith.cmpf uno, {x}, {x} : f64"));
            let big = b.op(format!("arith.cmpf oge, {x}, {hi} : f64"));
            let small = b.op(format!("arith.cmpf olt, {x}, {lo} : f64"));
            let c1 = b.op(format!("arith.select {big}, {zero}, {x} : f64"));
            let c2 = b.op(format!("arith.select {small}, {zero}, {c1} : f64"));
            let c3 = b.op(format!("arith.select {nan}, {zero}, {c2} : f64"));
            let v = b.op(format!("arith.fptosi {c3} : f64 to i64"));
            let max = b.int(i64::MAX, "i64");
            let min = b.int(i64::MIN, "i64");
            let v = b.op(format!("arith.select {big}, {max}, {v} : i64"));
            b.op(format!("arith.select {small}, {min}, {v} : i64"))
        }
        _ => {
            let (lo, hi) = match to {
                DType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
                DType::U4 => (0.0, 15.0),
                _ => (0.0, 255.0),
            };
            let (lo, hi) = (b.f64c(lo), b.f64c(hi));
            let zero = b.f64c(0.0);
            let c1 = b.op(format!("arith.maximumf {x}, {lo} : f64"));
            let c2 = b.op(format!("arith.minimumf {c1}, {hi} : f64"));
            let nan = b.op(format!("arith.cmpf uno, {x}, {x} : f64"));
            let c3 = b.op(format!("arith.select {nan}, {zero}, {c2} : f64"));
            let v = b.op(format!("arith.fptosi {c3} : f64 to i32"));
            if t == "i32" {
                v
            } else {
                b.op(format!("arith.trunci {v} : i32 to {t}"))
            }
        }
    }
}

/// Widens an integer (or bool) register value to `i64`: signed for `i32`, zero-extended for
/// the unsigned codes and bool.
fn int_to_i64(b: &mut Body, from: DType, x: &str) -> String {
    match from {
        DType::I64 => x.to_string(),
        DType::I32 => b.op(format!("arith.extsi {x} : i32 to i64")),
        _ => b.op(format!("arith.extui {x} : {} to i64", reg_ty(from))),
    }
}

/// Converts an `i64` to dtype `to` the way the interpreter builds values from integers
/// (`Num::I`): floats convert (bf16/f16 through f64), integers wrap, `u4` keeps the low four
/// bits, bool is `!= 0`.
pub(crate) fn from_i64(b: &mut Body, to: DType, x: &str) -> String {
    match to {
        DType::F64 => b.op(format!("arith.sitofp {x} : i64 to f64")),
        DType::F32 => b.op(format!("arith.sitofp {x} : i64 to f32")),
        DType::BF16 | DType::F16 => {
            let d = b.op(format!("arith.sitofp {x} : i64 to f64"));
            round_f64(b, to, &d)
        }
        DType::I64 => x.to_string(),
        DType::I32 => b.op(format!("arith.trunci {x} : i64 to i32")),
        DType::U8 => b.op(format!("arith.trunci {x} : i64 to i8")),
        DType::U4 => {
            let t = b.op(format!("arith.trunci {x} : i64 to i8"));
            let m = b.int(15, "i8");
            b.op(format!("arith.andi {t}, {m} : i8"))
        }
        DType::Bool => {
            let z = b.int(0, "i64");
            b.op(format!("arith.cmpi ne, {x}, {z} : i64"))
        }
    }
}

/// Converts an `f64` to dtype `to` the way the interpreter builds values from floats
/// (`Num::F`): floats round once, integers saturate, bool is `!= 0` (NaN gives true).
pub(crate) fn from_f64(b: &mut Body, to: DType, x: &str) -> String {
    match to {
        DType::Bool => {
            let z = b.f64c(0.0);
            b.op(format!("arith.cmpf une, {x}, {z} : f64"))
        }
        t if t.is_float() => round_f64(b, t, x),
        t => f64_to_int(b, x, t),
    }
}

/// `cast` of one element from `from` to `to`.
pub(crate) fn cast(b: &mut Body, from: DType, to: DType, x: &str) -> String {
    if from == to {
        return x.to_string();
    }
    if from.is_float() {
        if is_f32_storage(from) && is_f32_storage(to) {
            // bf16/f16 values are exact in f32; to bf16/f16 rounds once.
            return round_f32(b, to, x);
        }
        if is_f32_storage(from) && to == DType::Bool {
            let z = b.f32c(0.0);
            return b.op(format!("arith.cmpf une, {x}, {z} : f32"));
        }
        let d = to_f64(b, from, x);
        return from_f64(b, to, &d);
    }
    if from == DType::I64 || from == DType::I32 || from == DType::Bool || unsigned(from) {
        if to == DType::F32 && from != DType::I64 {
            // i32/u8/bool → f32 is exact through any route; use the narrow one.
            let op = if from == DType::I32 {
                "sitofp"
            } else {
                "uitofp"
            };
            return b.op(format!("arith.{op} {x} : {} to f32", reg_ty(from)));
        }
        let w = int_to_i64(b, from, x);
        return from_i64(b, to, &w);
    }
    x.to_string()
}

/// The splitmix64 finalizer on an `i64` register value (wrapping arithmetic).
pub(crate) fn splitmix64(b: &mut Body, x: &str) -> String {
    let gamma = b.int(0x9E37_79B9_7F4A_7C15u64 as i64, "i64");
    let m1 = b.int(0xBF58_476D_1CE4_E5B9u64 as i64, "i64");
    let m2 = b.int(0x94D0_49BB_1331_11EBu64 as i64, "i64");
    let (s30, s27, s31) = (b.int(30, "i64"), b.int(27, "i64"), b.int(31, "i64"));
    let z = b.op(format!("arith.addi {x}, {gamma} : i64"));
    let t = b.op(format!("arith.shrui {z}, {s30} : i64"));
    let z = b.op(format!("arith.xori {z}, {t} : i64"));
    let z = b.op(format!("arith.muli {z}, {m1} : i64"));
    let t = b.op(format!("arith.shrui {z}, {s27} : i64"));
    let z = b.op(format!("arith.xori {z}, {t} : i64"));
    let z = b.op(format!("arith.muli {z}, {m2} : i64"));
    let t = b.op(format!("arith.shrui {z}, {s31} : i64"));
    b.op(format!("arith.xori {z}, {t} : i64"))
}

/// Element `i`'s random bits for a key: `splitmix64(key ^ i · 0xD2B74407B1CE6E93)`.
pub(crate) fn bits_at(b: &mut Body, key: &str, i: &str) -> String {
    let m = b.int(0xD2B7_4407_B1CE_6E93u64 as i64, "i64");
    let p = b.op(format!("arith.muli {i}, {m} : i64"));
    let x = b.op(format!("arith.xori {key}, {p} : i64"));
    splitmix64(b, &x)
}

/// The top 53 bits as an `f64` in `[0, 1)`.
pub(crate) fn unit(b: &mut Body, bits: &str) -> String {
    let s = b.int(11, "i64");
    let top = b.op(format!("arith.shrui {bits}, {s} : i64"));
    let f = b.op(format!("arith.uitofp {top} : i64 to f64"));
    let scale = b.f64c(1.0 / (1u64 << 53) as f64);
    b.op(format!("arith.mulf {f}, {scale} : f64"))
}

/// The key of one random tensor for a runtime `seed` and a compile-time `stream`.
pub(crate) fn stream_key(b: &mut Body, seed: &str, stream: u64) -> String {
    let s = b.int(graft_interp::splitmix64(stream) as i64, "i64");
    let x = b.op(format!("arith.xori {seed}, {s} : i64"));
    splitmix64(b, &x)
}
