//! No input makes the front end panic: every example and stdlib file, mutated thousands of
//! ways (bytes deleted, duplicated, swapped, replaced by syntax-significant characters), must
//! compile or fail with a diagnostic. A deterministic PRNG keeps the run reproducible; the
//! cargo-fuzz target in `fuzz/` explores further.

mod common;

use common::stdlib;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "=",
    "==",
    "@",
    "^T",
    "-",
    "..",
    "\"",
    "0",
    "-1",
    "1e9",
    "99999999999999999999",
    "0.0",
    "x",
    "base",
    "for",
    "if",
    "else",
    "forward",
    "param",
    "weight",
    "at",
    "use",
    "\n",
    " ",
    "/",
    "*",
    "!",
    "%",
];

fn mutate(src: &str, rng: &mut Rng) -> String {
    let mut b: Vec<u8> = src.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        let n = b.len().max(1);
        let at = rng.below(n).min(b.len());
        match rng.below(5) {
            0 => {
                let len = rng.below(20).min(b.len() - at);
                b.drain(at..at + len);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(at..at, t.bytes());
            }
            2 => {
                let len = rng.below(40).min(b.len() - at);
                let chunk: Vec<u8> = b[at..at + len].to_vec();
                let to = rng.below(b.len().max(1)).min(b.len());
                b.splice(to..to, chunk);
            }
            3 if at < b.len() => b[at] = TOKENS[rng.below(TOKENS.len())].as_bytes()[0],
            _ => {
                // Replace a number with another.
                if let Some(pos) = b[at..].iter().position(|c| c.is_ascii_digit()) {
                    let p = at + pos;
                    let rep = ["0", "1", "3", "-5", "1000000", "2.5"][rng.below(6)];
                    b.splice(p..p + 1, rep.bytes());
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn mutated_sources_never_panic() {
    let root = common::repo();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("dsl-examples"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.retain(|p| {
        p.extension().is_some_and(|e| e == "graft") && !p.ends_with("small_lora.graft")
    });
    files.extend(
        std::fs::read_dir(root.join("tests/stdlib-specs"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path()),
    );
    files.sort();
    let per_file = 60;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut failed) = (0, 0);
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap_or_default();
        for i in 0..per_file {
            let text = mutate(&src, &mut rng);
            let result = std::panic::catch_unwind(|| {
                graft_frontend::compile("mutant.graft", Some(path), text.clone(), &stdlib())
            });
            match result {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    // The diagnostic renders without panicking and points somewhere.
                    let r = e.render(false);
                    assert!(
                        r.starts_with("error"),
                        "mutant {i} of {}: {r}",
                        path.display()
                    );
                    failed += 1;
                }
                Err(_) => panic!(
                    "the front end panicked on mutant {i} of {}:\n{text}",
                    path.display()
                ),
            }
        }
    }
    assert_eq!(ok + failed, files.len() * per_file);
    assert!(
        failed > ok / 4,
        "mutations should mostly break the source ({ok} compiled, {failed} failed)"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..300 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() & 0x7f) as u8).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let r = std::panic::catch_unwind(|| {
            graft_frontend::compile("noise.graft", None, text.clone(), &stdlib())
        });
        assert!(r.is_ok(), "panicked on {text:?}");
    }
}
