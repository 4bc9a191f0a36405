//! Fuzzes the safetensors loader: any file contents give a weights file or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("graft-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        if let Ok(f) = graft_runtime::WeightsFile::open(&path) {
            for name in f.entries().keys() {
                let _ = f.bytes(name);
            }
        }
    }
});
