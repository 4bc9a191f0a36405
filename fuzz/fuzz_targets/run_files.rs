//! Fuzzes the other files a training run reads: a sharded checkpoint's index
//! (`model.safetensors.index.json`) and a run's `metrics.jsonl`. Any contents give a value
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("graft-fuzz-run-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let index = dir.join("model.safetensors.index.json");
    if std::fs::write(&index, data).is_ok() {
        if let Ok(f) = graft_runtime::WeightsFile::open(&index) {
            for name in f.entries().keys() {
                let _ = f.bytes(name);
            }
        }
    }
    let metrics = dir.join("metrics.jsonl");
    if std::fs::write(&metrics, data).is_ok() {
        let _ = graft_runtime::metrics::Metrics::read(&metrics);
        let _ = graft_runtime::data::examples_of(
            &String::from_utf8_lossy(data),
            &metrics,
            None,
            1 << 20,
            true,
        );
    }
});
