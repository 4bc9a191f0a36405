//! Text generation: a prompt's continuation, one token at a time, greedy or sampled with
//! temperature and top-p (nucleus) from a seeded generator, stopping at eos.
//!
//! The model runs as `@logits` ([`crate::eval::logits_function`]: the forward, dropout off)
//! compiled for one sequence of a fixed length, the prompt plus the longest reply. Each new
//! token runs it on the tokens so far, right-padded: attention is causal, so the logits at
//! the last real position do not depend on the padding. There is no KV cache yet: each
//! token recomputes the whole prefix, which costs `length` forwards of the full window
//! rather than one, and is what to replace first when generation speed matters.

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
}

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
        let forward = session
            .program
            .module
            .function("forward")
            .ok_or(SessionError::Missing("forward"))?;
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
        let mut f = crate::eval::logits_function(forward)?;
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
        let runner = backend.prepare(&f).map_err(SessionError::Backend)?;
        Ok(Generator { runner, len })
    }

    /// The window: prompt and reply together fit in it.
    pub fn window(&self) -> usize {
        self.len
    }

    /// Continues `prompt`, calling `on_token` with each new token; stops at `eos`, after
    /// `max_new_tokens`, or when the window is full. Returns the new tokens.
    ///
    /// # Errors
    /// The prompt does not leave room for a token, or a run fails.
    pub fn generate(
        &self,
        session: &mut Session,
        prompt: &[u32],
        eos: Option<u32>,
        s: Sampling,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Vec<u32>, SessionError> {
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
        let mut out = Vec::new();
        while out.len() < s.max_new_tokens && ids.len() < self.len {
            let mut window = ids.clone();
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
            let row = &data[(ids.len() - 1) * vocab..ids.len() * vocab];
            let next = choose(row, s, &mut rng);
            on_token(next);
            out.push(next);
            ids.push(i64::from(next));
            if Some(next) == eos {
                break;
            }
        }
        Ok(out)
    }
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
}

/// `graft generate`: the spec's model (elaborated again for one sequence of the prompt's
/// length plus the reply's, rounded up to a multiple of 16 so windows share compiled code),
/// its tokenizer, the adapter's tensors; streams the reply's text to `on_text` as it grows
/// and returns it whole.
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
) -> Result<String, SessionError> {
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
    let len = (prompt.len() + req.sampling.max_new_tokens.max(1)).next_multiple_of(16);
    let program = graft_frontend::elaborate_for(loaded, 1, len)
        .map_err(|d| value(d.render(&loaded.sources, false)))?;
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
    let g = Generator::new(&session, opts.backend, opts.optimize)?;
    let eos = tok.eos.as_ref().map(|e| e.1);
    let mut reply = Vec::new();
    let mut shown = String::new();
    let mut failed = None;
    let mut show = |text: String, shown: &mut String| {
        // What is new; a partial UTF-8 character waits for its next token.
        if let Some(new) = text.strip_prefix(shown.as_str())
            && !new.is_empty()
            && !new.ends_with('\u{fffd}')
        {
            on_text(new);
            *shown = text;
        }
    };
    g.generate(&mut session, &prompt, eos, req.sampling, &mut |t| {
        reply.push(t);
        match tok.decode(&reply) {
            Ok(text) => show(text, &mut shown),
            Err(e) => failed = Some(e),
        }
    })?;
    if let Some(e) = failed {
        return Err(value(e));
    }
    let text = tok.decode(&reply).map_err(value)?;
    show(text.clone(), &mut shown);
    Ok(text)
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
