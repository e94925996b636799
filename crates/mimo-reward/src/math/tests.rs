use super::*;

fn ok(gold: &str, pred: &str) -> bool {
    verify(gold, pred, Duration::from_secs(5)).correct
}

#[track_caller]
fn yes(gold: &str, pred: &str) {
    let v = verify(gold, pred, Duration::from_secs(5));
    assert!(
        v.correct,
        "expected equal: gold={gold:?} pred={pred:?} -> {v:?}"
    );
}

#[track_caller]
fn no(gold: &str, pred: &str) {
    let v = verify(gold, pred, Duration::from_secs(5));
    assert!(
        !v.correct,
        "expected different: gold={gold:?} pred={pred:?} -> {v:?}"
    );
}

#[test]
fn integers_and_rationals() {
    yes("42", r"\boxed{42}");
    yes("-3", r"\boxed{-3}");
    no("42", r"\boxed{43}");
    yes(r"\frac{1}{2}", r"\boxed{\dfrac{1}{2}}");
    yes(r"\frac{1}{2}", r"\boxed{\tfrac12}");
    yes(r"\frac{1}{2}", r"\boxed{2/4}");
    yes(r"\frac{1}{2}", r"\boxed{0.5}");
    no(r"\frac{1}{2}", r"\boxed{\frac{1}{3}}");
    yes(r"-\frac{3}{4}", r"\boxed{\frac{-3}{4}}");
    yes(
        "123456789012345678901234567890",
        r"\boxed{123456789012345678901234567890}",
    );
    no(
        "123456789012345678901234567890",
        r"\boxed{123456789012345678901234567891}",
    );
}

#[test]
fn decimals_with_tolerance() {
    yes(r"\frac{1}{3}", r"\boxed{0.333333}");
    no(r"\frac{1}{3}", r"\boxed{0.33}");
    yes("3.14", r"\boxed{3.140}");
    no("1234567.5", r"\boxed{1234567.6}");
    yes("2.5", "The answer is 2.5.");
}

#[test]
fn scientific_notation() {
    yes("1500", r"\boxed{1.5 \times 10^{3}}");
    yes("1500", r"\boxed{1.5e3}");
    yes("0.0002", r"\boxed{2 \cdot 10^{-4}}");
    no("1500", r"\boxed{1.5 \times 10^{4}}");
}

#[test]
fn thousands_separators() {
    yes("1000000", r"\boxed{1,000,000}");
    yes("1000", r"\boxed{1{,}000}");
    yes("1000", r"\boxed{1\,000}");
    no("1000", r"\boxed{1,001}");
}

#[test]
fn sqrt_and_pi() {
    yes(r"2\sqrt{2}", r"\boxed{\sqrt{8}}");
    yes(r"\sqrt{2}/2", r"\boxed{\frac{1}{\sqrt{2}}}");
    yes(r"\sqrt[3]{27}", r"\boxed{3}");
    no(r"\sqrt{2}", r"\boxed{\sqrt{3}}");
    yes(r"2\pi", r"\boxed{2 \pi}");
    yes(r"\frac{\pi}{2}", r"\boxed{\pi/2}");
    no(r"\pi", r"\boxed{3.14}");
    yes(r"4\pi", r"\boxed{\pi \cdot 4}");
}

#[test]
fn percent_degrees_units_text() {
    yes("50", r"\boxed{50\%}");
    yes(r"50\%", r"\boxed{50}");
    yes("0.5", r"\boxed{50\%}");
    no("50", r"\boxed{40\%}");
    yes("30", r"\boxed{30^\circ}");
    yes(r"30^\circ", r"\boxed{30}");
    no("30", r"\boxed{60^{\circ}}");
    yes("5", r"\boxed{5\text{ cm}}");
    yes("12", r"\boxed{12 \mbox{ dollars}}");
    yes(r"12\text{ m}^2", r"\boxed{12}");
    yes("5", r"\boxed{\$5}");
    no("5", r"\boxed{6\text{ cm}}");
    yes(r"\text{Monday}", r"\boxed{\text{monday}}");
    no(r"\text{Monday}", r"\boxed{\text{Tuesday}}");
}

#[test]
fn left_right_and_spacing() {
    yes(r"\left(1, 2\right)", r"\boxed{(1,2)}");
    yes(r"\frac{3}{4}", r"\boxed{\displaystyle \frac{3}{4}}");
    yes("7", r"\boxed{\!7\;}");
}

#[test]
fn tuples_ordered() {
    yes("(1, 2)", r"\boxed{(1,2)}");
    no("(1, 2)", r"\boxed{(2,1)}");
    yes("(1, 2, 3)", r"\boxed{\left(1, 2, 3\right)}");
    no("(1, 2, 3)", r"\boxed{(1, 2)}");
    yes(r"(\frac{1}{2}, 3)", r"\boxed{(0.5, 3)}");
}

#[test]
fn sets_unordered() {
    yes(r"\{1, 2, 3\}", r"\boxed{\{3, 2, 1\}}");
    no(r"\{1, 2, 3\}", r"\boxed{\{1, 2\}}");
    yes("1, 2", r"\boxed{2, 1}");
    yes(r"\{1,2\}", r"\boxed{1 \text{ and } 2}");
    yes("1, 2", r"\boxed{x = 1, x = 2}");
    no("1, 2", r"\boxed{1, 3}");
    yes(r"\emptyset", r"\boxed{\varnothing}");
}

#[test]
fn intervals_open_closed() {
    yes("[1, 2]", r"\boxed{[1,2]}");
    no("[1, 2]", r"\boxed{(1,2)}");
    yes("(1, 2]", r"\boxed{(1,2]}");
    no("(1, 2]", r"\boxed{[1,2)}");
    yes(r"(-\infty, 3)", r"\boxed{(-\infty, 3)}");
    no(r"(-\infty, 3)", r"\boxed{(-\infty, 3]}");
    yes(
        r"(-\infty, 0) \cup (1, \infty)",
        r"\boxed{(1, \infty) \cup (-\infty, 0)}",
    );
    no(
        r"(-\infty, 0) \cup (1, \infty)",
        r"\boxed{(-\infty, 0] \cup (1, \infty)}",
    );
    yes("(1, 2)", r"\boxed{(1, 2)}");
}

#[test]
fn inequalities_and_intervals() {
    yes(r"(2, \infty)", r"\boxed{x > 2}");
    yes(r"[2, \infty)", r"\boxed{x \geq 2}");
    no(r"(2, \infty)", r"\boxed{x \ge 2}");
    yes(r"x > 2", r"\boxed{2 < x}");
    no(r"x > 2", r"\boxed{x < 2}");
    yes(r"1 < x \le 3", r"\boxed{(1, 3]}");
    yes(r"(1, 3]", r"\boxed{1 < x \leq 3}");
    yes(r"x \in [0, 1]", r"\boxed{[0,1]}");
}

#[test]
fn equations() {
    yes("2", r"\boxed{x = 2}");
    yes("2", r"\boxed{2 = x}");
    no("2", r"\boxed{x = 3}");
    yes("x = 2", r"\boxed{x=2}");
    yes("x = 2", r"\boxed{2}");
    yes("y = 2x + 1", r"\boxed{y = 1 + 2x}");
    no("y = 2x + 1", r"\boxed{y = 2x - 1}");
    yes("y = 2x + 1", r"\boxed{2x + 1 = y}");
    yes("x + y = 3", r"\boxed{3 - x - y = 0}");
    no("2", r"\boxed{x > 2}");
}

#[test]
fn matrices() {
    yes(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}",
    );
    no(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\boxed{\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}}",
    );
    yes(
        r"\begin{pmatrix} \frac{1}{2} \\ 0 \end{pmatrix}",
        r"\boxed{\begin{pmatrix} 0.5 \\ 0 \end{pmatrix}}",
    );
    no(
        r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
        r"\boxed{\begin{pmatrix} 1 & 2 \end{pmatrix}}",
    );
}

#[test]
fn symbolic_expressions() {
    yes("x^2 + 2x + 1", r"\boxed{(x+1)^2}");
    no("x^2 + 2x + 1", r"\boxed{(x-1)^2}");
    yes(r"\frac{x^2 - 1}{x - 1}", r"\boxed{x + 1}");
    yes(r"\frac{1}{x} + \frac{1}{y}", r"\boxed{\frac{x+y}{xy}}");
    no(r"\frac{1}{x} + \frac{1}{y}", r"\boxed{\frac{2}{x+y}}");
    yes(r"\sin^2 x + \cos^2 x", r"\boxed{1}");
    yes(r"2\sin x \cos x", r"\boxed{\sin(2x)}");
    yes(r"\sqrt{x^2}", r"\boxed{x}"); // positive sample points
    yes(r"e^{2\ln 3}", r"\boxed{9}");
    yes(r"\log_2 8", r"\boxed{3}");
    yes(r"\binom{5}{2}", r"\boxed{10}");
    yes("5!", r"\boxed{120}");
    no("a + b", r"\boxed{a - b}");
    yes(r"a_1 + a_2", r"\boxed{a_2 + a_1}");
    yes(r"|{-3}|", r"\boxed{3}");
    yes(r"\alpha + \beta", r"\boxed{\beta + \alpha}");
    no("x + 1", r"\boxed{t + 1}");
}

#[test]
fn extraction_from_solutions() {
    yes(
        "17",
        "Let me compute. 8 + 9 = 17. So the final answer is 17.",
    );
    yes("17", "Some reasoning... The answer is: $17$");
    yes(r"\frac{2}{3}", r"We get $\frac{2}{3}$ as the probability.");
    yes(
        "17",
        r"<think>it might be \boxed{16}</think>The result is \boxed{17}.",
    );
    yes("9", "Therefore there are 9 ways");
    no("9", "Therefore there are 10 ways");
    yes("6", r"first \boxed{5}, wait, actually \boxed{6}");
    let v = verify("3", "no answer here", Duration::from_secs(1));
    assert!(!v.correct);
    assert!(v.error.is_some());
}

#[test]
fn asymmetric_gold_pred() {
    // gold is a bare answer; the pred is a full solution with several numbers
    yes("4", "We have 2 + 2 = 4, so \\boxed{4}.");
    // a gold that contains prose is still parsed leniently via \boxed
    yes(r"The answer is \boxed{5}", r"\boxed{5}");
}

#[test]
fn verdict_fields() {
    let v = verify(
        r"\frac{1}{2}",
        r"so \boxed{\dfrac{2}{4}}",
        Duration::from_secs(5),
    );
    assert!(v.correct);
    assert_eq!(v.gold_parsed.as_deref(), Some("1/2"));
    assert_eq!(v.pred_parsed.as_deref(), Some("2/4"));
    assert!(v.error.is_none());
    let v = verify(r"\frac{1}{2", r"\boxed{1}", Duration::from_secs(5));
    assert!(v.error.is_some());
}

#[test]
fn deadline_bounds_pathological_input() {
    // a huge tower of exponents and a long product must finish quickly with a verdict
    let big = format!("\\boxed{{{}}}", "(x+1)*".repeat(3000) + "1");
    let t = Instant::now();
    let _ = verify("x", &big, Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(5));
    let v = verify(
        "2",
        r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
        Duration::from_millis(500),
    );
    assert!(!v.correct);
    // zero deadline: times out cleanly
    let v = verify("(x+1)^2", r"\boxed{x^2+2x+1}", Duration::ZERO);
    assert!(!v.correct);
    assert!(v.error.unwrap_or_default().contains("timeout"));
}

#[test]
fn works_from_threads() {
    let hs: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || ok(&i.to_string(), &format!("\\boxed{{{i}}}"))))
        .collect();
    for h in hs {
        assert!(h.join().unwrap_or(false));
    }
}
