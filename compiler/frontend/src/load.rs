//! Loading a spec and everything it imports: the prelude, then each `use` resolved against
//! the importing file's folder and the stdlib. Every file is parsed once.

use crate::ast::{FileId, Item, SourceFile, Span, UseTarget};
use crate::diag::Diagnostic;
use crate::parse::parse_source;
use crate::source::{SourceMap, Stdlib, resolve_import};
use std::path::PathBuf;

/// The stdlib file every compilation loads first.
pub const PRELUDE: &str = "prelude.graft";

/// A spec and the files it pulled in, parsed.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Every file's text.
    pub sources: SourceMap,
    /// Every file's AST, in load order (the prelude first).
    pub files: Vec<SourceFile>,
    /// The spec that was asked for.
    pub entry: FileId,
}

/// Loads and parses `text` (shown as `name`, read from `disk_path` if given) and its imports.
pub fn load(
    name: &str,
    disk_path: Option<PathBuf>,
    text: String,
    stdlib: &Stdlib,
) -> Result<Loaded, Box<crate::CompileError>> {
    let mut sources = SourceMap::default();
    load_into(&mut sources, name, disk_path, text, stdlib).map_err(|diagnostic| {
        Box::new(crate::CompileError {
            diagnostic,
            sources: sources.clone(),
        })
    })
}

fn load_into(
    sources: &mut SourceMap,
    name: &str,
    disk_path: Option<PathBuf>,
    text: String,
    stdlib: &Stdlib,
) -> Result<Loaded, Diagnostic> {
    let mut files = Vec::new();
    let mut queue = Vec::new();
    let entry = sources.add(name, disk_path, text);
    if let Some((disk, text)) = stdlib.read(PRELUDE) {
        let prelude_name = format!("stdlib/{PRELUDE}");
        if prelude_name != name {
            queue.push(sources.add(prelude_name, disk, text));
        }
    }
    queue.push(entry);
    let mut next = 0;
    while next < queue.len() {
        let id = queue[next];
        next += 1;
        let parsed = parse_source(&sources.file(id).text, id)?;
        for item in &parsed.items {
            let Item::Use(u) = item else { continue };
            for (rel, span, relative_only) in import_paths(&u.target, u.span) {
                let importer = sources.file(id).clone();
                let Some((name, disk, text)) =
                    resolve_import(stdlib, &importer, &rel, relative_only)
                else {
                    let mut d = Diagnostic::error(
                        span,
                        format!("cannot find `{rel}` to import"),
                        "imported here",
                    );
                    let available: Vec<String> = stdlib
                        .list()
                        .iter()
                        .map(|p| p.trim_end_matches(".graft").replace('/', "."))
                        .collect();
                    if !relative_only && !available.is_empty() {
                        d = d.with_help(format!("stdlib modules: {}", available.join(", ")));
                    }
                    return Err(d);
                };
                if sources.find(&name).is_none() {
                    queue.push(sources.add(name, disk, text));
                }
            }
        }
        files.push(parsed);
    }
    Ok(Loaded {
        sources: sources.clone(),
        files,
        entry,
    })
}

/// The files one `use` names: `(relative path, span, relative-only)`.
fn import_paths(t: &UseTarget, span: Span) -> Vec<(String, Span, bool)> {
    match t {
        UseTarget::File(s) => vec![(s.value.clone(), s.span, true)],
        UseTarget::Path { path, group } => {
            let prefix: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
            if group.is_empty() {
                vec![(format!("{}.graft", prefix.join("/")), span, false)]
            } else {
                group
                    .iter()
                    .map(|g| {
                        let mut parts = prefix.clone();
                        parts.push(&g.name);
                        (format!("{}.graft", parts.join("/")), g.span, false)
                    })
                    .collect()
            }
        }
    }
}
