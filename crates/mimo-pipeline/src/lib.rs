//! `mimo pipeline`: MiMo's whole recipe end to end at tiny scale (design §2–§5), on embedded defaults
//! (`configs/tiny.toml`): synthetic verifiable data → tokenizer → packed three-stage mixture → pretraining with
//! MTP → SFT → held-out evaluation → GRPO with the Seamless Rollout Engine → rollout benchmark → report.
//!
//! * [`config`]: the pipeline config and its layering.
//! * `stages`: one function per stage over the run in progress.
//! * [`report`]: `report.json`, `report.md` and the plots.

pub mod config;
pub mod error;
pub mod report;
mod stages;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub use config::{PipelineArgs, DEFAULT_PIPELINE};
pub use error::{PipelineError, Result};
pub use report::PipelineReport;
use report::{write_report, BenchRun};
use stages::Run;

/// Runs the pipeline into `out`; `log` receives one line per stage and per evaluation.
pub fn run_pipeline(
    args: &PipelineArgs,
    out: &Path,
    mut log: impl FnMut(&str),
) -> Result<PipelineReport> {
    let t0 = Instant::now();
    if out.join("report.json").exists() {
        return Err(PipelineError::Config(format!(
            "{} already holds a finished pipeline run; choose another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| PipelineError::io(out, e))?;
    let toml = toml::to_string(args).map_err(|e| PipelineError::Config(e.to_string()))?;
    stages::write(&out.join("pipeline.toml"), &toml)?;
    let mut run = Run::new(args, out, &mut log);

    let corpus = stages::synth(&mut run)?;
    let (tokenizer_json, vocab, eos) = stages::tokenizer(&mut run, &corpus)?;
    let packed = stages::pack(&mut run, &corpus, &tokenizer_json)?;
    let base = stages::pretrain(&mut run, &tokenizer_json, vocab, eos, packed)?;
    let sft = stages::sft(&mut run, &base, &tokenizer_json)?;

    let heldout = stages::heldout_problems(&run)?;
    run.log(&format!(
        "eval: base and SFT on {} held-out problems × {}",
        heldout.len(),
        args.eval.k
    ));
    let mut evals = Evals::default();
    evals.run(&mut run, "base", &base, &heldout, args.eval.base_samples())?;
    evals.run(&mut run, "sft", &sft, &heldout, args.eval.sft_samples())?;
    let e = &args.eval;
    let mtp_sft = stages::mtp_acceptance(&sft, &heldout, e.mtp_prompts, e.max_tokens)?;
    run.lap("eval-base-sft");

    let (rl, rl_steps, rl_args) = stages::rl(&mut run, &sft)?;
    evals.run(&mut run, "rl", &rl.model, &heldout, args.eval.k)?;
    let paired = evals.paired();
    if let Some(d) = paired.get("rl - sft") {
        run.log(&format!(
            "  RL − SFT pass@1 {:+.3} ± {:.3} (paired standard error, {} problems)",
            d.delta, d.se, d.problems
        ));
    }
    let mtp_rl = stages::mtp_acceptance(&rl.model, &heldout, e.mtp_prompts, e.max_tokens)?;
    run.log(&format!(
        "  MTP acceptance (greedy, k=1): sft {mtp_sft:.3}, rl {mtp_rl:.3}"
    ));
    run.lap("eval-rl");
    let b = stages::bench(&mut run, &sft, &rl_args.kinds, &rl_steps)?;

    let sft_pass_at_k = evals
        .per_problem
        .get("sft")
        .map(|r| mimo_eval::pass_at_k_curve(r, 16))
        .unwrap_or_default();
    let report = PipelineReport {
        pass_at_1_se: evals
            .per_problem
            .iter()
            .map(|(k, r)| (k.clone(), mimo_eval::pass_at_1_se(r)))
            .collect(),
        paired,
        sft_pass_at_k,
        eval_samples: [
            ("base", args.eval.base_samples()),
            ("sft", args.eval.sft_samples()),
            ("rl", args.eval.k),
        ]
        .into_iter()
        .map(|(s, k)| (s.to_string(), k))
        .collect(),
        pass_at_1: evals.pass,
        mtp_acceptance: mtp_rl,
        mtp_acceptance_sft: mtp_sft,
        rollout_speedup: b.speedup,
        rollout_speedup_simulated: b.sim_speedup,
        simulated_device: b.sim_device,
        minutes: t0.elapsed().as_secs_f64() / 60.0,
        final_checkpoint: rl.model.clone(),
        seed: args.seed,
        stage_minutes: std::mem::take(&mut run.minutes),
        boxed_compliance: evals.boxed,
        response_tokens: evals.lengths,
        eval_problems: heldout.len(),
        eval_k: args.eval.k,
        rollout_bench: b.seamless.iter().chain(&b.naive).cloned().collect(),
        rollout_bench_simulated: b.sim_seamless.iter().chain(&b.sim_naive).cloned().collect(),
    };
    let d = &b.sim_device;
    let sim_name = format!(
        "simulated GPU-like device ({} ms per decode step at any batch, {} ms rewards on {} workers; \
         problems {:.0} % always fail, {:.0} % always pass as the RL stage's groups, the rest pass half \
         the time)",
        d.step_ms,
        d.reward_ms,
        d.reward_workers,
        100.0 * d.always_fail,
        100.0 * d.always_pass
    );
    let bench = [
        BenchRun {
            device: "this CPU (real model)",
            seamless: &b.seamless,
            naive: &b.naive,
            same: b.same,
        },
        BenchRun {
            device: &sim_name,
            seamless: &b.sim_seamless,
            naive: &b.sim_naive,
            same: b.sim_same,
        },
    ];
    // Where each pretraining stage after the first starts, for the loss plot.
    let marks: Vec<(f64, String)> = args
        .stages
        .iter()
        .scan(0, |at, s| {
            let start = *at;
            *at += s.steps;
            Some((start as f64, s.name.clone()))
        })
        .skip(1)
        .collect();
    write_report(out, &report, &rl_steps, &bench, &marks)?;
    Ok(report)
}

/// Held-out figures per evaluated checkpoint.
#[derive(Default)]
struct Evals {
    pass: BTreeMap<String, f64>,
    boxed: BTreeMap<String, f64>,
    lengths: BTreeMap<String, f64>,
    per_problem: BTreeMap<String, Vec<mimo_eval::ProblemResult>>,
}

impl Evals {
    /// Stage 6: evaluates checkpoint `dir` as `name` with `k` samples per problem (samples to
    /// `out/eval-NAME.jsonl`) and logs its figures.
    fn run(
        &mut self,
        run: &mut Run,
        name: &str,
        dir: &Path,
        heldout: &[mimo_reward::Problem],
        k: usize,
    ) -> Result<()> {
        let samples = run.out.join(format!("eval-{name}.jsonl"));
        let (r, b, n) =
            stages::eval_model(dir, heldout, &run.args.eval, k, run.args.seed, &samples)?;
        let se = mimo_eval::pass_at_1_se(&r.per_problem);
        self.pass.insert(name.to_string(), r.pass_at_1);
        self.boxed.insert(name.to_string(), b);
        self.lengths.insert(name.to_string(), n);
        self.per_problem.insert(name.to_string(), r.per_problem);
        run.log(&format!(
            "  {name}: pass@1 {:.3} ± {se:.3} ({k} samples), \\boxed compliance {:.3}, {n:.0} response tokens",
            r.pass_at_1, b
        ));
        Ok(())
    }

    /// Paired pass@1 differences of consecutive stages on the same problems: "sft - base", "rl - sft".
    fn paired(&self) -> BTreeMap<String, mimo_eval::Paired> {
        [("sft", "base"), ("rl", "sft")]
            .into_iter()
            .filter_map(|(b, a)| {
                let d = mimo_eval::paired_difference(
                    self.per_problem.get(a)?,
                    self.per_problem.get(b)?,
                )?;
                Some((format!("{b} - {a}"), d))
            })
            .collect()
    }
}
