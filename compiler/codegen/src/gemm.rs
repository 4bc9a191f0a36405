//! The `f32` GEMM: B packed into panels, then register-tiled microkernels written with the
//! `vector` dialect (broadcast A, FMA into `MR × NR` accumulators held in vector registers).
//!
//! Layout and loops, BLIS-style:
//! - **Pack** (`@kN_pack`, one range item per panel): `Bp[b][p][k][0..NR] = B[b][k][p·NR..]`
//!   (read transposed when `tb`), zero-padded past column `n`. A panel slice of `KC` rows is
//!   `KC · NR · 4` bytes (16 KiB for AVX2), which stays in L1 while it is reused.
//! - **GEMM** (`@kN`, one range item per `MR`-row tile of one batch, or per panel when B
//!   outweighs A: [`GemmShape::splits_n`]): for each `KC` block of the contraction, for each
//!   `MC` block of the thread's tiles, for each of its panels, for each tile of the block: one
//!   microkernel call. The first block starts from zero, later blocks load and accumulate `C`.
//!   A range item always runs on the same thread, so each thread computes with the A tiles
//!   or B panels it packed itself.
//! - **Microkernels** (`@kN_mR_C`): `R ≤ MR` rows, `C ≤ NR` columns; `MR · NR / lanes`
//!   accumulators live in `iter_args` of the `k` loop; partial vectors use masked loads and
//!   stores. `MR`, `NR` and the lane count come from the host CPU ([`crate::host::CpuTarget`]).

use crate::CodegenError;
use crate::expr::KernelCx;
use crate::host::CpuTarget;
use crate::kernels::as_batched;
use crate::lower::FuncText;
use crate::text::{Body, Ix, memref_ty};
use graft_ir::{DType, ValueId};

/// The shape of one matmul node, as the GEMM kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmShape {
    /// The buffer A is read from (the operand, or the value a folded transpose reads).
    pub a_src: ValueId,
    /// The buffer B is read from.
    pub b_src: ValueId,
    /// Result batches.
    pub batches: usize,
    /// Stored `[batches, rows, cols]` of A (batches 1 when shared).
    pub a: [usize; 3],
    /// Stored `[batches, rows, cols]` of B.
    pub b: [usize; 3],
    /// Rows of the result.
    pub m: usize,
    /// The contraction extent.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
    /// A is read transposed.
    pub ta: bool,
    /// B is read transposed.
    pub tb: bool,
    /// B is dequantized from NF4 codes while packing (`qmatmul`): `(block, nested)`.
    pub quant: Option<(usize, usize)>,
    /// B is not stored: its producer (a `concat` of weights, as the optimizer's batching
    /// builds) is evaluated element by element while packing.
    pub fused_b: bool,
    /// Epilogue: the GEMM computes `addend + A·B` (an `add` whose other operand is this
    /// materialized value of C's shape); the first K block starts from it instead of zero.
    pub addend: Option<ValueId>,
    /// How the addend is read: its row stride and first column (`(n, 0)` when it is laid out
    /// like C; a slice of a wider value's last axis, such as one projection's columns of a
    /// batched q/k/v product that a LoRA path adds to, has that value's row length).
    pub addend_view: (usize, usize),
    /// The part of the contraction this GEMM covers, `k0..k1`: all of it, unless the
    /// scheduler split a GEMM whose packed operands would be large (see [`GemmShape::chunks`]).
    pub k_range: (usize, usize),
    /// The panels of B (blocks of `NR` columns of C) it covers; `None`: all.
    pub panel_range: Option<(usize, usize)>,
    /// C already holds the partial sum of earlier K chunks: every K block adds to it.
    pub accumulate: bool,
    /// Threads split the GEMM's panels instead of its row tiles (see
    /// [`GemmShape::splits_n`]): each computes the panels it packed itself.
    pub split_n: bool,
}

impl GemmShape {
    /// The shape of `matmul{ta, tb}` reading A from `a_src` and B from `b_src` (of these
    /// shapes) with result batch count `batches`.
    pub fn new(
        (a_src, a): (ValueId, &[usize]),
        (b_src, b): (ValueId, &[usize]),
        batches: usize,
        ta: bool,
        tb: bool,
    ) -> Self {
        let (a, b) = (as_batched(a), as_batched(b));
        let (m, k) = if ta { (a[2], a[1]) } else { (a[1], a[2]) };
        let n = if tb { b[1] } else { b[2] };
        GemmShape {
            quant: None,
            fused_b: false,
            addend: None,
            addend_view: (n, 0),
            k_range: (0, k),
            panel_range: None,
            accumulate: false,
            split_n: false,
            a_src,
            b_src,
            batches,
            a,
            b,
            m,
            k,
            n,
            ta,
            tb,
        }
    }

    /// Whether threads should split B's panels rather than A's row tiles: when B is shared
    /// by every batch and its (chunk's) packed panels outweigh A. Every thread reads all of
    /// the operand that is split the other way, and a kernel's range item `i` always runs on
    /// the same thread (see the executor), so with panels split each thread streams only the
    /// panels it packed itself, from its own cache, and reads the smaller A from the other's.
    pub fn splits_n(&self, t: &CpuTarget) -> bool {
        let (p0, p1) = self.panel_span(t);
        let b_elems = (p1 - p0) * t.nr * self.k_len();
        let a_elems = self.a[0] * self.m * self.k_len();
        t.split_n && self.b[0] == 1 && p1 - p0 >= 2 && b_elems > a_elems
    }

    /// The GEMM kernel's range: its panels when they are split across threads, else
    /// `batches × row tiles`.
    pub fn range(&self, t: &CpuTarget) -> usize {
        let (p0, p1) = self.panel_span(t);
        if self.split_n {
            p1 - p0
        } else {
            self.batches * self.tiles(t)
        }
    }

    /// Number of `NR`-column panels.
    pub fn panels(&self, t: &CpuTarget) -> usize {
        self.n.div_ceil(t.nr)
    }

    /// Row tiles per batch.
    pub fn tiles(&self, t: &CpuTarget) -> usize {
        self.m.div_ceil(t.mr)
    }

    /// The panels this GEMM covers, `p0..p1`.
    pub fn panel_span(&self, t: &CpuTarget) -> (usize, usize) {
        self.panel_range.unwrap_or((0, self.panels(t)))
    }

    /// Contraction length of this GEMM's chunk.
    pub fn k_len(&self) -> usize {
        self.k_range.1 - self.k_range.0
    }

    /// Whether A is packed: when more than two panels of B pass over it (a power-of-two row
    /// stride maps a tile's rows to one L1 set, and packing pays when the A block is reused;
    /// a LoRA down-projection, `N = r`, reads A once and does not pack it). Decided on the
    /// whole GEMM, so that every chunk of it agrees.
    pub fn packs_a(&self, t: &CpuTarget) -> bool {
        self.panels(t) > t.pack_a_panels
    }

    /// Elements of the packed-A scratch buffer: per A batch and row tile, `K × MR` values
    /// (of the chunk's K range), the tile's rows interleaved per `k` (rows past `m` zero).
    pub fn packed_a_len(&self, t: &CpuTarget) -> usize {
        self.a[0] * self.tiles(t) * self.k_len() * t.mr
    }

    /// Elements of the packed-B scratch buffer (the chunk's panels and K range).
    pub fn packed_len(&self, t: &CpuTarget) -> usize {
        let (p0, p1) = self.panel_span(t);
        self.b[0] * (p1 - p0) * self.k_len() * t.nr
    }

    /// The packed-B buffer's memref type.
    fn packed_ty(&self, t: &CpuTarget) -> String {
        let (p0, p1) = self.panel_span(t);
        memref_ty(&[self.b[0], p1 - p0, self.k_len(), t.nr], "f32")
    }

    /// The GEMM as a sequence of chunks whose packed operands together stay within
    /// `budget` bytes (the arena holds one chunk's at a time): unchanged when they fit;
    /// else split along the panels of B when C is larger than A (each chunk packs its part
    /// of B and repacks A, which is the smaller), or along K in multiples of `KC` (each
    /// later chunk adds to C, re-read once per chunk). In order; later K chunks accumulate.
    pub fn chunks(&self, t: &CpuTarget, budget: usize) -> Vec<GemmShape> {
        let f = std::mem::size_of::<f32>();
        let packed_a = if self.packs_a(t) {
            self.packed_a_len(t)
        } else {
            0
        };
        if (packed_a + self.packed_len(t)) * f <= budget {
            return vec![*self];
        }
        let panels = self.panels(t);
        let c_bytes = self.batches * self.m * self.n * f;
        let a_bytes = self.a[0] * self.m * self.k * f;
        if c_bytes > a_bytes {
            let per_panel = self.b[0] * self.k * t.nr * f;
            let a_share = self.a[0] * self.tiles(t) * self.k * t.mr * f;
            let step = (budget.saturating_sub(a_share) / per_panel.max(1)).max(3);
            (0..panels)
                .step_by(step)
                .map(|p0| GemmShape {
                    panel_range: Some((p0, (p0 + step).min(panels))),
                    ..*self
                })
                .collect()
        } else {
            let per_k = (self.a[0] * self.tiles(t) * t.mr + self.b[0] * panels * t.nr) * f;
            let len = ((budget / per_k.max(1)) / t.kc * t.kc).max(t.kc);
            (0..self.k)
                .step_by(len)
                .map(|k0| GemmShape {
                    k_range: (k0, (k0 + len).min(self.k)),
                    accumulate: k0 > 0,
                    addend: if k0 > 0 { None } else { self.addend },
                    ..*self
                })
                .collect()
        }
    }
}

fn vty(t: &CpuTarget) -> String {
    format!("vector<{}xf32>", t.lanes)
}

/// The pack kernel `@{name}`: range = `b-batches × panels`. Without `tb` each packed row is
/// a contiguous run of B copied with vector loads (masked in the last, partial panel); with
/// `tb` the panel is a transpose, copied column by column, zero-filled past column `n`.
pub(crate) fn emit_pack(name: &str, s: &GemmShape, t: &CpuTarget) -> FuncText {
    let mut b = Body::new();
    let bty = memref_ty(&s.b, "f32");
    let pty = s.packed_ty(t);
    let (p0, p1) = s.panel_span(t);
    let p_count = p1 - p0;
    let vt = vty(t);
    let one = b.idx(1);
    let (zero, kend) = (b.idx(s.k_range.0), b.idx(s.k_range.1));
    let k0 = zero.clone();
    let kk = b.fresh();
    // A row-major B whose rows are a page or more apart is packed row by row (each thread
    // reading its panels' part of row k as one contiguous run) rather than panel by panel
    // (a strip down every row: a new page, i.e. a TLB miss, per 128-byte read); see
    // `CpuTarget::pack_rows`.
    let row_major = !s.tb && t.pack_rows && s.n * 4 >= 4096;
    if row_major {
        b.open(format!("scf.for {kk} = {zero} to {kend} step {one} {{"));
    }
    let q = b.fresh();
    b.open(format!("scf.for {q} = %lo to %hi step {one} {{"));
    let qx = Ix::V(q);
    let bi = b.ix_div(&qx, p_count);
    let p = b.ix_rem(&qx, p_count);
    let (bi, p) = (b.ix(&bi), b.ix(&p));
    // Panel p of the chunk is panel p0 + p of B; row k of B is row k - k0 of the panel.
    let j0 = b.ix_add(&Ix::V(p.clone()), &Ix::C(p0));
    let j0 = b.ix_mul(&j0, t.nr);
    let j0 = b.ix(&j0);
    if !s.tb {
        // Valid columns of this panel: NR, or fewer in the last one.
        let nc = b.idx(s.n);
        let left = b.op(format!("arith.subi {nc}, {j0} : index"));
        let zero_v = b.konst("dense<0.000000e+00>", &vt);
        if !row_major {
            b.open(format!("scf.for {kk} = {zero} to {kend} step {one} {{"));
        }
        for v in 0..t.nr / t.lanes {
            let off = b.idx(v * t.lanes);
            let col = b.op(format!("arith.addi {j0}, {off} : index"));
            let rem = b.op(format!("arith.subi {left}, {off} : index"));
            let mask = b.op(format!("vector.create_mask {rem} : vector<{}xi1>", t.lanes));
            let x = b.op(format!(
                "vector.maskedload %a0[{bi}, {kk}, {col}], {mask}, {zero_v} : {bty}, vector<{}xi1>, {vt} into {vt}",
                t.lanes
            ));
            let kl = b.op(format!("arith.subi {kk}, {k0} : index"));
            b.line(format!(
                "vector.store {x}, %out[{bi}, {p}, {kl}, {off}] : {pty}, {vt}"
            ));
        }
        b.close("}", false);
    } else {
        // Row k of the panel is column k of NR rows of B. Blocks of `lanes` k: each group
        // of `lanes` rows is loaded as vectors (rows past `n` as zeros), transposed in
        // registers ([`transpose_block`]) and stored as `lanes` contiguous runs; the k
        // left over go through the scalar loop below.
        let lanes = t.lanes;
        let (nc, last_row, zero_v) = (
            b.idx(s.n),
            b.idx(s.n.saturating_sub(1)),
            b.konst("dense<0.000000e+00>", &vt),
        );
        let k_vec_end = s.k_range.0 + (s.k_len() / lanes) * lanes;
        let (kvend, lstep) = (b.idx(k_vec_end), b.idx(lanes));
        if k_vec_end > s.k_range.0 {
            let kb = b.fresh();
            b.open(format!("scf.for {kb} = {zero} to {kvend} step {lstep} {{"));
            let kl = b.op(format!("arith.subi {kb}, {k0} : index"));
            let edge = (nc.as_str(), last_row.as_str(), zero_v.as_str(), vt.as_str());
            for v in 0..t.nr / lanes {
                let rows = column_vectors(&mut b, &j0, v * lanes, lanes, edge, |b, safe| {
                    b.op(format!("vector.load %a0[{bi}, {safe}, {kb}] : {bty}, {vt}"))
                });
                store_transposed(&mut b, rows, (&vt, &pty), [&bi, &p, &kl], v * lanes);
            }
            b.close("}", false);
        }
        let ks = (kvend.as_str(), kend.as_str(), k0.as_str());
        let cols = (j0.as_str(), s.n, t.nr);
        let to = ([bi.as_str(), p.as_str()], pty.as_str());
        scalar_panel_rows(
            &mut b,
            ks,
            cols,
            to,
            |_, kk| kk.to_string(),
            |b, kk, col| b.op(format!("memref.load %a0[{bi}, {col}, {kk}] : {bty}")),
        );
    }
    b.close("}", false);
    FuncText {
        name: name.to_string(),
        params: vec![
            format!("%a0: {bty}"),
            format!("%out: {pty} {{llvm.noalias}}"),
        ],
        body: b.finish(),
        ranged: true,
    }
}

/// The pack kernel `@{name}` of a row-major B (`[k, n]`, no batches) whose rows are rows
/// `row_off..` of a frozen value V already packed, once, as B of `x · Vᵀ` (the bound panels
/// [`crate::schedule::Bound`] names, read flat): element `(r, c)` of V is at
/// `(r / NR) · k_v · NR + c · NR + r mod NR`. So `lanes` consecutive rows of one column are
/// contiguous; blocks of `lanes` k are loaded one column per vector (`lanes` columns),
/// transposed in registers ([`transpose_block`]) and stored as `lanes` runs of the panel,
/// when B's first row falls on a multiple of `lanes` in V; other k go through a scalar loop.
pub(crate) fn emit_pack_bound(
    name: &str,
    s: &GemmShape,
    t: &CpuTarget,
    bound: &crate::schedule::Bound,
) -> FuncText {
    let mut b = Body::new();
    let src_ty = memref_ty(&[bound.len], "f32");
    let pty = s.packed_ty(t);
    let (p0, _) = s.panel_span(t);
    let (nr, lanes, k_v) = (t.nr, t.lanes, bound.k_v);
    let vt = vty(t);
    let one = b.idx(1);
    let (k0, kend) = (s.k_range.0, s.k_range.1);
    let q = b.fresh();
    b.open(format!("scf.for {q} = %lo to %hi step {one} {{"));
    // One batch: the range item is the chunk's panel.
    let p = q.clone();
    let j0 = b.ix_add(&Ix::V(p.clone()), &Ix::C(p0));
    let j0 = b.ix_mul(&j0, nr);
    let j0 = b.ix(&j0);
    let (zero, nc, last_col) = (b.idx(0), b.idx(s.n), b.idx(s.n.saturating_sub(1)));
    // Flat offset of V's row `row_off + kk` (column 0): its panel's start plus its place
    // in the panel.
    let row_base = |b: &mut Body, kk: &str| -> String {
        let r = b.ix_add(&Ix::V(kk.to_string()), &Ix::C(bound.row_off));
        let panel = b.ix_div(&r, nr);
        let panel = b.ix_mul(&panel, k_v * nr);
        let within = b.ix_rem(&r, nr);
        let at = b.ix_add(&panel, &within);
        b.ix(&at)
    };
    let vector = [bound.row_off, k0, nr]
        .iter()
        .all(|x| x.is_multiple_of(lanes));
    let k_vec_end = if vector {
        k0 + (kend - k0) / lanes * lanes
    } else {
        k0
    };
    if k_vec_end > k0 {
        let zero_v = b.konst("dense<0.000000e+00>", &vt);
        let (kb, kstart, kvend, lstep) = (b.fresh(), b.idx(k0), b.idx(k_vec_end), b.idx(lanes));
        b.open(format!(
            "scf.for {kb} = {kstart} to {kvend} step {lstep} {{"
        ));
        let base = row_base(&mut b, &kb);
        let kl = b.op(format!("arith.subi {kb}, {kstart} : index"));
        let edge = (nc.as_str(), last_col.as_str(), zero_v.as_str(), vt.as_str());
        for v in 0..nr / lanes {
            let rows = column_vectors(&mut b, &j0, v * lanes, lanes, edge, |b, safe| {
                let at = b.ix_mul(&Ix::V(safe.to_string()), nr);
                let at = b.ix_add(&at, &Ix::V(base.clone()));
                let at = b.ix(&at);
                b.op(format!("vector.load %a0[{at}] : {src_ty}, {vt}"))
            });
            store_transposed(&mut b, rows, (&vt, &pty), [&zero, &p, &kl], v * lanes);
        }
        b.close("}", false);
    }
    // The k left over (or all of them), element by element.
    let (kfrom, kto, kstart) = (b.idx(k_vec_end), b.idx(kend), b.idx(k0));
    let ks = (kfrom.as_str(), kto.as_str(), kstart.as_str());
    let to = ([zero.as_str(), p.as_str()], pty.as_str());
    scalar_panel_rows(&mut b, ks, (&j0, s.n, nr), to, row_base, |b, base, col| {
        let at = b.ix_mul(&Ix::V(col.to_string()), nr);
        let at = b.ix_add(&at, &Ix::V(base.to_string()));
        let at = b.ix(&at);
        b.op(format!("memref.load %a0[{at}] : {src_ty}"))
    });
    b.close("}", false);
    FuncText {
        name: name.to_string(),
        params: vec![
            format!("%a0: {src_ty}"),
            format!("%out: {pty} {{llvm.noalias}}"),
        ],
        body: b.finish(),
        ranged: true,
    }
}

/// A transposing pack's rows `k` in `from..to` (`ks`, with `k0` the panel's first),
/// element by element: the panel's valid columns (of `cols`: the panel's first column, `n`
/// and NR) from `load(b, row(b, k), column)`, where `row` computes what `load` needs of row
/// `k` once, then zeros up to NR; at `%out[batch, panel, k - k0, ..]` (`to`, with the
/// panel's type).
fn scalar_panel_rows(
    b: &mut Body,
    (from, to, k0): (&str, &str, &str),
    (j0, n, nr): (&str, usize, usize),
    ([batch, panel], pty): ([&str; 2], &str),
    row: impl Fn(&mut Body, &str) -> String,
    load: impl Fn(&mut Body, &str, &str) -> String,
) {
    let (kk, jj, jz) = (b.fresh(), b.fresh(), b.fresh());
    let (one, zero, nc, nrend) = (b.idx(1), b.idx(0), b.idx(n), b.idx(nr));
    let left = b.op(format!("arith.subi {nc}, {j0} : index"));
    let valid = b.op(format!("arith.minui {left}, {nrend} : index"));
    b.open(format!("scf.for {kk} = {from} to {to} step {one} {{"));
    let r = row(b, &kk);
    let kl = b.op(format!("arith.subi {kk}, {k0} : index"));
    b.open(format!("scf.for {jj} = {zero} to {valid} step {one} {{"));
    let col = b.op(format!("arith.addi {j0}, {jj} : index"));
    let x = load(b, &r, &col);
    b.line(format!(
        "memref.store {x}, %out[{batch}, {panel}, {kl}, {jj}] : {pty}"
    ));
    b.close("}", false);
    let z = b.f32c(0.0);
    b.open(format!("scf.for {jz} = {valid} to {nrend} step {one} {{"));
    b.line(format!(
        "memref.store {z}, %out[{batch}, {panel}, {kl}, {jz}] : {pty}"
    ));
    b.close("}", false);
    b.close("}", false);
}

/// The `lanes` vectors of a transposing pack's block: one per column `j0 + first + i` of B
/// (`i < lanes`), loaded by `load` given the column clamped to the last valid one, zero
/// past column `n`. `edge`: `n` and the last valid column as indices, the zero vector and
/// the vector type.
fn column_vectors(
    b: &mut Body,
    j0: &str,
    first: usize,
    lanes: usize,
    (n, last, zero_v, vt): (&str, &str, &str, &str),
    load: impl Fn(&mut Body, &str) -> String,
) -> Vec<String> {
    (0..lanes)
        .map(|i| {
            let off = b.idx(first + i);
            let col = b.op(format!("arith.addi {j0}, {off} : index"));
            let inside = b.op(format!("arith.cmpi ult, {col}, {n} : index"));
            let safe = b.op(format!("arith.minui {col}, {last} : index"));
            let x = load(b, &safe);
            b.op(format!("arith.select {inside}, {x}, {zero_v} : {vt}"))
        })
        .collect()
}

/// Transposes a block of column vectors ([`column_vectors`]: `lanes` consecutive k of each)
/// and stores each k's run at `%out[batch, panel, kl + c, col0]`.
fn store_transposed(
    b: &mut Body,
    rows: Vec<String>,
    (vt, pty): (&str, &str),
    [batch, panel, kl]: [&str; 3],
    col0: usize,
) {
    let cols = transpose_block(b, rows, vt);
    let col0 = b.idx(col0);
    for (c, x) in cols.iter().enumerate() {
        let cc = b.idx(c);
        let at = b.op(format!("arith.addi {kl}, {cc} : index"));
        b.line(format!(
            "vector.store {x}, %out[{batch}, {panel}, {at}, {col0}] : {pty}, {vt}"
        ));
    }
}

/// Transposes an `L × L` block held as `L` row vectors (`L` a power of two): returns the
/// column vectors. `log₂ L` stages of two-source shuffles; the stage of width `w` exchanges
/// bit `w` of the row index with bit `w` of the column index (off-diagonal `w × w` blocks
/// of each `2w × 2w` block swap); after the last stage the block is transposed. `L · log₂ L`
/// shuffles in all (64 for AVX-512's 16 lanes), which LLVM lowers to permute instructions.
fn transpose_block(b: &mut Body, mut rows: Vec<String>, vt: &str) -> Vec<String> {
    let l = rows.len();
    let mut w = 1;
    while w < l {
        for i in (0..l).filter(|i| i & w == 0) {
            let lo: Vec<String> = (0..l)
                .map(|c| if c & w == 0 { c } else { l + c - w }.to_string())
                .collect();
            let hi: Vec<String> = (0..l)
                .map(|c| if c & w == 0 { c + w } else { l + c }.to_string())
                .collect();
            let (a, c) = (rows[i].clone(), rows[i + w].clone());
            rows[i] = b.op(format!(
                "vector.shuffle {a}, {c} [{}] : {vt}, {vt}",
                lo.join(", ")
            ));
            rows[i + w] = b.op(format!(
                "vector.shuffle {a}, {c} [{}] : {vt}, {vt}",
                hi.join(", ")
            ));
        }
        w *= 2;
    }
    rows
}

/// Opens a pack kernel's range loop over `batches × per` items, where the batches are the
/// leading axes of the packed operand's `shape` (all but the last two), and splits the item:
/// returns it, its batch's flat index, that index over the leading axes, and its position
/// within the batch. The caller closes the loop and pops the scope.
fn range_items(k: &mut KernelCx<'_>, shape: &[usize], per: usize) -> (Ix, Ix, Vec<Ix>, Ix) {
    let lead = shape.len().saturating_sub(2);
    let one = k.b.idx(1);
    let q = k.b.fresh();
    k.b.open(format!("scf.for {q} = %lo to %hi step {one} {{"));
    k.push_scope();
    let qx = Ix::V(q);
    let bi = k.b.ix_div(&qx, per);
    let within = k.b.ix_rem(&qx, per);
    let batch = k.b.delinearize(&bi, &shape[..lead]);
    (qx, bi, batch, within)
}

/// The A pack kernel: range = `a-batches × row tiles`; tile `t` of A becomes
/// `Ap[t][k][0..MR]` (rows past `m` zero), so a microkernel reads its `MR` values of each `k`
/// from one contiguous run, whatever A's row stride (a power-of-two stride would map every
/// row of the tile to the same L1 set). A's elements come through [`KernelCx::eval`]: loads
/// of a stored A, or A's producer computed in place when the scheduler fused it (a scaled
/// or normalized activation, a concat, ...). Returns the output type.
pub(crate) fn emit_pack_a(
    k: &mut KernelCx<'_>,
    s: &GemmShape,
    t: &CpuTarget,
) -> Result<String, CodegenError> {
    let a_shape = k.f.ty(s.a_src).shape.clone();
    let pty = memref_ty(&[s.packed_a_len(t)], "f32");
    let tiles = s.tiles(t);
    let lanes = t.lanes;
    // A row-major A is packed `lanes` k at a time through a `lanes × lanes` scratch block
    // (see below) when a tile's rows fit in a vector; the scratch is allocated once, on the
    // kernel's stack, before its loops.
    let blocked = !s.ta && t.mr <= lanes && lanes.is_power_of_two() && s.k_len() >= lanes;
    let tmp_ty = memref_ty(&[lanes, lanes], "f32");
    let tmp = blocked.then(|| k.b.op(format!("memref.alloca() : {tmp_ty}")));
    let (zero, one) = (k.b.idx(0), k.b.idx(1));
    let (qx, _, batch, it) = range_items(k, &a_shape, tiles);
    let row0 = k.b.ix_mul(&it, t.mr);
    let row0 = k.b.ix(&row0);
    let base = k.b.ix_mul(&qx, s.k_len() * t.mr);
    let base = k.b.ix(&base);
    let (k0, kend, mrend, mc, last, mr) = (
        k.b.idx(s.k_range.0),
        k.b.idx(s.k_range.1),
        k.b.idx(t.mr),
        k.b.idx(s.m),
        k.b.idx(s.m.saturating_sub(1)),
        k.b.idx(t.mr),
    );
    // Element (row `r` of the tile, `kk`) of A, zero past row `m` (which reads row m-1, a
    // valid index).
    let elem = |k: &mut KernelCx<'_>, r: &str, kk: &str| -> Result<String, CodegenError> {
        let row = k.b.op(format!("arith.addi {row0}, {r} : index"));
        let inside = k.b.op(format!("arith.cmpi ult, {row}, {mc} : index"));
        let safe = Ix::V(k.b.op(format!("arith.minui {row}, {last} : index")));
        let kk = Ix::V(kk.to_string());
        let mut idx = batch.clone();
        idx.extend(if s.ta { [kk, safe] } else { [safe, kk] });
        let x = k.eval(s.a_src, &idx)?;
        let z = k.b.f32c(0.0);
        Ok(k.b.op(format!("arith.select {inside}, {x}, {z} : f32")))
    };
    // Blocks of `lanes` k (row-major A): each of the tile's rows evaluates `lanes`
    // consecutive elements into a scratch row (a contiguous loop, which LLVM vectorizes,
    // A's producer included), the scratch block is transposed in registers and each
    // column, one k's MR values, is stored with one masked vector store. The k left over
    // go through the element loop below.
    let k_vec_end = match tmp {
        Some(_) => s.k_range.0 + (s.k_len() / lanes) * lanes,
        None => s.k_range.0,
    };
    if let Some(tmp) = &tmp {
        let vt = vty(t);
        let (kvend, lstep, lanes_c) = (k.b.idx(k_vec_end), k.b.idx(lanes), k.b.idx(lanes));
        let (kb, r, j) = (k.b.fresh(), k.b.fresh(), k.b.fresh());
        k.b.open(format!("scf.for {kb} = {k0} to {kvend} step {lstep} {{"));
        k.push_scope();
        k.b.open(format!("scf.for {r} = {zero} to {mrend} step {one} {{"));
        k.push_scope();
        k.b.open(format!("scf.for {j} = {zero} to {lanes_c} step {one} {{"));
        k.push_scope();
        let kk = k.b.op(format!("arith.addi {kb}, {j} : index"));
        let x = elem(k, &r, &kk)?;
        k.b.line(format!("memref.store {x}, {tmp}[{r}, {j}] : {tmp_ty}"));
        k.pop_scope();
        k.b.close("}", false);
        k.pop_scope();
        k.b.close("}", false);
        let zero_v = k.b.konst("dense<0.000000e+00>", &vt);
        let rows: Vec<String> = (0..lanes)
            .map(|i| {
                if i < t.mr {
                    let ri = k.b.idx(i);
                    k.b.op(format!("vector.load {tmp}[{ri}, {zero}] : {tmp_ty}, {vt}"))
                } else {
                    zero_v.clone()
                }
            })
            .collect();
        let cols = transpose_block(&mut k.b, rows, &vt);
        let mask = k.b.op(format!(
            "vector.constant_mask [{}] : vector<{lanes}xi1>",
            t.mr
        ));
        let kl = k.b.op(format!("arith.subi {kb}, {k0} : index"));
        let kbase = k.b.op(format!("arith.muli {kl}, {mr} : index"));
        let kbase = k.b.op(format!("arith.addi {base}, {kbase} : index"));
        for (c, x) in cols.iter().enumerate() {
            let off = k.b.idx(c * t.mr);
            let at = k.b.op(format!("arith.addi {kbase}, {off} : index"));
            k.b.line(format!(
                "vector.maskedstore %out[{at}], {mask}, {x} : {pty}, vector<{lanes}xi1>, {vt}"
            ));
        }
        k.pop_scope();
        k.b.close("}", false);
    }
    let kstart = k.b.idx(k_vec_end);
    let (kk, r) = (k.b.fresh(), k.b.fresh());
    // The inner loop walks A's contiguous axis: `k` when A is row-major, so that A's
    // producer (an exp, a select, ...) is computed on vectors and only the stores are
    // strided (by MR); the tile's rows when A is read transposed.
    let open_k = |k: &mut KernelCx<'_>| {
        k.b.open(format!("scf.for {kk} = {kstart} to {kend} step {one} {{"));
        k.push_scope();
    };
    let open_r = |k: &mut KernelCx<'_>| {
        k.b.open(format!("scf.for {r} = {zero} to {mrend} step {one} {{"));
        k.push_scope();
    };
    if s.ta {
        open_k(k);
        open_r(k);
    } else {
        open_r(k);
        open_k(k);
    }
    let kl = k.b.op(format!("arith.subi {kk}, {k0} : index"));
    let kbase = k.b.op(format!("arith.muli {kl}, {mr} : index"));
    let kbase = k.b.op(format!("arith.addi {base}, {kbase} : index"));
    let x = elem(k, &r, &kk)?;
    let at = k.b.op(format!("arith.addi {kbase}, {r} : index"));
    k.b.line(format!("memref.store {x}, %out[{at}] : {pty}"));
    k.pop_scope();
    k.b.close("}", false);
    k.pop_scope();
    k.b.close("}", false);
    k.pop_scope();
    k.b.close("}", false);
    Ok(pty)
}

/// The pack kernel of a `qmatmul`, or of a matmul whose B is fused: like [`emit_pack`], but
/// each element of B is computed as it is packed: dequantized from its NF4 code and block
/// scale (through [`KernelCx::dequant_at`]), or evaluated from B's fused producer (a
/// `concat` of weights reads the right part), so the full-precision or concatenated weight
/// only ever exists as these panels. Returns the output type.
pub(crate) fn emit_pack_computed(
    k: &mut KernelCx<'_>,
    root: ValueId,
    s: &GemmShape,
    t: &CpuTarget,
) -> Result<String, CodegenError> {
    if s.quant.is_none() && !s.fused_b {
        return Err(CodegenError::Internal(
            "a computed pack of a stored B".into(),
        ));
    }
    let args: Vec<ValueId> = k.f.node(root).args.iter().skip(1).copied().collect();
    let codes_shape = k.f.ty(s.b_src).shape.clone();
    let pty = s.packed_ty(t);
    let (p0, p1) = s.panel_span(t);
    let (zero, one) = (k.b.idx(0), k.b.idx(1));
    let (_, bi, batch, p) = range_items(k, &codes_shape, p1 - p0);
    let (bi, p) = (k.b.ix(&bi), k.b.ix(&p));
    // Panel p of the chunk is panel p0 + p of B; row k of B is row k - k0 of the panel.
    let j0 = k.b.ix_add(&Ix::V(p.clone()), &Ix::C(p0));
    let j0 = k.b.ix_mul(&j0, t.nr);
    let j0 = k.b.ix(&j0);
    let (k0, kend, nrend, nc) = (
        k.b.idx(s.k_range.0),
        k.b.idx(s.k_range.1),
        k.b.idx(t.nr),
        k.b.idx(s.n),
    );
    let left = k.b.op(format!("arith.subi {nc}, {j0} : index"));
    let valid = k.b.op(format!("arith.minui {left}, {nrend} : index"));
    let (kk, jj, jz) = (k.b.fresh(), k.b.fresh(), k.b.fresh());
    k.b.open(format!("scf.for {kk} = {k0} to {kend} step {one} {{"));
    k.push_scope();
    let kl = k.b.op(format!("arith.subi {kk}, {k0} : index"));
    k.b.open(format!("scf.for {jj} = {zero} to {valid} step {one} {{"));
    k.push_scope();
    let col = k.b.op(format!("arith.addi {j0}, {jj} : index"));
    let mut idx = batch.clone();
    if s.tb {
        idx.extend([Ix::V(col), Ix::V(kk.clone())]);
    } else {
        idx.extend([Ix::V(kk.clone()), Ix::V(col)]);
    }
    let w = match s.quant {
        Some((block, nested)) => k.dequant_at(root, &args, DType::F32, &idx, block, nested)?,
        None => k.eval(s.b_src, &idx)?,
    };
    k.b.line(format!(
        "memref.store {w}, %out[{bi}, {p}, {kl}, {jj}] : {pty}"
    ));
    k.pop_scope();
    k.b.close("}", false);
    let z = k.b.f32c(0.0);
    k.b.open(format!("scf.for {jz} = {valid} to {nrend} step {one} {{"));
    k.b.line(format!(
        "memref.store {z}, %out[{bi}, {p}, {kl}, {jz}] : {pty}"
    ));
    k.b.close("}", false);
    k.pop_scope();
    k.b.close("}", false);
    k.pop_scope();
    k.b.close("}", false);
    Ok(pty)
}

/// Elements of the flat view microkernels take of every buffer (a static type is required
/// by the bare-pointer convention; nothing is allocated at this size).
const FLAT: usize = 1 << 40;

/// The flat `memref<FLATxf32>` type microkernels read and write through.
fn flat_ty() -> String {
    memref_ty(&[FLAT], "f32")
}

/// The name of the shared microkernel for `rows × cols` tiles (`_add`: with an addend).
fn micro_name(rows: usize, cols: usize, addend: bool, packed_a: bool) -> String {
    let add = if addend { "_add" } else { "" };
    let pa = if packed_a { "_pa" } else { "" };
    format!("graft_gemm_micro_{rows}x{cols}{add}{pa}")
}

/// The GEMM kernel `@{name}` (range = `batches × row tiles`), and the microkernels it calls
/// (shared by every GEMM of the module: callers dedupe them by name).
pub(crate) fn emit_gemm(name: &str, s: &GemmShape, t: &CpuTarget) -> Vec<FuncText> {
    let packed_a = s.packs_a(t);
    let aty = if packed_a {
        memref_ty(&[s.packed_a_len(t)], "f32")
    } else {
        memref_ty(&s.a, "f32")
    };
    let pty = s.packed_ty(t);
    let cty = memref_ty(&[s.batches, s.m, s.n], "f32");
    let fty = flat_ty();
    let tiles = s.tiles(t);
    let panels = s.panels(t);
    let row_tail = s.m % t.mr;
    let col_tail = s.n % t.nr;
    let mut funcs = Vec::new();
    let addend = s.addend.is_some();
    let mut micro = |rows: usize, cols: usize| -> String {
        let mname = micro_name(rows, cols, addend, packed_a);
        if !funcs.iter().any(|f: &FuncText| f.name == mname) {
            funcs.push(emit_micro(&mname, t, rows, cols, addend, packed_a));
        }
        mname
    };
    // This GEMM's panels (a chunk's, or all); the partial last panel of B is the tail.
    let (p0, p1) = s.panel_span(t);
    let tail_here = col_tail != 0 && p1 == panels;
    let full_end = if tail_here { p1 - 1 } else { p1 };
    let has_full = full_end > p0;
    let full_tiles = s.m / t.mr;
    let full = (has_full && full_tiles > 0).then(|| micro(t.mr, t.nr));
    let rtail = (row_tail != 0 && has_full).then(|| micro(row_tail, t.nr));
    let ctail = (tail_here && full_tiles > 0).then(|| micro(t.mr, col_tail));
    let rctail = (row_tail != 0 && tail_here).then(|| micro(row_tail, col_tail));

    let mut b = Body::new();
    let cast = |b: &mut Body, v: &str, ty: &str| {
        b.op(format!(
            "memref.reinterpret_cast {v} to offset: [0], sizes: [{FLAT}], strides: [1] : {ty} to {fty}"
        ))
    };
    let (af, pf, cf) = (
        cast(&mut b, "%a0", &aty),
        cast(&mut b, "%a1", &pty),
        cast(&mut b, "%out", &cty),
    );
    // With an addend, the microkernels also take it (flat, laid out like C) after C.
    let (df, dty) = if addend {
        (
            format!("{}, ", cast(&mut b, "%a2", &cty)),
            format!("{fty}, "),
        )
    } else {
        (String::new(), String::new())
    };
    // A(i, k) of a tile is at a_off + r·sr + k·sk: in the packed A, or in A itself.
    let (sr, sk) = match (packed_a, s.ta) {
        (true, _) => (1, t.mr),
        (false, true) => (1, s.a[2]),
        (false, false) => (s.a[2], 1),
    };
    let (sr, sk) = (b.idx(sr), b.idx(sk));
    // K blocks of this GEMM's K range; the first one starts C afresh (from the addend, if
    // any) unless C holds earlier K chunks' partial sum.
    let (k_start, k_end) = s.k_range;
    let kblocks = s.k_len().div_ceil(t.kc).max(1);
    let (zero, one) = (b.idx(0), b.idx(1));
    let (kb_end, kc, kbase, kend) = (b.idx(kblocks), b.idx(t.kc), b.idx(k_start), b.idx(k_end));
    let kb = b.fresh();
    b.open(format!("scf.for {kb} = {zero} to {kb_end} step {one} {{"));
    let k0 = b.op(format!("arith.muli {kb}, {kc} : index"));
    let k0 = b.op(format!("arith.addi {k0}, {kbase} : index"));
    let k0c = b.op(format!("arith.addi {k0}, {kc} : index"));
    let k1 = b.op(format!("arith.minui {k0c}, {kend} : index"));
    let first = if s.accumulate {
        b.int(0, "i1")
    } else {
        b.op(format!("arith.cmpi eq, {kb}, {zero} : index"))
    };
    let call = |b: &mut Body, f: &str, panel: &Ix, t_iv: &str| {
        let tx = Ix::V(t_iv.to_string());
        let bi = b.ix_div(&tx, tiles);
        let it = b.ix_rem(&tx, tiles);
        let i0 = b.ix_mul(&it, t.mr);
        let abi = if s.a[0] == 1 { Ix::C(0) } else { bi.clone() };
        let pbi = if s.b[0] == 1 { Ix::C(0) } else { bi.clone() };
        // Packed operands hold only this GEMM's K range and panels; microkernels index them
        // with absolute k, so their offsets are taken back by k_start (the sum is never
        // negative where it is used).
        let a_off = if packed_a {
            let a_tile = b.ix_mul(&abi, tiles);
            let a_tile = b.ix_add(&a_tile, &it);
            let a_off = b.ix_mul(&a_tile, s.k_len() * t.mr);
            let a_off = b.ix(&a_off);
            let back = b.idx(k_start * t.mr);
            Ix::V(b.op(format!("arith.subi {a_off}, {back} : index")))
        } else {
            let a_base = b.ix_mul(&abi, s.a[1] * s.a[2]);
            let a_row = b.ix_mul(&i0, if s.ta { 1 } else { s.a[2] });
            b.ix_add(&a_base, &a_row)
        };
        let p_first = b.ix_mul(&pbi, p1 - p0);
        let p_idx = b.ix_add(&p_first, panel);
        let p_idx = b.ix(&p_idx);
        let first_panel = b.idx(p0);
        let p_local = Ix::V(b.op(format!("arith.subi {p_idx}, {first_panel} : index")));
        let p_off = b.ix_mul(&p_local, s.k_len() * t.nr);
        let p_off = b.ix(&p_off);
        let back = b.idx(k_start * t.nr);
        let p_off = Ix::V(b.op(format!("arith.subi {p_off}, {back} : index")));
        let c_base = b.ix_mul(&bi, s.m * s.n);
        let c_row = b.ix_mul(&i0, s.n);
        let c_col = b.ix_mul(panel, t.nr);
        let c_off = b.ix_add(&c_base, &c_row);
        let c_off = b.ix_add(&c_off, &c_col);
        let offs: Vec<String> = [a_off, p_off, c_off].iter().map(|x| b.ix(x)).collect();
        let ldc = b.idx(s.n);
        // The addend's offset and row stride (see `GemmShape::addend_view`).
        let (d_args, d_tys) = if addend {
            let (ldd, col0) = s.addend_view;
            let d_base = b.ix_mul(&bi, s.m * ldd);
            let d_row = b.ix_mul(&i0, ldd);
            let d_col = b.ix_mul(panel, t.nr);
            let d_off = b.ix_add(&d_base, &d_row);
            let d_off = b.ix_add(&d_off, &d_col);
            let d_off = b.ix_add(&d_off, &Ix::C(col0));
            let d_off = b.ix(&d_off);
            (format!(", {d_off}, {}", b.idx(ldd)), "index, index, ")
        } else {
            (String::new(), "")
        };
        b.line(format!(
            "func.call @{f}({af}, {pf}, {cf}, {df}{}, {sr}, {sk}, {ldc}{d_args}, {k0}, {k1}, {first}) : ({fty}, {fty}, {fty}, {dty}index, index, index, {d_tys}index, index, index, index, index, i1) -> ()",
            offs.join(", ")
        ));
    };
    // The thread's row tiles and panels: its range of one, all of the other.
    let (t_lo, t_hi) = if s.split_n {
        (b.idx(0), b.idx(s.batches * tiles))
    } else {
        ("%lo".to_string(), "%hi".to_string())
    };
    // Blocks of MC rows of the thread's tiles: the A block stays in L2 while every panel of
    // the thread passes over it.
    let tb_len = (t.mc / t.mr).max(1);
    let tbs = b.idx(tb_len);
    let blk = b.fresh();
    b.open(format!("scf.for {blk} = {t_lo} to {t_hi} step {tbs} {{"));
    let blk_end0 = b.op(format!("arith.addi {blk}, {tbs} : index"));
    let blk_end = b.op(format!("arith.minui {blk_end0}, {t_hi} : index"));
    // Tiles of the block for one panel, dispatching the row tail.
    let sweep = |b: &mut Body, panel: &Ix, main: &Option<String>, tail: &Option<String>| {
        let tv = b.fresh();
        b.open(format!("scf.for {tv} = {blk} to {blk_end} step {one} {{"));
        match (main, tail) {
            (Some(mf), Some(tf)) => {
                let it = b.ix_rem(&Ix::V(tv.clone()), tiles);
                let it = b.ix(&it);
                let last = b.idx(tiles - 1);
                let is_tail = b.op(format!("arith.cmpi eq, {it}, {last} : index"));
                b.open(format!("scf.if {is_tail} {{"));
                call(b, tf, panel, &tv);
                b.close("} else {", true);
                call(b, mf, panel, &tv);
                b.close("}", false);
            }
            (Some(f), None) | (None, Some(f)) => call(b, f, panel, &tv),
            (None, None) => {}
        }
        b.close("}", false);
    };
    if has_full {
        let (pstart, pend) = if s.split_n {
            let first = b.idx(p0);
            let full_end = b.idx(full_end);
            let lo = b.op(format!("arith.addi %lo, {first} : index"));
            let hi = b.op(format!("arith.addi %hi, {first} : index"));
            (lo, b.op(format!("arith.minui {hi}, {full_end} : index")))
        } else {
            (b.idx(p0), b.idx(full_end))
        };
        let p = b.fresh();
        b.open(format!("scf.for {p} = {pstart} to {pend} step {one} {{"));
        sweep(&mut b, &Ix::V(p), &full, &rtail);
        b.close("}", false);
    }
    if tail_here && s.split_n {
        // The partial last panel belongs to the thread whose range ends the GEMM's.
        let last = b.idx(p1 - p0);
        let mine = b.op(format!("arith.cmpi eq, %hi, {last} : index"));
        b.open(format!("scf.if {mine} {{"));
        sweep(&mut b, &Ix::C(panels - 1), &ctail, &rctail);
        b.close("}", false);
    } else if tail_here {
        sweep(&mut b, &Ix::C(panels - 1), &ctail, &rctail);
    }
    b.close("}", false);
    b.close("}", false);
    funcs.insert(
        0,
        FuncText {
            name: name.to_string(),
            // Operands in step order (A, packed B, the addend), then the output.
            params: [format!("%a0: {aty}"), format!("%a1: {pty}")]
                .into_iter()
                .chain(addend.then(|| format!("%a2: {cty}")))
                .chain([format!("%out: {cty} {{llvm.noalias}}")])
                .collect(),
            body: b.finish(),
            ranged: true,
        },
    );
    funcs
}

/// One microkernel: a `rows × cols` tile of C over `k0..k1`, reading A at `a_off + r·sr +
/// k·sk`, the packed panel at `p_off + k·NR + j` and C at `c_off + r·ldc + j` (all flat).
/// The products accumulate from zero in registers; the old C is added after the k loop
/// (except in the first K block, which adds the addend `%d`, laid out like C, when there is
/// one), its lines prefetched before the loop.
fn emit_micro(
    name: &str,
    t: &CpuTarget,
    rows: usize,
    cols: usize,
    addend: bool,
    packed_a: bool,
) -> FuncText {
    let fty = flat_ty();
    let vt = vty(t);
    let nv = cols.div_ceil(t.lanes);
    let mut b = Body::new();
    let zero_v = b.konst("dense<0.000000e+00>", &vt);
    // Columns of vector v that are inside C: lanes, or fewer (masked), for the last one.
    let width = |v: usize| (cols - v * t.lanes).min(t.lanes);
    let masks: Vec<Option<String>> = (0..nv)
        .map(|v| {
            (width(v) < t.lanes).then(|| {
                b.op(format!(
                    "vector.constant_mask [{}] : vector<{}xi1>",
                    width(v),
                    t.lanes
                ))
            })
        })
        .collect();
    // Offsets of each (row, vector) of a tile at `off` with row stride `ld`: C's, and the
    // addend's (its own offset and stride).
    let tile_at = |b: &mut Body, off: &str, ld: &str| -> Vec<String> {
        let mut at = Vec::new();
        for r in 0..rows {
            let ro = if r == 0 {
                off.to_string()
            } else {
                let rc = b.idx(r);
                let m = b.op(format!("arith.muli {ld}, {rc} : index"));
                b.op(format!("arith.addi {off}, {m} : index"))
            };
            for v in 0..nv {
                at.push(if v == 0 {
                    ro.clone()
                } else {
                    let vc = b.idx(v * t.lanes);
                    b.op(format!("arith.addi {ro}, {vc} : index"))
                });
            }
        }
        at
    };
    let c_at = tile_at(&mut b, "%c_off", "%ldc");
    let d_at = if addend {
        tile_at(&mut b, "%d_off", "%ldd")
    } else {
        Vec::new()
    };
    let count = rows * nv;
    let tys = vec![vt.clone(); count].join(", ");
    // The C tile is read (after the k loop, when this is not the first K block) and written:
    // fetch its lines now, so that the latency hides behind the FMAs.
    for at in &c_at {
        b.line(format!(
            "memref.prefetch %c[{at}], write, locality<3>, data : {fty}"
        ));
    }
    // The k loop.
    let one = b.idx(1);
    let nr = b.idx(t.nr);
    let (res, kv) = (b.fresh(), b.fresh());
    let accs: Vec<String> = (0..count).map(|_| b.fresh()).collect();
    let iter: Vec<String> = accs.iter().map(|a| format!("{a} = {zero_v}")).collect();
    b.open(format!(
        "{res}:{count} = scf.for {kv} = %k0 to %k1 step {one} iter_args({}) -> ({tys}) {{",
        iter.join(", ")
    ));
    let kb = b.op(format!("arith.muli {kv}, {nr} : index"));
    let pk = b.op(format!("arith.addi %p_off, {kb} : index"));
    let bvs: Vec<String> = (0..nv)
        .map(|v| {
            let at = if v == 0 {
                pk.clone()
            } else {
                let off = b.idx(v * t.lanes);
                b.op(format!("arith.addi {pk}, {off} : index"))
            };
            b.op(format!("vector.load %bp[{at}] : {fty}, {vt}"))
        })
        .collect();
    // A packed tile's strides are constants (row 1, k MR): its loads then take immediate
    // offsets from one pointer, leaving the loop's integer ports to the FMAs.
    let (sr, sk) = if packed_a {
        (b.idx(1), b.idx(t.mr))
    } else {
        ("%sr".to_string(), "%sk".to_string())
    };
    let ks = b.op(format!("arith.muli {kv}, {sk} : index"));
    let ak = b.op(format!("arith.addi %a_off, {ks} : index"));
    let mut next = Vec::new();
    for r in 0..rows {
        let at = if r == 0 {
            ak.clone()
        } else {
            let rc = b.idx(r);
            let m = b.op(format!("arith.muli {sr}, {rc} : index"));
            b.op(format!("arith.addi {ak}, {m} : index"))
        };
        let a = b.op(format!("memref.load %a[{at}] : {fty}"));
        let ab = b.op(format!("vector.broadcast {a} : f32 to {vt}"));
        for (v, bv) in bvs.iter().enumerate() {
            let acc = &accs[r * nv + v];
            next.push(b.op(format!("vector.fma {ab}, {bv}, {acc} : {vt}")));
        }
    }
    b.line(format!("scf.yield {} : {tys}", next.join(", ")));
    b.close("}", false);
    // Add the current C unless this is the first K block (which adds the addend, if any),
    // then store.
    let add_from = |b: &mut Body, mem: &str, offsets: &[String]| -> Vec<String> {
        let mut added = Vec::new();
        for r in 0..rows {
            for (v, mask) in masks.iter().enumerate() {
                let at = &offsets[r * nv + v];
                let old = match mask {
                    None => b.op(format!("vector.load {mem}[{at}] : {fty}, {vt}")),
                    Some(m) => b.op(format!(
                        "vector.maskedload {mem}[{at}], {m}, {zero_v} : {fty}, vector<{}xi1>, {vt} into {vt}",
                        t.lanes
                    )),
                };
                added.push(b.op(format!("arith.addf {old}, {res}#{} : {vt}", r * nv + v)));
            }
        }
        added
    };
    let sums = b.fresh();
    b.open(format!("{sums}:{count} = scf.if %first -> ({tys}) {{"));
    let fresh: Vec<String> = if addend {
        add_from(&mut b, "%d", &d_at)
    } else {
        (0..count).map(|i| format!("{res}#{i}")).collect()
    };
    b.line(format!("scf.yield {} : {tys}", fresh.join(", ")));
    b.close("} else {", true);
    let added = add_from(&mut b, "%c", &c_at);
    b.line(format!("scf.yield {} : {tys}", added.join(", ")));
    b.close("}", false);
    for r in 0..rows {
        for (v, mask) in masks.iter().enumerate() {
            let at = &c_at[r * nv + v];
            let val = format!("{sums}#{}", r * nv + v);
            match mask {
                None => b.line(format!("vector.store {val}, %c[{at}] : {fty}, {vt}")),
                Some(m) => b.line(format!(
                    "vector.maskedstore %c[{at}], {m}, {val} : {fty}, vector<{}xi1>, {vt}",
                    t.lanes
                )),
            }
        }
    }
    FuncText {
        name: name.to_string(),
        params: [
            format!("%a: {fty}"),
            format!("%bp: {fty}"),
            format!("%c: {fty}"),
        ]
        .into_iter()
        .chain(addend.then(|| format!("%d: {fty}")))
        .chain([
            "%a_off: index".into(),
            "%p_off: index".into(),
            "%c_off: index".into(),
            "%sr: index".into(),
            "%sk: index".into(),
            "%ldc: index".into(),
        ])
        .chain(
            addend
                .then(|| ["%d_off: index".to_string(), "%ldd: index".to_string()])
                .into_iter()
                .flatten(),
        )
        .chain([
            "%k0: index".into(),
            "%k1: index".into(),
            "%first: i1".into(),
        ])
        .collect(),
        body: b.finish(),
        ranged: false,
    }
}
