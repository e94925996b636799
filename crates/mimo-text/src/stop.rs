//! Stop strings in streamed text.

/// What [`StopChecker::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text safe to emit now (never includes a stop string or text after it).
    pub text: String,
    /// Index into the stop strings of the one that matched, when generation must stop.
    pub stopped: Option<usize>,
}

/// Finds stop strings in streamed text. Text that could be the start of a stop string is held back until
/// it is known not to be one.
#[derive(Debug, Clone)]
pub struct StopChecker {
    stops: Vec<String>,
    buffer: String,
    stopped: Option<usize>,
}

impl StopChecker {
    /// A checker for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            buffer: String::new(),
            stopped: None,
        }
    }

    /// The stop strings (empty ones removed; indices in [`StopStep::stopped`] refer to this list).
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Index of the matched stop string, once one matched.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// Adds streamed text. The earliest match in the text wins (ties: the earlier stop string in the list).
    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stopped.is_some() {
            return StopStep {
                text: String::new(),
                stopped: self.stopped,
            };
        }
        self.buffer.push_str(text);
        let mut best: Option<(usize, usize)> = None; // (position, stop index)
        for (si, s) in self.stops.iter().enumerate() {
            if let Some(pos) = self.buffer.find(s.as_str()) {
                if best.is_none_or(|(bp, _)| pos < bp) {
                    best = Some((pos, si));
                }
            }
        }
        if let Some((pos, si)) = best {
            let out = self.buffer[..pos].to_string();
            self.buffer.clear();
            self.stopped = Some(si);
            return StopStep {
                text: out,
                stopped: Some(si),
            };
        }
        let hold = self.held_back_len();
        let cut = self.buffer.len() - hold;
        let out: String = self.buffer.drain(..cut).collect();
        StopStep {
            text: out,
            stopped: None,
        }
    }

    /// Releases held-back text at the end of generation (nothing if a stop string matched).
    pub fn finish(&mut self) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        std::mem::take(&mut self.buffer)
    }

    /// Length of the longest buffer suffix that is a proper prefix of some stop string.
    fn held_back_len(&self) -> usize {
        let b = self.buffer.as_bytes();
        let mut hold = 0;
        for s in &self.stops {
            let s = s.as_bytes();
            let max = (s.len() - 1).min(b.len());
            for len in (hold + 1..=max).rev() {
                if self.buffer.is_char_boundary(b.len() - len) && b[b.len() - len..] == s[..len] {
                    hold = len;
                    break;
                }
            }
        }
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_stop(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut c = StopChecker::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let step = c.push(p);
            out += &step.text;
            if step.stopped.is_some() {
                return (out, step.stopped);
            }
        }
        out += &c.finish();
        (out, None)
    }

    #[test]
    fn stop_strings_across_pieces() {
        assert_eq!(
            run_stop(&["STOP"], &["abc ST", "O", "P tail"]),
            ("abc ".into(), Some(0))
        );
        assert_eq!(
            run_stop(&["STOP"], &["abc ST", "OX"]),
            ("abc STOX".into(), None)
        );
        assert_eq!(run_stop(&["STOP"], &["abc ST"]), ("abc ST".into(), None));
        // Earliest match wins; reported index is that stop string's.
        assert_eq!(
            run_stop(&["world", "lo"], &["hello world"]),
            ("hel".into(), Some(1))
        );
        // Multi-byte stop strings and text.
        assert_eq!(
            run_stop(&["</think>"], &["思考", "</th", "ink>答"]),
            ("思考".into(), Some(0))
        );
        assert_eq!(run_stop(&["终止"], &["a终", "b"]), ("a终b".into(), None));
        // No stops: everything passes through immediately.
        let mut c = StopChecker::new(&[]);
        assert_eq!(c.push("xyz").text, "xyz");
    }

    #[test]
    fn stop_checker_holds_back_only_possible_prefixes() {
        let mut c = StopChecker::new(&["<|im_end|>".to_string()]);
        assert_eq!(c.push("hello <|im").text, "hello ");
        assert_eq!(c.push("_").text, "");
        assert_eq!(c.push("start|>").text, "<|im_start|>");
        let step = c.push("x<|im_end|>y");
        assert_eq!(
            step,
            StopStep {
                text: "x".into(),
                stopped: Some(0)
            }
        );
        assert_eq!(c.push("more").text, "");
        assert_eq!(c.finish(), "");
    }
}
