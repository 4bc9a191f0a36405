//! What a training run needs in memory, estimated before anything is allocated, against
//! what the machine has: `MemAvailable` from `/proc/meminfo`, lowered to the cgroup's limit
//! (`memory.max`) when the process runs in one. A model that cannot fit is a clear error
//! before the run allocates (rather than an abort inside the allocator), and a warning from
//! `graft check`.

use graft_frontend::{DeclKind, Program};

/// Bytes a run holds beside its activations: the frozen weights as stored (NF4 at half a
/// byte an element plus a scale per block, else `f32`), and each trainable tensor four times
/// (value, gradient, and AdamW's two moments).
pub fn estimate(program: &Program) -> u128 {
    program
        .tensors
        .iter()
        .map(|t| {
            let n = t.ty.numel() as u128;
            match (t.kind, t.quant) {
                (DeclKind::Weight, Some(q)) => n / 2 + 4 * n / q.block.max(1) as u128,
                (DeclKind::Weight, None) | (DeclKind::State, _) => 4 * n,
                (_, _) => 16 * n,
            }
        })
        .sum()
}

/// Bytes this process may still allocate, if the system says.
pub fn available() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u128>().ok())
        .map(|kb| kb * 1024)?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u128>().ok());
    let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|s| s.trim().parse::<u128>().ok())
        .unwrap_or(0);
    Some(match cgroup {
        Some(max) => avail.min(max.saturating_sub(used)),
        None => avail,
    })
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`), 0 where unavailable.
pub fn rss_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A size for people: `1.5 GiB`.
pub fn human(bytes: u128) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.1} GiB", b / 1_073_741_824.0),
    }
}

/// The message when `need` bytes (for `what`) exceed what is available, else `None`.
pub fn too_big(need: u128, what: &str) -> Option<String> {
    let have = available()?;
    (need > have).then(|| {
        format!(
            "{what}: about {} is needed, but only {} of memory is available; use a smaller \
             model (or batch × seq), quantize the frozen weights, or free memory",
            human(need),
            human(have)
        )
    })
}

/// Errors when the program's weights and trainable state cannot fit in memory.
///
/// # Errors
/// The message, with both sizes.
pub fn check_fits(program: &Program) -> Result<(), String> {
    match too_big(estimate(program), "the model's weights and trainable state") {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "0.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(6 << 30), "6.0 GiB");
    }

    #[test]
    fn the_machine_reports_some_memory_and_an_absurd_need_is_refused() {
        let have = available();
        assert!(have.is_some_and(|h| h > 0), "{have:?}");
        let m = too_big(1 << 80, "this").unwrap_or_default();
        assert!(m.contains("this: about") && m.contains("available"), "{m}");
        assert!(too_big(1, "this").is_none());
    }
}
