//! Generation for an encoder-decoder model (a forward that reads `decoder_input_ids`, like
//! T5): the source is the encoder's input, and the decoder's window
//! [start, y₁, …, y_t, pad, …] is run whole for each new token, chosen from the logits at
//! position t (greedy as transformers' `generate` with `num_beams=1`, or sampled). The
//! decoder is causal, so the padding after t changes nothing before it. The forward runs on
//! the interpreter; there is no cache of the encoder's states or the decoder's keys yet.

use super::{Generated, Sampling, SplitMix, choose};
use crate::session::{Session, SessionError};
use graft_interp::Tensor;

/// The source's inputs (`input_ids` [1, S], `attention_mask` when the model reads one) and
/// the decoding's tokens: `start` (the decoder's first input), `pad` (the window's filler).
pub struct Source<'a> {
    /// The encoder's inputs by name.
    pub inputs: &'a [(&'a str, Tensor)],
    /// `decoder_start_token_id`.
    pub start: i64,
    /// The token the decoder's window is padded with.
    pub pad: i64,
}

/// New tokens for `source` until one of `stop`, `s.max_new_tokens`, or the decoder's window
/// is full; each is passed to `on_token` as it is chosen.
///
/// # Errors
/// The model reads no `decoder_input_ids` of shape [1, T], or a run fails.
pub fn generate(
    session: &mut Session,
    source: &Source,
    stop: &[u32],
    s: Sampling,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generated, SessionError> {
    let window = session
        .program
        .module
        .function("forward")
        .and_then(|f| f.input("decoder_input_ids"))
        .map(|i| i.ty.shape.clone())
        .filter(|s| s.len() == 2 && s[0] == 1)
        .ok_or_else(|| SessionError::Value("the model has no decoder input [1, T]".into()))?[1];
    let mut rng = SplitMix(s.seed ^ 0x5851_f42d_4c95_7f2d);
    let mut dec = vec![source.start];
    let mut out = Generated::default();
    while out.tokens.len() < s.max_new_tokens && dec.len() <= window {
        let t = dec.len() - 1;
        let mut ids = dec.clone();
        ids.resize(window, source.pad);
        let mut batch: Vec<(&str, Tensor)> = source.inputs.to_vec();
        batch.push(("decoder_input_ids", Tensor::i64(vec![1, window], ids)?));
        let logits = session.forward_named(&batch)?;
        let v = logits.ty().shape.last().copied().unwrap_or(0);
        let all = logits
            .as_f32()
            .ok_or_else(|| SessionError::Value("the logits are not f32".into()))?;
        let next = choose(&all[t * v..(t + 1) * v], s, &mut rng);
        on_token(next);
        out.tokens.push(next);
        if stop.contains(&next) {
            break;
        }
        dec.push(i64::from(next));
    }
    Ok(out)
}
