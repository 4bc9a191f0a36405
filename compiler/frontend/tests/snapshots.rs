//! Snapshot tests of every stage's printed form: the AST and IR of every file in
//! `dsl-examples/`, and of every `stdlib/` file through the small spec in
//! `tests/stdlib-specs/` that exercises it. Each IR is also verified and round-tripped
//! through its text form. Re-bless with `INSTA_UPDATE=always cargo test` (or `cargo insta`).

mod common;

use common::{compile_ok, display};
use graft_frontend::ast_print::print_ast;
use graft_ir::{parse_module, print_module, verify_module};

fn check_file(path: &std::path::Path) {
    let (loaded, program) = compile_ok(path);
    let ast: String = loaded
        .files
        .iter()
        .filter(|f| f.file == loaded.entry)
        .map(|f| print_ast(f, &loaded.sources))
        .collect();
    verify_module(&program.module)
        .unwrap_or_else(|e| panic!("{}: IR does not verify: {e}", path.display()));
    let text = print_module(&program.module);
    let reparsed = parse_module(&text)
        .unwrap_or_else(|e| panic!("{}: printed IR does not parse: {e}", path.display()));
    assert_eq!(
        reparsed,
        program.module,
        "{}: IR changed through print → parse",
        path.display()
    );
    assert_eq!(
        print_module(&reparsed),
        text,
        "{}: print → parse → print is not the identity",
        path.display()
    );
    let name = display(path);
    insta::with_settings!({ snapshot_suffix => name.replace('/', "__"), prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("ast", ast);
        insta::assert_snapshot!("ir", text);
    });
}

#[test]
fn every_example() {
    insta::glob!("../../../dsl-examples", "*.graft", |path| check_file(path));
}

#[test]
fn every_stdlib_file_through_its_spec() {
    insta::glob!("../../../tests/stdlib-specs", "*.graft", |path| check_file(
        path
    ));
}

#[test]
fn every_stdlib_file_has_a_spec_and_an_ast() {
    let root = common::repo();
    for rel in graft_frontend::Stdlib::Dir(root.join("stdlib")).list() {
        let stem = rel
            .rsplit('/')
            .next()
            .unwrap_or(&rel)
            .trim_end_matches(".graft");
        assert!(
            root.join("tests/stdlib-specs")
                .join(format!("{stem}.graft"))
                .exists(),
            "stdlib/{rel} has no spec in tests/stdlib-specs"
        );
        let path = root.join("stdlib").join(&rel);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut sources = graft_frontend::SourceMap::default();
        let id = sources.add(format!("stdlib/{rel}"), Some(path), text.clone());
        let ast = graft_frontend::parse_source(&text, id)
            .unwrap_or_else(|d| panic!("{}", d.render(&sources, false)));
        insta::with_settings!({ snapshot_suffix => format!("stdlib__{}", rel.replace('/', "__")), prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!("stdlib_ast", print_ast(&ast, &sources));
        });
    }
}
