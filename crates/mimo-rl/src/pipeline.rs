//! `mimo pipeline`: the whole MiMo recipe at tiny scale, on embedded defaults ([`DEFAULT_PIPELINE`]):
//! synthetic data → tokenizer → pretraining with MTP over a three-stage mixture → SFT → RL (GRPO with the
//! Seamless Rollout Engine) → held-out evaluation of every stage → MTP acceptance → rollout benchmark →
//! `report.md`, `report.json` and PNG plots in the run directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use mimo_engine::engine::{Engine, EngineConfig};
use mimo_engine::{ChatMessage, ModelText, SamplingParams};
use mimo_eval::{evaluate, EvalOptions, EvalReport, Problem};
use mimo_model::MimoModel;
use mimo_train::config::merge;
use mimo_train::plot::{plot_lines, Curve};
use mimo_train::synth::{SynthArgs, SynthKind};
use mimo_train::tokenizer::TokenizerTrainArgs;
use mimo_train::TrainArgs;
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::bench::{rollout_bench, rollout_bench_simulated, BenchSection, SimDevice};
use crate::error::{Result, RlError};
use crate::problem::{load_problems, Check};
use crate::rl::{run_rl, RlArgs, RlStepMetrics};
use crate::rollout::RolloutStats;

/// The embedded default pipeline config (`configs/tiny.toml`).
pub const DEFAULT_PIPELINE: &str = include_str!("../../../configs/tiny.toml");

/// `[synth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSection {
    pub train: usize,
    pub heldout: usize,
    pub max_digits: u32,
    pub max_depth: usize,
    /// Problem families to generate.
    pub kinds: Vec<SynthKind>,
    /// Share of the SFT set's math responses that state the result without the worked steps (`mimo data
    /// synth --terse-fraction`). The pretraining sources (the stage-3 reasoning corpus) keep every worked
    /// response.
    #[serde(default)]
    pub terse_fraction: f64,
}

/// `[tokenizer]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    pub vocab_size: usize,
}

/// One `[[stages]]` table: mixture weights over the pipeline's sources plus the trainer's stage keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    pub name: String,
    pub weights: BTreeMap<String, f64>,
    pub steps: usize,
    pub seq_len: usize,
    pub rope_theta: f64,
}

/// `[eval]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub kinds: Vec<String>,
    pub problems: usize,
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub mtp_prompts: usize,
}

/// The pipeline config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineArgs {
    pub seed: u64,
    pub out: PathBuf,
    pub synth: SynthSection,
    pub tokenizer: TokenizerSection,
    /// config.json fields of the fresh model.
    pub model: toml::Table,
    pub stages: Vec<StageSection>,
    /// `mimo train` keys for pretraining.
    pub pretrain: toml::Table,
    /// `mimo train` keys for SFT.
    pub sft: toml::Table,
    /// `mimo rl` keys.
    pub rl: toml::Table,
    pub eval: EvalSection,
    pub bench: BenchSection,
}

impl PipelineArgs {
    /// The embedded defaults with `files` layered over them, in order.
    pub fn layered(files: &[PathBuf]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(DEFAULT_PIPELINE)
            .map_err(|e| RlError::Config(format!("embedded pipeline defaults: {e}")))?;
        for f in files {
            let s = std::fs::read_to_string(f).map_err(|e| RlError::io(f, e))?;
            let t: toml::Table =
                toml::from_str(&s).map_err(|e| RlError::Config(format!("{}: {e}", f.display())))?;
            merge(&mut table, t);
        }
        table
            .try_into()
            .map_err(|e| RlError::Config(format!("pipeline config: {e}")))
    }
}

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineReport {
    pub pass_at_1: BTreeMap<String, f64>,
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

fn stage_err(stage: &str) -> impl Fn(String) -> RlError + '_ {
    move |msg| RlError::Stage {
        stage: stage.to_string(),
        msg,
    }
}

fn write(path: &Path, s: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| RlError::io(d, e))?;
    }
    std::fs::write(path, s).map_err(|e| RlError::io(path, e))
}

fn jsonl(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    write(path, &s)
}

/// Writes the pretraining sources (see `configs/tiny.toml`) from the synthetic problems.
fn write_sources(train: &[mimo_train::synth::Problem], dir: &Path) -> Result<()> {
    let mut general = vec![];
    let mut math = vec![];
    let mut code = vec![];
    let mut cot = vec![];
    for p in train {
        let is_code = p.kind == SynthKind::Code;
        let answer_only = if is_code {
            let code_block = p.response.split("</think>").last().unwrap_or("").trim();
            format!("{}\n{}", p.prompt, code_block)
        } else {
            format!("Question: {}\nAnswer: {}", p.prompt, p.answer)
        };
        general.push(json!({ "text": answer_only }));
        if is_code {
            code.push(json!({ "text": answer_only }));
        } else {
            math.push(json!({ "text": answer_only }));
        }
        cot.push(json!({ "text": format!("{}\n{}", p.prompt, p.response) }));
    }
    jsonl(&dir.join("general.jsonl"), &general)?;
    jsonl(&dir.join("math.jsonl"), &math)?;
    jsonl(&dir.join("code.jsonl"), &code)?;
    jsonl(&dir.join("cot.jsonl"), &cot)
}

fn mixture_toml(stages: &[StageSection]) -> String {
    let mut s = String::new();
    for src in ["general", "math", "code", "cot"] {
        s.push_str(&format!("[sources.{src}]\nfiles = [\"{src}.jsonl\"]\n\n"));
    }
    for st in stages {
        let w: Vec<String> = st
            .weights
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        s.push_str(&format!(
            "[[stages]]\nname = \"{}\"\nseq_len = {}\nweights = {{ {} }}\n\n",
            st.name,
            st.seq_len,
            w.join(", ")
        ));
    }
    s
}

fn eval_engine(dir: &Path, mtp: usize, max_num_seqs: usize) -> Result<(Engine, ModelText)> {
    let model = MimoModel::from_dir(dir, DType::F32, &Device::Cpu)?;
    let text = ModelText::load(dir)?;
    let engine = Engine::new(
        Arc::new(model),
        EngineConfig {
            max_num_seqs,
            mtp_drafts: mtp,
            eos_ids: text.eos_ids.clone(),
            max_model_len: Some(512),
            ..Default::default()
        },
    )?;
    Ok((engine, text))
}

/// Held-out pass@1, the fraction of samples with a `\boxed{}` answer and their mean completion tokens.
fn eval_model(
    dir: &Path,
    problems: &[Problem],
    e: &EvalSection,
    seed: u64,
    samples_out: &Path,
) -> Result<(EvalReport, f64, f64)> {
    let (mut engine, text) = eval_engine(dir, 0, 64)?;
    let opts = EvalOptions {
        k: e.k,
        temperature: e.temperature,
        top_p: e.top_p,
        max_tokens: e.max_tokens,
        seed,
        instruction: String::new(),
        ..Default::default()
    };
    let report = evaluate(&mut engine, &text, problems, &opts)?;
    let rows: Vec<serde_json::Value> = report
        .samples
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    jsonl(samples_out, &rows)?;
    let boxed = report
        .samples
        .iter()
        .filter(|s| s.text.contains("\\boxed{"))
        .count() as f64
        / report.samples.len().max(1) as f64;
    let tokens = report
        .samples
        .iter()
        .map(|s| s.completion_tokens as f64)
        .sum::<f64>()
        / report.samples.len().max(1) as f64;
    Ok((report, boxed, tokens))
}

/// Greedy MTP (k = 1) acceptance over held-out prompts.
fn mtp_acceptance(dir: &Path, problems: &[Problem], n: usize, max_tokens: usize) -> Result<f64> {
    let (mut engine, text) = eval_engine(dir, 1, 32)?;
    for p in problems.iter().take(n) {
        let s = text
            .chat_template
            .render(&[ChatMessage::new("user", p.question.clone())], true)?;
        let ids = text.tokenizer.encode(&s, false)?;
        engine.add_request(
            ids,
            SamplingParams {
                max_tokens,
                ..SamplingParams::greedy()
            },
        )?;
    }
    engine.run_to_completion()?;
    let st = engine.mtp_stats();
    Ok(st.total_accepted() as f64 / st.total_drafted().max(1) as f64)
}

fn heldout_problems(path: &Path, kinds: &[String], limit: usize) -> Result<Vec<Problem>> {
    let problems = load_problems(path, kinds)?;
    Ok(problems
        .into_iter()
        .filter_map(|p| match p.check {
            Check::Math { answer } => Some(Problem {
                id: p.id,
                question: p.prompt,
                gold: answer,
                tests: vec![],
            }),
            Check::Code { .. } => None,
        })
        .take(limit)
        .collect())
}

fn train_args(
    out: &Path,
    name: &str,
    table: &toml::Table,
    extra: toml::Table,
) -> Result<TrainArgs> {
    let mut t = table.clone();
    merge(&mut t, extra);
    let path = out.join(format!("{name}.toml"));
    write(
        &path,
        &toml::to_string(&t).map_err(|e| RlError::Config(e.to_string()))?,
    )?;
    Ok(TrainArgs::layered(&[path], &[])?)
}

fn pstr(p: &Path) -> toml::Value {
    toml::Value::String(p.to_string_lossy().into_owned())
}

/// Runs the pipeline; `log` receives one line per stage.
pub fn run_pipeline(
    args: &PipelineArgs,
    out: &Path,
    mut log: impl FnMut(&str),
) -> Result<PipelineReport> {
    let t0 = Instant::now();
    if out.join("report.json").exists() {
        return Err(RlError::Config(format!(
            "{} already holds a finished pipeline run; choose another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| RlError::io(out, e))?;
    write(
        &out.join("pipeline.toml"),
        &toml::to_string(args).map_err(|e| RlError::Config(e.to_string()))?,
    )?;
    let mut minutes = BTreeMap::new();
    let lap = |name: &str, since: &mut Instant, minutes: &mut BTreeMap<String, f64>| {
        minutes.insert(name.to_string(), since.elapsed().as_secs_f64() / 60.0);
        *since = Instant::now();
    };
    let mut since = Instant::now();

    // 1. Synthetic data.
    log("synth: verifiable problems with chain-of-thought responses");
    let data = out.join("data");
    let synth_args = SynthArgs {
        out: data.join("synth"),
        train: args.synth.train,
        heldout: args.synth.heldout,
        seed: args.seed,
        max_digits: args.synth.max_digits,
        max_depth: args.synth.max_depth,
        kinds: args.synth.kinds.clone(),
        terse_fraction: args.synth.terse_fraction,
        force: true,
        ..Default::default()
    };
    mimo_train::synth::synth(&synth_args)?;
    // The same problems with every response worked (terse responses are picked per prompt hash, so the
    // problem draw does not change).
    let (train_problems, _, _) = mimo_train::synth::generate(&SynthArgs {
        terse_fraction: 0.0,
        ..synth_args.clone()
    })?;
    let corpus = data.join("corpus");
    write_sources(&train_problems, &corpus)?;
    lap("synth", &mut since, &mut minutes);

    // 2. Tokenizer.
    log("tokenizer: byte-level BPE with ChatML and <think> specials");
    let tok_dir = data.join("tokenizer");
    mimo_train::tokenizer::train_tokenizer(&TokenizerTrainArgs {
        inputs: ["general", "code", "cot"]
            .iter()
            .map(|s| corpus.join(format!("{s}.jsonl")))
            .collect(),
        out: tok_dir.clone(),
        vocab_size: args.tokenizer.vocab_size,
        force: true,
        ..Default::default()
    })?;
    let tokenizer_json = tok_dir.join("tokenizer.json");
    let text = mimo_engine::Tokenizer::from_file(&tokenizer_json)?;
    let eos = text
        .token_to_id("<|im_end|>")
        .ok_or_else(|| stage_err("tokenizer")("no <|im_end|> token".into()))?;

    // 3. Packing: one packed dataset per mixture stage.
    let mixture = corpus.join("mixture.toml");
    write(&mixture, &mixture_toml(&args.stages))?;
    let mut stages = vec![];
    for st in &args.stages {
        let dir = data.join(format!("packed-{}", st.name));
        mimo_data::pack(&mimo_data::PackArgs {
            mixture: mixture.clone(),
            stage: st.name.clone(),
            tokenizer: tokenizer_json.clone(),
            output: dir.clone(),
            seed: args.seed,
            force: true,
            ..Default::default()
        })
        .map_err(|e| stage_err("pack")(e.to_string()))?;
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(st.name.clone()));
        t.insert("data".into(), pstr(&dir));
        t.insert("steps".into(), toml::Value::Integer(st.steps as i64));
        t.insert("seq_len".into(), toml::Value::Integer(st.seq_len as i64));
        t.insert("rope_theta".into(), toml::Value::Float(st.rope_theta));
        stages.push(toml::Value::Table(t));
    }
    lap("tokenizer+pack", &mut since, &mut minutes);

    // 4. Pretraining with the MTP loss over the three stages.
    log("pretrain: MiMo with MTP over the three-stage mixture");
    let mut cfg = args.model.clone();
    for (k, v) in [
        (
            "architectures",
            toml::Value::Array(vec![toml::Value::String("MiMoForCausalLM".into())]),
        ),
        ("model_type", toml::Value::String("mimo".into())),
        ("vocab_size", toml::Value::Integer(text.vocab_size() as i64)),
        ("hidden_act", toml::Value::String("silu".into())),
        ("rms_norm_eps", toml::Value::Float(1e-5)),
        (
            "rope_theta",
            toml::Value::Float(args.stages.first().map_or(10000.0, |s| s.rope_theta)),
        ),
        ("use_sliding_window", toml::Value::Boolean(false)),
        ("eos_token_id", toml::Value::Integer(eos as i64)),
    ] {
        cfg.entry(k.to_string()).or_insert(v);
    }
    let cfg_json =
        serde_json::to_string_pretty(&cfg).map_err(|e| RlError::Config(e.to_string()))?;
    let cfg_path = data.join("model-config.json");
    write(&cfg_path, &cfg_json)?;
    let total_steps: usize = args.stages.iter().map(|s| s.steps).sum();
    let mut extra: toml::Table = toml::from_str(&format!(
        "mode = \"pretrain\"\nseed = {}\nforce = true\n[model]\nconfig = {}\n[data]\ntokenizer = {}\n[train]\nsteps = {}",
        args.seed,
        pstr(&cfg_path),
        pstr(&tokenizer_json),
        total_steps
    ))
    .map_err(|e| RlError::Config(e.to_string()))?;
    extra.insert("out".into(), pstr(&out.join("pretrain")));
    extra.insert("stages".into(), toml::Value::Array(stages));
    let pre_args = train_args(out, "pretrain", &args.pretrain, extra)?;
    let pre = mimo_train::train(&pre_args)?;
    let base_dir = pre
        .model_dir
        .clone()
        .ok_or_else(|| stage_err("pretrain")("no final model".into()))?;
    lap("pretrain", &mut since, &mut minutes);

    // 5. SFT on the chat-formatted problems.
    log("sft: prompt-masked SFT, MTP tuned");
    let mut extra: toml::Table = toml::from_str(&format!(
        "mode = \"sft\"\nseed = {}\nforce = true\n[model]\ninit = {}\n[data]\npath = {}\ntokenizer = {}",
        args.seed,
        pstr(&base_dir),
        pstr(&data.join("synth").join("train.jsonl")),
        pstr(&tokenizer_json)
    ))
    .map_err(|e| RlError::Config(e.to_string()))?;
    extra.insert("out".into(), pstr(&out.join("sft")));
    let sft_args = train_args(out, "sft", &args.sft, extra)?;
    let sft = mimo_train::train(&sft_args)?;
    let sft_dir = sft
        .model_dir
        .clone()
        .ok_or_else(|| stage_err("sft")("no final model".into()))?;
    lap("sft", &mut since, &mut minutes);

    // 6. Evaluation of base and SFT.
    let heldout_path = data.join("synth").join("heldout.jsonl");
    let heldout = heldout_problems(&heldout_path, &args.eval.kinds, args.eval.problems)?;
    log(&format!(
        "eval: base and SFT on {} held-out problems × {}",
        heldout.len(),
        args.eval.k
    ));
    let mut pass = BTreeMap::new();
    let mut boxed = BTreeMap::new();
    let mut lengths = BTreeMap::new();
    for (name, dir) in [("base", &base_dir), ("sft", &sft_dir)] {
        let samples = out.join(format!("eval-{name}.jsonl"));
        let (r, b, n) = eval_model(dir, &heldout, &args.eval, args.seed, &samples)?;
        pass.insert(name.to_string(), r.pass_at_1);
        boxed.insert(name.to_string(), b);
        lengths.insert(name.to_string(), n);
        log(&format!(
            "  {name}: pass@1 {:.3}, \\boxed compliance {:.3}, {n:.0} response tokens",
            r.pass_at_1, b
        ));
    }
    let mtp_sft = mtp_acceptance(
        &sft_dir,
        &heldout,
        args.eval.mtp_prompts,
        args.eval.max_tokens,
    )?;
    lap("eval-base-sft", &mut since, &mut minutes);

    // 7. RL.
    log("rl: GRPO with the Seamless Rollout Engine");
    let mut rl_table = args.rl.clone();
    let mut extra = toml::Table::new();
    extra.insert("seed".into(), toml::Value::Integer(args.seed as i64));
    extra.insert("out".into(), pstr(&out.join("rl")));
    extra.insert("model".into(), pstr(&sft_dir));
    extra.insert("data".into(), pstr(&data.join("synth").join("train.jsonl")));
    extra.insert("force".into(), toml::Value::Boolean(true));
    merge(&mut rl_table, extra);
    write(
        &out.join("rl.toml"),
        &toml::to_string(&rl_table).map_err(|e| RlError::Config(e.to_string()))?,
    )?;
    let rl_args: RlArgs = rl_table
        .try_into()
        .map_err(|e| RlError::Config(format!("[rl]: {e}")))?;
    let mut rl_steps: Vec<RlStepMetrics> = vec![];
    let rl = run_rl(&rl_args, |m| rl_steps.push(m.clone()))?;
    lap("rl", &mut since, &mut minutes);

    // 8. Evaluation of the RL model, MTP acceptance, rollout benchmark.
    let (r, b, n) = eval_model(
        &rl.model,
        &heldout,
        &args.eval,
        args.seed,
        &out.join("eval-rl.jsonl"),
    )?;
    pass.insert("rl".into(), r.pass_at_1);
    boxed.insert("rl".into(), b);
    lengths.insert("rl".into(), n);
    log(&format!(
        "  rl: pass@1 {:.3}, \\boxed compliance {:.3}, {n:.0} response tokens",
        r.pass_at_1, b
    ));
    let mtp_rl = mtp_acceptance(
        &rl.model,
        &heldout,
        args.eval.mtp_prompts,
        args.eval.max_tokens,
    )?;
    log(&format!(
        "  MTP acceptance (greedy, k=1): sft {mtp_sft:.3}, rl {mtp_rl:.3}"
    ));
    lap("eval-rl", &mut since, &mut minutes);
    log("bench: seamless vs naive rollout on a skewed-length workload");
    let (seamless, naive, same) = rollout_bench(
        &sft_dir,
        &data.join("synth").join("train.jsonl"),
        &rl_args.kinds,
        &args.bench,
        args.seed,
    )?;
    let wall = |v: &[RolloutStats]| v.iter().map(|s| s.wall_s).sum::<f64>();
    let speedup = wall(&naive) / wall(&seamless).max(1e-9);
    log(&format!(
        "  speedup {speedup:.2}× on this CPU (identical batches: {same})"
    ));
    let sim_bench = BenchSection {
        steps: args.bench.steps.max(3),
        ..args.bench.clone()
    };
    // The simulated problems fail, pass or split in the proportions the RL stage's groups did.
    let sim_dev = SimDevice::with_measured_mix(rl_steps.iter().map(|m| &m.rollout));
    log(&format!(
        "  simulated problem mix from the RL stage: {:.0} % always fail, {:.0} % always pass",
        100.0 * sim_dev.always_fail,
        100.0 * sim_dev.always_pass
    ));
    let (sim_seamless, sim_naive, sim_same) =
        rollout_bench_simulated(&sim_bench, sim_dev, args.seed)?;
    let sim_speedup = wall(&sim_naive) / wall(&sim_seamless).max(1e-9);
    log(&format!(
        "  speedup {sim_speedup:.2}× on the simulated GPU-like device (identical batches: {sim_same})"
    ));
    lap("bench", &mut since, &mut minutes);

    let report = PipelineReport {
        pass_at_1: pass,
        mtp_acceptance: mtp_rl,
        mtp_acceptance_sft: mtp_sft,
        rollout_speedup: speedup,
        rollout_speedup_simulated: sim_speedup,
        simulated_device: sim_dev,
        minutes: t0.elapsed().as_secs_f64() / 60.0,
        final_checkpoint: rl.model.clone(),
        seed: args.seed,
        stage_minutes: minutes,
        boxed_compliance: boxed,
        response_tokens: lengths,
        eval_problems: heldout.len(),
        eval_k: args.eval.k,
        rollout_bench: seamless.iter().chain(&naive).cloned().collect(),
        rollout_bench_simulated: sim_seamless.iter().chain(&sim_naive).cloned().collect(),
    };
    let bench = [
        BenchRun {
            device: "this CPU (real model)",
            seamless: &seamless,
            naive: &naive,
            same,
        },
        BenchRun {
            device: &format!(
                "simulated GPU-like device ({} ms per decode step at any batch, {} ms rewards on {} workers; \
                 problems {:.0} % always fail, {:.0} % always pass as the RL stage's groups, the rest pass half \
                 the time)",
                sim_dev.step_ms,
                sim_dev.reward_ms,
                sim_dev.reward_workers,
                100.0 * sim_dev.always_fail,
                100.0 * sim_dev.always_pass
            ),
            seamless: &sim_seamless,
            naive: &sim_naive,
            same: sim_same,
        },
    ];
    write_report(out, &report, &rl_steps, &bench)?;
    Ok(report)
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
struct BenchRun<'a> {
    device: &'a str,
    seamless: &'a [RolloutStats],
    naive: &'a [RolloutStats],
    same: bool,
}

fn write_report(
    out: &Path,
    r: &PipelineReport,
    rl_steps: &[RlStepMetrics],
    bench: &[BenchRun],
) -> Result<()> {
    let json = serde_json::to_string_pretty(r).map_err(|e| RlError::Data(e.to_string()))?;
    write(&out.join("report.json"), &json)?;
    let c = |name: &str, color: RGBColor, points: Vec<(f64, f64)>| Curve {
        name: name.into(),
        color,
        points,
    };
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| RlError::io(&plots, e))?;
    let mut made = vec![];
    let mut plot = |file: &str, curves: Vec<Curve>, x: &str, y: &str| {
        let p = plots.join(file);
        if plot_lines(&curves, x, y, &p).is_ok() {
            made.push(file.to_string());
        }
    };
    let train_metrics = |dir: &str| {
        mimo_train::metrics::read_metrics(&out.join(dir).join("metrics.jsonl")).unwrap_or_default()
    };
    let (pre, sft) = (train_metrics("pretrain"), train_metrics("sft"));
    let off = pre.last().map_or(0, |m| m.step) as f64;
    plot(
        "loss.png",
        vec![
            c(
                "pretrain main",
                RGBColor(0, 0, 200),
                pre.iter().map(|m| (m.step as f64, m.loss_main)).collect(),
            ),
            c(
                "pretrain MTP",
                RGBColor(200, 0, 0),
                pre.iter().map(|m| (m.step as f64, m.loss_mtp)).collect(),
            ),
            c(
                "SFT main",
                RGBColor(0, 120, 0),
                sft.iter()
                    .map(|m| (off + m.step as f64, m.loss_main))
                    .collect(),
            ),
            c(
                "SFT MTP",
                RGBColor(200, 120, 0),
                sft.iter()
                    .map(|m| (off + m.step as f64, m.loss_mtp))
                    .collect(),
            ),
        ],
        "step (pretrain, then SFT)",
        "loss",
    );
    plot(
        "mtp_acceptance.png",
        vec![
            c(
                "MTP top-1 acc (train)",
                RGBColor(200, 0, 0),
                pre.iter()
                    .chain(&sft)
                    .enumerate()
                    .map(|(i, m)| (i as f64, m.mtp_acc))
                    .collect(),
            ),
            c(
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
    plot(
        "reward.png",
        vec![
            c(
                "rollout mean reward",
                RGBColor(0, 0, 200),
                rl_steps
                    .iter()
                    .map(|m| (m.step as f64, m.rollout.mean_reward))
                    .collect(),
            ),
            c(
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
    plot(
        "response_length.png",
        vec![c(
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
    let order = ["base", "sft", "rl"];
    plot(
        "pass_at_1.png",
        vec![c(
            "held-out pass@1 (0 = base, 1 = SFT, 2 = RL)",
            RGBColor(0, 0, 200),
            order
                .iter()
                .enumerate()
                .map(|(i, k)| (i as f64, r.pass_at_1.get(*k).copied().unwrap_or(0.0)))
                .collect(),
        )],
        "stage",
        "pass@1",
    );
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
        curves.push(c(&format!("seamless, {tag}"), cs, rel(b.seamless)));
        curves.push(c(&format!("naive, {tag}"), cn, rel(b.naive)));
    }
    plot(
        "rollout.png",
        curves,
        "benchmark step",
        "step wall time / slowest naive step",
    );
    let mut md = String::new();
    md.push_str("# mimo pipeline report\n\n");
    md.push_str(&format!(
        "Seed {}, {:.1} minutes, final checkpoint `{}`.\n\n",
        r.seed,
        r.minutes,
        r.final_checkpoint.display()
    ));
    md.push_str(&format!(
        "## Held-out pass@1 ({} problems × {} samples, temperature 0.6, top-p 0.95)\n\n| stage | pass@1 | \\boxed{{}} compliance | mean response tokens |\n|---|---|---|---|\n",
        r.eval_problems, r.eval_k
    ));
    for k in order {
        md.push_str(&format!(
            "| {k} | {:.3} | {:.3} | {:.0} |\n",
            r.pass_at_1.get(k).copied().unwrap_or(0.0),
            r.boxed_compliance.get(k).copied().unwrap_or(0.0),
            r.response_tokens.get(k).copied().unwrap_or(0.0)
        ));
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
    for f in made {
        md.push_str(&format!("![{f}](plots/{f})\n"));
    }
    write(&out.join("report.md"), &md)
}
