//! Diagnostics: a message, labelled spans (the first is the primary one), and a hint; rendered
//! with miette so every report shows `file:line:col` and the source line underlined.

use crate::ast::Span;
use crate::source::SourceMap;
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};
use std::fmt;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Compilation cannot go on.
    Error,
    /// Worth knowing; compilation goes on.
    Warning,
}

/// A labelled span.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What about it.
    pub message: String,
}

/// A user-facing error or warning about graft source.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One line saying what is wrong.
    pub message: String,
    /// Labelled spans; the first is the primary location.
    pub labels: Vec<Label>,
    /// What to do about it.
    pub help: Option<String>,
    /// Where elaboration was when it happened (innermost first).
    pub context: Vec<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            labels: vec![Label {
                span,
                message: label.into(),
            }],
            help: None,
            context: Vec::new(),
        }
    }

    /// A warning at `span`.
    pub fn warning(span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, message, label)
        }
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Adds a hint.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The primary span.
    pub fn span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }

    /// Renders the diagnostic as text: `file:line:col`, the message, the source lines with
    /// their spans underlined, and the hint. `color` adds ANSI colors.
    pub fn render(&self, sources: &SourceMap, color: bool) -> String {
        let report = Report::build(self, sources);
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(100)
            .with_links(false);
        let mut out = String::new();
        if let Some(span) = self.span() {
            let kind = match self.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push_str(&format!(
                "{kind}: {}: {}\n",
                sources.describe(span),
                self.message
            ));
        }
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&self.message);
        }
        for c in &self.context {
            out.push_str(&format!("  note: {c}\n"));
        }
        out
    }
}

/// The miette view of a [`Diagnostic`]: labels in the primary file are shown with it; labels
/// in other files become related reports showing their own file.
#[derive(Debug)]
struct Report {
    severity: Severity,
    message: String,
    source: Option<NamedSource<String>>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    related: Vec<Report>,
}

impl Report {
    fn build(d: &Diagnostic, sources: &SourceMap) -> Report {
        let Some(primary) = d.span() else {
            return Report {
                severity: d.severity,
                message: d.message.clone(),
                source: None,
                labels: vec![],
                help: d.help.clone(),
                related: vec![],
            };
        };
        let file = sources.file(primary.file);
        let mut labels = Vec::new();
        let mut related = Vec::new();
        for (i, l) in d.labels.iter().enumerate() {
            let ls = LabeledSpan::new_with_span(
                Some(l.message.clone()),
                (
                    l.span.start as usize,
                    (l.span.end.saturating_sub(l.span.start)) as usize,
                ),
            );
            if l.span.file == primary.file {
                labels.push(if i == 0 {
                    LabeledSpan::new_primary_with_span(ls.label().map(str::to_string), *ls.inner())
                } else {
                    ls
                });
            } else {
                let other = sources.file(l.span.file);
                related.push(Report {
                    severity: d.severity,
                    message: format!("see {}", sources.describe(l.span)),
                    source: Some(NamedSource::new(other.name.clone(), other.text.clone())),
                    labels: vec![ls],
                    help: None,
                    related: vec![],
                });
            }
        }
        Report {
            severity: d.severity,
            message: d.message.clone(),
            source: Some(NamedSource::new(file.name.clone(), file.text.clone())),
            labels,
            help: d.help.clone(),
            related,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(
                self.related.iter().map(|r| r as &dyn miette::Diagnostic),
            ))
        }
    }
}
