//! The loss curve of a run, drawn from its metrics ([`crate::metrics`]) as an SVG (plotters):
//! the training loss per step, and the held-out loss at each evaluation.

use crate::metrics::Record;
use plotters::prelude::*;
use std::path::Path;

/// Draws `records` and writes the SVG to `path` (atomically). Nothing is written when no
/// record has a finite loss.
///
/// # Errors
/// Drawing or writing failed (the message names the file).
pub fn write_loss_plot(records: &[Record], path: &Path) -> Result<bool, String> {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.kind == "train")
        .filter_map(|r| r.loss.map(|l| (r.step as f64, f64::from(l))))
        .collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.kind == "eval")
        .filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l)))
        .collect();
    if train.is_empty() && eval.is_empty() {
        return Ok(false);
    }
    let all = || train.iter().chain(&eval);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut svg = String::new();
    let fail = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| fail(&e))?;
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
                .map_err(|e| fail(&e))?
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label("eval")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .draw_series(eval.iter().map(|p| Circle::new(*p, 3, RED.filled())))
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    crate::write_atomic(path, svg.as_bytes()).map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_plot_has_both_curves_and_nothing_is_drawn_without_losses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.svg");
        let mut records: Vec<Record> = (1..=5)
            .map(|s| Record {
                kind: "train".into(),
                step: s,
                loss: Some(6.0 - s as f32 * 0.5),
                ..Record::default()
            })
            .collect();
        records.push(Record {
            kind: "eval".into(),
            step: 5,
            eval_loss: Some(4.0),
            ..Record::default()
        });
        assert!(write_loss_plot(&records, &p).unwrap());
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("train") && svg.contains("eval"));
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "no curve drawn"
        );
        let empty = dir.path().join("none.svg");
        assert!(!write_loss_plot(&[], &empty).unwrap());
        assert!(!empty.exists());
    }
}
