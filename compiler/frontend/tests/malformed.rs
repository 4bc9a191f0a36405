//! The malformed-input corpus: every file in `tests/malformed/` must fail with a diagnostic
//! that names `file:line:col`, underlines the source, and matches its snapshot.

mod common;

use common::{display, stdlib};

#[test]
fn malformed_inputs_give_located_diagnostics() {
    let mut count = 0;
    insta::glob!("../../../tests/malformed", "*.graft", |path| {
        count += 1;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let name = display(path);
        let err = match graft_frontend::compile(&name, Some(path), text, &stdlib()) {
            Ok(_) => panic!("{name} compiled, but it is in the malformed corpus"),
            Err(e) => e,
        };
        let rendered = err.render(false);
        let first = rendered.lines().next().unwrap_or("");
        assert!(
            first.starts_with("error: ") && first.matches(':').count() >= 4,
            "{name}: first line lacks file:line:col: {first}"
        );
        assert!(
            rendered.contains('─'),
            "{name}: no underlined source:\n{rendered}"
        );
        insta::with_settings!({ snapshot_suffix => name.rsplit('/').next().unwrap_or(&name).trim_end_matches(".graft").to_string(), prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!("diagnostic", rendered);
        });
    });
    assert!(
        count >= 30,
        "the corpus has {count} files; it should have at least 30"
    );
}
