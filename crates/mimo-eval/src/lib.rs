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
use serde::Serialize;

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
}

/// Per-problem counts.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemResult {
    pub id: String,
    pub gold: String,
    pub n: usize,
    pub correct: usize,
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
    Sample {
        problem: p.id.clone(),
        sample: s,
        correct: verdict.all_passed(),
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
}
