//! `graft explain --compare`: one spec's training step under other adapters, side by side,
//! before training: each candidate's trainable parameters and the optimizer's cost estimate
//! of its optimized step (FLOPs, peak memory, estimated seconds per step and tokens/s).
//!
//! A candidate is an adapt rule in graft syntax, such as `lora(r: 16)` or
//! `dora(r: 8) at "all-linear"`. Without `at` it keeps the spec's first rule's target (and
//! overrides). A leading `nf4:` also quantizes the base model's linear layers to NF4
//! (QLoRA's precision), unless the spec already quantizes. The candidate's spec is the
//! spec's text with its `adapt` block replaced by the one rule, and `use peft.NAME` added
//! for the rule's adapter when the spec does not define it.

use graft_frontend::ast::{Item, ModuleDef};
use graft_frontend::{Program, Stdlib};
use std::fmt::Write;
use std::path::Path;

/// One row of the comparison.
struct Row {
    label: String,
    trainable: usize,
    share: f64,
    /// Bytes of the step's weights, trainable tensors and optimizer state.
    resident: usize,
    cost: graft_opt::Summary,
}

/// The comparison of the spec at `file` (its own adapters first) with each candidate, as a
/// table; a candidate that does not compile gets its diagnostic in place of its row.
pub fn compare(
    file: &Path,
    program: &Program,
    candidates: &[String],
    stdlib: &Stdlib,
    target: graft_opt::Target,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)?;
    let mut rows = vec![row("the spec", program, target)?];
    let mut failures = Vec::new();
    for c in candidates {
        let source = match candidate_source(&text, c) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{c}: {e}"));
                continue;
            }
        };
        let name = file.display().to_string();
        match graft_frontend::compile(&name, Some(file), source, stdlib) {
            Ok((_, p)) => rows.push(row(c, &p, target)?),
            Err(e) => failures.push(format!("{c}:\n{}", e.render(false))),
        }
    }
    let tokens = (program.train.batch * program.train.seq) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "candidates for {} on {} ({} × {} tokens per step; the optimizer's cost model)",
        file.display(),
        target.name,
        program.train.batch,
        program.train.seq
    );
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(8).max(9);
    let _ = writeln!(
        s,
        "  {:<width$}  {:>10} {:>8} {:>11} {:>11} {:>11} {:>11} {:>10}",
        "candidate", "trainable", "share", "FLOPs", "resident", "peak temp", "est. s", "tokens/s"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "  {:<width$}  {:>10} {:>7.3}% {:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e} {:>10.0}",
            r.label,
            r.trainable,
            100.0 * r.share,
            r.cost.flops,
            r.resident as f64,
            r.cost.peak_memory,
            r.cost.seconds,
            tokens / r.cost.seconds.max(1e-12)
        );
    }
    let _ = writeln!(
        s,
        "  resident: bytes of the weights, trainable tensors and optimizer state; peak temp: \
         the intermediates' peak (the step's inputs excluded)"
    );
    for f in failures {
        let _ = writeln!(s, "not compared: {f}");
    }
    Ok(s)
}

fn row(label: &str, p: &Program, target: graft_opt::Target) -> anyhow::Result<Row> {
    let opt = crate::optimize_program(p, target, false)?;
    let count = |trainable: bool| -> usize {
        p.tensors
            .iter()
            .filter(|t| (t.kind == graft_frontend::DeclKind::Param) == trainable)
            .map(|t| t.ty.numel())
            .sum()
    };
    let (trainable, frozen) = (count(true), count(false));
    let resident = opt
        .func
        .inputs()
        .filter(|i| i.kind != graft_ir::InputKind::Data)
        .map(|i| i.ty.size_bytes())
        .sum();
    Ok(Row {
        label: label.to_string(),
        trainable,
        share: trainable as f64 / (trainable + frozen).max(1) as f64,
        resident,
        cost: opt.after,
    })
}

/// The spec's text with its `adapt` block holding `candidate` alone (see the module docs).
fn candidate_source(text: &str, candidate: &str) -> Result<String, String> {
    let file = graft_frontend::ast::FileId(0);
    let parsed = graft_frontend::parse_source(text, file).map_err(|d| d.message.clone())?;
    let (quantize, rule) = match candidate.trim().strip_prefix("nf4:") {
        Some(rest) => (true, rest.trim()),
        None => (false, candidate.trim()),
    };
    let adapt = parsed
        .items
        .iter()
        .find_map(|i| match i {
            Item::Adapt(a) => Some(a),
            _ => None,
        })
        .ok_or("the spec has no `adapt` block to replace")?;
    let first = adapt
        .rules
        .first()
        .ok_or("the spec's `adapt` block is empty")?;
    let rule = if rule.contains(" at ") {
        rule.to_string()
    } else {
        format!(
            "{rule}{}",
            &text[first.adapter.span.end as usize..first.span.end as usize]
        )
    };
    let method: String = rule
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let defined = parsed.items.iter().any(|i| match i {
        Item::Module(ModuleDef { name, .. }) => name.name == method,
        _ => false,
    });
    let block = format!("adapt {} {{\n    {rule}\n}}", adapt.model.name);
    let mut out = String::new();
    if !defined {
        let _ = writeln!(out, "use peft.{method}");
    }
    let model = parsed.items.iter().find_map(|i| match i {
        Item::Model(m) => Some(m),
        _ => None,
    });
    let mut edits: Vec<(usize, usize, String)> =
        vec![(adapt.span.start as usize, adapt.span.end as usize, block)];
    if let Some(m) = model.filter(|m| quantize && m.quantize.is_empty()) {
        edits.push((
            m.span.end as usize,
            m.span.end as usize,
            "\n    quantize nf4(block: 64, double_quant: true) at \"all-linear\"".into(),
        ));
    }
    edits.sort_by_key(|e| e.0);
    let mut at = 0;
    for (start, end, new) in edits {
        out.push_str(&text[at..start]);
        out.push_str(&new);
        at = end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}
