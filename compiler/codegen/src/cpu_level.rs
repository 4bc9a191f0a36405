//! The CPU a compiled kernel may assume: the host (`native`, what the JIT detects), or one
//! of the x86-64 micro-architecture levels a fleet shares (`x86-64-v3`: AVX2 and FMA;
//! `x86-64-v4`: AVX-512). A level is written into every kernel as LLVM's `target-cpu` and
//! `target-features` function attributes, which take the place of the host's for that
//! function, so the JIT emits only that level's instructions whatever CPU compiles it.
//!
//! [`CpuLevel::required`] lists the features a binary built for the level checks at
//! start-up, by the names Rust's `is_x86_feature_detected!` knows ([`CHECKABLE`]).

use inkwell::targets::TargetMachine;

/// Features of x86-64-v2, which v3 and v4 include (LLVM's names).
const V2: &[&str] = &[
    "cx16", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3", "sahf",
];
/// What x86-64-v3 adds to v2.
const V3: &[&str] = &[
    "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave",
];
/// What x86-64-v4 adds to v3.
const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];

/// The features a built binary checks at start-up: LLVM's name and the name Rust's
/// `is_x86_feature_detected!` knows it by.
pub const CHECKABLE: &[(&str, &str)] = &[
    ("sse3", "sse3"),
    ("ssse3", "ssse3"),
    ("sse4.1", "sse4.1"),
    ("sse4.2", "sse4.2"),
    ("popcnt", "popcnt"),
    ("cx16", "cmpxchg16b"),
    ("avx", "avx"),
    ("avx2", "avx2"),
    ("bmi", "bmi1"),
    ("bmi2", "bmi2"),
    ("f16c", "f16c"),
    ("fma", "fma"),
    ("lzcnt", "lzcnt"),
    ("movbe", "movbe"),
    ("xsave", "xsave"),
    ("avx512f", "avx512f"),
    ("avx512bw", "avx512bw"),
    ("avx512cd", "avx512cd"),
    ("avx512dq", "avx512dq"),
    ("avx512vl", "avx512vl"),
    ("avx512vnni", "avx512vnni"),
    ("avx512bf16", "avx512bf16"),
    ("avx512vbmi", "avx512vbmi"),
    ("avx512vbmi2", "avx512vbmi2"),
    ("avx512ifma", "avx512ifma"),
    ("avx512bitalg", "avx512bitalg"),
    ("avx512vpopcntdq", "avx512vpopcntdq"),
    ("gfni", "gfni"),
    ("vaes", "vaes"),
    ("vpclmulqdq", "vpclmulqdq"),
];

/// The CPU level compiled code targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuLevel {
    /// The host CPU, as the JIT detects it.
    #[default]
    Native,
    /// x86-64-v3: AVX2, FMA, BMI2 (Haswell, Zen 1 and later).
    X86_64V3,
    /// x86-64-v4: AVX-512 F/BW/CD/DQ/VL (Skylake-SP, Zen 4 and later).
    X86_64V4,
}

impl CpuLevel {
    /// `native`, `x86-64-v3` or `x86-64-v4`.
    ///
    /// # Errors
    /// Any other name, with the ones accepted.
    pub fn parse(name: &str) -> Result<CpuLevel, String> {
        match name {
            "native" => Ok(CpuLevel::Native),
            "x86-64-v3" => Ok(CpuLevel::X86_64V3),
            "x86-64-v4" => Ok(CpuLevel::X86_64V4),
            other => Err(format!(
                "unknown CPU level `{other}` (expected native, x86-64-v3 or x86-64-v4)"
            )),
        }
    }

    /// Its name, as [`CpuLevel::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::Native => "native",
            CpuLevel::X86_64V3 => "x86-64-v3",
            CpuLevel::X86_64V4 => "x86-64-v4",
        }
    }

    /// The level's features, by LLVM's names; the host's for `native`.
    fn llvm_features(self) -> Vec<String> {
        match self {
            CpuLevel::Native => TargetMachine::get_host_cpu_features()
                .to_string()
                .split(',')
                .filter_map(|f| f.strip_prefix('+'))
                .map(str::to_string)
                .collect(),
            CpuLevel::X86_64V3 => [V2, V3].concat().iter().map(|f| f.to_string()).collect(),
            CpuLevel::X86_64V4 => [V2, V3, V4]
                .concat()
                .iter()
                .map(|f| f.to_string())
                .collect(),
        }
    }

    /// The features a binary built for this level checks at start-up (Rust's names, see
    /// [`CHECKABLE`]).
    pub fn required(self) -> Vec<String> {
        let have = self.llvm_features();
        CHECKABLE
            .iter()
            .filter(|(llvm, _)| have.iter().any(|h| h == llvm))
            .map(|(_, rust)| rust.to_string())
            .collect()
    }

    /// LLVM's `target-cpu` and `target-features` for the level's kernels; `None` for the host.
    pub(crate) fn llvm_attributes(self) -> Option<(&'static str, String)> {
        let cpu = match self {
            CpuLevel::Native => return None,
            CpuLevel::X86_64V3 => "x86-64-v3",
            CpuLevel::X86_64V4 => "x86-64-v4",
        };
        let features: Vec<String> = self
            .llvm_features()
            .iter()
            .map(|f| format!("+{f}"))
            .collect();
        Some((cpu, features.join(",")))
    }

    /// The vector shape for the level.
    pub fn target(self) -> crate::CpuTarget {
        match self {
            CpuLevel::Native => crate::CpuTarget::host(),
            level => {
                let have = level.llvm_features();
                let mut t = crate::CpuTarget::from_features(|f| have.iter().any(|h| h == f));
                t.level = level;
                t
            }
        }
    }

    /// Whether code for this level runs on the host.
    pub fn runs_here(self) -> bool {
        let native = CpuLevel::Native.required();
        self.required().iter().all(|f| native.contains(f))
    }
}
