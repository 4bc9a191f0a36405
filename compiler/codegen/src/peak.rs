//! The host's own limit: its fp32 FMA peak, measured by a register-resident loop of fused
//! multiply-adds on every thread at once (the widest vectors the CPU has: AVX-512, else
//! AVX2 + FMA, else scalar `mul_add`). Speed is stated as a fraction of this figure, which
//! holds on every host, unlike any library's GEMM rate. Only an optimized build reaches it
//! (unoptimized code keeps the accumulators in memory).
#![allow(unsafe_code)]

/// What the FMA loop measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    /// fp32 FLOP/s over all threads (an FMA counts 2).
    pub flops_per_s: f64,
    /// Threads that ran the loop.
    pub threads: usize,
    /// The instructions used: `avx512f`, `avx2+fma` or `scalar`.
    pub isa: &'static str,
}

/// Independent accumulators per thread, enough to cover the FMA latency (4 cycles) on two
/// ports while staying in registers: 16 of AVX-512's 32 zmm, 12 of AVX2's 16 ymm.
const CHAINS_512: usize = 16;
const CHAINS_256: usize = 12;
const CHAINS_SCALAR: usize = 16;

/// Runs the FMA loop on `threads` threads for about `seconds` in all and reports the best
/// rate of five rounds: a peak is what the machine can do, and a round that another process
/// (or a hypervisor) slowed is not that.
pub fn fma_peak(threads: usize, seconds: f64) -> Peak {
    const ROUNDS: usize = 5;
    let threads = threads.max(1);
    let isa = isa();
    // Calibrate: iterations for one round on one thread, measured briefly.
    let probe = 1u64 << 16;
    let t0 = std::time::Instant::now();
    std::hint::black_box(run(isa, probe));
    let per_iter = t0.elapsed().as_secs_f64() / probe as f64;
    let iters = ((seconds / ROUNDS as f64 / per_iter.max(1e-12)) as u64).max(probe);
    let flops = threads as f64 * iters as f64 * flops_per_iter(isa);
    let best = (0..ROUNDS)
        .map(|_| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(move || std::hint::black_box(run(isa, iters)));
                }
            });
            flops / start.elapsed().as_secs_f64().max(1e-9)
        })
        .fold(0.0, f64::max);
    Peak {
        flops_per_s: best,
        threads,
        isa,
    }
}

fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
    }
    "scalar"
}

fn flops_per_iter(isa: &str) -> f64 {
    let (lanes, chains) = match isa {
        "avx512f" => (16, CHAINS_512),
        "avx2+fma" => (8, CHAINS_256),
        _ => (1, CHAINS_SCALAR),
    };
    2.0 * (lanes * chains) as f64
}

fn run(isa: &str, iters: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each kernel is called only when its instructions were detected above.
        unsafe {
            match isa {
                "avx512f" => return x86::fma512(iters),
                "avx2+fma" => return x86::fma256(iters),
                _ => {}
            }
        }
    }
    scalar(iters)
}

fn scalar(iters: u64) -> f32 {
    let mut acc = [0.0f32; CHAINS_SCALAR];
    let (a, b) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for x in &mut acc {
            *x = x.mul_add(a, b);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS_256, CHAINS_512};
    use std::arch::x86_64::*;

    /// `acc = acc·a + b` on independent zmm accumulators.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); CHAINS_512];
        for _ in 0..iters {
            for x in &mut acc {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for x in acc {
            sum = _mm512_add_ps(sum, x);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `acc = acc·a + b` on independent ymm accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); CHAINS_256];
        for _ in 0..iters {
            for x in &mut acc {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = _mm256_setzero_ps();
        for x in acc {
            sum = _mm256_add_ps(sum, x);
        }
        let mut out = [0.0f32; 8];
        // SAFETY: `out` holds exactly the 8 floats the unaligned store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_counts_its_flops_and_names_its_instructions() {
        let p = fma_peak(1, 0.02);
        assert!(p.flops_per_s.is_finite() && p.flops_per_s > 1e8, "{p:?}");
        assert_eq!(p.threads, 1);
        assert!(["avx512f", "avx2+fma", "scalar"].contains(&p.isa));
        // Every kernel computes the same recurrence: finite, and equal across ISAs' sums
        // up to the chain count.
        assert!(run(p.isa, 1000).is_finite());
    }
}
