//! Target patterns with Hugging Face PEFT's `target_modules` semantics:
//! - a string is a regex that must match the whole module path (`re.fullmatch`);
//! - a list of names matches a path equal to a name or ending in `.name`;
//! - the string `"all-linear"` matches every module of the wrapped kind except output heads;
//! - override patterns (`where "..."`, like `rank_pattern`) match as `(.*\.)?(pattern)$`.

use crate::ast::{Target, TargetKind};
use crate::diag::Diagnostic;
use regex::Regex;

/// A module a target may match.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The module's full path (`model.layers.0.self_attn.q_proj`).
    pub path: &'a str,
    /// The module kind (`linear`).
    pub kind: &'a str,
    /// Marked `output` (an output head, which `all-linear` skips).
    pub output: bool,
}

/// A compiled target pattern.
#[derive(Debug)]
pub enum Matcher {
    /// Whole-path regex.
    Regex(Regex),
    /// Exact name or dotted suffix.
    Names(Vec<String>),
    /// Every module of `kind` that is not an output head.
    AllLinear(String),
}

impl Matcher {
    /// Compiles a target; `kind` is the module kind `all-linear` stands for.
    pub fn new(t: &Target, kind: &str) -> Result<Matcher, Diagnostic> {
        match &t.kind {
            TargetKind::Regex(s) if s == "all-linear" => Ok(Matcher::AllLinear(kind.to_string())),
            TargetKind::Regex(s) => Regex::new(&format!("^(?:{s})$")).map(Matcher::Regex).map_err(|e| {
                Diagnostic::error(t.span, "invalid target regex", first_line(&e.to_string()))
                    .with_help("a string target is a regex matched against the whole module path, as in PEFT; use a list like [\"q_proj\"] to match by name")
            }),
            TargetKind::Names(names) => Ok(Matcher::Names(names.iter().map(|n| n.value.clone()).collect())),
        }
    }

    /// True when the pattern selects this module.
    pub fn matches(&self, c: &Candidate) -> bool {
        match self {
            Matcher::Regex(r) => r.is_match(c.path),
            Matcher::Names(names) => names
                .iter()
                .any(|n| c.path == n || c.path.ends_with(&format!(".{n}"))),
            Matcher::AllLinear(kind) => c.kind == kind && !c.output,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .last()
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// Compiles an override pattern (`rank_pattern` style: `(.*\.)?(pattern)$`).
pub fn override_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$")).map_err(|e| first_line(&e.to_string()))
}

/// The module paths nearest to a pattern's text, best first, for "matches nothing" errors.
pub fn nearest<'a>(pattern: &str, paths: impl Iterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
    let mut scored: Vec<(f64, &str)> = paths
        .map(|p| {
            // Compare against the whole path and against its last segments, keeping the best.
            let segs: Vec<&str> = p.split('.').collect();
            let mut best = strsim::jaro_winkler(pattern, p);
            for i in 0..segs.len() {
                best = best.max(strsim::jaro_winkler(pattern, &segs[i..].join(".")));
            }
            (best, p)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(n).map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::{FileId, Span, StrLit};

    fn span() -> Span {
        Span {
            file: FileId(0),
            start: 0,
            end: 1,
        }
    }

    fn regex(s: &str) -> Target {
        Target {
            kind: TargetKind::Regex(s.into()),
            span: span(),
        }
    }

    fn names(ns: &[&str]) -> Target {
        Target {
            kind: TargetKind::Names(
                ns.iter()
                    .map(|n| StrLit {
                        value: n.to_string(),
                        span: span(),
                    })
                    .collect(),
            ),
            span: span(),
        }
    }

    fn cand(path: &str) -> Candidate<'_> {
        Candidate {
            path,
            kind: "linear",
            output: false,
        }
    }

    #[test]
    fn regex_is_a_full_match() -> Result<(), Diagnostic> {
        let m = Matcher::new(&regex(r".*\.(q|v)_proj"), "linear")?;
        assert!(m.matches(&cand("model.layers.0.self_attn.q_proj")));
        assert!(!m.matches(&cand("model.layers.0.self_attn.k_proj")));
        // A prefix match is not enough: PEFT uses re.fullmatch.
        let m = Matcher::new(&regex("model.layers.0"), "linear")?;
        assert!(!m.matches(&cand("model.layers.0.self_attn.q_proj")));
        Ok(())
    }

    #[test]
    fn names_match_exactly_or_as_a_dotted_suffix() -> Result<(), Diagnostic> {
        let m = Matcher::new(&names(&["q_proj", "self_attn.v_proj"]), "linear")?;
        assert!(m.matches(&cand("model.layers.1.self_attn.q_proj")));
        assert!(m.matches(&cand("model.layers.1.self_attn.v_proj")));
        assert!(m.matches(&cand("q_proj")));
        assert!(!m.matches(&cand("model.layers.1.self_attn.xq_proj")));
        Ok(())
    }

    #[test]
    fn all_linear_skips_output_heads_and_other_kinds() -> Result<(), Diagnostic> {
        let m = Matcher::new(&regex("all-linear"), "linear")?;
        assert!(m.matches(&cand("model.layers.0.mlp.up_proj")));
        assert!(!m.matches(&Candidate {
            path: "lm_head",
            kind: "linear",
            output: true
        }));
        assert!(!m.matches(&Candidate {
            path: "model.norm",
            kind: "rms_norm",
            output: false
        }));
        Ok(())
    }

    #[test]
    fn override_patterns_match_a_dotted_suffix() -> Result<(), String> {
        let r = override_regex("layers.0.self_attn.q_proj")?;
        assert!(r.is_match("model.layers.0.self_attn.q_proj"));
        assert!(!r.is_match("model.layers.10.self_attn.q_proj"));
        Ok(())
    }

    #[test]
    fn bad_regex_is_a_diagnostic() {
        assert!(Matcher::new(&regex("(q|v"), "linear").is_err());
    }

    #[test]
    fn nearest_ranks_by_similarity() {
        let paths = [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.up_proj",
            "lm_head",
        ];
        let near = nearest("q_prj", paths.iter().copied(), 2);
        assert_eq!(near[0], "model.layers.0.self_attn.q_proj");
    }
}
