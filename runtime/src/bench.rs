//! Training-step throughput and memory on random tokens, as `graft bench` reports it (one
//! JSON object) and `scripts/bench.py` reads it; and the served mode that takes one timed
//! step per request, so that a benchmark can alternate graft's steps with another process's.

use crate::session::{Session, SessionError, SessionOptions};
use crate::weights::WeightsFile;
use graft_frontend::Program;
use graft_interp::Tensor;
use serde::Serialize;
use std::io::{BufRead, Write};

/// How many steps to time.
pub enum Steps<'io> {
    /// This many, back to back.
    Count(usize),
    /// One per `step` line read from `input`, answered on `output` (see [`serve`]).
    Served {
        /// Requests.
        input: &'io mut dyn BufRead,
        /// Answers, one JSON object a line.
        output: &'io mut dyn Write,
    },
}

/// What a benchmark run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// Tokens per second over the timed steps.
    pub tokens_per_s: f64,
    /// Mean seconds per timed step.
    pub step_seconds: f64,
    /// The process's peak resident memory (optimizing and compiling included).
    pub peak_rss_bytes: u64,
    /// Resident memory before the spec was compiled.
    pub baseline_rss_bytes: u64,
    /// Peak resident memory while training (0 where it cannot be reset).
    pub train_peak_rss_bytes: u64,
    /// Timed steps.
    pub steps: usize,
    /// The memory plan's arena.
    pub arena_bytes: usize,
    /// Frozen weights packed once.
    pub bound_bytes: usize,
    /// Seconds the optimizer took (0 when it came from the cache).
    pub optimize_seconds: f64,
    /// Whether the optimized step came from the cache.
    pub optimized_from_cache: bool,
    /// Seconds compiling (or loading) the kernels took.
    pub compile_seconds: f64,
    /// Kernel modules loaded from the cache.
    pub cached_modules: usize,
    /// Kernel modules in all.
    pub modules: usize,
    /// What the spec's data costs (when it names a data file): set by [`bench`] from the data file, timed on its own.
    pub data: Option<DataCost>,
}

/// The cost of a spec's data pipeline, against the step it feeds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DataCost {
    /// The data file.
    pub file: String,
    /// Records read.
    pub records: usize,
    /// Tokens in them.
    pub tokens: usize,
    /// Seconds to read, tokenize and cut the file into batches (once, before training).
    pub load_seconds: f64,
    /// Mean seconds to draw one step's batches (every step).
    pub batch_seconds: f64,
    /// `batch_seconds` over the measured step time.
    pub fraction_of_step: f64,
}

/// Times the data pipeline of `spec`'s `train` block on its own data file: loading once,
/// then drawing every batch of two epochs. `None` when the spec names no data.
///
/// # Errors
/// The tokenizer or data cannot be read.
fn data_cost(spec: &std::path::Path, program: &Program) -> Result<Option<DataCost>, String> {
    let Some(data) = &program.train.data else {
        return Ok(None);
    };
    let dir = spec.parent().unwrap_or(std::path::Path::new("."));
    let path = dir.join(data);
    let start = std::time::Instant::now();
    let tok = crate::data::tokenizer(program, dir)?;
    let text = crate::data::read_data(&path).map_err(|e| e.to_string())?;
    let vocab = crate::data::vocab(program).unwrap_or(0);
    let (examples, _) = crate::data::examples_of(&text, &path, tok.as_ref(), vocab, true)
        .map_err(|e| e.to_string())?;
    let (records, tokens) = (examples.len(), examples.iter().map(|e| e.ids.len()).sum());
    let layout = crate::data::Layout::of(program, tok.as_ref());
    let mut batches = crate::data::Batches::new(examples, layout, &path.display().to_string())
        .map_err(|e| e.to_string())?;
    let load_seconds = start.elapsed().as_secs_f64();
    let draws = 2 * batches.per_epoch();
    let start = std::time::Instant::now();
    for _ in 0..draws {
        std::hint::black_box(batches.next_batch());
    }
    let per_step = program.train.accumulate.max(1) as f64;
    Ok(Some(DataCost {
        file: path.display().to_string(),
        records,
        tokens,
        load_seconds,
        batch_seconds: start.elapsed().as_secs_f64() / draws.max(1) as f64 * per_step,
        fraction_of_step: 0.0,
    }))
}

/// One served step's answer; the profile's fields only for `profile`.
#[derive(Serialize)]
struct Served {
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    gemm_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gemm_flops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pack_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    other_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    launches: Option<usize>,
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Reading requests or writing answers failed.
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The spec's tokenizer or data could not be read.
    #[error("{0}")]
    Data(String),
}

/// Random token ids in the vocabulary, from a fixed xorshift stream (the same every run).
struct Tokens {
    state: u64,
    vocab: u64,
}

impl Tokens {
    fn batch(&mut self, batch: usize, seq: usize) -> Result<Tensor, SessionError> {
        let ids: Vec<i64> = (0..batch * seq)
            .map(|_| {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                (self.state % self.vocab) as i64
            })
            .collect();
        Tensor::i64(vec![batch, seq], ids).map_err(|e| SessionError::Value(e.to_string()))
    }
}

/// Benchmarks training `program` (compiled from `spec`): `warmup` untimed steps, then
/// `steps`, and the cost of the data pipeline against the measured step when the spec names
/// a data file. `baseline` is the resident memory before the spec was compiled
/// (`crate::memory::rss_bytes("VmRSS")`).
///
/// In the served mode it writes `{"ready": true}` after the warm-up, then answers each input
/// line: `step` runs one timed step (`{"seconds": …}`), `profile` an extra step, not counted,
/// whose kernels are timed (`gemm_seconds`, `gemm_flops`, `pack_seconds`, `other_seconds`,
/// `launches`; only `seconds` from a backend that does not time kernels), `end` (or the end
/// of input) stops, anything else gets `{"error": …}`.
///
/// # Errors
/// The data's, the session's, or the served mode's I/O.
pub fn bench(
    spec: &std::path::Path,
    program: Program,
    steps: Steps<'_>,
    warmup: usize,
    baseline: u64,
    opts: &SessionOptions,
) -> Result<Report, BenchError> {
    let data = data_cost(spec, &program).map_err(BenchError::Data)?;
    let mut report = measure(program, steps, warmup, baseline, opts)?;
    report.data = data.map(|mut d| {
        d.fraction_of_step = d.batch_seconds / report.step_seconds.max(1e-12);
        d
    });
    Ok(report)
}

/// [`bench`]'s steps and memory, without the data pipeline.
fn measure(
    program: Program,
    steps: Steps<'_>,
    warmup: usize,
    baseline: u64,
    opts: &SessionOptions,
) -> Result<Report, BenchError> {
    use crate::memory::rss_bytes;
    let (batch, seq) = (program.train.batch, program.train.seq);
    let vocab = crate::data::vocab(&program).unwrap_or(1);
    let weights = match &program.weights {
        Some((path, _)) => Some(WeightsFile::open(path).map_err(SessionError::from)?),
        None => None,
    };
    let mut session = Session::with_options(program, weights.as_ref(), 0, opts)?;
    let mut tokens = Tokens {
        state: 0x2545_f491_4f6c_dd1d,
        vocab: vocab.max(1) as u64,
    };
    // The peak so far includes optimizing and compiling; reset it (Linux: writing 5 to
    // clear_refs sets VmHWM to the current RSS) to also report the training phase's own.
    let prepare_peak = rss_bytes("VmHWM");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    for _ in 0..warmup {
        let ids = tokens.batch(batch, seq)?;
        session.step(&ids, &ids)?;
    }
    let mut secs = 0.0;
    let mut timed = |session: &mut Session, ids: Tensor| -> Result<f64, SessionError> {
        let start = std::time::Instant::now();
        session.step(&ids, &ids)?;
        let t = start.elapsed().as_secs_f64();
        secs += t;
        Ok(t)
    };
    let steps = match steps {
        Steps::Count(n) => {
            for _ in 0..n {
                timed(&mut session, tokens.batch(batch, seq)?)?;
            }
            n
        }
        Steps::Served { input, output } => {
            writeln!(output, "{}", serde_json::json!({"ready": true}))?;
            output.flush()?;
            let mut served = 0;
            for line in input.lines() {
                let answer = match line?.trim() {
                    "step" => {
                        let t = timed(&mut session, tokens.batch(batch, seq)?)?;
                        served += 1;
                        serde_json::to_value(Served::plain(t))
                    }
                    "profile" => {
                        let ids = tokens.batch(batch, seq)?;
                        let start = std::time::Instant::now();
                        let (_, p) = session.step_profiled(&ids, &ids)?;
                        let t = start.elapsed().as_secs_f64();
                        serde_json::to_value(match p {
                            Some(p) => Served {
                                seconds: t,
                                gemm_seconds: Some(p.gemm_seconds),
                                gemm_flops: Some(p.gemm_flops),
                                pack_seconds: Some(p.pack_seconds),
                                other_seconds: Some(p.other_seconds),
                                launches: Some(p.launches),
                            },
                            None => Served::plain(t),
                        })
                    }
                    "end" => break,
                    _ => Ok(serde_json::json!({"error": "expected `step`, `profile` or `end`"})),
                };
                let answer = answer.map_err(std::io::Error::other)?;
                writeln!(output, "{answer}")?;
                output.flush()?;
            }
            served
        }
    };
    let secs = secs.max(1e-9);
    let info = session.step_info().unwrap_or_default();
    let train_peak = rss_bytes("VmHWM");
    let (optimize_seconds, optimized_from_cache) = session.optimizer_run().unwrap_or((0.0, false));
    Ok(Report {
        backend: session.backend().to_string(),
        tokens_per_s: (batch * seq * steps) as f64 / secs,
        step_seconds: secs / steps.max(1) as f64,
        peak_rss_bytes: prepare_peak.max(train_peak),
        baseline_rss_bytes: baseline,
        train_peak_rss_bytes: if reset { train_peak } else { 0 },
        steps,
        arena_bytes: info.arena_bytes,
        bound_bytes: info.bound_bytes,
        optimize_seconds,
        optimized_from_cache,
        compile_seconds: info.compile_seconds,
        cached_modules: info.cached_modules,
        modules: info.modules,
        data: None,
    })
}

impl Served {
    fn plain(seconds: f64) -> Served {
        Served {
            seconds,
            gemm_seconds: None,
            gemm_flops: None,
            pack_seconds: None,
            other_seconds: None,
            launches: None,
        }
    }
}
