//! Constrained decoding: JSON schemas, regexes, choice lists and Lark grammars as per-sequence logits hooks,
//! on `llguidance` (the Earley/derivative-regex engine llama.cpp and mistral.rs use for token masks).
//!
//! A [`GrammarCompiler`] is built once per tokenizer (its token trie); [`GrammarCompiler::compile`] checks a
//! request's grammar (errors name the problem, for a 400) and returns a [`Constrained`] hook. The hook is a
//! pure function of the generated tokens, as the engine requires: it keeps one matcher and the tokens it has
//! consumed, rolls back to the common prefix when asked about a shorter or different history (rejected MTP
//! drafts), and consumes the rest. Once the grammar is complete only EOS is allowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::constraint::{LogitsProcessor, NextToken, TokenMask};

/// What a constrained output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(Value),
    /// Text matching this regex (whole output).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect: EBNF rules, regex terminals, `%json {…}` sub-grammars).
    Lark(String),
}

/// JSON layout the grammars impose: `json.dumps`' separators, no free whitespace (a weak model cannot pad
/// forever), and `oneOf` approximated by `anyOf` as other engines do.
const JSON_OPTIONS: &str = r#"{"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ", "coerce_one_of": true}"#;

/// `schema` with mimo's JSON layout options (unless it sets its own `x-guidance`).
pub fn with_json_options(schema: Value) -> Value {
    match schema {
        Value::Object(mut m) => {
            if !m.contains_key("x-guidance") {
                if let Ok(opts) = serde_json::from_str::<Value>(JSON_OPTIONS) {
                    m.insert("x-guidance".into(), opts);
                }
            }
            Value::Object(m)
        }
        // `true`/`false` schemas and bad values: llguidance's compiler names the problem.
        other => other,
    }
}

impl Grammar {
    fn top_level(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(with_json_options(
                serde_json::json!({"type": "object"}),
            )),
            Grammar::JsonSchema(s) => {
                TopLevelGrammar::from_json_schema(with_json_options(s.clone()))
            }
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
            Grammar::Choice(choices) => {
                if choices.is_empty() {
                    return Err("the choice list is empty".into());
                }
                // Lark string literals are JSON strings.
                let alts: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}\n", alts.join(" | ")))
            }
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }
}

/// Mask computations of all hooks of one compiler (for `/metrics` and benchmarks).
#[derive(Debug, Default)]
pub struct GrammarStats {
    /// Masks computed.
    pub masks: AtomicU64,
    /// Time spent consuming tokens and computing masks, in nanoseconds.
    pub mask_nanos: AtomicU64,
    /// Grammars compiled.
    pub compiled: AtomicU64,
}

/// Compiles grammars against one tokenizer's token trie.
pub struct GrammarCompiler {
    factory: ParserFactory,
    stats: Arc<GrammarStats>,
    specials: std::collections::HashSet<String>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// A compiler for `tokenizer` over a model vocabulary of `vocab_size` ids (≥ the tokenizer's; extra ids are
    /// never allowed). `eos_ids` end a complete output.
    pub fn new(
        tokenizer: &mimo_text::Tokenizer,
        vocab_size: usize,
        eos_ids: &[u32],
    ) -> Result<Self, String> {
        let Some(&eos) = eos_ids.first() else {
            return Err("constrained decoding needs an EOS token".into());
        };
        let mut words = tokenizer.token_bytes(TokTrie::SPECIAL_TOKEN_MARKER);
        words.resize(vocab_size.max(words.len()), Vec::new());
        let specials = words
            .iter()
            .filter(|w| w.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER))
            .map(|w| String::from_utf8_lossy(&w[1..]).into_owned())
            .collect();
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_ids);
        let env: Arc<dyn TokenizerEnv + Sync> = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self {
            factory,
            stats: Arc::default(),
            specials,
        })
    }

    /// Whether `text` is a special token of the tokenizer (then a Lark grammar names it `<text>`, not `"text"`).
    pub fn is_special(&self, text: &str) -> bool {
        self.specials.contains(text)
    }

    /// Counters shared by every hook of this compiler.
    pub fn stats(&self) -> Arc<GrammarStats> {
        self.stats.clone()
    }

    /// Checks and compiles `grammar` into a fresh hook; the error says what is wrong with it.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constrained, String> {
        let parser = self
            .factory
            .create_parser(grammar.top_level()?)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        Ok(Constrained {
            state: Mutex::new(Matching {
                matcher,
                consumed: vec![],
            }),
            stats: self.stats.clone(),
        })
    }
}

struct Matching {
    matcher: Matcher,
    consumed: Vec<u32>,
}

/// One sequence's grammar as a logits hook (see the module docs).
pub struct Constrained {
    state: Mutex<Matching>,
    stats: Arc<GrammarStats>,
}

impl std::fmt::Debug for Constrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrained").finish_non_exhaustive()
    }
}

impl Constrained {
    /// The tokens allowed after `generated`.
    pub fn allowed_after(&self, generated: &[u32]) -> Result<TokenMask, String> {
        let t0 = Instant::now();
        let mut st = self
            .state
            .lock()
            .map_err(|_| "the grammar state is poisoned".to_string())?;
        let Matching { matcher, consumed } = &mut *st;
        let common = consumed
            .iter()
            .zip(generated)
            .take_while(|(a, b)| a == b)
            .count();
        if common < consumed.len() {
            matcher
                .rollback(consumed.len() - common)
                .map_err(|e| format!("grammar rollback: {e}"))?;
            consumed.truncate(common);
        }
        // Tokens past a complete grammar (the EOS it allowed, asked about again with MTP drafts or
        // `ignore_eos`) are not consumed: the answer stays "EOS only".
        for &t in &generated[common..] {
            if matcher.is_stopped() {
                break;
            }
            matcher
                .consume_token(t)
                .map_err(|e| format!("grammar: {e}"))?;
            consumed.push(t);
        }
        let mask = matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("grammar: {e}"))?;
        self.stats.masks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .mask_nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(TokenMask::from_words(mask.as_slice().to_vec()))
    }
}

impl LogitsProcessor for Constrained {
    fn next_token(&self, generated: &[u32]) -> NextToken {
        match self.allowed_after(generated) {
            Ok(m) => NextToken::Allowed(m),
            Err(e) => NextToken::Fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiler() -> (GrammarCompiler, mimo_text::Tokenizer) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
        let tok = mimo_text::Tokenizer::from_dir(dir).unwrap();
        let eos = tok.token_to_id("<|im_end|>").unwrap();
        (
            GrammarCompiler::new(&tok, tok.vocab_size() + 3, &[eos]).unwrap(),
            tok,
        )
    }

    /// Greedy walk: the lowest allowed token at each step (an adversarial "model").
    fn walk(c: &Constrained, eos: u32, limit: usize) -> Vec<u32> {
        let mut out = vec![];
        while out.len() < limit {
            let m = c.allowed_after(&out).unwrap();
            let ids = m.ids();
            assert!(!ids.is_empty());
            let t = *ids.iter().find(|&&t| t != eos).unwrap_or(&eos);
            if t == eos || ids == [eos] {
                break;
            }
            out.push(t);
        }
        out
    }

    #[test]
    fn choice_regex_and_schema_constrain_and_end() {
        let (c, tok) = compiler();
        let eos = tok.token_to_id("<|im_end|>").unwrap();
        let g = c
            .compile(&Grammar::Choice(vec!["yes".into(), "no".into()]))
            .unwrap();
        let text = tok.decode(&walk(&g, eos, 50), false).unwrap();
        assert!(text == "yes" || text == "no", "{text:?}");
        let g = c.compile(&Grammar::Regex("[0-9]{3}".into())).unwrap();
        let out = walk(&g, eos, 50);
        let text = tok.decode(&out, false).unwrap();
        assert!(
            text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}"
        );
        assert_eq!(g.allowed_after(&out).unwrap().ids(), vec![eos]);
        let schema = serde_json::json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"], "additionalProperties": false});
        let g = c.compile(&Grammar::JsonSchema(schema)).unwrap();
        let text = tok.decode(&walk(&g, eos, 50), false).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["ok"].is_boolean(), "{text:?}");
        // Ids past the tokenizer's vocabulary are never allowed.
        let m = g.allowed_after(&[]).unwrap();
        assert!(!m.contains(tok.vocab_size() as u32 + 1));
    }

    #[test]
    fn rolls_back_to_the_common_prefix() {
        let (c, tok) = compiler();
        let g = c.compile(&Grammar::Regex("(ab|cd)+".into())).unwrap();
        let ab = tok.encode("abab", false).unwrap();
        let cd = tok.encode("cdcd", false).unwrap();
        let m0 = g.allowed_after(&[]).unwrap();
        g.allowed_after(&ab).unwrap();
        // A different history (rejected drafts) rolls back and takes the new tokens.
        let m = g.allowed_after(&cd).unwrap();
        assert!(m.count() > 0);
        assert_eq!(g.allowed_after(&[]).unwrap(), m0);
        assert!(matches!(g.next_token(&cd[..1]), NextToken::Allowed(_)));
    }

    #[test]
    fn bad_grammars_are_errors_naming_the_problem() {
        let (c, _) = compiler();
        for (g, needle) in [
            (Grammar::Regex("(".into()), ""),
            (
                Grammar::Lark("start: undefined_rule".into()),
                "undefined_rule",
            ),
            (
                Grammar::JsonSchema(serde_json::json!({"type": "nosuchtype"})),
                "",
            ),
            (Grammar::Choice(vec![]), "empty"),
        ] {
            let e = c
                .compile(&g)
                .err()
                .unwrap_or_else(|| panic!("{g:?} compiled"));
            assert!(e.contains(needle), "{g:?}: {e}");
        }
    }
}
