//! The threads that run a kernel launch's range: the calling thread and a few helper threads
//! that spin between launches, with affinity and stealing.
//!
//! Why not rayon's `broadcast` (which the executor used before, and still falls back to
//! when the team is busy):
//! - A launch cost ~7 µs there in a training step (the step's wall time less each launch's
//!   slowest thread, over the small Llama's 1 138 launches: a worker that went to sleep while
//!   the caller ran a serial kernel is woken, the job is injected), 2 % of the small Llama's
//!   step and more of the tiny one's. Back to back, an empty launch takes 0.8 µs here
//!   against 1.5 µs for `broadcast` from inside its pool.
//! - Its split is static: each thread gets one contiguous chunk, so every launch lasts as
//!   long as its slower thread. On this 2-core VM the cores' speed varies with the host's
//!   load, and a step spent 5–25 % of its time with one thread waiting for the other
//!   (measured per launch: the slower thread's time summed over a step against the
//!   faster's).
//! - Together: the small Llama's step took 375 ms (min) / 414 ms (median) on the team against
//!   418 / 448 ms on rayon, alternating in one process.
//!
//! Here each launch's range is split as before into one contiguous *part* per thread, so a
//! thread mostly reads what it wrote in earlier launches (the A tiles or B panels it packed),
//! and each part into *grains* of decreasing size (half of it, then half of the rest, ...).
//! A thread takes its own part's grains from the front; when it has none left it takes the
//! other parts' grains from the back, the smallest first. A launch ends when every grain has
//! run. The helpers spin for a while after a launch (the next one usually follows within
//! microseconds) and then park.
//!
//! The calling thread always takes part in the work, so a launch completes even if no helper
//! ever wakes up.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;

/// Most parts (threads) a launch is split into.
pub(crate) const MAX_PARTS: usize = 16;
/// Most grains per part.
const MAX_GRAINS: usize = 24;
/// How long an idle helper spins (checking for a new launch) before it parks: launches
/// follow each other within microseconds during a step; between steps the host does other
/// work.
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// One part of a launch: grain boundaries and the claim word (front grain in the low 32 bits,
/// end grain in the high 32 bits; grains `front..end` are unclaimed).
struct Part {
    bounds: [usize; MAX_GRAINS + 1],
    claim: AtomicU64,
}

/// A launch: the work function and its parts.
struct Job<'a> {
    run: &'a (dyn Fn(usize, usize) + Sync),
    parts: &'a [Part],
}

impl Job<'_> {
    /// Runs grains until none is left: part `own`'s from the front, then the others' from the
    /// back.
    fn work(&self, own: usize) {
        if let Some(p) = self.parts.get(own) {
            while let Some(g) = claim(&p.claim, true) {
                (self.run)(p.bounds[g], p.bounds[g + 1]);
            }
        }
        for i in 0..self.parts.len() {
            let p = &self.parts[(own + i) % self.parts.len()];
            while let Some(g) = claim(&p.claim, false) {
                (self.run)(p.bounds[g], p.bounds[g + 1]);
            }
        }
    }
}

/// Claims the front (owner) or back (thief) grain of a part.
fn claim(word: &AtomicU64, front: bool) -> Option<usize> {
    let mut cur = word.load(SeqCst);
    loop {
        let (f, e) = (cur & 0xffff_ffff, cur >> 32);
        if f >= e {
            return None;
        }
        let (next, g) = if front {
            (cur + 1, f)
        } else {
            (((e - 1) << 32) | f, e - 1)
        };
        match word.compare_exchange_weak(cur, next, SeqCst, SeqCst) {
            Ok(_) => return Some(g as usize),
            Err(now) => cur = now,
        }
    }
}

/// The grains of `lo..hi`: half of it, half of the rest, and so on, none smaller than
/// `min_grain` items (the last takes what is left).
fn split(lo: usize, hi: usize, min_grain: usize) -> Part {
    let mut bounds = [hi; MAX_GRAINS + 1];
    bounds[0] = lo;
    let (mut at, mut grains) = (lo, 0);
    while at < hi {
        let left = hi - at;
        let take = if grains + 1 == MAX_GRAINS {
            left
        } else {
            left.div_ceil(2).max(min_grain).min(left)
        };
        at += take;
        grains += 1;
        bounds[grains] = at;
    }
    Part {
        bounds,
        claim: AtomicU64::new((grains as u64) << 32),
    }
}

/// What the calling thread and the helpers share.
struct Shared {
    /// The current launch (a `Job` on the caller's stack), or null.
    job: AtomicPtr<Job<'static>>,
    /// Bumped when a launch is published.
    epoch: AtomicU64,
    /// Helpers inside a launch (the caller waits for none before the job goes away).
    active: AtomicUsize,
    /// Per helper: parked (or about to park).
    sleeping: Vec<AtomicBool>,
    /// The helpers' handles, to unpark them.
    threads: OnceLock<Vec<Thread>>,
}

/// The team: `helpers` threads besides the caller. One run of a compiled function holds it
/// (see [`Team::get`]); concurrent runs use rayon instead.
pub(crate) struct Team {
    shared: Arc<Shared>,
    lock: Mutex<()>,
}

/// A held team, for the launches of one run.
pub(crate) struct Held<'t> {
    team: &'t Team,
    _guard: MutexGuard<'t, ()>,
}

impl Team {
    /// The process's team, with one helper per thread of rayon's pool beyond the first,
    /// when it is free; `None` when another run holds it, or on one thread.
    pub(crate) fn get() -> Option<Held<'static>> {
        static TEAM: OnceLock<Option<Team>> = OnceLock::new();
        let team = TEAM
            .get_or_init(|| Team::new(rayon::current_num_threads().clamp(1, MAX_PARTS) - 1))
            .as_ref()?;
        let guard = team.lock.try_lock().ok()?;
        Some(Held {
            team,
            _guard: guard,
        })
    }

    fn new(helpers: usize) -> Option<Team> {
        if helpers == 0 {
            return None;
        }
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
        });
        let mut threads = Vec::with_capacity(helpers);
        for i in 0..helpers {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("graft-team-{}", i + 1))
                .spawn(move || helper(&s, i))
                .ok()?;
            threads.push(handle.thread().clone());
        }
        // Set once, before any launch can be published (the team is not handed out yet).
        let _ = shared.threads.set(threads);
        Some(Team {
            shared,
            lock: Mutex::new(()),
        })
    }
}

impl Held<'_> {
    /// Threads that take part in a launch: the caller and the helpers.
    pub(crate) fn size(&self) -> usize {
        self.team.shared.sleeping.len() + 1
    }

    /// Runs `run(lo, hi)` over `0..n` in `parts` parts (at most [`Held::size`] are owned;
    /// the caller owns part 0, helper `i` part `i`), each split into grains of at least
    /// `min_grain` items. Returns when all of `0..n` has run.
    pub(crate) fn launch(
        &self,
        n: usize,
        parts: usize,
        min_grain: usize,
        run: &(dyn Fn(usize, usize) + Sync),
    ) {
        let parts = parts.clamp(1, MAX_PARTS.min(n.max(1)));
        let split: Vec<Part> = (0..parts)
            .map(|c| split(n * c / parts, n * (c + 1) / parts, min_grain))
            .collect();
        let job = Job { run, parts: &split };
        let s = &self.team.shared;
        // SAFETY (of the helpers' dereference): the pointer is published here and cleared
        // below, and this function returns (ending `job`'s borrow of the stack) only once
        // no helper is inside the job: a helper counts itself in `active` before it reads
        // `job` and out after its last use, and all four atomics are sequentially
        // consistent, so either the helper's increment precedes the load of `active` below
        // (and we wait for it), or its load of `job` follows the clear (and it sees null or
        // a later launch).
        let ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
        s.job.store(ptr, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if let Some(threads) = s.threads.get() {
            for (i, t) in threads.iter().enumerate() {
                if s.sleeping[i].load(SeqCst) {
                    t.unpark();
                }
            }
        }
        job.work(0);
        s.job.store(std::ptr::null_mut(), SeqCst);
        while s.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// A helper's loop: wait for a launch (spinning, then parked), work on it, repeat.
#[allow(unsafe_code)]
fn helper(s: &Shared, i: usize) {
    let mut seen = 0u64;
    let mut idle = std::time::Instant::now();
    let mut spins = 0u32;
    loop {
        let e = s.epoch.load(SeqCst);
        if e == seen {
            // The clock is read every 256 spins (a read costs as much as ~20 of them).
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || idle.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            s.sleeping[i].store(true, SeqCst);
            if s.epoch.load(SeqCst) == seen {
                std::thread::park();
            }
            s.sleeping[i].store(false, SeqCst);
            idle = std::time::Instant::now();
            continue;
        }
        s.active.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst);
        if !p.is_null() {
            // SAFETY: see `Held::launch`: `active` counts this thread in, so the job stays
            // alive until the decrement below.
            unsafe { (*p).work(i + 1) };
        }
        s.active.fetch_sub(1, SeqCst);
        seen = e;
        idle = std::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn grains_halve_and_cover_the_part() {
        let p = split(10, 110, 4);
        let n = (p.claim.load(SeqCst) >> 32) as usize;
        let b = &p.bounds[..=n];
        assert_eq!(b, &[10, 60, 85, 98, 104, 108, 110]);
        // A minimum grain larger than the part: one grain.
        let p = split(0, 5, 8);
        assert_eq!(p.claim.load(SeqCst) >> 32, 1);
        assert_eq!(&p.bounds[..2], &[0, 5]);
        // An empty part has no grains.
        assert_eq!(split(7, 7, 1).claim.load(SeqCst), 0);
        // Many items, grain 1: capped at MAX_GRAINS, the last takes the rest.
        let p = split(0, 1 << 30, 1);
        assert_eq!(p.claim.load(SeqCst) >> 32, MAX_GRAINS as u64);
        assert_eq!(p.bounds[MAX_GRAINS], 1 << 30);
    }

    #[test]
    fn owner_takes_the_front_and_thieves_the_back() {
        let p = split(0, 100, 1);
        assert_eq!(claim(&p.claim, true), Some(0));
        let n = (p.claim.load(SeqCst) >> 32) as usize;
        assert_eq!(claim(&p.claim, false), Some(n - 1));
        let mut seen = 2;
        while claim(&p.claim, seen % 2 == 0).is_some() {
            seen += 1;
        }
        assert_eq!(seen, n);
    }

    #[test]
    fn every_item_runs_exactly_once() {
        // A team of its own (the process's may be held by another test's run).
        let team = Team::new(1).unwrap();
        let team = Held {
            team: &team,
            _guard: team.lock.lock().unwrap(),
        };
        for &(n, parts, grain) in &[(1, 2, 1), (7, 2, 1), (1000, 2, 3), (4096, 5, 16), (3, 8, 1)] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            let run = |lo: usize, hi: usize| {
                for h in &hits[lo..hi] {
                    h.fetch_add(1, SeqCst);
                }
            };
            for _ in 0..50 {
                team.launch(n, parts, grain, &run);
            }
            assert!(
                hits.iter().all(|h| h.load(SeqCst) == 50),
                "n {n} parts {parts}"
            );
        }
        assert_eq!(team.size(), 2);
    }
}
