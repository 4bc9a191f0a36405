//! PyTorch's CPU random generator, for initializers that must reproduce a PyTorch draw
//! exactly (VeRA's shared projections): MT19937 (Matsumoto & Nishimura, 1998) seeded as
//! `torch.Generator().manual_seed(seed)` seeds it, and `uniform_` on `f32` as ATen's CPU
//! kernel computes it: one 32-bit draw per element, in order, `x = (draw & (2²⁴ − 1)) · 2⁻²⁴`,
//! and `(x · (hi − lo) + lo)` in `f64` with `lo`, `hi` and `hi − lo` in `f32`, rounded to `f32`;
//! and `randperm` (FourierFT's spectral locations).

const N: usize = 624;
const M: usize = 397;

/// The MT19937 state.
pub struct Mt19937 {
    state: [u32; N],
    next: usize,
}

impl Mt19937 {
    /// The generator seeded with `seed`, after `skip` 32-bit draws.
    fn skipped(seed: u64, skip: u64) -> Self {
        let mut g = Mt19937::new(seed);
        for _ in 0..skip {
            g.next_u32();
        }
        g
    }

    /// Seeded as `at::mt19937(seed)` (the reference `init_genrand` on the low 32 bits).
    pub fn new(seed: u64) -> Mt19937 {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 { state, next: N }
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// The next 32-bit output (tempered).
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// `n` values of `uniform_(lo, hi)` on an `f32` tensor from a generator seeded with `seed`,
/// after `skip` earlier draws from it.
pub fn torch_uniform(seed: u64, skip: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    let mut g = Mt19937::skipped(seed, skip);
    let (lo, hi) = (lo as f32, hi as f32);
    let width = f64::from(hi - lo);
    (0..n)
        .map(|_| {
            let x = f64::from(g.next_u32() & 0x00ff_ffff) / f64::from(1u32 << 24);
            (x * width + f64::from(lo)) as f32
        })
        .collect()
}

/// The first `k` entries of `torch.randperm(n, generator=…manual_seed(seed))` after `skip`
/// earlier draws: Fisher–Yates from the front, position `i` swapped with `i + z % (n − i)`
/// for one 32-bit draw `z` (ATen's CPU kernel for `n < u32::MAX / 20`). Position `i` is final
/// after step `i`, so only `k` steps run, and only the positions they touch are stored.
pub fn torch_randperm(seed: u64, skip: u64, n: u64, k: usize) -> Vec<u64> {
    let mut g = Mt19937::skipped(seed, skip);
    let mut moved = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(k);
    for i in 0..k as u64 {
        // The last position has nothing left to swap with and draws nothing.
        let j = if i + 1 < n {
            i + u64::from(g.next_u32()) % (n - i)
        } else {
            i
        };
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_i = moved.get(&i).copied().unwrap_or(i);
        moved.insert(j, at_i);
        out.push(at_j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_outputs() {
        // mt19937ar.c with init_genrand(5489): the first outputs, and the 10000th (the C++
        // standard's check value for std::mt19937).
        let mut g = Mt19937::new(5489);
        assert_eq!(g.next_u32(), 3_499_211_612);
        assert_eq!(g.next_u32(), 581_869_302);
        let mut g = Mt19937::new(5489);
        let last = (0..10_000).map(|_| g.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn randperm_as_pytorch_draws_it() {
        // `torch.randperm(n, generator=torch.Generator().manual_seed(seed))` (torch 2.15).
        assert_eq!(torch_randperm(0, 0, 10, 10), [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]);
        assert_eq!(
            torch_randperm(777, 0, 4096, 5),
            [2151, 945, 3161, 4091, 1983]
        );
        assert_eq!(
            torch_randperm(777, 0, 1 << 20, 5),
            [325735, 902535, 477161, 185675, 107091]
        );
    }
}
