//! A small builder for MLIR's text form: fresh SSA names, hoisted constants, indentation,
//! and index arithmetic that folds what is known at compile time.
//!
//! Kernels are written as MLIR text and parsed by melior (`Module::parse`), which keeps the
//! emitters close to what `graft ir --emit=mlir` prints. Every value is named `%vN`;
//! constants live at the top of the function body so that they dominate every region.

use graft_ir::DType;
use std::collections::HashMap;
use std::fmt::Write as _;

/// An index value: a compile-time constant or an SSA value of type `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Ix {
    /// A constant.
    C(usize),
    /// An SSA name (`%v12`).
    V(String),
}

/// The body of one `func.func`: hoisted constants, then the statements.
#[derive(Debug, Default)]
pub(crate) struct Body {
    consts: String,
    const_cache: HashMap<String, String>,
    text: String,
    indent: usize,
    next: usize,
}

impl Body {
    /// An empty body.
    pub fn new() -> Self {
        Body {
            indent: 2,
            ..Body::default()
        }
    }

    /// A fresh SSA name.
    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    /// Appends one statement at the current indentation.
    pub fn line(&mut self, s: impl AsRef<str>) {
        for _ in 0..self.indent {
            self.text.push_str("  ");
        }
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// Appends `%vN = rhs` and returns `%vN`.
    pub fn op(&mut self, rhs: impl AsRef<str>) -> String {
        let v = self.fresh();
        self.line(format!("{v} = {}", rhs.as_ref()));
        v
    }

    /// Opens a region: the line (ending in `{`), then one more level of indentation.
    pub fn open(&mut self, s: impl AsRef<str>) {
        self.line(s);
        self.indent += 1;
    }

    /// Closes a region with `s` (`}` or `} else {`); `reopen` keeps the indentation for an
    /// `else` region.
    pub fn close(&mut self, s: &str, reopen: bool) {
        self.indent = self.indent.saturating_sub(1);
        self.line(s);
        if reopen {
            self.indent += 1;
        }
    }

    /// A constant of MLIR type `ty` written as `lit`, hoisted to the function entry and
    /// shared by every use.
    pub fn konst(&mut self, lit: &str, ty: &str) -> String {
        let key = format!("{lit} : {ty}");
        if let Some(v) = self.const_cache.get(&key) {
            return v.clone();
        }
        let v = self.fresh();
        let _ = writeln!(self.consts, "    {v} = arith.constant {key}");
        self.const_cache.insert(key, v.clone());
        v
    }

    /// An `index` constant.
    pub fn idx(&mut self, n: usize) -> String {
        self.konst(&n.to_string(), "index")
    }

    /// An integer constant of type `ty` (`i64`, `i32`, `i8`, `i1`).
    pub fn int(&mut self, n: i64, ty: &str) -> String {
        if ty == "i1" {
            return self.konst(if n != 0 { "1" } else { "0" }, "i1");
        }
        self.konst(&n.to_string(), ty)
    }

    /// An `f32` constant with exactly these bits.
    pub fn f32c(&mut self, x: f32) -> String {
        self.konst(&format!("0x{:08X}", x.to_bits()), "f32")
    }

    /// An `f64` constant with exactly these bits.
    pub fn f64c(&mut self, x: f64) -> String {
        self.konst(&format!("0x{:016X}", x.to_bits()), "f64")
    }

    /// A float constant of register type `ty` (`f32` or `f64`).
    pub fn fc(&mut self, x: f64, ty: &str) -> String {
        if ty == "f64" {
            self.f64c(x)
        } else {
            self.f32c(x as f32)
        }
    }

    /// The SSA name of an index value (materializing a constant).
    pub fn ix(&mut self, i: &Ix) -> String {
        match i {
            Ix::C(n) => self.idx(*n),
            Ix::V(v) => v.clone(),
        }
    }

    /// `a + b`.
    pub fn ix_add(&mut self, a: &Ix, b: &Ix) -> Ix {
        match (a, b) {
            (Ix::C(x), Ix::C(y)) => Ix::C(x + y),
            (x, Ix::C(0)) | (Ix::C(0), x) => x.clone(),
            _ => {
                let (x, y) = (self.ix(a), self.ix(b));
                Ix::V(self.op(format!("arith.addi {x}, {y} : index")))
            }
        }
    }

    /// `a · c`.
    pub fn ix_mul(&mut self, a: &Ix, c: usize) -> Ix {
        match a {
            Ix::C(x) => Ix::C(x * c),
            _ if c == 0 => Ix::C(0),
            _ if c == 1 => a.clone(),
            Ix::V(v) => {
                let k = self.idx(c);
                Ix::V(self.op(format!("arith.muli {v}, {k} : index")))
            }
        }
    }

    /// `a / c` (unsigned, `c > 0`).
    pub fn ix_div(&mut self, a: &Ix, c: usize) -> Ix {
        match a {
            Ix::C(x) => Ix::C(x / c.max(1)),
            _ if c <= 1 => a.clone(),
            Ix::V(v) => {
                let k = self.idx(c);
                Ix::V(self.op(format!("arith.divui {v}, {k} : index")))
            }
        }
    }

    /// `a mod c` (unsigned, `c > 0`).
    pub fn ix_rem(&mut self, a: &Ix, c: usize) -> Ix {
        match a {
            Ix::C(x) => Ix::C(x % c.max(1)),
            _ if c <= 1 => Ix::C(0),
            Ix::V(v) => {
                let k = self.idx(c);
                Ix::V(self.op(format!("arith.remui {v}, {k} : index")))
            }
        }
    }

    /// The row-major flat index of `idx` in `shape`.
    pub fn linearize(&mut self, idx: &[Ix], shape: &[usize]) -> Ix {
        let mut flat = Ix::C(0);
        let mut stride = 1usize;
        for (i, &d) in idx.iter().zip(shape).rev() {
            let t = self.ix_mul(i, stride);
            flat = self.ix_add(&flat, &t);
            stride *= d;
        }
        flat
    }

    /// The multi-index of row-major flat index `flat` in `shape`.
    pub fn delinearize(&mut self, flat: &Ix, shape: &[usize]) -> Vec<Ix> {
        let mut out = vec![Ix::C(0); shape.len()];
        let mut rest = flat.clone();
        for (k, &d) in shape.iter().enumerate().rev() {
            if d == 1 {
                continue;
            }
            let inner: usize = shape[..k].iter().filter(|&&e| e != 1).count();
            if inner == 0 {
                out[k] = rest.clone();
                break;
            }
            out[k] = self.ix_rem(&rest, d);
            rest = self.ix_div(&rest, d);
        }
        out
    }

    /// Casts an index to `i64`.
    pub fn ix_to_i64(&mut self, i: &Ix) -> String {
        match i {
            Ix::C(n) => self.int(*n as i64, "i64"),
            Ix::V(v) => self.op(format!("arith.index_cast {v} : index to i64")),
        }
    }

    /// The function body: hoisted constants, then the statements.
    pub fn finish(self) -> String {
        let mut s = self.consts;
        s.push_str(&self.text);
        s
    }
}

/// The MLIR element type a dtype is stored as: `bf16`/`f16` are kept as `f32` holding values
/// exactly representable in the type (like the interpreter), `u8`/`u4`/`bool` as bytes.
pub(crate) fn mem_elem(dt: DType) -> &'static str {
    match dt {
        DType::F32 | DType::BF16 | DType::F16 => "f32",
        DType::F64 => "f64",
        DType::I64 => "i64",
        DType::I32 => "i32",
        DType::U8 | DType::U4 | DType::Bool => "i8",
    }
}

/// The MLIR type of one element in registers: the storage type, except `i1` for `bool`.
pub(crate) fn reg_ty(dt: DType) -> &'static str {
    match dt {
        DType::Bool => "i1",
        other => mem_elem(other),
    }
}

/// `memref<2x3xf32>` (or `memref<f32>` for a scalar) for a shape and storage type.
///
/// An extent of 0 is written as 1: MLIR's bare-pointer convention rejects empty memrefs, and
/// an empty buffer is never indexed (every loop or branch over it runs zero times).
pub(crate) fn memref_ty(shape: &[usize], elem: &str) -> String {
    let mut s = String::from("memref<");
    for d in shape {
        let _ = write!(s, "{}x", d.max(&1));
    }
    s.push_str(elem);
    s.push('>');
    s
}

/// Formats a float so that MLIR's lexer reads it back exactly (`1.0`, `-2.5e-7`).
pub(crate) fn float_lit(x: f32) -> String {
    let s = format!("{x:?}");
    if s.contains('.') || !s.chars().any(|c| c.is_ascii_digit()) {
        return s;
    }
    match s.find('e') {
        Some(at) => format!("{}.0{}", &s[..at], &s[at..]),
        None => format!("{s}.0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_arithmetic_folds_constants() {
        let mut b = Body::new();
        let x = b.ix_add(&Ix::C(2), &Ix::C(3));
        assert_eq!(x, Ix::C(5));
        let v = Ix::V("%i".into());
        assert_eq!(b.ix_mul(&v, 1), v);
        assert_eq!(b.ix_mul(&v, 0), Ix::C(0));
        assert_eq!(b.linearize(&[Ix::C(1), Ix::C(2)], &[3, 4]), Ix::C(6));
        assert_eq!(b.delinearize(&Ix::C(7), &[2, 4]), vec![Ix::C(1), Ix::C(3)]);
        let d = b.delinearize(&v, &[1, 5]);
        assert_eq!(d, vec![Ix::C(0), v.clone()]);
    }

    #[test]
    fn constants_are_hoisted_and_shared() {
        let mut b = Body::new();
        let a = b.f32c(1.0);
        let c = b.f32c(1.0);
        assert_eq!(a, c);
        b.line("return");
        let s = b.finish();
        assert!(s.contains("arith.constant 0x3F800000 : f32"), "{s}");
        assert_eq!(s.matches("arith.constant").count(), 1);
    }

    #[test]
    fn float_literals_always_have_a_point() {
        assert_eq!(float_lit(1.0), "1.0");
        assert_eq!(float_lit(-0.5), "-0.5");
        assert_eq!(float_lit(1e-7), "1.0e-7");
        assert_eq!(memref_ty(&[], "f32"), "memref<f32>");
        assert_eq!(memref_ty(&[2, 3], "i8"), "memref<2x3xi8>");
    }
}
