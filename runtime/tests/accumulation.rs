//! Gradient accumulation against its oracle: k micro-batches accumulated into one optimizer
//! step equal one step on their rows as a single batch (Hugging Face's loss: the mean over
//! every target of the group), on the interpreter; tolerance 1e-5 (only the order of the
//! sums differs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{batches, program, session};
use graft_interp::Tensor;

fn rows(t: &Tensor, from: usize, n: usize) -> Tensor {
    let seq = t.shape()[1];
    let d = t.as_i64().unwrap()[from * seq..(from + n) * seq].to_vec();
    Tensor::i64(vec![n, seq], d).unwrap()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let scale = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= 1e-5 * scale,
        "{what}: max difference {err} (scale {scale})"
    );
}

#[test]
fn accumulated_micro_batches_equal_one_big_batch() {
    let big = program(|s| s.replace("batch 4", "batch 4  clip 1.0"));
    let small = program(|s| s.replace("batch 4", "batch 2  clip 1.0  accumulate 2"));
    let (ids, _) = batches(&big).next_batch();
    // Mask some targets so the two micro-batches have different shares of them.
    let mut labels = ids.as_i64().unwrap().to_vec();
    for l in labels.iter_mut().take(12) {
        *l = -100;
    }
    let labels = Tensor::i64(ids.shape().to_vec(), labels).unwrap();
    let (mut a, mut b) = (session(big), session(small));
    for step in 0..3 {
        let sa = a.step(&ids, &labels).unwrap();
        let group = [
            (rows(&ids, 0, 2), rows(&labels, 0, 2)),
            (rows(&ids, 2, 2), rows(&labels, 2, 2)),
        ];
        let sb = b.step_group(&group).unwrap();
        assert_eq!((sa.step, sb.step), (step + 1, step + 1));
        close(
            &[sa.loss, sa.grad_norm],
            &[sb.loss, sb.grad_norm],
            "loss and grad norm",
        );
        for ((p, x), (_, y)) in a.params().into_iter().zip(b.params()) {
            close(x.as_f32().unwrap(), y.as_f32().unwrap(), &p);
        }
    }
    assert!(
        b.step(&ids, &labels).is_err(),
        "a group of one is refused when k = 2"
    );
}
