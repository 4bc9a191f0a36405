//! Fused expressions: the value of one element of a node, computed from materialized buffers
//! through the chain of inlined producers (elementwise ops, broadcasts, transposes, slices,
//! concatenations, gathers, casts, random draws, dropout and dequantization).
//!
//! [`KernelCx::eval`] takes a node and an index into its shape and returns the element as an
//! SSA value of the node's register type. Layout ops are index maps (a broadcast drops the
//! leading axes and zeroes extent-1 axes, a transpose permutes, a slice offsets), so a whole
//! chain becomes loads with remapped indices and no intermediate buffer. Values are memoized
//! per (node, index) within a region, so a producer read twice at one index is computed once.

use crate::CodegenError;
use crate::scalar;
use crate::text::{Body, Ix, mem_elem, memref_ty, reg_ty};
use graft_ir::{DType, Distribution, Function, Op, ValueId};
use std::collections::HashMap;

use graft_exec::{ERR_DIV_ZERO, ERR_GATHER};

/// Module-level constant tables a kernel needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Table {
    /// The 16 NF4 code values.
    Nf4,
    /// The 256 int8 code values, (c − 128) / 127.
    Int8,
    /// bitsandbytes' 256-entry signed dynamic code (nested absmax).
    Dynamic,
}

impl Table {
    /// The global's symbol and type.
    pub fn symbol(self) -> (&'static str, &'static str) {
        match self {
            Table::Nf4 => ("@graft_nf4_code", "memref<16xf32>"),
            Table::Int8 => ("@graft_int8_code", "memref<256xf32>"),
            Table::Dynamic => ("@graft_dynamic_code", "memref<256xf32>"),
        }
    }
}

/// The state of one kernel being emitted.
pub(crate) struct KernelCx<'a> {
    /// The function.
    pub f: &'a Function,
    /// `inline[v]`: node `v` is computed inside its consumers instead of read from a buffer.
    pub inline: &'a [bool],
    /// The body being written.
    pub b: Body,
    /// The buffers read, in argument order.
    pub args: Vec<ValueId>,
    arg_names: HashMap<ValueId, String>,
    arg_types: HashMap<ValueId, String>,
    memo: Vec<HashMap<(ValueId, Vec<Ix>), String>>,
    /// True when the kernel can report an error through its status buffer.
    pub may_fail: bool,
    /// Constant tables used.
    pub tables: Vec<Table>,
}

impl<'a> KernelCx<'a> {
    /// A kernel context for `f`.
    pub fn new(f: &'a Function, inline: &'a [bool]) -> Self {
        KernelCx {
            f,
            inline,
            b: Body::new(),
            args: Vec::new(),
            arg_names: HashMap::new(),
            arg_types: HashMap::new(),
            memo: vec![HashMap::new()],
            may_fail: false,
            tables: Vec::new(),
        }
    }

    /// The argument name of a materialized buffer, registering it on first use.
    pub fn arg(&mut self, v: ValueId) -> String {
        if let Some(a) = self.arg_names.get(&v) {
            return a.clone();
        }
        let name = format!("%a{}", self.args.len());
        self.args.push(v);
        self.arg_names.insert(v, name.clone());
        name
    }

    /// The argument name of a materialized buffer viewed with memref type `ty` (a kernel
    /// may view a buffer with any shape of the same element count).
    pub fn arg_as(&mut self, v: ValueId, ty: &str) -> String {
        self.arg_types.insert(v, ty.to_string());
        self.arg(v)
    }

    /// The memref type a materialized value is read with in this kernel.
    pub fn mem_ty(&self, v: ValueId) -> String {
        if let Some(t) = self.arg_types.get(&v) {
            return t.clone();
        }
        let t = self.f.ty(v);
        memref_ty(&t.shape, mem_elem(t.dtype))
    }

    /// Opens a nested region (values defined inside are not visible after it).
    pub fn push_scope(&mut self) {
        self.memo.push(HashMap::new());
    }

    /// Closes the innermost region.
    pub fn pop_scope(&mut self) {
        self.memo.pop();
    }

    /// Loads element `idx` of materialized `v` in its register type.
    pub fn load(&mut self, v: ValueId, idx: &[Ix]) -> String {
        let a = self.arg(v);
        let ty = self.mem_ty(v);
        let ix: Vec<String> = idx.iter().map(|i| self.b.ix(i)).collect();
        let x = self
            .b
            .op(format!("memref.load {a}[{}] : {ty}", ix.join(", ")));
        if self.f.ty(v).dtype == DType::Bool {
            let z = self.b.int(0, "i8");
            self.b.op(format!("arith.cmpi ne, {x}, {z} : i8"))
        } else {
            x
        }
    }

    /// Stores a register value of dtype `dt` into `mem` (of type `ty`) at `idx`.
    pub fn store(&mut self, dt: DType, val: &str, mem: &str, ty: &str, idx: &[Ix]) {
        let val = if dt == DType::Bool {
            self.b.op(format!("arith.extui {val} : i1 to i8"))
        } else {
            val.to_string()
        };
        let ix: Vec<String> = idx.iter().map(|i| self.b.ix(i)).collect();
        self.b.line(format!(
            "memref.store {val}, {mem}[{}] : {ty}",
            ix.join(", ")
        ));
    }

    /// Writes an error record `[code, node, value, extent]` when `cond` holds.
    pub fn report(&mut self, cond: &str, code: i64, node: usize, value: &str, extent: usize) {
        self.may_fail = true;
        let (c, n, e) = (
            self.b.int(code, "i64"),
            self.b.int(node as i64, "i64"),
            self.b.int(extent as i64, "i64"),
        );
        let ix: Vec<String> = (0..4).map(|i| self.b.idx(i)).collect();
        self.b.open(format!("scf.if {cond} {{"));
        for (i, v) in [c, n, value.to_string(), e].iter().enumerate() {
            self.b
                .line(format!("memref.store {v}, %err[{}] : memref<4xi64>", ix[i]));
        }
        self.b.close("}", false);
    }

    fn unsupported(&self, v: ValueId, message: impl Into<String>) -> CodegenError {
        CodegenError::Unsupported {
            node: v.index(),
            op: self.f.node(v).op.name().to_string(),
            message: message.into(),
        }
    }

    /// Element `idx` (an index into `v`'s shape) of node `v`, in its register type.
    pub fn eval(&mut self, v: ValueId, idx: &[Ix]) -> Result<String, CodegenError> {
        let key = (v, idx.to_vec());
        if let Some(s) = self.memo.iter().rev().find_map(|m| m.get(&key)) {
            return Ok(s.clone());
        }
        let r = if self.inline.get(v.index()).copied().unwrap_or(false) {
            self.compute(v, idx)?
        } else {
            self.load(v, idx)
        };
        if let Some(m) = self.memo.last_mut() {
            m.insert(key, r.clone());
        }
        Ok(r)
    }

    /// Element `idx` of the kernel's root `v`, computed from its operands (a root is
    /// materialized, so [`KernelCx::eval`] would read it back instead).
    pub fn eval_root(&mut self, v: ValueId, idx: &[Ix]) -> Result<String, CodegenError> {
        self.compute(v, idx)
    }

    /// Computes an inlined node's element.
    fn compute(&mut self, v: ValueId, idx: &[Ix]) -> Result<String, CodegenError> {
        let f = self.f;
        let node = f.node(v);
        let dt = node.ty.dtype;
        let op_name = node.op.name();
        let arg = |i: usize| -> Result<ValueId, CodegenError> {
            node.args
                .get(i)
                .copied()
                .ok_or_else(|| CodegenError::Unsupported {
                    node: v.index(),
                    op: op_name.to_string(),
                    message: format!("operand {i} is missing"),
                })
        };
        match &node.op {
            Op::Constant { value } => Ok(self.constant(dt, *value)),
            Op::Iota { axis } => {
                let i = idx.get(*axis).cloned().unwrap_or(Ix::C(0));
                let i = self.b.ix_to_i64(&i);
                Ok(scalar::from_i64(&mut self.b, dt, &i))
            }
            Op::Unary(u) => {
                let x = self.eval(arg(0)?, idx)?;
                scalar::unary(&mut self.b, *u, dt, &x).map_err(|m| self.unsupported(v, m))
            }
            Op::Binary(op) => {
                let (a, c) = (arg(0)?, arg(1)?);
                let x = self.eval(a, idx)?;
                let y = self.eval(c, idx)?;
                let in_dt = f.ty(a).dtype;
                let mut div_err = None;
                let r = scalar::binary(&mut self.b, *op, in_dt, &x, &y, &mut div_err)
                    .map_err(|m| self.unsupported(v, m))?;
                if let Some(cond) = div_err {
                    let z = self.b.int(0, "i64");
                    self.report(&cond, ERR_DIV_ZERO, v.index(), &z, 0);
                }
                Ok(r)
            }
            Op::Select => {
                let c = self.eval(arg(0)?, idx)?;
                let x = self.eval(arg(1)?, idx)?;
                let y = self.eval(arg(2)?, idx)?;
                Ok(self
                    .b
                    .op(format!("arith.select {c}, {x}, {y} : {}", reg_ty(dt))))
            }
            Op::Cast => {
                let a = arg(0)?;
                let x = self.eval(a, idx)?;
                Ok(scalar::cast(&mut self.b, f.ty(a).dtype, dt, &x))
            }
            Op::StopGrad | Op::Reshape if f.ty(arg(0)?).shape == node.ty.shape => {
                self.eval(arg(0)?, idx)
            }
            Op::Reshape => {
                let a = arg(0)?;
                let flat = self.b.linearize(idx, &node.ty.shape);
                let j = self.b.delinearize(&flat, &f.ty(a).shape);
                self.eval(a, &j)
            }
            Op::Broadcast => {
                let a = arg(0)?;
                let xs = &f.ty(a).shape;
                let lead = idx.len().saturating_sub(xs.len());
                let j: Vec<Ix> = (0..xs.len())
                    .map(|k| {
                        if xs[k] == 1 {
                            Ix::C(0)
                        } else {
                            idx.get(lead + k).cloned().unwrap_or(Ix::C(0))
                        }
                    })
                    .collect();
                self.eval(a, &j)
            }
            Op::Transpose { perm } => {
                let mut j = vec![Ix::C(0); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    if let (Some(slot), Some(x)) = (j.get_mut(p), idx.get(i)) {
                        *slot = x.clone();
                    }
                }
                self.eval(arg(0)?, &j)
            }
            Op::Slice { axis, start, .. } => {
                let mut j = idx.to_vec();
                if let Some(x) = j.get_mut(*axis) {
                    *x = self.b.ix_add(x, &Ix::C(*start));
                }
                self.eval(arg(0)?, &j)
            }
            Op::Concat { axis } => self.concat(v, idx, *axis, 0, 0),
            Op::Gather { axis } => self.gather(v, idx, *axis),
            Op::Random { dist, stream } => self.random(v, idx, *dist, *stream),
            Op::Dropout { p, stream } => {
                let x = self.eval(arg(0)?, idx)?;
                let seed = self.eval(arg(1)?, &[])?;
                let key = scalar::stream_key(&mut self.b, &seed, *stream);
                let flat = self.b.linearize(idx, &node.ty.shape);
                let i = self.b.ix_to_i64(&flat);
                let bits = scalar::bits_at(&mut self.b, &key, &i);
                let u = scalar::unit(&mut self.b, &bits);
                let pc = self.b.f64c(*p);
                let keep = self.b.op(format!("arith.cmpf oge, {u}, {pc} : f64"));
                let xd = scalar::to_f64(&mut self.b, dt, &x);
                let scale = self.b.f64c(1.0 - p);
                let q = self.b.op(format!("arith.divf {xd}, {scale} : f64"));
                let r = scalar::round_f64(&mut self.b, dt, &q);
                let zero = self.b.fc(0.0, reg_ty(dt));
                Ok(self
                    .b
                    .op(format!("arith.select {keep}, {r}, {zero} : {}", reg_ty(dt))))
            }
            Op::Dequantize { block, nested, .. } => self.dequantize(v, idx, *block, *nested),
            _ => Err(self.unsupported(v, "internal: this op cannot be fused")),
        }
    }

    /// A `constant{value}` element, converted to `dt` at compile time like the interpreter.
    fn constant(&mut self, dt: DType, value: f64) -> String {
        match dt {
            DType::F64 => self.b.f64c(value),
            DType::F32 => self.b.f32c(value as f32),
            DType::BF16 | DType::F16 => self.b.f32c(graft_interp::round_f64(dt, value)),
            DType::I64 => self.b.int(value as i64, "i64"),
            DType::I32 => self.b.int(i64::from(value as i32), "i32"),
            DType::U8 => self.b.int(i64::from(value as u8 as i8), "i8"),
            DType::U4 => self.b.int(i64::from((value as u8).min(15)), "i8"),
            DType::Bool => self.b.int(i64::from(value != 0.0), "i1"),
        }
    }

    /// `concat`: operand `k` (starting at `at` along `axis`) or a later one, chosen with
    /// nested `scf.if`s so that only the owning operand is read.
    fn concat(
        &mut self,
        v: ValueId,
        idx: &[Ix],
        axis: usize,
        k: usize,
        at: usize,
    ) -> Result<String, CodegenError> {
        let f = self.f;
        let node = f.node(v);
        let Some(&a) = node.args.get(k) else {
            return Err(self.unsupported(v, "the operands do not fill the result"));
        };
        let ext = f.ty(a).shape.get(axis).copied().unwrap_or(0);
        let shifted = |b: &mut Body| -> Result<Vec<Ix>, CodegenError> {
            let mut j = idx.to_vec();
            if let Some(x) = j.get_mut(axis) {
                *x = match x.clone() {
                    Ix::C(c) => Ix::C(c.saturating_sub(at)),
                    Ix::V(s) => {
                        let o = b.idx(at);
                        Ix::V(b.op(format!("arith.subi {s}, {o} : index")))
                    }
                };
            }
            Ok(j)
        };
        if k + 1 == node.args.len() {
            let j = shifted(&mut self.b)?;
            return self.eval(a, &j);
        }
        if let Some(Ix::C(c)) = idx.get(axis) {
            // Known position: pick the operand statically.
            if *c < at + ext {
                let j = shifted(&mut self.b)?;
                return self.eval(a, &j);
            }
            return self.concat(v, idx, axis, k + 1, at + ext);
        }
        let pos = self.b.ix(idx.get(axis).unwrap_or(&Ix::C(0)));
        let bound = self.b.idx(at + ext);
        let cond = self.b.op(format!("arith.cmpi ult, {pos}, {bound} : index"));
        let t = reg_ty(node.ty.dtype);
        let res = self.b.fresh();
        self.b.open(format!("{res} = scf.if {cond} -> ({t}) {{"));
        self.push_scope();
        let j = shifted(&mut self.b)?;
        let x = self.eval(a, &j)?;
        self.b.line(format!("scf.yield {x} : {t}"));
        self.pop_scope();
        self.b.close("} else {", true);
        self.push_scope();
        let y = self.concat(v, idx, axis, k + 1, at + ext)?;
        self.b.line(format!("scf.yield {y} : {t}"));
        self.pop_scope();
        self.b.close("}", false);
        Ok(res)
    }

    /// `gather{axis}(table, indices)`: reads the index, checks it (reporting and reading row 0
    /// when it is out of range), then reads the table.
    fn gather(&mut self, v: ValueId, idx: &[Ix], axis: usize) -> Result<String, CodegenError> {
        let f = self.f;
        let node = f.node(v);
        let (Some(&table), Some(&ind)) = (node.args.first(), node.args.get(1)) else {
            return Err(self.unsupported(v, "expects a table and indices"));
        };
        let irank = f.ty(ind).rank();
        let extent = f.ty(table).shape.get(axis).copied().unwrap_or(0);
        let ii: Vec<Ix> = idx.iter().skip(axis).take(irank).cloned().collect();
        let raw = self.eval(ind, &ii)?;
        let i64v = if f.ty(ind).dtype == DType::I32 {
            self.b.op(format!("arith.extsi {raw} : i32 to i64"))
        } else {
            raw
        };
        let zero = self.b.int(0, "i64");
        let ext = self.b.int(extent as i64, "i64");
        let neg = self.b.op(format!("arith.cmpi slt, {i64v}, {zero} : i64"));
        let big = self.b.op(format!("arith.cmpi sge, {i64v}, {ext} : i64"));
        let bad = self.b.op(format!("arith.ori {neg}, {big} : i1"));
        self.report(&bad, ERR_GATHER, v.index(), &i64v, extent);
        let safe = self
            .b
            .op(format!("arith.select {bad}, {zero}, {i64v} : i64"));
        let at = self.b.op(format!("arith.index_cast {safe} : i64 to index"));
        let mut j: Vec<Ix> = idx.iter().take(axis).cloned().collect();
        j.push(Ix::V(at));
        j.extend(idx.iter().skip(axis + irank).cloned());
        self.eval(table, &j)
    }

    /// `random_*{dist, stream}(seed)`: element `flat(idx)` of the counter-based generator.
    fn random(
        &mut self,
        v: ValueId,
        idx: &[Ix],
        dist: Distribution,
        stream: u64,
    ) -> Result<String, CodegenError> {
        let node = self.f.node(v);
        let dt = node.ty.dtype;
        let Some(&seed) = node.args.first() else {
            return Err(self.unsupported(v, "expects a seed"));
        };
        let seed = self.eval(seed, &[])?;
        let key = scalar::stream_key(&mut self.b, &seed, stream);
        let flat = self.b.linearize(idx, &node.ty.shape);
        let i = self.b.ix_to_i64(&flat);
        match dist {
            Distribution::Uniform { lo, hi } => {
                let bits = scalar::bits_at(&mut self.b, &key, &i);
                let u = scalar::unit(&mut self.b, &bits);
                let (l, w) = (self.b.f64c(lo), self.b.f64c(hi - lo));
                let s = self.b.op(format!("arith.mulf {w}, {u} : f64"));
                let x = self.b.op(format!("arith.addf {l}, {s} : f64"));
                Ok(scalar::from_f64(&mut self.b, dt, &x))
            }
            Distribution::TorchUniform { .. } | Distribution::TorchRandperm { .. } => Err(self
                .unsupported(
                    v,
                    "PyTorch's generator is sequential: it runs in `@init`, on the interpreter",
                )),
            Distribution::Normal { mean, std } => {
                let two = self.b.int(2, "i64");
                let one = self.b.int(1, "i64");
                let i2 = self.b.op(format!("arith.muli {i}, {two} : i64"));
                let i3 = self.b.op(format!("arith.addi {i2}, {one} : i64"));
                let b1 = scalar::bits_at(&mut self.b, &key, &i2);
                let u1 = scalar::unit(&mut self.b, &b1);
                let b2 = scalar::bits_at(&mut self.b, &key, &i3);
                let u2 = scalar::unit(&mut self.b, &b2);
                let (c1, cm2) = (self.b.f64c(1.0), self.b.f64c(-2.0));
                let om = self.b.op(format!("arith.subf {c1}, {u1} : f64"));
                let ln = self.b.op(format!("math.log {om} : f64"));
                let m = self.b.op(format!("arith.mulf {cm2}, {ln} : f64"));
                let r = self.b.op(format!("math.sqrt {m} : f64"));
                let tau = self.b.f64c(2.0 * std::f64::consts::PI);
                let a = self.b.op(format!("arith.mulf {tau}, {u2} : f64"));
                let c = self.b.op(format!("math.cos {a} : f64"));
                let (mc, sc) = (self.b.f64c(mean), self.b.f64c(std));
                let sr = self.b.op(format!("arith.mulf {sc}, {r} : f64"));
                let src = self.b.op(format!("arith.mulf {sr}, {c} : f64"));
                let x = self.b.op(format!("arith.addf {mc}, {src} : f64"));
                Ok(scalar::from_f64(&mut self.b, dt, &x))
            }
            Distribution::Int { lo, hi } => {
                let range = hi.wrapping_sub(lo);
                let x = if range == 0 {
                    self.b.int(lo, "i64")
                } else {
                    let bits = scalar::bits_at(&mut self.b, &key, &i);
                    let rc = self.b.int(range, "i64");
                    let m = self.b.op(format!("arith.remui {bits}, {rc} : i64"));
                    let l = self.b.int(lo, "i64");
                    self.b.op(format!("arith.addi {l}, {m} : i64"))
                };
                Ok(scalar::from_i64(&mut self.b, dt, &x))
            }
        }
    }

    /// `dequantize{nf4, block, nested}` of node `v`.
    fn dequantize(
        &mut self,
        v: ValueId,
        idx: &[Ix],
        block: usize,
        nested: usize,
    ) -> Result<String, CodegenError> {
        let node = self.f.node(v);
        let (args, dt) = (node.args.clone(), node.ty.dtype);
        self.dequant_at(v, &args, dt, idx, block, nested)
    }

    /// Element `idx` of the weight that `args` (codes, then absmax or the nested scales)
    /// dequantize to `dt`: `NF4[code] · absmax[i / block]` (`INT8[code]` for u8 codes) in
    /// `f32`, the absmax itself rebuilt
    /// from its 8-bit codes when nested, then rounded to `dt`. `v` names the node in errors.
    pub fn dequant_at(
        &mut self,
        v: ValueId,
        args: &[ValueId],
        dt: DType,
        idx: &[Ix],
        block: usize,
        nested: usize,
    ) -> Result<String, CodegenError> {
        if args.len() != if nested == 0 { 2 } else { 4 } || block == 0 {
            return Err(self.unsupported(v, "unexpected quantization operands"));
        }
        let shape = self.f.ty(args[0]).shape.clone();
        let code = self.eval(args[0], idx)?;
        let flat = self.b.linearize(idx, &shape);
        let blk = self.b.ix_div(&flat, block);
        let absmax = if nested == 0 {
            self.eval(args[1], std::slice::from_ref(&blk))?
        } else {
            let q = self.eval(args[1], std::slice::from_ref(&blk))?;
            let outer = self.b.ix_div(&blk, nested);
            let a2 = self.eval(args[2], &[outer])?;
            let off = self.eval(args[3], &[])?;
            let d = self.table(Table::Dynamic, &q);
            let s = self.b.op(format!("arith.mulf {d}, {a2} : f32"));
            self.b.op(format!("arith.addf {s}, {off} : f32"))
        };
        // The codes' dtype names the format: u4 codes are NF4's, u8 codes int8's.
        let table = match self.f.ty(args[0]).dtype {
            DType::U8 => Table::Int8,
            _ => Table::Nf4,
        };
        let c = self.table(table, &code);
        let w = self.b.op(format!("arith.mulf {c}, {absmax} : f32"));
        Ok(match dt {
            DType::F64 => self.b.op(format!("arith.extf {w} : f32 to f64")),
            _ => scalar::round_f32(&mut self.b, dt, &w),
        })
    }

    /// Reads entry `code` (an unsigned `i8`) of a constant table.
    fn table(&mut self, t: Table, code: &str) -> String {
        if !self.tables.contains(&t) {
            self.tables.push(t);
        }
        let (sym, ty) = t.symbol();
        let g = self.b.op(format!("memref.get_global {sym} : {ty}"));
        let w = self.b.op(format!("arith.extui {code} : i8 to i64"));
        let i = self.b.op(format!("arith.index_cast {w} : i64 to index"));
        self.b.op(format!("memref.load {g}[{i}] : {ty}"))
    }
}
