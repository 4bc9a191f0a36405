//! The static memory plan: every intermediate buffer of a compiled function gets a fixed
//! offset in one arena, decided at compile time from the schedule's liveness.
//!
//! A slot is live from the step that writes it to the last step that reads it (both
//! inclusive: a kernel never writes over its own operands). Slots are placed largest first,
//! each at the lowest 64-byte-aligned offset that does not overlap a placed slot whose live
//! range intersects its own (the "greedy by size" heuristic of TFLite's arena planner). The
//! arena's size is the plan's peak. Function inputs are read in place from the caller's
//! tensors and outputs are separate buffers handed to the caller, so neither is in the arena;
//! nor are bound slots (packed frozen weights, kept by the function between runs).

use crate::plan::ExecPlan as Plan;
use graft_ir::DType;

/// Alignment of every buffer in the arena (a cache line; also the widest vector).
pub const ALIGN: usize = 64;

/// Bytes per element of a slot's storage (`bf16`/`f16` values are computed in `f32`).
pub fn storage_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 | DType::I32 => 4,
        DType::F64 | DType::I64 => 8,
        DType::U8 | DType::U4 | DType::Bool => 1,
    }
}

/// Where every slot lives while a compiled function runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Byte offset of each slot in the arena; `None` for inputs and outputs.
    pub offsets: Vec<Option<usize>>,
    /// The arena's size in bytes: the peak of the intermediates.
    pub arena_bytes: usize,
    /// Bytes of the outputs (allocated per run, handed to the caller).
    pub output_bytes: usize,
    /// Bytes all intermediates would take without reuse.
    pub unshared_bytes: usize,
    /// Number of intermediate buffers placed in the arena.
    pub buffers: usize,
}

/// What [`crate::CompiledFunction::memory`] reports about the static memory plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// The arena holding every intermediate, sized at compile time: the planned peak.
    pub arena_bytes: usize,
    /// The function's outputs, allocated each run and returned.
    pub output_bytes: usize,
    /// What the intermediates would take if no buffer were reused.
    pub unshared_bytes: usize,
    /// Intermediate buffers placed in the arena.
    pub buffers: usize,
}

impl MemoryPlan {
    /// The report handed to callers.
    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            arena_bytes: self.arena_bytes,
            output_bytes: self.output_bytes,
            unshared_bytes: self.unshared_bytes,
            buffers: self.buffers,
        }
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Each slot's live range: the first step writing it and the last step touching it
/// (`usize::MAX` as the first step of a slot no step writes).
fn live_ranges(plan: &Plan) -> (Vec<usize>, Vec<usize>) {
    let n = plan.slots.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    for (si, step) in plan.steps.iter().enumerate() {
        first[step.out] = first[step.out].min(si);
        last[step.out] = last[step.out].max(si);
        for &a in &step.args {
            last[a] = last[a].max(si);
        }
    }
    (first, last)
}

/// Plans the arena for `plan`'s intermediates.
pub fn plan_memory(plan: &Plan) -> MemoryPlan {
    let n = plan.slots.len();
    let mut is_output = vec![false; n];
    for (_, _, s) in &plan.outputs {
        is_output[*s] = true;
    }
    let (first, last) = live_ranges(plan);
    let bytes = |s: usize| align_up(plan.slots[s].len * storage_bytes(plan.slots[s].dtype));
    let mut order: Vec<usize> = (0..n)
        .filter(|&s| {
            let slot = &plan.slots[s];
            slot.input.is_none() && !slot.bound && !is_output[s] && first[s] != usize::MAX
        })
        .collect();
    // Largest first; ties by definition order, so the plan is deterministic.
    order.sort_by_key(|&s| (std::cmp::Reverse(bytes(s)), first[s], s));
    let mut offsets = vec![None; n];
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(order.len());
    let mut arena = 0usize;
    for &s in &order {
        let size = bytes(s);
        // Byte ranges of placed buffers whose lifetimes overlap this one, by offset.
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(_, _, f, l)| f <= last[s] && first[s] <= l)
            .map(|&(off, sz, _, _)| (off, off + sz))
            .collect();
        taken.sort_unstable();
        let mut at = 0usize;
        for (lo, hi) in taken {
            if at + size <= lo {
                break;
            }
            at = at.max(hi);
        }
        offsets[s] = Some(at);
        arena = arena.max(at + size);
        placed.push((at, size, first[s], last[s]));
    }
    let output_bytes = (0..n).filter(|&s| is_output[s] && plan.slots[s].input.is_none());
    MemoryPlan {
        unshared_bytes: order.iter().map(|&s| bytes(s)).sum(),
        buffers: order.len(),
        output_bytes: output_bytes.map(bytes).sum(),
        offsets,
        arena_bytes: arena,
    }
}

/// The buffers live at the step where the most bytes are live, largest first (40 at most),
/// one line each with their live range and the node they hold: `GRAFT_MEMPLAN_DEBUG`'s report.
pub fn peak_report(f: &graft_ir::Function, plan: &Plan, mem: &MemoryPlan) -> String {
    use std::fmt::Write;
    let (first, last) = live_ranges(plan);
    let size = |s: usize| plan.slots[s].len * storage_bytes(plan.slots[s].dtype);
    let placed: Vec<usize> = (0..plan.slots.len())
        .filter(|&s| mem.offsets[s].is_some())
        .collect();
    let live_at = |step: usize| -> Vec<usize> {
        placed
            .iter()
            .copied()
            .filter(|&s| first[s] <= step && step <= last[s])
            .collect()
    };
    let peak = (0..plan.steps.len())
        .max_by_key(|&i| live_at(i).into_iter().map(size).sum::<usize>())
        .unwrap_or(0);
    let mut live = live_at(peak);
    live.sort_by_key(|&s| std::cmp::Reverse(size(s)));
    let mut out = format!(
        "memory plan: arena {} bytes; {} buffers of {} bytes live at step {peak} of {}:\n",
        mem.arena_bytes,
        live.len(),
        live.iter().map(|&s| size(s)).sum::<usize>(),
        plan.steps.len()
    );
    for s in live.into_iter().take(40) {
        let what = plan
            .slot_of
            .iter()
            .position(|x| *x == Some(s))
            .map(|v| format!("%{v} {} {}", f.nodes[v].op.name(), f.nodes[v].ty))
            .unwrap_or_else(|| "scratch".into());
        let _ = writeln!(
            out,
            "  {:>10} bytes  steps {}..{}  {what}",
            size(s),
            first[s],
            last[s]
        );
    }
    out
}

/// Checks a plan's invariant: no two buffers that are live at the same step overlap.
/// Used by the tests.
pub fn overlapping(plan: &Plan, mem: &MemoryPlan) -> Option<(usize, usize)> {
    let n = plan.slots.len();
    let (first, last) = live_ranges(plan);
    let placed: Vec<(usize, usize)> = (0..n)
        .filter_map(|s| mem.offsets[s].map(|o| (s, o)))
        .collect();
    for (i, &(a, oa)) in placed.iter().enumerate() {
        for &(b, ob) in &placed[i + 1..] {
            let sa = plan.slots[a].len * storage_bytes(plan.slots[a].dtype);
            let sb = plan.slots[b].len * storage_bytes(plan.slots[b].dtype);
            let live = first[a] <= last[b] && first[b] <= last[a];
            let space = oa < ob + sb && ob < oa + sa;
            if live && space {
                return Some((a, b));
            }
        }
    }
    None
}
