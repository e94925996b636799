//! Scoring a response to a [`Problem`] (design §3.2–3.4, §7.6): the one scorer of RL, evaluation and the
//! pipeline.
//!
//! Scoring happens in two parts so the expensive part can run asynchronously, one response at a time, on
//! reward workers: [`score`] verifies a math answer or runs every code test in the sandbox; when a whole RL
//! group is in, [`group_rewards`] turns per-test results into rewards (evaluation's verdict is
//! [`Score::all_passed`]). For code the test-difficulty levels
//! come from the per-test pass rates over all rollouts seen for that problem (this group included), so the
//! strict and soft rewards need the group.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::difficulty::{self, LevelConfig, TestLevels};
use crate::problem::{Check, Problem};
use crate::sandbox::{self, last_code_block, Language, SandboxConfig};

/// How code rollouts are rewarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CodeReward {
    /// 1 when every test passes, else 0.
    Binary,
    /// Sum of level weights over the longest fully-passed prefix of levels, easy → hard.
    Strict,
    /// Each level's weight split equally over its tests, summed over passed tests.
    #[default]
    Soft,
}

/// What one response achieved: per-test pass results (one entry for math).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub passed: Vec<bool>,
    /// A final answer (math) or a code block (code) was found.
    pub formatted: bool,
    /// The parsed final answer (math) or the code block (code) that was judged.
    #[serde(skip)]
    pub pred: Option<String>,
}

impl Score {
    /// Every test passed (math: the answer is right): the binary verdict evaluation counts.
    pub fn all_passed(&self) -> bool {
        !self.passed.is_empty() && self.passed.iter().all(|&p| p)
    }
}

/// Settings of the scorer (and of RL's reward workers).
#[derive(Debug, Clone)]
pub struct RewardSettings {
    pub code: CodeReward,
    pub levels: LevelConfig,
    pub sandbox: SandboxConfig,
    pub math_timeout: Duration,
    /// Added to every score, to model a remote reward service (the simulated rollout benchmark); zero in
    /// training.
    pub latency: Duration,
}

impl Default for RewardSettings {
    fn default() -> Self {
        let sandbox = SandboxConfig {
            concurrency: 1,
            timeout: Duration::from_secs(3),
            ..SandboxConfig::default()
        };
        Self {
            code: CodeReward::default(),
            levels: LevelConfig::default(),
            sandbox,
            math_timeout: Duration::from_secs(2),
            latency: Duration::ZERO,
        }
    }
}

/// Verifies one response: the math answer, or every test of a code problem (each test a separate sandboxed
/// run of the solution followed by the assert).
pub fn score(problem: &Problem, response: &str, s: &RewardSettings) -> Score {
    if !s.latency.is_zero() {
        std::thread::sleep(s.latency);
    }
    match &problem.check {
        Check::Math { answer } => {
            let v = crate::math::verify(answer, response, s.math_timeout);
            Score {
                passed: vec![v.correct],
                formatted: v.pred_parsed.is_some(),
                pred: v.pred_parsed,
            }
        }
        Check::Stdio { tests } => code_score(response, tests.len(), |code| {
            sandbox::run_stdio_tests(Language::Python, code, tests, &s.sandbox)
                .into_iter()
                .map(|o| o.passed)
                .collect()
        }),
        Check::Code { tests } => code_score(response, tests.len(), |code| {
            sandbox::run_assert_tests(Language::Python, code, tests, &s.sandbox)
                .into_iter()
                .map(|o| o.passed)
                .collect()
        }),
    }
}

/// The score of a code answer: the last code block of `response` run through `run` (one verdict per test),
/// or every test failed when there is no code block.
fn code_score(response: &str, tests: usize, run: impl FnOnce(&str) -> Vec<bool>) -> Score {
    match last_code_block(response) {
        None => Score {
            passed: vec![false; tests],
            formatted: false,
            pred: None,
        },
        Some(code) => Score {
            passed: run(&code),
            formatted: true,
            pred: Some(code),
        },
    }
}

/// Per-test pass counts of one problem over every rollout seen so far: the input of the test-difficulty levels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TestHistory {
    pub passes: Vec<u64>,
    pub runs: u64,
}

impl TestHistory {
    /// Adds rollouts' results.
    pub fn add(&mut self, scores: &[&Score]) {
        for s in scores {
            if self.passes.len() < s.passed.len() {
                self.passes.resize(s.passed.len(), 0);
            }
            for (c, &p) in self.passes.iter_mut().zip(&s.passed) {
                *c += p as u64;
            }
            self.runs += 1;
        }
    }

    /// Pass rate of every test.
    pub fn pass_rates(&self) -> Vec<f64> {
        self.passes
            .iter()
            .map(|&c| c as f64 / self.runs.max(1) as f64)
            .collect()
    }
}

/// Rewards of a finished group. Math: 1 for a correct answer, 0 otherwise. Code: per [`CodeReward`], with
/// levels from `history` (which must already include this group).
pub fn group_rewards(
    problem: &Problem,
    scores: &[Score],
    history: &TestHistory,
    s: &RewardSettings,
) -> Vec<f64> {
    let binary = || -> Vec<f64> {
        scores
            .iter()
            .map(|r| difficulty::binary(&r.passed))
            .collect()
    };
    if !problem.is_code() || s.code == CodeReward::Binary {
        return binary();
    }
    let Ok(levels) = TestLevels::from_pass_rates(&history.pass_rates(), &s.levels) else {
        return binary();
    };
    scores
        .iter()
        .map(|r| match s.code {
            CodeReward::Strict => difficulty::strict(&r.passed, &levels),
            _ => difficulty::soft(&r.passed, &levels),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_problem(n: usize) -> Problem {
        Problem {
            id: "c".into(),
            kind: Some("code".into()),
            prompt: "p".into(),
            check: Check::Code {
                tests: (0..n).map(|i| format!("assert f({i}) == {i}")).collect(),
            },
        }
    }

    #[test]
    fn finds_the_last_code_block() {
        let t = "x\n```python\ndef f(x):\n    return 1\n```\ntext\n```python\ndef f(x):\n    return x\n```";
        assert_eq!(last_code_block(t).unwrap(), "def f(x):\n    return x");
        assert_eq!(last_code_block("no code"), None);
        assert_eq!(last_code_block("```python\n```"), None);
    }

    #[test]
    fn strict_and_soft_rewards_follow_the_levels() {
        // Three tests whose pass rates over history are 1.0, 0.5, 0.0 → levels easy, medium, hard (weights 1/3).
        let p = code_problem(3);
        let scores = vec![
            Score {
                passed: vec![true, true, false],
                formatted: true,
                pred: None,
            },
            Score {
                passed: vec![true, false, false],
                formatted: true,
                pred: None,
            },
        ];
        let mut h = TestHistory::default();
        h.add(&scores.iter().collect::<Vec<_>>());
        assert_eq!(h.pass_rates(), vec![1.0, 0.5, 0.0]);
        let mut s = RewardSettings {
            code: CodeReward::Strict,
            ..Default::default()
        };
        let strict = group_rewards(&p, &scores, &h, &s);
        assert!((strict[0] - 2.0 / 3.0).abs() < 1e-12, "{strict:?}");
        assert!((strict[1] - 1.0 / 3.0).abs() < 1e-12, "{strict:?}");
        s.code = CodeReward::Soft;
        let soft = group_rewards(&p, &scores, &h, &s);
        assert!((soft[0] - 2.0 / 3.0).abs() < 1e-12 && (soft[1] - 1.0 / 3.0).abs() < 1e-12);
        // A hard test passed without the medium one: soft credits it, strict does not.
        let odd = vec![Score {
            passed: vec![true, false, true],
            formatted: true,
            pred: None,
        }];
        s.code = CodeReward::Strict;
        assert!((group_rewards(&p, &odd, &h, &s)[0] - 1.0 / 3.0).abs() < 1e-12);
        s.code = CodeReward::Soft;
        assert!((group_rewards(&p, &odd, &h, &s)[0] - 2.0 / 3.0).abs() < 1e-12);
        s.code = CodeReward::Binary;
        assert_eq!(group_rewards(&p, &scores, &h, &s), vec![0.0, 0.0]);
    }

    #[test]
    fn math_scores_use_the_verifier() {
        let p = Problem {
            id: "m".into(),
            kind: None,
            prompt: "1+1".into(),
            check: Check::Math { answer: "2".into() },
        };
        let s = RewardSettings::default();
        assert!(score(&p, "so \\boxed{2}.", &s).passed[0]);
        assert!(!score(&p, "so \\boxed{3}.", &s).passed[0]);
        assert!(!score(&p, "no answer", &s).formatted);
    }
}
