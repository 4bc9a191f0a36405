//! The cost model: FLOPs and bytes moved per op, turned into time by a roofline per target.
//!
//! For a node: `time = max(flops / peak_flops, bytes / bandwidth) + launch`, where `bytes`
//! counts every operand read and the result written once (elementwise chains are fused later,
//! so this overestimates them uniformly), `launch` is a per-kernel overhead, and views
//! (`reshape`, `broadcast`, `slice`, `stop_grad`, constants, inputs) are free. A node that is
//! step-invariant (computed from frozen weights and constants only) costs nothing: the
//! training loop computes it once. Matmul: `2·batch·m·n·k` FLOPs; a quantized matmul reads
//! its weight as 4-bit codes plus scales instead of f32.

use graft_ir::{Function, Op, TensorType};

/// A machine's throughput.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Name shown in reports.
    pub name: &'static str,
    /// Sustained FLOP/s.
    pub peak_flops: f64,
    /// Sustained bytes/s to memory.
    pub bandwidth: f64,
    /// Seconds of fixed cost per kernel.
    pub launch: f64,
}

impl Target {
    /// A 2-core AVX2 CPU (this project's machines): about 100 GFLOP/s f32, 20 GB/s.
    pub const CPU: Target = Target {
        name: "cpu",
        peak_flops: 1.0e11,
        bandwidth: 2.0e10,
        launch: 2.0e-6,
    };
    /// An NVIDIA H200 (fp32 through TF32 tensor cores, HBM3e).
    pub const CUDA: Target = Target {
        name: "cuda",
        peak_flops: 4.0e14,
        bandwidth: 4.8e12,
        launch: 5.0e-6,
    };

    /// Looks a target up by name.
    pub fn by_name(name: &str) -> Option<Target> {
        match name {
            "cpu" => Some(Target::CPU),
            "cuda" => Some(Target::CUDA),
            _ => None,
        }
    }
}

/// FLOPs and bytes of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    /// Floating-point operations.
    pub flops: f64,
    /// Bytes read and written.
    pub bytes: f64,
    /// Whether it is a kernel (pays the launch cost) rather than a view.
    pub kernel: bool,
}

fn bytes(t: &TensorType) -> f64 {
    t.size_bytes() as f64
}

/// The work of applying `op` to operands of types `args`, giving `out`.
pub fn work(op: &Op, args: &[&TensorType], out: &TensorType) -> Work {
    let io = || args.iter().map(|t| bytes(t)).sum::<f64>() + bytes(out);
    let n = out.numel() as f64;
    match op {
        Op::Input { .. }
        | Op::Constant { .. }
        | Op::Reshape
        | Op::Broadcast
        | Op::Slice { .. }
        | Op::StopGrad => Work::default(),
        Op::MatMul { ta, .. } | Op::QuantMatMul { ta, .. } => {
            let a = args[0];
            let k = if *ta {
                a.shape[a.rank() - 2]
            } else {
                a.shape[a.rank() - 1]
            };
            Work {
                flops: 2.0 * n * k as f64,
                bytes: io(),
                kernel: true,
            }
        }
        Op::Reduce { .. } => Work {
            flops: args[0].numel() as f64,
            bytes: io(),
            kernel: true,
        },
        Op::Softmax { .. } | Op::LogSoftmax { .. } => Work {
            flops: 5.0 * n,
            bytes: io(),
            kernel: true,
        },
        // Golub–Van Loan's count for a dense SVD (the largest of the two): 4m²n + 22n³ for
        // m ≥ n, a few sweeps of m·n² for QR-class work.
        Op::Factor(_) => {
            let a = args[0];
            let (m, k) = (a.shape[a.rank() - 2], a.shape[a.rank() - 1]);
            let (big, small) = (m.max(k) as f64, m.min(k) as f64);
            let batch = (a.numel() as f64) / (big * small).max(1.0);
            Work {
                flops: batch * (4.0 * big * big * small + 22.0 * small.powi(3)),
                bytes: io(),
                kernel: true,
            }
        }
        // A comparison sort: n·log₂(n) comparisons per lane of n.
        Op::Sort { axis } => {
            let ext = args[0].shape[*axis].max(2) as f64;
            Work {
                flops: n * ext.log2(),
                bytes: io(),
                kernel: true,
            }
        }
        // LU with partial pivoting: ⅔n³ to factor, 2n²k to solve, per matrix.
        Op::Solve => {
            let (a, b) = (args[0], args[1]);
            let n = a.shape[a.rank() - 1] as f64;
            let k = b.shape[b.rank() - 1] as f64;
            let batch = (a.numel() as f64) / (n * n).max(1.0);
            Work {
                flops: batch * (2.0 / 3.0 * n.powi(3) + 2.0 * n * n * k),
                bytes: io(),
                kernel: true,
            }
        }
        Op::Dequantize { .. } => Work {
            flops: 2.0 * n,
            bytes: io(),
            kernel: true,
        },
        // Transcendental-class: a few operations an element.
        Op::Unary(_) => Work {
            flops: 4.0 * n,
            bytes: io(),
            kernel: true,
        },
        // One operation (or one move) an element.
        Op::Iota { .. }
        | Op::Random { .. }
        | Op::Binary(_)
        | Op::Select
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Gather { .. }
        | Op::Cast
        | Op::Dropout { .. }
        | Op::Quantize { .. } => Work {
            flops: n,
            bytes: io(),
            kernel: true,
        },
    }
}

/// Seconds for `w` on `target`.
pub fn seconds(w: &Work, target: &Target) -> f64 {
    if !w.kernel {
        return 0.0;
    }
    (w.flops / target.peak_flops).max(w.bytes / target.bandwidth) + target.launch
}

/// The cost of a whole function.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Total FLOPs.
    pub flops: f64,
    /// Total bytes moved.
    pub bytes: f64,
    /// Kernels (non-view nodes).
    pub kernels: usize,
    /// Peak bytes of live intermediate values, inputs excluded (values freed after their last
    /// use, in node order).
    pub peak_memory: f64,
    /// Estimated seconds on the target.
    pub seconds: f64,
}

/// Summarizes a function's cost. `invariant` nodes (weights-only subgraphs) are counted once
/// per run like everything else here; the e-graph's extraction treats them as free.
pub fn summarize(f: &Function, target: &Target) -> Summary {
    let mut s = Summary::default();
    let mut last_use = vec![0usize; f.nodes.len()];
    for (i, n) in f.nodes.iter().enumerate() {
        for a in &n.args {
            last_use[a.index()] = i;
        }
    }
    for o in &f.outputs {
        last_use[o.value.index()] = usize::MAX;
    }
    let (mut live, mut peak) = (0f64, 0f64);
    let mut frees: Vec<Vec<usize>> = vec![Vec::new(); f.nodes.len()];
    for (i, &l) in last_use.iter().enumerate() {
        if l != usize::MAX && l >= i {
            frees[l].push(i);
        }
    }
    for (i, n) in f.nodes.iter().enumerate() {
        let args: Vec<&TensorType> = n.args.iter().map(|a| f.ty(*a)).collect();
        let w = work(&n.op, &args, &n.ty);
        s.flops += w.flops;
        s.bytes += w.bytes;
        s.seconds += seconds(&w, target);
        if w.kernel {
            s.kernels += 1;
            live += bytes(&n.ty);
            peak = peak.max(live);
        }
        for &d in &frees[i] {
            let dn = &f.nodes[d];
            let args: Vec<&TensorType> = dn.args.iter().map(|a| f.ty(*a)).collect();
            if work(&dn.op, &args, &dn.ty).kernel {
                live -= bytes(&dn.ty);
            }
        }
    }
    s.peak_memory = peak;
    s
}
