//! Text generation: a prompt's continuation, one token at a time, greedy or sampled with
//! temperature and top-p (nucleus) from a seeded generator, stopping at eos.
//!
//! Two ways to run the model, both compiled for one window of `length` positions (prompt
//! plus the longest reply):
//! - **KV cache** (the default): `@decode`, derived from the forward by
//!   [`graft_ir::decode::derive_decode`], runs one position at a time against caches of the
//!   values later positions read (keys and values in a transformer). The prompt is fed
//!   through it token by token; its last logits are checked once against the full forward
//!   (a model that is not causal fails the check, and generation falls back to the next
//!   way, saying so).
//! - **Recompute**: `@logits` ([`crate::eval::logits_function`]) on the tokens so far,
//!   right-padded, for every new token: attention is causal, so the last real position's
//!   logits do not depend on the padding. Costs a full window per token.

pub mod seq2seq;

use crate::Backend;
use crate::backend::Prepared;
use crate::session::{Session, SessionError};
use graft_interp::Tensor;

/// How tokens are chosen.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// 0: greedy (the most likely token); else logits are divided by it before sampling.
    pub temperature: f64,
    /// Sample from the smallest set of tokens whose probability reaches this (1: all).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

/// A session's model prepared for generation.
pub struct Generator {
    runner: Box<dyn Prepared>,
    /// Tokens per window (prompt + reply).
    len: usize,
    /// `@decode` and its caches, when the KV cache is used.
    decode: Option<(Box<dyn Prepared>, Vec<(String, graft_ir::TensorType)>)>,
}

/// How a generation ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// Whether the KV cache ran it.
    pub cached: bool,
    /// Why the KV cache was not used, when it was asked for and could not be.
    pub note: Option<String>,
}

/// The decoded and full logits must agree this closely (relative to the largest logit) for
/// the KV cache to be trusted.
const CACHE_CHECK: f32 = 1e-3;

impl Generator {
    /// `@logits` of `session`'s program (elaborated for one sequence of the window's
    /// length), optimized when `optimize`, prepared on `backend`.
    ///
    /// # Errors
    /// The function cannot be built or prepared.
    pub fn new(
        session: &Session,
        backend: &dyn Backend,
        optimize: bool,
    ) -> Result<Generator, SessionError> {
        let forward = forward_of(&session.program)?;
        let shape = &forward
            .input("input_ids")
            .ok_or(SessionError::Missing("input_ids"))?
            .ty
            .shape;
        if shape.first() != Some(&1) || shape.len() != 2 {
            return Err(SessionError::Value(format!(
                "generation runs one sequence; the forward reads input_ids of shape {shape:?}"
            )));
        }
        let len = shape[1];
        let f = crate::eval::logits_function(forward)?;
        let runner = prepare(session, &f, backend, optimize)?;
        Ok(Generator {
            runner,
            len,
            decode: None,
        })
    }

    /// Adds the KV cache: `@decode` derived from this forward and `longer`'s (the same spec
    /// elaborated for another window length).
    ///
    /// # Errors
    /// The forward cannot be decoded one position at a time (the message says why), or the
    /// function cannot be prepared.
    pub fn with_kv_cache(
        mut self,
        session: &Session,
        longer: &graft_frontend::Program,
        backend: &dyn Backend,
        optimize: bool,
    ) -> Result<Generator, SessionError> {
        self.add_kv_cache(session, longer, backend, optimize)?;
        Ok(self)
    }

    /// [`Generator::with_kv_cache`] in place: on an error the generator is unchanged (it
    /// recomputes the window).
    ///
    /// # Errors
    /// As [`Generator::with_kv_cache`].
    pub fn add_kv_cache(
        &mut self,
        session: &Session,
        longer: &graft_frontend::Program,
        backend: &dyn Backend,
        optimize: bool,
    ) -> Result<(), SessionError> {
        let f = crate::eval::logits_function(forward_of(&session.program)?)?;
        let g = crate::eval::logits_function(forward_of(longer)?)?;
        let d = graft_ir::decode::derive_decode(&f, &g, "input_ids", "logits")
            .map_err(|e| SessionError::Value(e.to_string()))?;
        graft_ir::verify_function(&d.function, usize::MAX)
            .map_err(|e| SessionError::Value(e.to_string()))?;
        let runner = prepare(session, &d.function, backend, optimize)?;
        self.decode = Some((runner, d.caches));
        Ok(())
    }

    /// The window: prompt and reply together fit in it.
    pub fn window(&self) -> usize {
        self.len
    }

    /// Continues `prompt`, calling `on_token` with each new token; stops at a token of
    /// `stop` (eos), after `max_new_tokens`, or when the window is full.
    ///
    /// # Errors
    /// The prompt does not leave room for a token, or a run fails.
    pub fn generate(
        &self,
        session: &mut Session,
        prompt: &[u32],
        stop: &[u32],
        s: Sampling,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generated, SessionError> {
        if prompt.is_empty() || prompt.len() >= self.len {
            return Err(SessionError::Value(format!(
                "the prompt has {} tokens; the window holds {} (prompt and reply)",
                prompt.len(),
                self.len
            )));
        }
        session.restore_dropped()?;
        let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let mut rng = SplitMix(s.seed ^ 0x5851_f42d_4c95_7f2d);
        let mut out = Generated::default();
        let mut cache = match &self.decode {
            Some((runner, caches)) => {
                let mut state: Vec<(String, Tensor)> = caches
                    .iter()
                    .map(|(n, ty)| (n.clone(), Tensor::zeros(ty.clone())))
                    .collect();
                let mut last = Vec::new();
                for (t, &id) in ids.iter().enumerate() {
                    last = self.decode_step(session, runner.as_ref(), &mut state, id, t)?;
                }
                let full = self.full_row(session, &ids)?;
                let scale = full.iter().fold(1f32, |m, x| m.max(x.abs()));
                let off = full
                    .iter()
                    .zip(&last)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                if off <= CACHE_CHECK * scale {
                    out.cached = true;
                    Some((runner, state, last))
                } else {
                    out.note = Some(format!(
                        "the KV cache's logits differ from the full forward's by {off:e} (is                          the model causal?); recomputing the window for every token instead"
                    ));
                    None
                }
            }
            None => None,
        };
        while out.tokens.len() < s.max_new_tokens && ids.len() < self.len {
            let row = match &cache {
                Some((_, _, last)) => last.clone(),
                None => self.full_row(session, &ids)?,
            };
            let next = choose(&row, s, &mut rng);
            on_token(next);
            out.tokens.push(next);
            ids.push(i64::from(next));
            if stop.contains(&next) || out.tokens.len() == s.max_new_tokens || ids.len() == self.len
            {
                break;
            }
            if let Some((runner, state, last)) = &mut cache {
                *last = self.decode_step(
                    session,
                    runner.as_ref(),
                    state,
                    i64::from(next),
                    ids.len() - 1,
                )?;
            }
        }
        Ok(out)
    }

    /// The logits of the last of `ids`, from the full forward on the padded window.
    fn full_row(&self, session: &mut Session, ids: &[i64]) -> Result<Vec<f32>, SessionError> {
        let mut window = ids.to_vec();
        window.resize(self.len, 0);
        let t = Tensor::i64(vec![1, self.len], window)
            .map_err(|e| SessionError::Value(e.to_string()))?;
        let runner = &self.runner;
        let logits = session
            .with_batch(vec![("input_ids", t)], |v, m| runner.run_mapped(v, m))
            .map_err(SessionError::Backend)?
            .into_iter()
            .find(|(n, _)| n == "logits")
            .map(|(_, t)| t)
            .ok_or(SessionError::Missing("logits"))?;
        let data = logits.as_f32().ok_or(SessionError::Missing("logits"))?;
        let vocab = data.len() / self.len;
        Ok(data[(ids.len() - 1) * vocab..ids.len() * vocab].to_vec())
    }

    /// One `@decode` run: token `id` at `position`, the caches in `state` updated; returns
    /// its logits.
    fn decode_step(
        &self,
        session: &mut Session,
        runner: &dyn Prepared,
        state: &mut Vec<(String, Tensor)>,
        id: i64,
        position: usize,
    ) -> Result<Vec<f32>, SessionError> {
        let value = |e: String| SessionError::Value(e);
        let mut batch: Vec<(&str, Tensor)> = vec![
            (
                "input_ids",
                Tensor::i64(vec![1, 1], vec![id]).map_err(|e| value(e.to_string()))?,
            ),
            ("position", Tensor::scalar_f32(position as f32)),
        ];
        let caches = std::mem::take(state);
        let names: Vec<String> = caches.iter().map(|(n, _)| n.clone()).collect();
        for ((_, t), n) in caches.into_iter().zip(&names) {
            batch.push((n.as_str(), t));
        }
        let outs = session
            .with_batch(batch, |v, m| runner.run_mapped(v, m))
            .map_err(SessionError::Backend)?;
        let mut logits = None;
        for (n, t) in outs {
            if n == "logits" {
                logits = t.as_f32().map(<[f32]>::to_vec);
            } else if names.contains(&n) {
                state.push((n, t));
            }
        }
        if state.len() != names.len() {
            return Err(SessionError::Missing("cache"));
        }
        logits.ok_or(SessionError::Missing("logits"))
    }
}

fn forward_of(p: &graft_frontend::Program) -> Result<&graft_ir::Function, SessionError> {
    p.module
        .function("forward")
        .ok_or(SessionError::Missing("forward"))
}

/// `f` optimized (through the on-disk cache) when asked, prepared on `backend`.
fn prepare(
    session: &Session,
    f: &graft_ir::Function,
    backend: &dyn Backend,
    optimize: bool,
) -> Result<Box<dyn Prepared>, SessionError> {
    let mut f = f.clone();
    if optimize {
        f = crate::cache::optimized_step(
            crate::cache::cache_dir().as_deref(),
            &session.program.module.files,
            &f,
            &graft_opt::Options::default(),
        )
        .map_err(SessionError::Value)?
        .0;
    }
    backend.prepare(&f).map_err(SessionError::Backend)
}

/// What to generate from, for [`generate_spec`].
pub struct Request<'a> {
    /// The prompt's text.
    pub prompt: &'a str,
    /// Render the prompt as one user message with the chat template (and the generation
    /// prompt) instead of tokenizing it as text.
    pub chat: bool,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Trained tensors to load (a PEFT adapter folder or graft's trainable.safetensors).
    pub adapter: Option<&'a std::path::Path>,
    /// Decode with a KV cache (else recompute the window for every token).
    pub kv_cache: bool,
    /// Keep going past eos (to measure generation speed).
    pub ignore_eos: bool,
}

/// `graft generate`: the spec's model (elaborated again for one sequence of the prompt's
/// length plus the reply's, rounded up to a multiple of 16 so windows share compiled code),
/// its tokenizer, the adapter's tensors; streams the reply's text to `on_text` as it grows
/// (and notes, such as the KV cache falling back, to `on_note`) and returns it whole with
/// how it ran.
///
/// # Errors
/// No tokenizer, a file that cannot be used, or a failed run.
pub fn generate_spec(
    spec: &std::path::Path,
    loaded: &graft_frontend::Loaded,
    program: &graft_frontend::Program,
    opts: &crate::SessionOptions,
    req: &Request,
    on_text: &mut dyn FnMut(&str),
    on_note: &mut dyn FnMut(&str),
) -> Result<(String, Generated), SessionError> {
    let value = SessionError::Value;
    let dir = spec.parent().unwrap_or(std::path::Path::new("."));
    let tok = crate::data::tokenizer(program, dir)
        .map_err(value)?
        .ok_or_else(|| {
            value(
                "generation needs a tokenizer: name one with `tokenizer \"path\"` in the \
                 `train` block, or load the model from a Hugging Face folder with \
                 tokenizer.json"
                    .into(),
            )
        })?;
    let prompt = if req.chat {
        let msgs = [serde_json::json!({"role": "user", "content": req.prompt})];
        let text = tok.render_chat(&msgs, true).map_err(value)?;
        tok.encode(&text, false).map_err(value)?.ids
    } else {
        tok.encode(req.prompt, true).map_err(value)?.ids
    };
    let reads = |name| forward_of(program).is_ok_and(|f| f.input(name).is_some());
    if reads("decoder_input_ids") {
        // An encoder-decoder: the prompt is the source, the reply the decoder's.
        let n = prompt.len().max(req.sampling.max_new_tokens + 1);
        let program = graft_frontend::elaborate_for(loaded, 1, n)
            .map_err(|d| value(d.render(&loaded.sources, false)))?;
        let weights = match &program.weights {
            Some((path, _)) => Some(crate::WeightsFile::open(path)?),
            None => None,
        };
        let cx = crate::labeled::context(&program, Some(&tok));
        let pad = tok.pad.as_ref().map_or(0, |(_, id)| i64::from(*id));
        let stop = if req.ignore_eos {
            Vec::new()
        } else {
            stop_tokens(&tok, program.model_dir.as_deref())
        };
        let seed = program.train.seed;
        let mut session = Session::new(program, weights.as_ref(), seed)?;
        if let Some(a) = req.adapter {
            session.load_trained(a)?;
        }
        let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let mask: Vec<i64> = (0..n).map(|i| i64::from(i < ids.len())).collect();
        ids.resize(n, pad);
        let mut inputs = vec![("input_ids", Tensor::i64(vec![1, n], ids)?)];
        if reads("attention_mask") {
            inputs.push(("attention_mask", Tensor::i64(vec![1, n], mask)?));
        }
        let source = seq2seq::Source {
            inputs: &inputs,
            start: cx.decoder_start,
            pad,
        };
        let mut stream = Stream::default();
        on_text("\n");
        let done = seq2seq::generate(&mut session, &source, &stop, req.sampling, &mut |t| {
            stream.push(&tok, t, on_text);
        })?;
        let text = stream.finish(&tok, on_text)?;
        return Ok((text, done));
    }
    // Odd, so that the window's length is unlikely to equal another axis of the model (the
    // KV cache tells sequence axes from others by elaborating a second length).
    let len = (prompt.len() + req.sampling.max_new_tokens.max(1)).next_multiple_of(16) + 1;
    let elaborate = |n| {
        graft_frontend::elaborate_for(loaded, 1, n)
            .map_err(|d| value(d.render(&loaded.sources, false)))
    };
    let program = elaborate(len)?;
    let weights = match &program.weights {
        Some((path, _)) => Some(crate::WeightsFile::open(path)?),
        None => None,
    };
    // The training step is not run: the interpreter "prepares" it for free.
    let seed = program.train.seed;
    let mut session = Session::new(program, weights.as_ref(), seed)?;
    if let Some(a) = req.adapter {
        session.load_trained(a)?;
    }
    let mut g = Generator::new(&session, opts.backend, opts.optimize)?;
    if req.kv_cache {
        let longer = elaborate(len + 2)?;
        if let Err(e) = g.add_kv_cache(&session, &longer, opts.backend, opts.optimize) {
            on_note(&format!(
                "{e}; recomputing the window for every token instead"
            ));
        }
    }
    let stop = if req.ignore_eos {
        Vec::new()
    } else {
        stop_tokens(&tok, session.program.model_dir.as_deref())
    };
    let mut stream = Stream::default();
    let done = g.generate(&mut session, &prompt, &stop, req.sampling, &mut |t| {
        stream.push(&tok, t, on_text);
    })?;
    if let Some(n) = &done.note {
        on_note(n);
    }
    let text = stream.finish(&tok, on_text)?;
    Ok((text, done))
}

/// A reply's text streamed as its tokens come: what each token adds is passed on, a partial
/// UTF-8 character waiting for its next token.
#[derive(Default)]
struct Stream {
    reply: Vec<u32>,
    shown: String,
    failed: Option<String>,
}

impl Stream {
    fn push(&mut self, tok: &crate::TextTokenizer, t: u32, on_text: &mut dyn FnMut(&str)) {
        self.reply.push(t);
        match tok.decode(&self.reply) {
            Ok(text) => self.show(text, on_text),
            Err(e) => self.failed = Some(e),
        }
    }

    fn show(&mut self, text: String, on_text: &mut dyn FnMut(&str)) {
        if let Some(new) = text.strip_prefix(self.shown.as_str())
            && !new.is_empty()
            && !new.ends_with('\u{fffd}')
        {
            on_text(new);
            self.shown = text;
        }
    }

    /// The whole reply's text, the rest of it passed on.
    fn finish(
        mut self,
        tok: &crate::TextTokenizer,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<String, SessionError> {
        if let Some(e) = self.failed.take() {
            return Err(SessionError::Value(e));
        }
        let text = tok.decode(&self.reply).map_err(SessionError::Value)?;
        self.show(text.clone(), on_text);
        Ok(text)
    }
}

/// The tokens generation stops at, as transformers' `generate` takes them: the tokenizer's
/// eos and every `eos_token_id` of the model folder's `generation_config.json` (an id or a
/// list: chat models list their end-of-turn token there).
pub fn stop_tokens(tok: &crate::TextTokenizer, model_dir: Option<&std::path::Path>) -> Vec<u32> {
    let mut stop: Vec<u32> = tok.eos.iter().map(|e| e.1).collect();
    let config = model_dir
        .map(|d| d.join("generation_config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(v) = config.as_ref().and_then(|c| c.get("eos_token_id")) {
        let ids: Vec<&serde_json::Value> = match v {
            serde_json::Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for id in ids.into_iter().filter_map(serde_json::Value::as_u64) {
            if let Ok(id) = u32::try_from(id)
                && !stop.contains(&id)
            {
                stop.push(id);
            }
        }
    }
    stop
}

/// The next token from one position's logits.
fn choose(logits: &[f32], s: Sampling, rng: &mut SplitMix) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    // Softmax at the temperature, in f64.
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            (
                i as u32,
                ((f64::from(l) - f64::from(max)) / s.temperature).exp(),
            )
        })
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    if !(z.is_finite() && z > 0.0) {
        return argmax();
    }
    // Top-p: the most likely tokens until their mass reaches p (at least one).
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut n = 0;
    for x in &p {
        kept += x.1 / z;
        n += 1;
        if kept >= s.top_p {
            break;
        }
    }
    let p = &p[..n];
    let mass: f64 = p.iter().map(|x| x.1).sum();
    let mut u = rng.unit() * mass;
    for x in p {
        u -= x.1;
        if u <= 0.0 {
            return x.0;
        }
    }
    p[p.len() - 1].0
}

/// splitmix64: a small seeded generator, the same stream on every machine.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(temperature: f64, top_p: f64) -> Sampling {
        Sampling {
            max_new_tokens: 1,
            temperature,
            top_p,
            seed: 0,
        }
    }

    #[test]
    fn greedy_takes_the_largest_and_a_small_top_p_keeps_only_it() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = SplitMix(1);
        assert_eq!(choose(&logits, s(0.0, 1.0), &mut rng), 1);
        for _ in 0..100 {
            assert_eq!(choose(&logits, s(1.0, 0.01), &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // Probabilities e^0 : e^ln3 = 1 : 3, so token 1 about 75% of the time.
        let logits = [0.0, 3f32.ln()];
        let mut rng = SplitMix(7);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| choose(&logits, s(1.0, 1.0), &mut rng) == 1)
            .count();
        let f = ones as f64 / n as f64;
        // 4.5 standard deviations of a binomial(20000, 0.75) frequency: ±0.0138.
        assert!((f - 0.75).abs() < 0.0138, "{f}");
    }
}
