//! `report.json`, `report.md` and `plots/*.png` of a pipeline run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mimo_eval::Paired;
use mimo_rl::bench::SimDevice;
use mimo_rl::rl::RlStepMetrics;
use mimo_rl::RolloutStats;
use mimo_train::plot::{plot_bars, plot_lines, plot_lines_marked, Bar, Curve};
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::stages::write;

/// The evaluated checkpoints, in recipe order.
const STAGES: [&str; 3] = ["base", "sft", "rl"];

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineReport {
    pub pass_at_1: BTreeMap<String, f64>,
    /// Standard error of each stage's pass@1 over the held-out problems.
    #[serde(default)]
    pub pass_at_1_se: BTreeMap<String, f64>,
    /// Paired pass@1 differences on the same problems ("sft - base", "rl - sft") with their standard errors.
    #[serde(default)]
    pub paired: BTreeMap<String, Paired>,
    /// The SFT model's unbiased pass@k for k = 1, 2, … (up to 16 or its sample count).
    #[serde(default)]
    pub sft_pass_at_k: Vec<f64>,
    /// Samples per problem of each stage's evaluation.
    #[serde(default)]
    pub eval_samples: BTreeMap<String, usize>,
    pub mtp_acceptance: f64,
    pub mtp_acceptance_sft: f64,
    /// Seamless vs naive wall time on this CPU (decode cost grows with the batch, so idle slots are free).
    pub rollout_speedup: f64,
    /// The same schedulers on [`SimDevice`]'s GPU-like cost model (a decode step costs the same at any batch).
    pub rollout_speedup_simulated: f64,
    /// The simulated device's cost model and problem mix (measured in the RL stage).
    pub simulated_device: SimDevice,
    pub minutes: f64,
    pub final_checkpoint: PathBuf,
    pub seed: u64,
    pub stage_minutes: BTreeMap<String, f64>,
    pub boxed_compliance: BTreeMap<String, f64>,
    /// Mean completion tokens of the held-out samples per stage.
    pub response_tokens: BTreeMap<String, f64>,
    pub eval_problems: usize,
    pub eval_k: usize,
    pub rollout_bench: Vec<RolloutStats>,
    pub rollout_bench_simulated: Vec<RolloutStats>,
}

fn table2_row(name: &str, v: &[RolloutStats], base_wall: f64) -> String {
    let n = v.len().max(1) as f64;
    let wall: f64 = v.iter().map(|s| s.wall_s).sum();
    format!(
        "| {name} | {:.2}× | {:.2} s | {:.1} % | {:.1} % | {:.1} % | {:.1} |",
        base_wall / wall.max(1e-9),
        wall / n,
        100.0 * v.iter().map(|s| s.idle_fraction).sum::<f64>() / n,
        100.0 * v.iter().map(|s| s.sample_waste).sum::<f64>() / n,
        100.0 * v.iter().map(|s| s.token_waste).sum::<f64>() / n,
        v.iter().map(|s| s.tasks_launched as f64).sum::<f64>() / n,
    )
}

/// One seamless-vs-naive comparison for the report.
pub(crate) struct BenchRun<'a> {
    pub device: &'a str,
    pub seamless: &'a [RolloutStats],
    pub naive: &'a [RolloutStats],
    pub same: bool,
}

/// Writes `report.json`, the plots and `report.md` into `out`.
pub(crate) fn write_report(
    out: &Path,
    r: &PipelineReport,
    rl_steps: &[RlStepMetrics],
    bench: &[BenchRun],
    stage_marks: &[(f64, String)],
) -> Result<()> {
    let json = serde_json::to_string_pretty(r).map_err(|e| PipelineError::Config(e.to_string()))?;
    write(&out.join("report.json"), &json)?;
    let plots = write_plots(out, r, rl_steps, bench, stage_marks)?;
    write(&out.join("report.md"), &report_markdown(r, bench, &plots))
}

fn curve(name: &str, color: RGBColor, points: Vec<(f64, f64)>) -> Curve {
    Curve {
        name: name.into(),
        color,
        points,
    }
}

/// `out/plots`, and the plot files written into it so far (a plot that fails is skipped, not an error).
struct PlotDir {
    dir: PathBuf,
    made: Vec<String>,
}

impl PlotDir {
    fn plot(&mut self, file: &str, curves: Vec<Curve>, x: &str, y: &str) {
        self.keep(file, plot_lines(&curves, x, y, &self.dir.join(file)));
    }

    fn keep(&mut self, file: &str, made: std::result::Result<(), String>) {
        if made.is_ok() {
            self.made.push(file.to_string());
        }
    }
}

/// Loss, MTP acceptance, reward, response length, pass@1 and rollout plots; returns the files written.
fn write_plots(
    out: &Path,
    r: &PipelineReport,
    rl_steps: &[RlStepMetrics],
    bench: &[BenchRun],
    stage_marks: &[(f64, String)],
) -> Result<Vec<String>> {
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| PipelineError::io(&dir, e))?;
    let mut d = PlotDir { dir, made: vec![] };
    training_plots(&mut d, out, r, stage_marks);
    rl_plots(&mut d, r, rl_steps);
    rollout_plot(&mut d, bench);
    Ok(d.made)
}

/// Pretraining and SFT losses (pretraining stage boundaries and the start of SFT marked), MTP acceptance.
fn training_plots(d: &mut PlotDir, out: &Path, r: &PipelineReport, stage_marks: &[(f64, String)]) {
    let train_metrics = |dir: &str| {
        mimo_train::metrics::read_metrics(&out.join(dir).join("metrics.jsonl")).unwrap_or_default()
    };
    let (pre, sft) = (train_metrics("pretrain"), train_metrics("sft"));
    let off = pre.last().map_or(0, |m| m.step) as f64;
    let mut marks = stage_marks.to_vec();
    marks.push((off, "SFT".into()));
    let loss = plot_lines_marked(
        &[
            curve(
                "pretrain main",
                RGBColor(0, 0, 200),
                pre.iter().map(|m| (m.step as f64, m.loss_main)).collect(),
            ),
            curve(
                "pretrain MTP",
                RGBColor(200, 0, 0),
                pre.iter().map(|m| (m.step as f64, m.loss_mtp)).collect(),
            ),
            curve(
                "SFT main",
                RGBColor(0, 120, 0),
                sft.iter()
                    .map(|m| (off + m.step as f64, m.loss_main))
                    .collect(),
            ),
            curve(
                "SFT MTP",
                RGBColor(200, 120, 0),
                sft.iter()
                    .map(|m| (off + m.step as f64, m.loss_mtp))
                    .collect(),
            ),
        ],
        &marks,
        "step (pretrain, then SFT)",
        "loss",
        &d.dir.join("loss.png"),
    );
    d.keep("loss.png", loss);
    d.plot(
        "mtp_acceptance.png",
        vec![
            curve(
                "MTP top-1 acc (train)",
                RGBColor(200, 0, 0),
                pre.iter()
                    .chain(&sft)
                    .enumerate()
                    .map(|(i, m)| (i as f64, m.mtp_acc))
                    .collect(),
            ),
            curve(
                "SFT / RL greedy acceptance",
                RGBColor(0, 0, 0),
                vec![
                    (off, r.mtp_acceptance_sft),
                    ((off + sft.len() as f64), r.mtp_acceptance),
                ],
            ),
        ],
        "step",
        "MTP acceptance",
    );
}

/// RL reward and response length per step, pass@1 per stage.
fn rl_plots(d: &mut PlotDir, r: &PipelineReport, rl_steps: &[RlStepMetrics]) {
    d.plot(
        "reward.png",
        vec![
            curve(
                "rollout mean reward",
                RGBColor(0, 0, 200),
                rl_steps
                    .iter()
                    .map(|m| (m.step as f64, m.rollout.mean_reward))
                    .collect(),
            ),
            curve(
                "clip-high fraction ×10",
                RGBColor(200, 0, 0),
                rl_steps
                    .iter()
                    .map(|m| (m.step as f64, 10.0 * m.clip_high))
                    .collect(),
            ),
        ],
        "RL step",
        "reward",
    );
    d.plot(
        "response_length.png",
        vec![curve(
            "mean response tokens of the trained rollouts",
            RGBColor(0, 120, 0),
            rl_steps
                .iter()
                .map(|m| (m.step as f64, m.mean_response_tokens))
                .collect(),
        )],
        "RL step",
        "tokens",
    );
    let bars: Vec<Bar> = STAGES
        .iter()
        .map(|k| Bar {
            label: k.to_string(),
            value: r.pass_at_1.get(*k).copied().unwrap_or(0.0),
            err: r.pass_at_1_se.get(*k).copied().unwrap_or(0.0),
        })
        .collect();
    let file = "pass_at_1.png";
    let made = plot_bars(
        &bars,
        "held-out pass@1 (± 1 standard error)",
        &d.dir.join(file),
    );
    d.keep(file, made);
    d.plot(
        "sft_pass_at_k.png",
        vec![curve(
            "SFT model, unbiased pass@k",
            RGBColor(0, 120, 0),
            r.sft_pass_at_k
                .iter()
                .enumerate()
                .map(|(i, p)| ((i + 1) as f64, *p))
                .collect(),
        )],
        "k (samples per problem)",
        "held-out pass@k",
    );
}

/// Seamless vs naive step times on both devices.
fn rollout_plot(d: &mut PlotDir, bench: &[BenchRun]) {
    let colors = [
        (RGBColor(0, 120, 0), RGBColor(200, 0, 0)),
        (RGBColor(0, 0, 200), RGBColor(200, 120, 0)),
    ];
    let mut curves = vec![];
    for (b, (cs, cn)) in bench.iter().zip(colors) {
        let rel = |v: &[RolloutStats]| {
            let base = b
                .naive
                .iter()
                .map(|s| s.wall_s)
                .fold(0.0, f64::max)
                .max(1e-9);
            v.iter()
                .enumerate()
                .map(|(i, s)| (i as f64, s.wall_s / base))
                .collect::<Vec<_>>()
        };
        let tag = b.device.split(" (").next().unwrap_or(b.device);
        curves.push(curve(&format!("seamless, {tag}"), cs, rel(b.seamless)));
        curves.push(curve(&format!("naive, {tag}"), cn, rel(b.naive)));
    }
    d.plot(
        "rollout.png",
        curves,
        "benchmark step",
        "step wall time / slowest naive step",
    );
}

/// The human-readable report.
fn report_markdown(r: &PipelineReport, bench: &[BenchRun], plots: &[String]) -> String {
    let mut md = String::new();
    md.push_str("# mimo pipeline report\n\n");
    md.push_str(&format!(
        "Seed {}, {:.1} minutes, final checkpoint `{}`.\n\n",
        r.seed,
        r.minutes,
        r.final_checkpoint.display()
    ));
    md.push_str(&format!(
        "## Held-out pass@1 ({} problems, temperature 0.6, top-p 0.95)\n\n| stage | samples per problem | pass@1 | standard error | \\boxed{{}} compliance | mean response tokens |\n|---|---|---|---|---|---|\n",
        r.eval_problems
    ));
    for k in STAGES {
        md.push_str(&format!(
            "| {k} | {} | {:.3} | {:.3} | {:.3} | {:.0} |\n",
            r.eval_samples.get(k).copied().unwrap_or(r.eval_k),
            r.pass_at_1.get(k).copied().unwrap_or(0.0),
            r.pass_at_1_se.get(k).copied().unwrap_or(0.0),
            r.boxed_compliance.get(k).copied().unwrap_or(0.0),
            r.response_tokens.get(k).copied().unwrap_or(0.0)
        ));
    }
    if !r.paired.is_empty() {
        md.push_str("\nPaired differences on the same problems (mean of per-problem pass-rate differences):\n\n| comparison | Δ pass@1 | paired standard error |\n|---|---|---|\n");
        for (name, d) in &r.paired {
            md.push_str(&format!("| {name} | {:+.3} | {:.3} |\n", d.delta, d.se));
        }
    }
    if !r.sft_pass_at_k.is_empty() {
        md.push_str("\nSFT pass@k (the headroom RL can turn into pass@1):\n\n| k |");
        let ks: Vec<usize> = (1..=r.sft_pass_at_k.len()).collect();
        for k in &ks {
            md.push_str(&format!(" {k} |"));
        }
        md.push_str(&format!("\n|---|{}\n| pass@k |", "---|".repeat(ks.len())));
        for p in &r.sft_pass_at_k {
            md.push_str(&format!(" {p:.3} |"));
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\n## MTP\n\nGreedy speculative decoding with k = 1: acceptance {:.3} after SFT, {:.3} after RL (MTP frozen during RL).\n",
        r.mtp_acceptance_sft, r.mtp_acceptance
    ));
    md.push_str("\n## Rollout engine (skewed response lengths; paper Table 2)\n");
    for b in bench {
        let naive_wall: f64 = b.naive.iter().map(|s| s.wall_s).sum();
        md.push_str(&format!(
            "\n{}, {} steps; batches identical in both modes: {}\n\n\
             | method | overall speedup | wall / step | idle slots | sample waste | token waste | tasks / step |\n|---|---|---|---|---|---|---|\n{}\n{}\n",
            b.device,
            b.seamless.len(),
            b.same,
            table2_row("naive dynamic sampling", b.naive, naive_wall),
            table2_row(
                "seamless (continuous + async reward + early termination)",
                b.seamless,
                naive_wall
            ),
        ));
    }
    md.push_str("\n## Stage times (minutes)\n\n");
    for (k, v) in &r.stage_minutes {
        md.push_str(&format!("- {k}: {v:.2}\n"));
    }
    md.push_str("\n## Plots\n\n");
    for f in plots {
        md.push_str(&format!("![{f}](plots/{f})\n"));
    }
    md
}
