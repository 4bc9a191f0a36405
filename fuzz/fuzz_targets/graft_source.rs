//! Fuzzes the front end: any bytes, parsed and elaborated against the embedded stdlib, must
//! give a program or a diagnostic that renders, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    if let Err(e) = graft_frontend::compile("fuzz.graft", None, text, &graft_frontend::Stdlib::Embedded) {
        let _ = e.render(false);
    }
});
