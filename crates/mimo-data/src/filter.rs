//! Language ID and Gopher / C4 / FineWeb heuristic quality filters, with exemptions for math and code pages.
//!
//! Thresholds are the published ones (Gopher: Rae et al. 2021 App. A; C4: Raffel et al. 2020; FineWeb:
//! Penedo et al. 2024, as in datatrove). Math/code pages (enough `$…$` spans, LaTeX commands or fenced code)
//! are exempt from the rules that punish notation: symbol/word ratio, alphabetic-word ratio, mean word
//! length, curly braces, terminal punctuation, short lines, newline ratio and bullet lines. Language ID runs on
//! the prose with math and code removed.

use crate::common::{run_jsonl_stage, text_of, Decision, Report};
use crate::DataError;
use std::collections::HashMap;
use std::path::PathBuf;

/// Arguments of `mimo data filter`.
#[derive(Debug, Clone)]
pub struct FilterArgs {
    /// Input JSONL shards.
    pub inputs: Vec<PathBuf>,
    /// Output directory (or file, with one input).
    pub output: PathBuf,
    /// This task's index.
    pub task_index: usize,
    /// Number of tasks.
    pub num_tasks: usize,
    /// Field holding the text.
    pub text_field: String,
    /// Languages kept, as ISO 639-3 codes from `whatlang` (`eng`, `cmn`, ...). Empty: no language filter.
    pub languages: Vec<String>,
    /// Minimum `whatlang` confidence for the language filter.
    pub min_language_confidence: f64,
    /// Apply the Gopher quality and repetition rules.
    pub gopher: bool,
    /// Apply the C4 rules (lorem ipsum, curly braces, javascript/policy-line share).
    pub c4: bool,
    /// Apply the FineWeb rules (terminal punctuation, duplicate lines, short lines, newline ratio).
    pub fineweb: bool,
    /// Exempt math and code pages from notation-sensitive rules.
    pub math_code_exemption: bool,
    /// Add `"lang"` and `"lang_confidence"` fields to kept documents.
    pub annotate: bool,
    /// Redo shards that already have a completion marker.
    pub force: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for FilterArgs {
    fn default() -> Self {
        FilterArgs {
            inputs: vec![],
            output: PathBuf::new(),
            task_index: 0,
            num_tasks: 1,
            text_field: "text".into(),
            languages: vec!["eng".into(), "cmn".into()],
            min_language_confidence: 0.5,
            gopher: true,
            c4: true,
            fineweb: true,
            math_code_exemption: true,
            annotate: true,
            force: false,
            progress: false,
        }
    }
}

/// Why a document fails the heuristics (`None`: it passes).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// Short reason key, e.g. `gopher:symbol_ratio`.
    pub reason: String,
    /// Measured value vs threshold.
    pub detail: String,
}

/// Counts that decide whether a page is a math/code page.
#[derive(Debug, Clone, Copy, Default)]
pub struct MathCode {
    /// `$…$`/`$$…$$` spans.
    pub math_spans: usize,
    /// LaTeX commands (`\frac`, `\alpha`, ...).
    pub latex_cmds: usize,
    /// Fenced code blocks.
    pub code_blocks: usize,
    /// Characters inside code blocks.
    pub code_chars: usize,
}

impl MathCode {
    /// Measures a text.
    pub fn of(text: &str) -> Self {
        let mut m = MathCode::default();
        let mut in_fence = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                if !in_fence {
                    m.code_blocks += 1;
                }
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                m.code_chars += line.len() + 1;
            }
        }
        m.math_spans = text.matches('$').count() / 2;
        let b = text.as_bytes();
        for i in 0..b.len().saturating_sub(1) {
            if b[i] == b'\\' && b[i + 1].is_ascii_alphabetic() {
                m.latex_cmds += 1;
            }
        }
        m
    }

    /// True for pages with real math or code content.
    pub fn is_math_or_code(&self) -> bool {
        self.math_spans >= 3 || self.latex_cmds >= 5 || self.code_blocks >= 1
    }
}

/// The text with fenced code and `$…$` math removed (for language ID and prose statistics).
pub fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut in_math = false;
        for c in line.chars() {
            if c == '$' {
                in_math = !in_math;
                continue;
            }
            if !in_math {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

const STOP_WORDS: &[&str] = &["the", "be", "to", "of", "and", "that", "have", "with"];
const TERMINAL: &[char] = &[
    '.', '!', '?', '"', '\'', '”', '’', '。', '！', '？', ':', ';', ')', '$', '`',
];

fn dup_fraction(items: &[&str]) -> (f64, f64) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let (mut dup, mut dup_chars, mut total_chars) = (0usize, 0usize, 0usize);
    for it in items {
        total_chars += it.len();
        let c = seen.entry(it).or_default();
        if *c > 0 {
            dup += 1;
            dup_chars += it.len();
        }
        *c += 1;
    }
    let n = items.len().max(1) as f64;
    (dup as f64 / n, dup_chars as f64 / total_chars.max(1) as f64)
}

fn ngram_stats(words: &[&str], n: usize) -> (f64, f64) {
    // (top n-gram char fraction, duplicated n-gram char fraction), Gopher definitions.
    if words.len() < n {
        return (0.0, 0.0);
    }
    let total: usize = words.iter().map(|w| w.len()).sum::<usize>().max(1);
    let mut counts: HashMap<&[&str], usize> = HashMap::new();
    for g in words.windows(n) {
        *counts.entry(g).or_default() += 1;
    }
    let top = counts
        .iter()
        .max_by_key(|(g, c)| (**c, g.iter().map(|w| w.len()).sum::<usize>()))
        .map(|(g, c)| {
            if *c > 1 {
                g.iter().map(|w| w.len()).sum::<usize>() * c
            } else {
                0
            }
        })
        .unwrap_or(0);
    let mut covered = vec![false; words.len()];
    for (i, g) in words.windows(n).enumerate() {
        if counts.get(g).copied().unwrap_or(0) > 1 {
            for c in covered.iter_mut().skip(i).take(n) {
                *c = true;
            }
        }
    }
    let dup: usize = words
        .iter()
        .zip(&covered)
        .filter(|(_, c)| **c)
        .map(|(w, _)| w.len())
        .sum();
    (top as f64 / total as f64, dup as f64 / total as f64)
}

/// Applies the enabled heuristic rules to a text.
pub fn heuristics(text: &str, args: &FilterArgs) -> Option<Verdict> {
    let mc = MathCode::of(text);
    let exempt = args.math_code_exemption && mc.is_math_or_code();
    let v = |r: &str, d: String| {
        Some(Verdict {
            reason: r.into(),
            detail: d,
        })
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let n_words = words.len();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if args.gopher {
        if !(50..=100_000).contains(&n_words) {
            return v(
                "gopher:word_count",
                format!("{n_words} words, need 50..100000"),
            );
        }
        if !exempt {
            let mean =
                words.iter().map(|w| w.chars().count()).sum::<usize>() as f64 / n_words as f64;
            if !(3.0..=10.0).contains(&mean) {
                return v("gopher:mean_word_length", format!("{mean:.2}, need 3..10"));
            }
            let symbols =
                text.matches('#').count() + text.matches("...").count() + text.matches('…').count();
            let ratio = symbols as f64 / n_words as f64;
            if ratio > 0.1 {
                return v("gopher:symbol_ratio", format!("{ratio:.3} > 0.1"));
            }
            let bullets = lines
                .iter()
                .filter(|l| l.starts_with(['•', '-', '*', '‣', '●']))
                .count();
            if !lines.is_empty() && bullets as f64 / lines.len() as f64 > 0.9 {
                return v(
                    "gopher:bullet_lines",
                    format!("{bullets}/{} > 0.9", lines.len()),
                );
            }
            let alpha = words
                .iter()
                .filter(|w| w.chars().any(char::is_alphabetic))
                .count() as f64
                / n_words as f64;
            if alpha < 0.8 {
                return v("gopher:alpha_words", format!("{alpha:.3} < 0.8"));
            }
        }
        let ell = lines
            .iter()
            .filter(|l| l.ends_with("...") || l.ends_with('…'))
            .count();
        if !lines.is_empty() && ell as f64 / lines.len() as f64 > 0.3 {
            return v(
                "gopher:ellipsis_lines",
                format!("{ell}/{} > 0.3", lines.len()),
            );
        }
        let lower: Vec<String> = words.iter().take(5000).map(|w| w.to_lowercase()).collect();
        let stops = STOP_WORDS
            .iter()
            .filter(|s| {
                lower
                    .iter()
                    .any(|w| w.trim_matches(|c: char| !c.is_alphanumeric()) == **s)
            })
            .count();
        let cjk = text
            .chars()
            .take(2000)
            .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
            .count()
            > 100;
        if stops < 2 && !cjk {
            return v(
                "gopher:stop_words",
                format!("{stops} of the 8 stop words, need 2"),
            );
        }
        // Repetition.
        let (dl, dlc) = dup_fraction(&lines);
        if dl > 0.3 {
            return v("gopher:dup_line_fraction", format!("{dl:.3} > 0.3"));
        }
        if dlc > 0.2 {
            return v("gopher:dup_line_char_fraction", format!("{dlc:.3} > 0.2"));
        }
        let paras: Vec<&str> = text
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let (dp, dpc) = dup_fraction(&paras);
        if dp > 0.3 {
            return v("gopher:dup_para_fraction", format!("{dp:.3} > 0.3"));
        }
        if dpc > 0.2 {
            return v("gopher:dup_para_char_fraction", format!("{dpc:.3} > 0.2"));
        }
        let prose_text = if exempt { prose(text) } else { String::new() };
        let rep_words: Vec<&str> = if exempt {
            prose_text.split_whitespace().collect()
        } else {
            words.clone()
        };
        for (n, top_max) in [(2, 0.2), (3, 0.18), (4, 0.16)] {
            let (top, _) = ngram_stats(&rep_words, n);
            if top > top_max {
                return v("gopher:top_ngram", format!("{n}-gram {top:.3} > {top_max}"));
            }
        }
        for (n, dup_max) in [
            (5, 0.15),
            (6, 0.14),
            (7, 0.13),
            (8, 0.12),
            (9, 0.11),
            (10, 0.10),
        ] {
            let (_, dup) = ngram_stats(&rep_words, n);
            if dup > dup_max {
                return v("gopher:dup_ngram", format!("{n}-gram {dup:.3} > {dup_max}"));
            }
        }
    }
    if args.c4 {
        let low = text.to_lowercase();
        if low.contains("lorem ipsum") {
            return v("c4:lorem_ipsum", "contains lorem ipsum".into());
        }
        if !exempt && text.contains('{') {
            return v("c4:curly_bracket", "contains '{' on a non-code page".into());
        }
        let bad = lines
            .iter()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("javascript") && l.contains("enable")
                    || [
                        "terms of use",
                        "privacy policy",
                        "cookie policy",
                        "uses cookies",
                        "use of cookies",
                    ]
                    .iter()
                    .any(|p| l.contains(p))
            })
            .count();
        if !lines.is_empty() && bad as f64 / lines.len() as f64 > 0.5 {
            return v(
                "c4:policy_lines",
                format!("{bad}/{} javascript/policy lines", lines.len()),
            );
        }
    }
    if args.fineweb && !lines.is_empty() {
        if !exempt {
            let term =
                lines.iter().filter(|l| l.ends_with(TERMINAL)).count() as f64 / lines.len() as f64;
            if term < 0.12 {
                return v("fineweb:line_punct_ratio", format!("{term:.3} < 0.12"));
            }
            let short = lines.iter().filter(|l| l.chars().count() <= 30).count() as f64
                / lines.len() as f64;
            if short > 0.67 {
                return v("fineweb:short_line_ratio", format!("{short:.3} > 0.67"));
            }
            let nl = text.matches('\n').count() as f64 / n_words.max(1) as f64;
            if nl > 0.3 {
                return v("fineweb:newline_ratio", format!("{nl:.3} > 0.3"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let dup_chars: usize = lines
            .iter()
            .filter(|l| !seen.insert(**l))
            .map(|l| l.len())
            .sum();
        let total: usize = lines.iter().map(|l| l.len()).sum();
        let r = dup_chars as f64 / total.max(1) as f64;
        if r > 0.01 && !exempt {
            return v("fineweb:char_dup_ratio", format!("{r:.3} > 0.01"));
        }
    }
    None
}

/// Language of the prose part of a text: (ISO 639-3 code, confidence), or `None` if undetectable.
pub fn detect_language(text: &str) -> Option<(String, f64)> {
    let p = prose(text);
    let sample: String = p.chars().take(3000).collect();
    whatlang::detect(&sample).map(|i| (i.lang().code().to_string(), i.confidence()))
}

/// Runs language ID and heuristics over the shards owned by this task.
pub fn filter(args: &FilterArgs) -> Result<Report, DataError> {
    run_jsonl_stage(
        "filter",
        &args.inputs,
        &args.output,
        args.task_index,
        args.num_tasks,
        args.force,
        args.progress,
        |_s, _p, _l, mut doc| {
            let text = text_of(&doc, &args.text_field).to_string();
            let lang = detect_language(&text);
            if !args.languages.is_empty() {
                let mc = MathCode::of(&text);
                let prose_len = prose(&text).trim().chars().count();
                let skip = args.math_code_exemption && mc.is_math_or_code() && prose_len < 200;
                if !skip {
                    match &lang {
                        Some((code, conf))
                            if args.languages.iter().any(|l| l == code)
                                && *conf >= args.min_language_confidence => {}
                        Some((code, conf)) => {
                            return Ok(Decision::Drop(
                                doc,
                                "language".into(),
                                format!("{code} ({conf:.2})"),
                            ));
                        }
                        None => {
                            return Ok(Decision::Drop(doc, "language".into(), "undetected".into()))
                        }
                    }
                }
            }
            if let Some(v) = heuristics(&text, args) {
                return Ok(Decision::Drop(doc, v.reason, v.detail));
            }
            if args.annotate {
                if let Some((code, conf)) = lang {
                    doc.insert("lang".into(), code.into());
                    doc.insert(
                        "lang_confidence".into(),
                        serde_json::json!((conf * 1000.0).round() / 1000.0),
                    );
                }
            }
            Ok(Decision::Keep(doc))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn math_code_detection_and_prose() {
        let t = "Let $a$ and $b$ with $a+b$.\n```\ncode here\n```\nEnd.";
        let m = MathCode::of(t);
        assert_eq!((m.math_spans, m.code_blocks), (3, 1));
        assert!(m.is_math_or_code());
        assert_eq!(prose(t), "Let  and  with .\nEnd.\n");
    }
}
