//! The start-up check that this CPU has every feature the linked kernels were compiled
//! for: a binary built for AVX-512 on an AVX2 machine says so and exits instead of dying on
//! SIGILL in its first kernel. The check itself is compiled for baseline x86-64.

/// Whether this CPU has `feature` (Rust's name for it); `None` for a name not checked here.
#[cfg(target_arch = "x86_64")]
fn detected(feature: &str) -> Option<bool> {
    use std::arch::is_x86_feature_detected as has;
    Some(match feature {
        "sse3" => has!("sse3"),
        "ssse3" => has!("ssse3"),
        "sse4.1" => has!("sse4.1"),
        "sse4.2" => has!("sse4.2"),
        "popcnt" => has!("popcnt"),
        "cmpxchg16b" => has!("cmpxchg16b"),
        "avx" => has!("avx"),
        "avx2" => has!("avx2"),
        "bmi1" => has!("bmi1"),
        "bmi2" => has!("bmi2"),
        "f16c" => has!("f16c"),
        "fma" => has!("fma"),
        "lzcnt" => has!("lzcnt"),
        "movbe" => has!("movbe"),
        "xsave" => has!("xsave"),
        "avx512f" => has!("avx512f"),
        "avx512bw" => has!("avx512bw"),
        "avx512cd" => has!("avx512cd"),
        "avx512dq" => has!("avx512dq"),
        "avx512vl" => has!("avx512vl"),
        "avx512vnni" => has!("avx512vnni"),
        "avx512bf16" => has!("avx512bf16"),
        "avx512vbmi" => has!("avx512vbmi"),
        "avx512vbmi2" => has!("avx512vbmi2"),
        "avx512ifma" => has!("avx512ifma"),
        "avx512bitalg" => has!("avx512bitalg"),
        "avx512vpopcntdq" => has!("avx512vpopcntdq"),
        "gfni" => has!("gfni"),
        "vaes" => has!("vaes"),
        "vpclmulqdq" => has!("vpclmulqdq"),
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn detected(_feature: &str) -> Option<bool> {
    Some(false)
}

/// The features of `required` this CPU lacks. `GRAFT_CPU_HIDE` (a comma-separated list)
/// hides features from the check, to see what a smaller CPU would be told.
pub fn missing(required: &[String]) -> Vec<String> {
    let hidden = std::env::var("GRAFT_CPU_HIDE").unwrap_or_default();
    let hidden: Vec<&str> = hidden.split(',').map(str::trim).collect();
    required
        .iter()
        .filter(|f| hidden.contains(&f.as_str()) || detected(f) != Some(true))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_feature_is_missing_and_an_unknown_one_too() {
        // SSE3 is in every x86-64 CPU graft runs on; `no-such` is not a feature.
        let req = vec!["sse3".to_string(), "no-such".to_string()];
        assert_eq!(missing(&req), vec!["no-such".to_string()]);
    }
}
