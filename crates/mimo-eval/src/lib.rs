//! Evaluation as the MiMo report does it (spec §5.1): k samples per problem at temperature 0.6 / top-p 0.95,
//! avg@k (mean fraction correct) and the unbiased pass@k estimator, answers checked by the math verifier.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mimo_engine::engine::{Engine, EngineError};
use mimo_engine::{ChatMessage, ModelText, SamplingParams, TextError};
use mimo_reward::sandbox::{Language, SandboxConfig};
use serde::Serialize;

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data line is not a usable problem.
    #[error("{path}:{line}: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Text(#[from] TextError),
}

/// One evaluation problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub id: String,
    pub question: String,
    /// The gold final answer (GSM8K's `#### N` tail is taken); for code problems, informational.
    pub gold: String,
    /// Python assert statements: a code problem, judged by running the response's last code block with each
    /// test in the sandbox (correct = every test passes). Empty for math.
    pub tests: Vec<String>,
}

/// Reads a JSONL set with `question`/`problem` and `answer` fields (GSM8K, AIME, AMC layouts).
pub fn load_problems(path: &Path) -> Result<Vec<Problem>, EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let bad = |msg: String| EvalError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let line = match line {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(bad("invalid UTF-8".into()))
            }
            other => other.map_err(io)?,
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let question = v
            .get("question")
            .or_else(|| v.get("problem"))
            .or_else(|| v.get("prompt"))
            .and_then(|q| q.as_str())
            .ok_or_else(|| bad("no string field `question`, `problem` or `prompt`".into()))?;
        let tests: Vec<String> = match v.get("tests") {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("`tests` must be a list of strings".into()))?,
            Some(_) => return Err(bad("`tests` must be a list of strings".into())),
        };
        let answer = match v.get("answer") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ if !tests.is_empty() => String::new(),
            _ => return Err(bad("no field `answer` (math) or `tests` (code)".into())),
        };
        let gold = match answer.rsplit_once("####") {
            Some((_, tail)) => tail.trim().to_string(),
            None => answer.trim().to_string(),
        };
        let id = match v.get("id").or_else(|| v.get("idx")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => (i + 1).to_string(),
        };
        out.push(Problem {
            id,
            question: question.to_string(),
            gold,
            tests,
        });
    }
    Ok(out)
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
    /// Per-sample verifier time bound.
    pub verify_timeout: Duration,
    /// Sandbox for code problems.
    pub sandbox: SandboxConfig,
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
            verify_timeout: Duration::from_secs(5),
            sandbox: SandboxConfig {
                timeout: Duration::from_secs(3),
                ..SandboxConfig::default()
            },
        }
    }
}

/// One generated sample and its verdict.
#[derive(Debug, Clone, Serialize)]
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
        let prompt = text.chat_template.render(
            &[ChatMessage::new(
                "user",
                format!("{}{}", p.question, opts.instruction),
            )],
            true,
        )?;
        let ids = text.tokenizer.encode(&prompt, false)?;
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
        let p = &problems[pi];
        let (pred, correct) = if p.tests.is_empty() {
            let v = mimo_reward::math::verify(&p.gold, &out, opts.verify_timeout);
            (v.pred_parsed, v.correct)
        } else {
            let code = mimo_reward::sandbox::last_code_block(&out);
            let correct = code.as_ref().is_some_and(|c| {
                p.tests.iter().all(|t| {
                    mimo_reward::sandbox::run_test_program(Language::Python, c, t, &opts.sandbox)
                        .passed
                })
            });
            (code, correct)
        };
        samples.push(Sample {
            problem: p.id.clone(),
            sample: s,
            text: out,
            completion_tokens: tokens.len(),
            pred,
            correct,
        });
    }
    let mut per_problem: Vec<ProblemResult> = problems
        .iter()
        .map(|p| ProblemResult {
            id: p.id.clone(),
            gold: p.gold.clone(),
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
    Ok(EvalReport {
        problems: problems.len(),
        k: opts.k,
        avg_at_k: mean(&|r| r.correct as f64 / r.n.max(1) as f64),
        pass_at_1: mean(&|r| pass_at_k(r.n, r.correct, 1)),
        pass_at_k: mean(&|r| pass_at_k(r.n, r.correct, opts.k)),
        completion_tokens: samples.iter().map(|s| s.completion_tokens).sum(),
        per_problem,
        samples,
    })
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

    #[test]
    fn loads_real_eval_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.jsonl");
        std::fs::write(
            &f,
            "{\"question\": \"2+2?\", \"answer\": \"2+2=4\\n#### 4\", \"idx\": 0}\n\n{\"problem\": \"p\", \"answer\": 7, \"id\": 60}\n",
        )
        .unwrap();
        let p = load_problems(&f).unwrap();
        assert_eq!(p[0].gold, "4");
        assert_eq!(p[0].id, "0");
        assert_eq!(p[1].gold, "7");
        assert_eq!(p[1].id, "60");
        std::fs::write(&f, "{\"question\": \"q\"}\n").unwrap();
        let e = load_problems(&f).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("answer"), "{e}");
        std::fs::write(
            &f,
            b"{\"question\": \"q\", \"answer\": 1}\n{\"question\": \"\xff\"}\n",
        )
        .unwrap();
        let e = load_problems(&f).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("UTF-8"), "{e}");
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/eval");
        for (name, n) in [
            ("gsm8k.jsonl", 1319),
            ("aime24.jsonl", 30),
            ("amc23.jsonl", 40),
        ] {
            if let Ok(p) = load_problems(&shared.join(name)) {
                assert_eq!(p.len(), n, "{name}");
                assert!(p.iter().all(|x| !x.gold.is_empty()));
            }
        }
    }
}
