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
        _ => Cow::Borrowed(logits),
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
    }
}
