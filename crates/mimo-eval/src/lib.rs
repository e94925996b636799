//! Evaluation as the MiMo report does it (design §5.1): k samples per problem at temperature 0.6 / top-p 0.95,
//! avg@k (mean fraction correct) and the unbiased pass@k estimator. Problems and their scoring are
//! `mimo_reward`'s ([`Problem`], [`score`]): the math verifier, or every sandboxed test passing for code.

pub mod remote;

use std::collections::HashMap;
use std::time::Duration;

use mimo_engine::engine::{Engine, EngineError};
use mimo_engine::SamplingParams;
use mimo_reward::{score, CodeReward, Problem, RewardSettings};
use mimo_text::{ModelText, TextError};
use serde::{Deserialize, Serialize};

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Text(#[from] TextError),
    /// A remote endpoint failed for good (after retries); finished samples are kept.
    #[error("{0}")]
    Remote(String),
}

/// Unbiased pass@k from `n` samples with `c` correct (Chen et al. 2021): `1 − C(n−c, k) / C(n, k)`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || k > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    // Product form, numerically stable: Π_{i=n−c+1}^{n} (1 − k / i).
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// Standard error of pass@1 over problems: the sample std of the per-problem pass rates `c_i / n_i` over
/// `√m` (`m` problems); it contains both the between-problem and the sampling spread. 0 for fewer than 2.
pub fn pass_at_1_se(per_problem: &[ProblemResult]) -> f64 {
    let rates: Vec<f64> = per_problem
        .iter()
        .map(|r| r.correct as f64 / r.n.max(1) as f64)
        .collect();
    mean_and_se(&rates).1
}

/// A paired comparison of two evaluations on the same problems.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// `mean_i (b_i − a_i)` of the per-problem pass rates: pass@1 of `b` minus pass@1 of `a`.
    pub delta: f64,
    /// Its standard error, `std_i(b_i − a_i) / √m`: the between-problem spread cancels, which is what makes a
    /// difference of a few points visible when each figure alone has a larger error.
    pub se: f64,
    /// Problems compared.
    pub problems: usize,
}

/// The paired difference `b − a` of pass@1 over the problems both evaluated (matched by id; the sample counts
/// may differ). `None` when they share fewer than 2 problems.
pub fn paired_difference(a: &[ProblemResult], b: &[ProblemResult]) -> Option<Paired> {
    let rate = |r: &ProblemResult| r.correct as f64 / r.n.max(1) as f64;
    let in_a: HashMap<&str, f64> = a
        .iter()
        .filter(|r| r.n > 0)
        .map(|r| (r.id.as_str(), rate(r)))
        .collect();
    let d: Vec<f64> = b
        .iter()
        .filter(|r| r.n > 0)
        .filter_map(|r| in_a.get(r.id.as_str()).map(|x| rate(r) - x))
        .collect();
    (d.len() >= 2).then(|| {
        let (delta, se) = mean_and_se(&d);
        Paired {
            delta,
            se,
            problems: d.len(),
        }
    })
}

/// Unbiased pass@k for k = 1..=`max_k`, averaged over problems; a k larger than a problem's sample count is
/// left out (the curve stops at the smallest sample count).
pub fn pass_at_k_curve(per_problem: &[ProblemResult], max_k: usize) -> Vec<f64> {
    let n_min = per_problem.iter().map(|r| r.n).min().unwrap_or(0);
    let m = per_problem.len().max(1) as f64;
    (1..=max_k.min(n_min))
        .map(|k| {
            per_problem
                .iter()
                .map(|r| pass_at_k(r.n, r.correct, k))
                .sum::<f64>()
                / m
        })
        .collect()
}

/// Mean and standard error (sample std / √n) of `xs`; the error is 0 for fewer than 2 values.
fn mean_and_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Settings of an evaluation run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Samples per problem.
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
    /// Appended to each question in the user message.
    pub instruction: String,
    /// The scorer's settings (verifier time bound, sandbox for code problems); eval counts a sample correct
    /// when every test passes.
    pub scoring: RewardSettings,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            k: 8,
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: 1024,
            seed: 0,
            instruction:
                "\nPlease reason step by step, and put your final answer within \\boxed{}.".into(),
            scoring: RewardSettings {
                code: CodeReward::Binary,
                math_timeout: Duration::from_secs(5),
                sandbox: mimo_reward::sandbox::SandboxConfig {
                    timeout: Duration::from_secs(3),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }
}

/// One generated sample and its verdict.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Sample {
    pub problem: String,
    pub sample: usize,
    pub text: String,
    pub completion_tokens: usize,
    pub pred: Option<String>,
    pub correct: bool,
    /// Fraction of the problem's tests this sample passed (math: 0 or 1), the partial credit of code tasks.
    #[serde(default)]
    pub tests_passed: f64,
}

/// Per-problem counts.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemResult {
    pub id: String,
    pub gold: String,
    pub n: usize,
    pub correct: usize,
    /// Sum over the samples of the fraction of tests passed.
    pub tests_passed: f64,
}

/// The evaluation report.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub problems: usize,
    pub k: usize,
    /// Mean over problems of the fraction of correct samples (the report's pass@1 "avg@k").
    pub avg_at_k: f64,
    /// Unbiased pass@1 and pass@k, averaged over problems.
    pub pass_at_1: f64,
    pub pass_at_k: f64,
    /// Mean over problems of the fraction of tests a sample passes (code: partial credit; math: avg@k).
    pub test_pass_rate: f64,
    pub completion_tokens: usize,
    pub per_problem: Vec<ProblemResult>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Generates `k` samples per problem through `engine` (continuous batching over all of them) and scores them.
pub fn evaluate(
    engine: &mut Engine,
    text: &ModelText,
    problems: &[Problem],
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let mut owner: HashMap<u64, (usize, usize)> = HashMap::new();
    for (pi, p) in problems.iter().enumerate() {
        let ids = text.user_prompt_ids(&p.user_message(&opts.instruction))?;
        for s in 0..opts.k {
            let params = SamplingParams {
                temperature: opts.temperature,
                top_p: opts.top_p,
                max_tokens: opts
                    .max_tokens
                    .min(engine.max_model_len().saturating_sub(ids.len()))
                    .max(1),
                seed: Some(opts.seed.wrapping_add((pi * opts.k + s) as u64)),
                ..Default::default()
            };
            let id = engine.add_request(ids.clone(), params)?;
            owner.insert(id, (pi, s));
        }
    }
    let mut samples = vec![];
    for (id, tokens, _) in engine.run_to_completion()? {
        let Some(&(pi, s)) = owner.get(&id) else {
            continue;
        };
        let out = text.tokenizer.decode(&tokens, true)?;
        samples.push(scored_sample(&problems[pi], s, out, tokens.len(), opts));
    }
    Ok(report(problems, samples, opts.k))
}

/// Sample `s` of problem `p` with its verdict (the one scorer RL rewards use).
pub fn scored_sample(
    p: &Problem,
    s: usize,
    text: String,
    completion_tokens: usize,
    opts: &EvalOptions,
) -> Sample {
    let verdict = score(p, &text, &opts.scoring);
    let passed = verdict.passed.iter().filter(|&&x| x).count();
    Sample {
        problem: p.id.clone(),
        sample: s,
        correct: verdict.all_passed(),
        tests_passed: passed as f64 / verdict.passed.len().max(1) as f64,
        pred: verdict.pred,
        text,
        completion_tokens,
    }
}

/// The report over `samples` (avg@k, unbiased pass@1 and pass@k per problem, averaged).
pub fn report(problems: &[Problem], samples: Vec<Sample>, k: usize) -> EvalReport {
    let mut per_problem: Vec<ProblemResult> = problems
        .iter()
        .map(|p| ProblemResult {
            id: p.id.clone(),
            gold: p.gold().to_string(),
            n: 0,
            correct: 0,
            tests_passed: 0.0,
        })
        .collect();
    let index: HashMap<&str, usize> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    for s in &samples {
        if let Some(&i) = index.get(s.problem.as_str()) {
            per_problem[i].n += 1;
            per_problem[i].correct += s.correct as usize;
            per_problem[i].tests_passed += s.tests_passed;
        }
    }
    let m = per_problem.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ProblemResult) -> f64| per_problem.iter().map(f).sum::<f64>() / m;
    EvalReport {
        problems: problems.len(),
        k,
        avg_at_k: mean(&|r| r.correct as f64 / r.n.max(1) as f64),
        pass_at_1: mean(&|r| pass_at_k(r.n, r.correct, 1)),
        pass_at_k: mean(&|r| pass_at_k(r.n, r.correct, k)),
        test_pass_rate: mean(&|r| r.tests_passed / r.n.max(1) as f64),
        completion_tokens: samples.iter().map(|s| s.completion_tokens).sum(),
        per_problem,
        samples,
    }
}

/// The report as a Markdown table (one row of headline figures, then per-problem counts).
pub fn markdown(r: &EvalReport, title: &str) -> String {
    let mut out = format!(
        "# {title}\n\n| problems | k | avg@k | pass@1 | pass@k | completion tokens |\n|---|---|---|---|---|---|\n\
         | {} | {} | {:.4} | {:.4} | {:.4} | {} |\n\n| problem | gold | correct / n |\n|---|---|---|\n",
        r.problems, r.k, r.avg_at_k, r.pass_at_1, r.pass_at_k, r.completion_tokens
    );
    for p in &r.per_problem {
        let gold = p.gold.replace('|', "\\|");
        out.push_str(&format!(
            "| {} | {gold} | {} / {} |\n",
            p.id, p.correct, p.n
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_combinatorial_formula() {
        fn binom(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
        }
        for n in 1..=12usize {
            for c in 0..=n {
                for k in 1..=n {
                    let want = 1.0 - binom((n - c) as u64, k as u64) / binom(n as u64, k as u64);
                    assert!((pass_at_k(n, c, k) - want).abs() < 1e-12, "{n} {c} {k}");
                }
            }
        }
        assert_eq!(pass_at_k(8, 2, 1), 0.25);
        assert_eq!(pass_at_k(8, 0, 8), 0.0);
        assert_eq!(pass_at_k(8, 1, 8), 1.0);
    }

    fn counts(rows: &[(&str, usize, usize)]) -> Vec<ProblemResult> {
        rows.iter()
            .map(|&(id, n, correct)| ProblemResult {
                id: id.into(),
                gold: String::new(),
                n,
                correct,
                tests_passed: correct as f64,
            })
            .collect()
    }

    #[test]
    fn paired_difference_cancels_the_problem_spread() {
        // Problems all-right or all-wrong, b one sample better on each of two of four: pass@1 differs by
        // 2/8 / 4 = 0.0625, and the paired error is far below either figure's own error.
        let a = counts(&[("p1", 8, 8), ("p2", 8, 0), ("p3", 8, 8), ("p4", 8, 0)]);
        let b = counts(&[
            ("p4", 8, 1),
            ("p3", 8, 8),
            ("p2", 8, 1),
            ("p1", 8, 8),
            ("extra", 8, 8),
        ]);
        let d = paired_difference(&a, &b).unwrap();
        assert_eq!(d.problems, 4);
        assert!((d.delta - 0.0625).abs() < 1e-12);
        // d = [0, 1/8, 0, 1/8]: sample std √(1/48 · 1/4 · … ) — computed directly.
        let xs = [0.0, 0.125, 0.0, 0.125];
        let var = xs.iter().map(|x: &f64| (x - 0.0625).powi(2)).sum::<f64>() / 3.0;
        assert!((d.se - (var / 4.0).sqrt()).abs() < 1e-12);
        assert!(d.se < pass_at_1_se(&a) / 5.0);
        assert!(paired_difference(&a[..1], &b).is_none());
    }

    #[test]
    fn code_samples_report_their_partial_test_pass_rate() {
        let problem = |id: &str| Problem {
            id: id.into(),
            kind: Some("code".into()),
            prompt: "p".into(),
            check: mimo_reward::Check::Code {
                tests: vec!["assert f(1) == 1".into(); 4],
            },
        };
        let sample = |p: &str, s: usize, passed: f64| Sample {
            problem: p.into(),
            sample: s,
            text: String::new(),
            completion_tokens: 1,
            pred: None,
            correct: passed == 1.0,
            tests_passed: passed,
        };
        let r = report(
            &[problem("a"), problem("b")],
            vec![
                sample("a", 0, 1.0),
                sample("a", 1, 0.5),
                sample("b", 0, 0.25),
            ],
            2,
        );
        // a: (1 + 0.5) / 2, b: 0.25 → mean 0.5; all tests only in one of a's samples.
        assert!((r.test_pass_rate - 0.5).abs() < 1e-12);
        assert!((r.avg_at_k - 0.25).abs() < 1e-12);
    }

    #[test]
    fn pass_at_k_curve_stops_at_the_smallest_sample_count() {
        let r = counts(&[("a", 16, 4), ("b", 8, 0)]);
        let c = pass_at_k_curve(&r, 16);
        assert_eq!(c.len(), 8);
        assert!((c[0] - 0.125).abs() < 1e-12);
        assert!(c.windows(2).all(|w| w[1] >= w[0]));
        assert!((c[7] - pass_at_k(16, 4, 8) / 2.0).abs() < 1e-12);
    }
}
