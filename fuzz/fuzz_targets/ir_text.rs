//! Fuzzes the IR text parser and the verifier: errors, never panics; whatever parses and
//! verifies must print to text that parses and prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = graft_ir::parse_module(&text) {
        if graft_ir::verify_module(&m).is_ok() {
            let printed = graft_ir::print_module(&m);
            let again = graft_ir::parse_module(&printed).map(|m2| graft_ir::print_module(&m2));
            assert_eq!(again.ok().as_deref(), Some(printed.as_str()), "round trip changed the text");
        }
    }
});
