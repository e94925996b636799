//! String-level LaTeX normalisation and answer extraction.
//!
//! Everything here is iterative and linear in the input (no pass re-scans the string once per match), so
//! it is safe on arbitrarily long or deeply nested text before the parser's deadline checks begin.

use regex::Regex;
use std::collections::HashMap;
use std::sync::LazyLock;

/// Most layers of `$…$`, `\(…\)`, `\boxed{…}` peeled off one answer.
const MAX_UNWRAP: usize = 8;
/// Most trailing unit words stripped from one answer.
const MAX_UNIT_WORDS: usize = 4;

/// Finds the argument of the last `\boxed{…}` / `\fbox{…}` (balanced braces), if any.
/// A bare gold answer's answer part: its boxed answer; else its math segments (`$21, 16$ or $11$` → the
/// segments joined when only connectors separate them, else the last one: `$125$ miles` → `125`); else all of
/// it.
pub fn gold_answer(gold: &str) -> String {
    if let Some(b) = boxed_answer(gold) {
        return b;
    }
    let segs: Vec<(usize, usize, &str)> = MATH_SEG
        .captures_iter(gold)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let inner = (1..=4).find_map(|i| c.get(i))?;
            Some((whole.start(), whole.end(), inner.as_str().trim()))
        })
        .collect();
    let Some(&(_, last_end, last)) = segs.last() else {
        return gold.to_string();
    };
    let outside_words = |t: &str| t.split_whitespace().count();
    let joined = segs.windows(2).all(|w| is_connector(&gold[w[0].1..w[1].0]));
    if segs.len() > 1 && joined && outside_words(&gold[last_end..]) <= 3 {
        return segs.iter().map(|s| s.2).collect::<Vec<_>>().join(", ");
    }
    last.to_string()
}

/// The boxed answer of `s`: its final group of boxes joined (`\boxed{1} and \boxed{2}` → `1, 2`), else its
/// last box.
pub fn boxed_answer(s: &str) -> Option<String> {
    let group = final_boxed_group(s);
    if group.len() > 1 {
        Some(group.join(", "))
    } else {
        last_boxed(s)
    }
}

pub fn last_boxed(s: &str) -> Option<String> {
    last_boxed_str(s).map(str::to_string)
}

fn last_boxed_str(s: &str) -> Option<&str> {
    let mut best: Option<usize> = None;
    for pat in ["\\boxed", "\\fbox"] {
        if let Some(k) = s.rfind(pat) {
            let end = k + pat.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    let start = best?;
    let rest = &s[start..];
    let trimmed = rest.trim_start();
    if let Some(inner) = trimmed.strip_prefix('{') {
        return balanced(inner);
    }
    // `\boxed 5` form: up to the next `$` or whitespace
    let end = trimmed
        .find(|c: char| c == '$' || c.is_whitespace())
        .unwrap_or(trimmed.len());
    let v = &trimmed[..end];
    (!v.is_empty()).then_some(v)
}

/// Given the text right after an opening `{`, returns the content up to its matching `}`.
/// Whether the text between two boxed answers only joins them: commas, `and`, `\quad`, `\text{and}`, math
/// delimiters and spaces (`\boxed{5}, wait, actually \boxed{6}` is a correction, not two answers).
fn is_connector(gap: &str) -> bool {
    let mut g = gap.to_string();
    for t in [
        "\\text{", "\\qquad", "\\quad", "\\(", "\\)", "\\[", "\\]", "\\,", "$", "}", "{", ",", ";",
        "&",
    ] {
        g = g.replace(t, " ");
    }
    // the next answer's label (`\) and \( y_2 = \boxed{…}`)
    let g = ANSWER_LABEL.replace_all(&g, " ");
    let words: Vec<&str> = g.split_whitespace().collect();
    let wordlike = |w: &&str| {
        w.chars().all(|c| c.is_ascii_alphabetic())
            || (w.len() == 3 && w.starts_with('(') && w.ends_with(')'))
    };
    words.iter().all(|w| *w == "and" || *w == "or")
        // `\boxed{1} papers and \boxed{2} bins`, `\text{ for part (a) and }`: a few words and a conjunction
        || (words.len() <= 5 && words.contains(&"and") && words.iter().all(wordlike))
}

/// `y_2 =`, `x =`: the label of the answer that follows.
static ANSWER_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*$").expect("static regex"));

/// The final run of `\boxed{…}` answers of `s`: the last box and those before it separated only by
/// connecting text ([`is_connector`]), in order.
fn final_boxed_group(s: &str) -> Vec<String> {
    let mut boxes: Vec<(usize, usize, &str)> = vec![];
    let mut from = 0;
    while let Some(k) = s[from..].find("\\boxed") {
        let start = from + k;
        let rest = &s[start + "\\boxed".len()..];
        let Some(inner) = rest.trim_start().strip_prefix('{') else {
            from = start + 1;
            continue;
        };
        let Some(arg) = balanced(inner) else { break };
        let open = s.len() - inner.len();
        let end = open + arg.len() + 1;
        boxes.push((start, end, arg));
        from = end;
    }
    let mut group: Vec<&str> = vec![];
    for (i, &(_, end, arg)) in boxes.iter().enumerate().rev() {
        if i + 1 < boxes.len() {
            if !is_connector(&s[end..boxes[i + 1].0]) {
                break;
            }
        } else if s[end..].contains("\\boxed") {
            break;
        }
        group.push(arg);
    }
    group.reverse();
    group.into_iter().map(str::to_string).collect()
}

pub fn balanced(s: &str) -> Option<&str> {
    let mut depth = 1i32;
    let mut prev_backslash = false;
    for (i, ch) in s.char_indices() {
        match ch {
            '{' if !prev_backslash => depth += 1,
            '}' if !prev_backslash => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[..i]);
                }
            }
            _ => {}
        }
        prev_backslash = ch == '\\' && !prev_backslash;
    }
    None
}

static FINAL_ANSWER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:final\s+answer|the\s+answer|answer)\s*(?:is\b|:|=|：)\s*[:：]?\s*(?:\$\$?|\\\(|\\\[)?\s*(?P<a>[^\n]+)",
    )
    .expect("static regex")
});
static MATH_SEG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)\$\$(.+?)\$\$|\$((?:[^$\n\\]|\\.)+?)\$|\\\[(.+?)\\\]|\\\(([^\n]+?)\\\)")
        .expect("static regex")
});
static ANY_MATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)").expect("static regex")
});
/// The end of a sentence inside a final-answer statement (a period before a space or the end, not a decimal
/// point).
static SENTENCE_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\.(?:\s|$)").expect("static regex"));
static LAST_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
        .expect("static regex")
});

/// Candidate answer strings extracted from a full model response, best first.
///
/// Order follows Math-Verify: last `\boxed{}`/`\fbox{}`; then "final answer is …" style statements; then the
/// last LaTeX math segment; then the last plain number.
pub fn extract_candidates(resp: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Only look at the answer part of a reasoning trace when the model closed its thinking.
    let tail = match resp.rfind("</think>") {
        Some(k) => &resp[k + "</think>".len()..],
        None => resp,
    };
    let text = tail;
    // A boxed answer and a "final answer …" statement rank alike: the later one in the text wins (a solution
    // that boxes an intermediate value and then states its final answer means the statement); a plain "the
    // answer is" after a box does not override it.
    let boxed = boxed_answer(tail).map(|b| (last_box_start(tail), b));
    let stated = final_answer_statement(text);
    match (boxed, stated) {
        (Some((bp, b)), Some((sp, st))) if sp > bp && is_final_phrase(&text[sp..]) => {
            out.push(st);
            out.push(b);
        }
        (Some((_, b)), _) => {
            out.push(b);
            return out;
        }
        (None, Some((_, st))) => out.push(st),
        (None, None) => {}
    }
    if out.is_empty() && tail.len() < resp.len() {
        if let Some(b) = boxed_answer(resp) {
            out.push(b);
            return out;
        }
    }
    let mut math = None;
    if let Some(c) = MATH_SEG.captures_iter(text).last() {
        if let (Some(all), Some(m)) = (c.get(0), (1..=4).find_map(|i| c.get(i))) {
            math = Some((all.end(), m.as_str().trim().to_string()));
        }
    } else if text.contains('\\') && text.trim().len() <= 200 {
        // bare LaTeX without delimiters (`\frac{10}{9}`): the text is the answer
        out.push(text.trim().to_string());
    }
    // The last plain number outside math (a number inside math that did not make an answer, `$-[0,1)$` or a
    // formula split over lines, is not one either); the last math and the last number rank by position: a
    // solution that ends "… so there are 12 sequences." answers 12, not its last formula.
    let outside = ANY_MATH.replace_all(text, |c: &regex::Captures<'_>| " ".repeat(c[0].len()));
    let number = LAST_NUMBER
        .find_iter(&outside)
        .last()
        .map(|m| (m.start(), m.as_str().to_string()));
    match (math, number) {
        (Some((mp, m)), Some((np, n))) if np > mp => out.extend([n, m]),
        (m, n) => out.extend(m.into_iter().chain(n).map(|x| x.1)),
    }
    out
}

/// Whether a final-answer statement starting `s` says "final answer".
fn is_final_phrase(s: &str) -> bool {
    s.get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("final answer"))
}

/// Byte offset of the last `\boxed`/`\fbox` in `s` (0 when none).
fn last_box_start(s: &str) -> usize {
    ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|p| s.rfind(p))
        .max()
        .unwrap_or(0)
}

/// The last "final answer is …" statement of `text`: where it starts and its answer. The answer ends at a
/// closing math delimiter or the end of the sentence; a statement whose words hold no math (`The largest $n$
/// is 34.`) gives the last number of the sentence.
fn final_answer_statement(text: &str) -> Option<(usize, String)> {
    let m = FINAL_ANSWER.captures_iter(text).last()?;
    let start = m.get(0).map_or(0, |x| x.start());
    let mut a = m.name("a").map(|x| x.as_str()).unwrap_or("").trim();
    // "Final Answer: The final answer is $x$": the inner statement holds the answer
    loop {
        let lead = a
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("the "))
            .map_or(0, |_| 4);
        let Some(inner) = FINAL_ANSWER
            .captures(&a[lead..])
            .filter(|c| c.get(0).is_some_and(|m| m.start() == 0))
            .and_then(|c| c.name("a"))
        else {
            break;
        };
        a = inner.as_str().trim();
    }
    let sentence = SENTENCE_END.find(a).map_or(a, |e| &a[..e.start()]);
    let mut cut = sentence.to_string();
    for stop in ["$", "\\)", "\\]"] {
        if let Some(k) = cut.find(stop) {
            cut.truncate(k);
        }
    }
    let cut = cut.trim().trim_end_matches(['.', ',']).trim();
    // a sentence of words (`Jane started growing Sphere 3 hours ago`) states its number, not a formula
    let prose = cut
        .split_whitespace()
        .filter(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .count()
        >= 3;
    if !cut.is_empty() && !prose && cut.chars().any(|c| c.is_ascii_digit() || c == '\\') {
        return Some((start, cut.to_string()));
    }
    let words = ANY_MATH.replace_all(sentence, " ");
    LAST_NUMBER
        .find_iter(&words)
        .last()
        .map(|n| (start, n.as_str().to_string()))
        .or_else(|| (!cut.is_empty()).then(|| (start, cut.to_string())))
}

static PLAIN_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-?(?:\d+(?:[ ,]\d{3})+|\d+)(?:[.,]\d+)?|-?\.\d+").expect("static regex")
});

/// The last number of plain text, canonical (`1,000.99` → `1000.99`, `1 000` → `1000`, `2,74` and `0,111` →
/// decimal commas), for Math-Verify's expression-only extraction. A number glued to a preceding letter
/// (`AZYUK2A`) is not an answer; units after it (`1,000.99m²`) are fine.
pub fn last_plain_number(text: &str) -> Option<String> {
    let m = PLAIN_NUMBER
        .find_iter(text)
        .filter(|m| {
            !text[..m.start()]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphabetic())
        })
        .last()?;
    let n = m.as_str();
    let out = if n.contains('.') {
        n.replace([',', ' '], "")
    } else if n.contains(',') {
        let parts: Vec<&str> = n.split(',').collect();
        let lead = parts[0].trim_start_matches('-');
        if parts.len() == 2 && (parts[1].len() != 3 || lead == "0") {
            n.replace(',', ".")
        } else {
            n.replace(',', "")
        }
    } else {
        n.replace(' ', "")
    };
    Some(out)
}

static THOUSANDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$").expect("static regex"));
static FRAC_FIX: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    [
        (
            Regex::new(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])").expect("static regex"),
            r"\frac{$1}{$2}",
        ),
        (
            Regex::new(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])").expect("static regex"),
            r"\frac$1{$2}",
        ),
        (
            Regex::new(r"\\frac\s*([0-9a-zA-Z])\s*\{").expect("static regex"),
            r"\frac{$1}{",
        ),
        (
            Regex::new(r"\\sqrt\s*([0-9a-zA-Z])").expect("static regex"),
            r"\sqrt{$1}",
        ),
    ]
});
static UNIT_TAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?s)(.*[0-9}\)])\s+([A-Za-z]{2,}\.?(?:\^\{?\d\}?)?)$").expect("static regex")
});
static UNIT_MARK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x01\s*(?:\^\{?\d\}?)?").expect("static regex"));
static DOUBLED_COMMAND: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\\\(frac|dfrac|tfrac|left|right|le|leq|ge|geq|lt|gt|neq|sqrt|cdot|times|pi|infty|in|cup|cap|boxed|text|mathbf|overrightarrow)\b")
            .expect("static regex")
});
static BRACE_THOUSANDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d)\s*\{,\s*\}\s*(\d{3})").expect("static regex"));
static BANG_THOUSANDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d),\\!\s*(\d{3})").expect("static regex"));
static THIN_THOUSANDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d(?:\\[, ]\d{3})+").expect("static regex"));
static SPACING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle|!|,|;|:|\s)")
        .expect("static regex")
});

const KNOWN_WORDS: &[&str] = &[
    "pi", "sin", "cos", "tan", "sec", "csc", "cot", "ln", "log", "exp", "sqrt", "arcsin", "arccos",
    "arctan", "sinh", "cosh", "tanh", "oo", "inf", "infty", "and", "or",
];

/// Byte offsets of matching `{`/`}` pairs (escaped braces skipped as in [`balanced`]), in one pass.
fn brace_pairs(s: &str) -> HashMap<usize, usize> {
    let mut open = Vec::new();
    let mut pairs = HashMap::new();
    let mut prev_backslash = false;
    for (i, ch) in s.char_indices() {
        match ch {
            '{' if !prev_backslash => open.push(i),
            '}' if !prev_backslash => {
                if let Some(o) = open.pop() {
                    pairs.insert(o, i);
                }
            }
            _ => {}
        }
        prev_backslash = ch == '\\' && !prev_backslash;
    }
    pairs
}

/// Removes `\cmd{…}` groups (balanced), calling `f(content)` to get the replacement.
fn replace_cmd_groups(s: &str, cmd: &str, f: &dyn Fn(&str) -> String) -> String {
    if !s.contains(cmd) {
        return s.to_string();
    }
    let pairs = brace_pairs(s);
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(k) = s[pos..].find(cmd) {
        let (at, after) = (pos + k, pos + k + cmd.len());
        // the whole command name only (\text vs \textbf)
        let rest = &s[after..];
        let open = after + (rest.len() - rest.trim_start().len());
        let close = (!rest.starts_with(|c: char| c.is_ascii_alphabetic()))
            .then(|| pairs.get(&open))
            .flatten()
            .filter(|_| s[open..].starts_with('{'));
        match close {
            Some(&close) => {
                out.push_str(&s[pos..at]);
                out.push_str(&f(&s[open + 1..close]));
                pos = close + 1;
            }
            None => {
                out.push_str(&s[pos..after]);
                pos = after;
            }
        }
    }
    out.push_str(&s[pos..]);
    out
}

/// Peels surrounding math delimiters and a leading `\boxed{…}` (at most [`MAX_UNWRAP`] layers).
fn unwrap_delims(mut s: &str) -> &str {
    for _ in 0..MAX_UNWRAP {
        let before = s.len();
        for (a, b) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
            if s.len() >= a.len() + b.len() && s.starts_with(a) && s.ends_with(b) {
                s = s[a.len()..s.len() - b.len()].trim();
            }
        }
        if s.starts_with("\\boxed") || s.starts_with("\\fbox") {
            if let Some(b) = last_boxed_str(s) {
                s = b;
            }
        }
        if s.len() == before {
            break;
        }
    }
    s
}

/// Normalises one answer string (already extracted) to the form the parser expects.
pub fn normalize(ans: &str) -> String {
    // `\\frac`, `\\left(`: commands written with doubled backslashes (JSON-escaped twice)
    let undoubled = DOUBLED_COMMAND.replace_all(ans, r"\$1");
    let s = unwrap_delims(undoubled.trim());
    // `x = 1/3 \approx 0.33`: the approximation is not the answer
    let s = match s.find("\\approx") {
        Some(k) if s[..k].contains('=') => s[..k].trim_end(),
        _ => s,
    };
    let mut s = s.replace("\\left.", "").replace("\\right.", "");
    // thousands separated by `,\!`: 11,\!111
    // `14 {, }916`: a braced comma between digit groups
    s = BRACE_THOUSANDS.replace_all(&s, "$1$2").into_owned();
    while BANG_THOUSANDS.is_match(&s) {
        s = BANG_THOUSANDS.replace_all(&s, "$1$2").into_owned();
    }
    // thousands separated by thin spaces: 1\,000
    s = THIN_THOUSANDS
        .replace_all(&s, |c: &regex::Captures<'_>| {
            c[0].replace("\\,", "").replace("\\ ", "")
        })
        .into_owned();
    // protect matrix row separators from the spacing-command rule
    s = s.replace("\\\\", "\u{2}");
    s = SPACING.replace_all(&s, " ").into_owned();
    s = s.replace('\u{2}', "\\\\");
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\\dbinom", "\\binom"),
        ("\\tbinom", "\\binom"),
        ("{,}", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("\\degree", ""),
        ("\\$", ""),
        ("\\%", "%"),
        ("\\dots", ""),
        ("\\ldots", ""),
        ("\\cdots", ""),
        ("\\infinity", "\\infty"),
    ] {
        s = s.replace(from, to);
    }
    // Unwrap font and operator-name wrappers.
    for cmd in [
        "\\mathrm",
        "\\mathbf",
        "\\mathit",
        "\\boldsymbol",
        "\\mathsf",
        "\\textbf",
        "\\textit",
        "\\operatorname",
        "\\mathnormal",
    ] {
        s = replace_cmd_groups(&s, cmd, &|c| format!(" {c} "));
    }
    // \text{…}: connective words become commas; otherwise removed as units when something else remains,
    // or kept as the text answer when the answer is only text.
    let texty = ["\\text", "\\textrm", "\\textnormal", "\\mbox", "\\hbox"];
    let mut removed = s.clone();
    for cmd in texty {
        removed = replace_cmd_groups(&removed, cmd, &|c| {
            let t = c.trim().to_ascii_lowercase();
            if t == "and" || t == "or" || t == "," {
                ",".into()
            } else {
                "\u{1}".into()
            }
        });
    }
    // a unit may carry an exponent: `\text{cm}^2`
    let removed = UNIT_MARK.replace_all(&removed, " ").into_owned();
    if removed.chars().any(|c| c.is_alphanumeric() || c == '\\') {
        s = removed;
    } else {
        for cmd in texty {
            s = replace_cmd_groups(&s, cmd, &|c| c.to_string());
        }
    }
    for (re, rep) in FRAC_FIX.iter() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    let mut s = s
        .trim()
        .trim_end_matches(['.', ',', ';'])
        .trim()
        .to_string();
    if THOUSANDS.is_match(&s) {
        s = s.replace(',', "");
    }
    // trailing plain-text units ("5 cm", "12 dollars")
    for _ in 0..MAX_UNIT_WORDS {
        let Some(c) = UNIT_TAIL.captures(&s) else {
            break;
        };
        let word = c[2].trim_end_matches(|ch: char| !ch.is_ascii_alphabetic());
        if KNOWN_WORDS.contains(&word.to_ascii_lowercase().as_str()) {
            break;
        }
        s = c[1].trim().to_string();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text-answer normalisation used for the string fallback (case-insensitive, no spaces or braces).
pub fn text_key(s: &str) -> String {
    let mut t = s.to_string();
    for cmd in ["\\text", "\\textbf", "\\mathrm", "\\mbox"] {
        t = replace_cmd_groups(&t, cmd, &|c| c.to_string());
    }
    t.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '{' | '}' | '$' | '.' | '(' | ')'))
        .flat_map(|c| c.to_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_balanced() {
        assert_eq!(
            last_boxed(r"so \boxed{\frac{1}{2}} and").as_deref(),
            Some(r"\frac{1}{2}")
        );
        assert_eq!(last_boxed(r"\boxed{1} then \fbox{2}").as_deref(), Some("2"));
        assert_eq!(
            last_boxed(r"\boxed{a} \boxed{\{1,2\}}").as_deref(),
            Some(r"\{1,2\}")
        );
        assert_eq!(last_boxed(r"\boxed 7$").as_deref(), Some("7"));
        assert_eq!(last_boxed(r"\boxed{unclosed"), None);
    }

    #[test]
    fn extraction_order() {
        assert_eq!(
            extract_candidates(r"x=3, so \boxed{3}. The answer is 4")[0],
            "3"
        );
        assert_eq!(
            extract_candidates("Thus the final answer is $12$.")[0],
            "12"
        );
        assert_eq!(extract_candidates("Answer: 7/8")[0], "7/8");
        assert_eq!(extract_candidates(r"we get $x = 5$ at the end")[0], "x = 5");
        assert_eq!(extract_candidates("there are 3 cats and 17 dogs")[0], "17");
        assert_eq!(
            extract_candidates(r"<think>maybe \boxed{1}</think> so \boxed{2}")[0],
            "2"
        );
    }

    #[test]
    fn normalise_forms() {
        assert_eq!(normalize(r"$\dfrac{1}{2}$"), r"\frac{1}{2}");
        assert_eq!(normalize(r"\frac12"), r"\frac{1}{2}");
        assert_eq!(normalize(r"\sqrt2"), r"\sqrt{2}");
        assert_eq!(normalize("1,000,000"), "1000000");
        assert_eq!(normalize(r"1{,}000"), "1000");
        assert_eq!(normalize(r"30^\circ"), "30");
        assert_eq!(normalize(r"5\text{ cm}"), "5");
        assert_eq!(normalize(r"\text{Monday}"), "Monday");
        assert_eq!(normalize("12 dollars"), "12");
        assert_eq!(normalize(r"\$5"), "5");
        assert_eq!(normalize(r"\left( 1, 2 \right)"), "( 1, 2 )");
    }
}
