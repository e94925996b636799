//! Per-choice text processing: incremental detokenization, stop strings, and the split of `<think>…</think>`
//! text into reasoning and content.

use mimo_engine::engine::{FinishReason, TokenLogprob};
use mimo_text::{DecodeStream, StopChecker, Tokenizer};

use crate::tools::{ToolCallParser, ToolEvent};

/// Opening tag of a reasoning block.
pub const THINK_START: &str = "<think>";
/// Closing tag of a reasoning block.
pub const THINK_END: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: the text may still open with `<think>`.
    Start,
    Reasoning,
    /// After the think block (`strip`: leading whitespace is still being dropped) or without one.
    Content {
        strip: bool,
    },
}

/// Splits streamed text into reasoning (inside `<think>…</think>`) and content, holding back text that may
/// be the start of a tag. A think block is recognised only at the start of the output (leading whitespace
/// allowed), or when the prompt already opened it.
#[derive(Debug, Clone)]
pub struct ReasoningParser {
    state: State,
    buf: String,
    saw_think: bool,
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
pub(crate) fn partial_tag_len(s: &str, tag: &str) -> usize {
    let max = (tag.len() - 1).min(s.len());
    (1..=max)
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

impl ReasoningParser {
    /// A parser; `in_think` when the prompt ended inside an open think block.
    pub fn new(in_think: bool) -> Self {
        Self {
            state: if in_think {
                State::Reasoning
            } else {
                State::Start
            },
            buf: String::new(),
            saw_think: in_think,
        }
    }

    /// Whether a think block was seen (then `reasoning_content` is reported).
    pub fn saw_think(&self) -> bool {
        self.saw_think
    }

    /// Adds text; returns the `(reasoning, content)` that can be emitted now.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.buf.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        loop {
            match self.state {
                State::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_START) {
                        self.buf = rest.to_string();
                        self.state = State::Reasoning;
                        self.saw_think = true;
                    } else if THINK_START.starts_with(t) {
                        return (reasoning, content);
                    } else {
                        self.state = State::Content { strip: false };
                    }
                }
                State::Reasoning => {
                    if let Some(pos) = self.buf.find(THINK_END) {
                        reasoning.push_str(&self.buf[..pos]);
                        self.buf = self.buf[pos + THINK_END.len()..].to_string();
                        self.state = State::Content { strip: true };
                    } else {
                        let hold = partial_tag_len(&self.buf, THINK_END);
                        let cut = self.buf.len() - hold;
                        reasoning.extend(self.buf.drain(..cut));
                        return (reasoning, content);
                    }
                }
                State::Content { strip } => {
                    if strip {
                        let t = self.buf.trim_start();
                        if t.is_empty() {
                            self.buf.clear();
                            return (reasoning, content);
                        }
                        self.buf = t.to_string();
                        self.state = State::Content { strip: false };
                    }
                    content.push_str(&self.buf);
                    self.buf.clear();
                    return (reasoning, content);
                }
            }
        }
    }

    /// Releases held-back text at the end of the output.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Reasoning => (rest, String::new()),
            State::Start => (String::new(), rest),
            State::Content { strip: true } => (String::new(), rest.trim_start().to_string()),
            State::Content { strip: false } => (String::new(), rest),
        }
    }
}

/// One token's log-probability entry with token strings.
#[derive(Debug, Clone)]
pub struct LogprobEntry {
    /// The token's text.
    pub token: String,
    /// Its log-probability (non-finite values clamped to -9999).
    pub logprob: f32,
    /// The most likely alternatives, most likely first.
    pub top: Vec<(String, f32)>,
}

/// What one batch of tokens produced for a choice.
#[derive(Debug, Default, Clone)]
pub struct Piece {
    /// New reasoning text.
    pub reasoning: String,
    /// New content text.
    pub content: String,
    /// Logprobs of the new tokens (when requested).
    pub logprobs: Vec<LogprobEntry>,
    /// OpenAI finish reason, once the choice is finished.
    pub finish: Option<&'static str>,
    /// A stop string matched: the engine sequence must be aborted.
    pub stop_hit: bool,
    /// Tool-call starts and argument pieces found in the content (when the request parses tool calls).
    pub tool_events: Vec<ToolEvent>,
    /// Every new token as generated (a final EOS or stop token included), for `return_token_ids`.
    pub token_ids: Vec<u32>,
    /// The sampled log-prob of each of `token_ids` (when log-probs were requested).
    pub token_logprobs: Vec<f32>,
}

/// The text state of one choice.
pub struct ChoiceText {
    tokenizer: Tokenizer,
    decoder: DecodeStream,
    stop: StopChecker,
    reasoning: Option<ReasoningParser>,
    tools: Option<Box<dyn ToolCallParser>>,
    /// Tool calls found so far.
    pub tool_calls: usize,
    stop_ids: Vec<u32>,
    /// Tokens received (the completion's token count).
    pub tokens: usize,
    /// Set once finished.
    pub finish: Option<&'static str>,
}

/// Clamps non-finite logprobs to a JSON-safe value (as vLLM does).
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

impl ChoiceText {
    /// State for one choice: `stop_ids` are EOS and request stop ids (not shown as text), `reasoning`
    /// enables the think-block split.
    pub fn new(
        tokenizer: &Tokenizer,
        stop_strings: &[String],
        stop_ids: Vec<u32>,
        reasoning: Option<ReasoningParser>,
    ) -> Self {
        Self {
            tokenizer: tokenizer.clone(),
            decoder: tokenizer.decode_stream(true),
            stop: StopChecker::new(stop_strings),
            reasoning,
            tools: None,
            tool_calls: 0,
            stop_ids,
            tokens: 0,
            finish: None,
        }
    }

    /// Parses the content for tool calls with `parser`.
    pub fn with_tool_parser(mut self, parser: Box<dyn ToolCallParser>) -> Self {
        self.tools = Some(parser);
        self
    }

    /// Whether the reasoning split saw a think block.
    pub fn saw_think(&self) -> bool {
        self.reasoning.as_ref().is_some_and(|r| r.saw_think())
    }

    fn token_str(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Processes new tokens from the engine.
    pub fn push(
        &mut self,
        tokens: &[u32],
        logprobs: &[TokenLogprob],
        finish: Option<FinishReason>,
    ) -> Result<Piece, String> {
        let mut piece = Piece::default();
        if self.finish.is_some() {
            return Ok(piece);
        }
        let mut text = String::new();
        let mut stopped = false;
        for (i, &tok) in tokens.iter().enumerate() {
            self.tokens += 1;
            piece.token_ids.push(tok);
            if let Some(lp) = logprobs.get(i) {
                piece.token_logprobs.push(finite(lp.logprob));
            }
            let is_stop_token = finish == Some(FinishReason::Stop)
                && i + 1 == tokens.len()
                && self.stop_ids.contains(&tok);
            if is_stop_token {
                break;
            }
            if let Some(lp) = logprobs.get(i) {
                piece.logprobs.push(LogprobEntry {
                    token: self.token_str(lp.token),
                    logprob: finite(lp.logprob),
                    top: lp
                        .top
                        .iter()
                        .map(|&(t, l)| (self.token_str(t), finite(l)))
                        .collect(),
                });
            }
            let new = self.decoder.step(tok).map_err(|e| e.to_string())?;
            if let Some(new) = new {
                let s = self.stop.push(&new);
                text.push_str(&s.text);
                if s.stopped.is_some() {
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped && finish.is_some() {
            if let Some(rest) = self.decoder.finish().map_err(|e| e.to_string())? {
                let s = self.stop.push(&rest);
                text.push_str(&s.text);
                stopped = s.stopped.is_some();
            }
            if !stopped {
                text.push_str(&self.stop.finish());
            }
        }
        if stopped {
            piece.stop_hit = finish.is_none();
            piece.finish = Some("stop");
        } else if let Some(f) = finish {
            piece.finish = Some(f.as_str());
        }
        match self.reasoning.as_mut() {
            Some(r) => {
                let (a, b) = r.push(&text);
                piece.reasoning = a;
                piece.content = b;
                if piece.finish.is_some() {
                    let (a, b) = r.finish();
                    piece.reasoning.push_str(&a);
                    piece.content.push_str(&b);
                }
            }
            None => piece.content = text,
        }
        if let Some(parser) = self.tools.as_mut() {
            let mut events = parser.push(&std::mem::take(&mut piece.content));
            if piece.finish.is_some() {
                events.extend(parser.finish());
            }
            for e in events {
                match e {
                    ToolEvent::Content(s) => piece.content.push_str(&s),
                    e => {
                        if matches!(e, ToolEvent::Start { .. }) {
                            self.tool_calls += 1;
                        }
                        piece.tool_events.push(e);
                    }
                }
            }
            // A turn that called tools ends with `tool_calls` (OpenAI), unless it was cut short.
            if self.tool_calls > 0 && piece.finish == Some("stop") {
                piece.finish = Some("tool_calls");
            }
        }
        self.finish = piece.finish;
        Ok(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parser: &mut ReasoningParser, pieces: &[&str]) -> (String, String) {
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            let (a, b) = parser.push(p);
            r += &a;
            c += &b;
        }
        let (a, b) = parser.finish();
        (r + &a, c + &b)
    }

    #[test]
    fn splits_think_block_across_pieces() {
        let mut p = ReasoningParser::new(false);
        let (r, c) = run(
            &mut p,
            &["<th", "ink>\nstep ", "one</th", "ink>\n\n", "Answer", " 4"],
        );
        assert_eq!(r, "\nstep one");
        assert_eq!(c, "Answer 4");
        assert!(p.saw_think());
    }

    #[test]
    fn no_think_block_is_all_content() {
        let mut p = ReasoningParser::new(false);
        let (r, c) = run(&mut p, &["<", "b>hello</think>"]);
        assert_eq!(r, "");
        assert_eq!(c, "<b>hello</think>");
        assert!(!p.saw_think());
    }

    #[test]
    fn prompt_opened_think_block() {
        let mut p = ReasoningParser::new(true);
        let (r, c) = run(&mut p, &["abc</think>", "x"]);
        assert_eq!((r.as_str(), c.as_str()), ("abc", "x"));
    }

    #[test]
    fn unterminated_think_is_reasoning() {
        let mut p = ReasoningParser::new(false);
        let (r, c) = run(&mut p, &["<think>abc</thi"]);
        assert_eq!((r.as_str(), c.as_str()), ("abc</thi", ""));
    }

    #[test]
    fn reasoning_streams_before_the_close_tag() {
        let mut p = ReasoningParser::new(false);
        assert_eq!(p.push("<think>ab"), ("ab".into(), String::new()));
        assert_eq!(p.push("c<"), ("c".into(), String::new()));
        assert_eq!(p.push("/think>d"), (String::new(), "d".into()));
    }

    #[test]
    fn partial_tag_lengths() {
        assert_eq!(partial_tag_len("abc</th", THINK_END), 4);
        assert_eq!(partial_tag_len("abc", THINK_END), 0);
        assert_eq!(partial_tag_len("é<", THINK_END), 1);
    }
}
