//! Which problem to roll out next (design §3.5): a shuffled pass over the data, one epoch after another, plus the
//! **easy-data pool** — problems whose whole group was correct (pass rate 1) leave the normal order and are drawn
//! again only with probability α (default 0.1). Dynamic sampling itself (dropping groups with pass rate 0 or 1)
//! is [`is_valid_group`]; the rollout engine over-samples to keep the batch full.

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;
use serde::{Deserialize, Serialize};

/// A group carries gradient only if its rewards differ (pass rate strictly between 0 and 1 for 0/1 rewards).
pub fn is_valid_group(rewards: &[f64]) -> bool {
    match rewards.first() {
        None => false,
        Some(&r0) => rewards.iter().any(|&r| (r - r0).abs() > 1e-9),
    }
}

/// Where a sampled problem came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    Normal,
    Easy,
}

/// The problem sampler with its easy pool; deterministic given the seed and the sequence of calls.
#[derive(Debug, Clone)]
pub struct ProblemSampler {
    n: usize,
    alpha: f64,
    rng: SplitMix64,
    order: Vec<usize>,
    pos: usize,
    in_pool: Vec<bool>,
    pool: Vec<usize>,
    /// Completed passes over the normal data.
    pub epochs: u64,
}

impl ProblemSampler {
    /// A sampler over `n` problems drawing from the easy pool with probability `alpha`.
    pub fn new(n: usize, alpha: f64, seed: u64) -> Self {
        let mut s = Self {
            n,
            alpha: alpha.clamp(0.0, 1.0),
            rng: SplitMix64::from_seed((seed ^ 0x005E_ED0F_E4A5).to_le_bytes()),
            order: vec![],
            pos: 0,
            in_pool: vec![false; n],
            pool: vec![],
            epochs: 0,
        };
        s.reshuffle();
        s
    }

    fn reshuffle(&mut self) {
        self.order = (0..self.n).filter(|&i| !self.in_pool[i]).collect();
        for i in (1..self.order.len()).rev() {
            let j = below(&mut self.rng, i as u64 + 1) as usize;
            self.order.swap(i, j);
        }
        self.pos = 0;
    }

    /// The next problem index and its origin.
    pub fn draw(&mut self) -> (usize, Origin) {
        let normal_left = self.in_pool.iter().any(|&e| !e);
        if !self.pool.is_empty() && (!normal_left || unit_f64(&mut self.rng) < self.alpha) {
            let i = self.pool[below(&mut self.rng, self.pool.len() as u64) as usize];
            return (i, Origin::Easy);
        }
        loop {
            if self.pos >= self.order.len() {
                self.epochs += 1;
                self.reshuffle();
            }
            let i = self.order[self.pos];
            self.pos += 1;
            if !self.in_pool[i] {
                return (i, Origin::Normal);
            }
        }
    }

    /// Records that problem `i` reached pass rate 1: it moves to the easy pool.
    pub fn mark_easy(&mut self, i: usize) {
        if i < self.n && !self.in_pool[i] {
            self.in_pool[i] = true;
            self.pool.push(i);
        }
    }

    /// Problems in the easy pool.
    pub fn easy_pool_len(&self) -> usize {
        self.pool.len()
    }
}

/// Uniform integer in `0..n` (n > 0), by Lemire's multiply-shift.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

/// Uniform float in `[0, 1)` from the top 53 bits.
fn unit_f64(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rand_xoshiro's SplitMix64 is the reference SplitMix64 (Steele et al.), seeded with the state itself, so
    /// draws are those of the hand-written generator this crate used before.
    #[test]
    fn splitmix_is_the_reference_generator() {
        let mut state = 0x005E_ED0F_E4A5u64 ^ 7;
        let mut rng = SplitMix64::from_seed(state.to_le_bytes());
        for _ in 0..4 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            assert_eq!(rng.next_u64(), z ^ (z >> 31));
        }
    }

    #[test]
    fn dynamic_sampling_keeps_only_mixed_groups() {
        assert!(!is_valid_group(&[0.0, 0.0, 0.0]));
        assert!(!is_valid_group(&[1.0, 1.0]));
        assert!(!is_valid_group(&[]));
        assert!(is_valid_group(&[0.0, 1.0, 0.0]));
        assert!(is_valid_group(&[0.5, 0.25]));
    }

    #[test]
    fn one_epoch_visits_every_problem_once() {
        let mut s = ProblemSampler::new(50, 0.1, 3);
        let mut seen: Vec<usize> = (0..50).map(|_| s.draw().0).collect();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn easy_pool_is_drawn_at_rate_alpha() {
        let mut s = ProblemSampler::new(1000, 0.1, 7);
        for i in 0..100 {
            s.mark_easy(i);
        }
        let draws = 20_000;
        let mut easy = 0;
        for _ in 0..draws {
            let (i, o) = s.draw();
            match o {
                Origin::Easy => {
                    easy += 1;
                    assert!(i < 100);
                }
                Origin::Normal => assert!(i >= 100, "easy problem {i} came from the normal order"),
            }
        }
        let rate = easy as f64 / draws as f64;
        // Binomial(20000, 0.1): sd ≈ 0.0021; 5 sd.
        assert!((rate - 0.1).abs() < 0.011, "easy rate {rate}");
    }

    #[test]
    fn only_the_pool_is_left_when_everything_is_easy() {
        let mut s = ProblemSampler::new(3, 0.1, 1);
        (0..3).for_each(|i| s.mark_easy(i));
        for _ in 0..10 {
            assert_eq!(s.draw().1, Origin::Easy);
        }
    }
}
