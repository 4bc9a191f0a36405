//! PyTorch's CPU random generator, for initializers that must reproduce a PyTorch draw
//! exactly (VeRA's shared projections): MT19937 (Matsumoto & Nishimura, 1998) seeded as
//! `torch.Generator().manual_seed(seed)` seeds it, and `uniform_` on `f32` as ATen's CPU
//! kernel computes it: one 32-bit draw per element, in order, `x = (draw & (2²⁴ − 1)) · 2⁻²⁴`,
//! and `(x · (hi − lo) + lo)` in `f64` with `lo`, `hi` and `hi − lo` in `f32`, rounded to `f32`.

const N: usize = 624;
const M: usize = 397;

/// The MT19937 state.
pub struct Mt19937 {
    state: [u32; N],
    next: usize,
}

impl Mt19937 {
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
    let mut g = Mt19937::new(seed);
    for _ in 0..skip {
        g.next_u32();
    }
    let (lo, hi) = (lo as f32, hi as f32);
    let width = f64::from(hi - lo);
    (0..n)
        .map(|_| {
            let x = f64::from(g.next_u32() & 0x00ff_ffff) / f64::from(1u32 << 24);
            (x * width + f64::from(lo)) as f32
        })
        .collect()
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
}
