//! The per-sequence logits hook: what a sequence may produce next, decided from what it has produced so far.
//!
//! A [`LogitsProcessor`] is consulted before every sampled position of its sequence: the prefill's first
//! token, each decode step, and each row of an MTP draft chain and its verification (with the drafts accepted
//! so far as history), so constraints hold with speculative decoding too. It must be a pure function of the
//! history: drafts are proposals, and the engine asks again for every position it verifies.
//!
//! A forced token is emitted without sampling (logprob 0, no alternatives; the sampler's RNG does not
//! advance); a token set masks every other logit to −∞ before penalties, temperature and truncation, so the
//! sampled token and its logprobs are those of the renormalised distribution over the set.

use std::borrow::Cow;

/// What may come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextToken {
    /// Anything the sampler picks.
    Any,
    /// Exactly this token.
    Force(u32),
    /// One of these token ids (an empty or out-of-vocabulary set leaves nothing to sample: the sequence fails).
    OneOf(Vec<u32>),
    /// One of the tokens of this mask (a grammar's allowed set; same rules as `OneOf`).
    Allowed(TokenMask),
    /// Nothing: the hook cannot go on (e.g. a grammar engine error); the sequence fails with this reason.
    Fail(String),
}

/// A set of token ids as a bitmask: bit `t % 32` of word `t / 32`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
}

impl TokenMask {
    /// A mask over the given words.
    pub fn from_words(words: Vec<u32>) -> Self {
        Self { words }
    }

    /// Whether `token` is in the set.
    pub fn contains(&self, token: u32) -> bool {
        self.words
            .get(token as usize / 32)
            .is_some_and(|w| w >> (token % 32) & 1 == 1)
    }

    /// Adds `token` to the set.
    pub fn insert(&mut self, token: u32) {
        let i = token as usize / 32;
        if self.words.len() <= i {
            self.words.resize(i + 1, 0);
        }
        self.words[i] |= 1 << (token % 32);
    }

    /// Tokens in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The token ids in the set, ascending.
    pub fn ids(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count());
        for (i, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                out.push(i as u32 * 32 + w.trailing_zeros());
                w &= w - 1;
            }
        }
        out
    }
}

impl std::fmt::Debug for TokenMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenMask({} allowed)", self.count())
    }
}

/// A sequence's constraint on its next token (see the module docs).
pub trait LogitsProcessor: Send + Sync {
    /// The constraint after `generated`, the tokens generated so far (prompt excluded, drafts accepted so far
    /// included).
    fn next_token(&self, generated: &[u32]) -> NextToken;
}

/// `logits` with every token outside `allowed` at −∞.
pub(crate) fn mask<'a>(logits: &'a [f32], next: &NextToken) -> Cow<'a, [f32]> {
    match next {
        NextToken::OneOf(ids) => {
            let mut row = vec![f32::NEG_INFINITY; logits.len()];
            for &t in ids {
                if let Some(&v) = logits.get(t as usize) {
                    row[t as usize] = v;
                }
            }
            Cow::Owned(row)
        }
        NextToken::Allowed(m) => Cow::Owned(
            logits
                .iter()
                .enumerate()
                .map(|(t, &v)| {
                    if m.contains(t as u32) {
                        v
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect(),
        ),
        NextToken::Fail(_) => Cow::Owned(vec![f32::NEG_INFINITY; logits.len()]),
        NextToken::Any | NextToken::Force(_) => Cow::Borrowed(logits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_the_allowed_ids() {
        let l = [1.0, 2.0, 3.0];
        assert_eq!(&*mask(&l, &NextToken::Any), &l);
        let m = mask(&l, &NextToken::OneOf(vec![2, 7]));
        assert_eq!(&*m, &[f32::NEG_INFINITY, f32::NEG_INFINITY, 3.0]);
        let bits = TokenMask::from_words(vec![0b101]);
        assert_eq!((bits.ids(), bits.count()), (vec![0, 2], 2));
        let m = mask(&l, &NextToken::Allowed(bits));
        assert_eq!(&*m, &[1.0, f32::NEG_INFINITY, 3.0]);
        let m = mask(&l, &NextToken::Fail("x".into()));
        assert!(m.iter().all(|x| x.is_infinite()));
    }
}
