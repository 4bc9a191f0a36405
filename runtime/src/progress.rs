//! What `graft train` (and a binary `graft build` made) prints while it runs: on a terminal, a progress bar (indicatif) with
//! the loss, tokens/s and ETA, and every other message above it; otherwise one plain line
//! per step (for logs and pipes).

use crate::Event;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Prints the training loop's events.
pub struct Printer {
    tokens_per_step: usize,
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl Printer {
    /// A printer for steps of `tokens_per_step` tokens; a bar when stdout is a terminal.
    pub fn new(tokens_per_step: usize) -> Printer {
        Printer {
            tokens_per_step,
            terminal: std::io::stdout().is_terminal(),
            bar: None,
        }
    }

    /// A line of output, above the bar when there is one.
    fn line(&self, text: &str, to_stderr: bool) {
        match &self.bar {
            Some(b) => b.println(text),
            None if to_stderr => eprintln!("{text}"),
            None => println!("{text}"),
        }
    }

    /// Shows one event.
    pub fn event(&mut self, e: Event) {
        match e {
            Event::Ready(session, steps) => {
                let t = &session.program.train;
                let micro = match t.accumulate {
                    0 | 1 => String::new(),
                    k => format!("{k} micro-batches of "),
                };
                let mut text = format!(
                    "training {} trainable tensors on the {}, {micro}{} × {} tokens per step, {steps} steps",
                    session.params().len(),
                    session.backend(),
                    t.batch,
                    t.seq
                );
                match session.optimizer_run() {
                    Some((_, true)) => text += "\noptimized step loaded from the cache",
                    Some((secs, false)) => text += &format!("\noptimized the step in {secs:.2} s"),
                    None => {}
                }
                if let Some(info) = session.step_info() {
                    text += "\n";
                    text += describe_prepared(&info).trim_end();
                }
                let mapped = session.mapped_weights().len();
                if mapped > 0 {
                    text += &format!(
                        "\n{mapped} frozen weights read in place from the memory-mapped weights file"
                    );
                }
                self.line(&text, false);
                if self.terminal {
                    let bar = ProgressBar::with_draw_target(
                        Some(steps as u64),
                        ProgressDrawTarget::stdout(),
                    );
                    if let Ok(style) = ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_position(session.steps_done() as u64);
                    self.bar = Some(bar);
                }
            }
            Event::Resumed(file, r) => {
                for c in &r.forced {
                    self.line(&format!("warning: resuming with a change (--force-resume): {c}"), true);
                }
                self.line(
                    &format!("resuming from {} after step {}", file.display(), r.steps_done),
                    false,
                );
            }
            Event::Step(s, secs) => {
                let tps = self.tokens_per_step as f64 / secs.max(1e-9);
                match &self.bar {
                    Some(b) => {
                        b.set_position(s.step as u64);
                        b.set_message(format!(
                            "loss {:.4}  grad_norm {:.3}  lr {:.2e}  {tps:.0} tok/s",
                            s.loss, s.grad_norm, s.lr
                        ));
                    }
                    None => println!(
                        "step {:>4}  loss {:.4}  lr {:.3e}  grad_norm {:.4}  {tps:.0} tok/s",
                        s.step, s.loss, s.lr, s.grad_norm
                    ),
                }
            }
            Event::Stopping(why) => self.line(
                &format!("{why} received: finishing this step, then saving (send it again to exit at once)"),
                true,
            ),
            Event::Wrote(what) => self.line(&format!("saved {what}"), false),
            Event::Note(n) => self.line(&format!("note: {n}"), true),
            Event::Eval(step, e) => self.line(
                &format!(
                    "eval after step {step}: loss {:.4}{}  ({} batches)",
                    e.loss,
                    e.metrics_text(),
                    e.batches
                ),
                false,
            ),
        }
    }

    /// Leaves the bar where it stopped.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}

/// Two lines on how the step was compiled and the static memory plan.
pub fn describe_prepared(i: &crate::PreparedInfo) -> String {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let how = if i.cached_modules == i.modules && i.modules > 0 {
        "loaded from the kernel cache"
    } else {
        "compiled"
    };
    let compiled = if i.modules == 0 && i.kernels > 0 {
        // A built binary: nothing compiled at run time.
        format!("{} kernels linked into this binary", i.kernels)
    } else {
        format!(
            "{} kernels {how} in {:.2} s ({} of {} modules cached; cache: {})",
            i.kernels, i.compile_seconds, i.cached_modules, i.modules, i.cache
        )
    };
    format!(
        "{compiled}\n\
         memory plan: {:.1} MiB arena for the intermediates ({:.1} MiB without reuse), \
         {:.1} MiB of outputs, {:.1} MiB of frozen weights packed once\n",
        mib(i.arena_bytes),
        mib(i.unshared_bytes),
        mib(i.output_bytes),
        mib(i.bound_bytes)
    )
}
