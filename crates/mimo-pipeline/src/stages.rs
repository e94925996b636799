//! The recipe's stages, in order (design §2–§5): synthetic data, tokenizer, packing, pretraining, SFT,
//! evaluation, RL and the rollout benchmark. Each is a function over the [`Run`] in progress.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use mimo_config::merge;
use mimo_engine::engine::EngineConfig;
use mimo_engine::{Loaded, SamplingParams};
use mimo_eval::{evaluate, EvalOptions, EvalReport};
use mimo_reward::{load_problems, Problem};
use mimo_rl::bench::{rollout_bench, rollout_bench_simulated, BenchSection, SimDevice};
use mimo_rl::rl::{run_rl, RlArgs, RlReport, RlStepMetrics};
use mimo_rl::RolloutStats;
use mimo_train::synth::SynthArgs;
use mimo_train::tokenizer::TokenizerTrainArgs;
use mimo_train::TrainArgs;
use serde_json::json;

use crate::config::{EvalSection, PipelineArgs, StageSection};
use crate::error::{PipelineError, Result};

/// A pipeline run in progress: its config, directories, progress log and the minutes each stage took.
pub(crate) struct Run<'a> {
    pub args: &'a PipelineArgs,
    pub out: &'a Path,
    /// `out/data`: synthetic problems, corpus, tokenizer, packed datasets.
    pub data: PathBuf,
    pub log: &'a mut dyn FnMut(&str),
    pub minutes: BTreeMap<String, f64>,
    since: Instant,
}

impl<'a> Run<'a> {
    pub fn new(args: &'a PipelineArgs, out: &'a Path, log: &'a mut dyn FnMut(&str)) -> Self {
        Self {
            args,
            out,
            data: out.join("data"),
            log,
            minutes: BTreeMap::new(),
            since: Instant::now(),
        }
    }

    /// Records the time since the previous lap as stage `name`.
    pub fn lap(&mut self, name: &str) {
        let m = self.since.elapsed().as_secs_f64() / 60.0;
        self.minutes.insert(name.to_string(), m);
        self.since = Instant::now();
    }

    pub fn log(&mut self, line: &str) {
        (self.log)(line)
    }

    /// `data/synth/train.jsonl`: the SFT set and RL's problems.
    pub fn train_jsonl(&self) -> PathBuf {
        self.data.join("synth").join("train.jsonl")
    }
}

pub(crate) fn write(path: &Path, s: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| PipelineError::io(d, e))?;
    }
    std::fs::write(path, s).map_err(|e| PipelineError::io(path, e))
}

fn jsonl(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    write(path, &s)
}

fn pstr(p: &Path) -> toml::Value {
    toml::Value::String(p.to_string_lossy().into_owned())
}

fn toml_table(s: &str) -> Result<toml::Table> {
    toml::from_str(s).map_err(|e| PipelineError::Config(e.to_string()))
}

/// Stage 1: Synthetic verifiable problems with worked responses (`data/synth`), and the pretraining sources made
/// from them (`data/corpus`). Returns the corpus directory.
pub(crate) fn synth(run: &mut Run) -> Result<PathBuf> {
    run.log("synth: verifiable problems with chain-of-thought responses");
    let s = &run.args.synth;
    let synth_args = SynthArgs {
        out: run.data.join("synth"),
        train: s.train,
        heldout: s.heldout,
        seed: run.args.seed,
        max_digits: s.max_digits,
        max_depth: s.max_depth,
        kinds: s.kinds.clone(),
        terse_fraction: s.terse_fraction,
        force: true,
        ..Default::default()
    };
    mimo_train::synth::synth(&synth_args)?;
    // The same problems with every response worked (terse responses are picked per prompt hash, so the
    // problem draw does not change).
    let (train, _, _) = mimo_train::synth::generate(&SynthArgs {
        terse_fraction: 0.0,
        ..synth_args
    })?;
    let corpus = run.data.join("corpus");
    write_sources(&train, &corpus)?;
    run.lap("synth");
    Ok(corpus)
}

/// Writes the pretraining sources (see `configs/tiny.toml`) from the synthetic examples.
fn write_sources(train: &[mimo_train::synth::Example], dir: &Path) -> Result<()> {
    let (mut general, mut math, mut code, mut cot) = (vec![], vec![], vec![], vec![]);
    for p in train {
        let is_code = p.problem.is_code();
        let prompt = &p.problem.prompt;
        let answer_only = if is_code {
            let code_block = p.response.split("</think>").last().unwrap_or("").trim();
            format!("{prompt}\n{code_block}")
        } else {
            format!("Question: {prompt}\nAnswer: {}", p.problem.gold())
        };
        general.push(json!({ "text": answer_only }));
        if is_code {
            code.push(json!({ "text": answer_only }));
        } else {
            math.push(json!({ "text": answer_only }));
        }
        cot.push(json!({ "text": format!("{prompt}\n{}", p.response) }));
    }
    jsonl(&dir.join("general.jsonl"), &general)?;
    jsonl(&dir.join("math.jsonl"), &math)?;
    jsonl(&dir.join("code.jsonl"), &code)?;
    jsonl(&dir.join("cot.jsonl"), &cot)
}

/// Stage 2: A byte-level BPE tokenizer with the ChatML and `<think>` specials. Returns `tokenizer.json`, the
/// vocabulary size and the id of `<|im_end|>` (EOS).
pub(crate) fn tokenizer(run: &mut Run, corpus: &Path) -> Result<(PathBuf, usize, u32)> {
    run.log("tokenizer: byte-level BPE with ChatML and <think> specials");
    let tok_dir = run.data.join("tokenizer");
    mimo_train::tokenizer::train_tokenizer(&TokenizerTrainArgs {
        inputs: ["general", "code", "cot"]
            .iter()
            .map(|s| corpus.join(format!("{s}.jsonl")))
            .collect(),
        out: tok_dir.clone(),
        vocab_size: run.args.tokenizer.vocab_size,
        force: true,
        ..Default::default()
    })?;
    let tokenizer_json = tok_dir.join("tokenizer.json");
    let tok = mimo_text::Tokenizer::from_file(&tokenizer_json)?;
    let eos = tok
        .token_to_id("<|im_end|>")
        .ok_or_else(|| PipelineError::stage("tokenizer", "no <|im_end|> token"))?;
    Ok((tokenizer_json, tok.vocab_size(), eos))
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

/// Stage 3: One packed dataset per mixture stage (design §2.2). Returns the trainer's `[[stages]]` tables.
pub(crate) fn pack(
    run: &mut Run,
    corpus: &Path,
    tokenizer_json: &Path,
) -> Result<Vec<toml::Value>> {
    let mixture = corpus.join("mixture.toml");
    write(&mixture, &mixture_toml(&run.args.stages))?;
    let mut stages = vec![];
    for st in &run.args.stages {
        let dir = run.data.join(format!("packed-{}", st.name));
        mimo_data::pack(&mimo_data::PackArgs {
            mixture: mixture.clone(),
            stage: st.name.clone(),
            tokenizer: tokenizer_json.to_path_buf(),
            output: dir.clone(),
            seed: run.args.seed,
            force: true,
            ..Default::default()
        })
        .map_err(|e| PipelineError::stage("pack", e.to_string()))?;
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(st.name.clone()));
        t.insert("data".into(), pstr(&dir));
        t.insert("steps".into(), toml::Value::Integer(st.steps as i64));
        t.insert("seq_len".into(), toml::Value::Integer(st.seq_len as i64));
        t.insert("rope_theta".into(), toml::Value::Float(st.rope_theta));
        stages.push(toml::Value::Table(t));
    }
    run.lap("tokenizer+pack");
    Ok(stages)
}

/// `mimo train` arguments: the pipeline's `[pretrain]`/`[sft]` table with `extra` over it, written to
/// `out/NAME.toml` and loaded from there as `mimo train --config` would.
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
        &toml::to_string(&t).map_err(|e| PipelineError::Config(e.to_string()))?,
    )?;
    Ok(TrainArgs::layered(&[path], &[])?)
}

/// The fresh model's `config.json`: the pipeline's `[model]` keys plus what the recipe fixes.
fn model_config(run: &Run, vocab: usize, eos: u32) -> toml::Table {
    let mut cfg = run.args.model.clone();
    let theta = run.args.stages.first().map_or(10000.0, |s| s.rope_theta);
    for (k, v) in [
        (
            "architectures",
            toml::Value::Array(vec![toml::Value::String("MiMoForCausalLM".into())]),
        ),
        ("model_type", toml::Value::String("mimo".into())),
        ("vocab_size", toml::Value::Integer(vocab as i64)),
        ("hidden_act", toml::Value::String("silu".into())),
        ("rms_norm_eps", toml::Value::Float(1e-5)),
        ("rope_theta", toml::Value::Float(theta)),
        ("use_sliding_window", toml::Value::Boolean(false)),
        ("eos_token_id", toml::Value::Integer(eos as i64)),
    ] {
        cfg.entry(k.to_string()).or_insert(v);
    }
    cfg
}

/// Stage 4: Pretraining with the MTP loss over the mixture stages (design §1.5, §2.2). Returns the base model.
pub(crate) fn pretrain(
    run: &mut Run,
    tokenizer_json: &Path,
    vocab: usize,
    eos: u32,
    stages: Vec<toml::Value>,
) -> Result<PathBuf> {
    run.log("pretrain: MiMo with MTP over the three-stage mixture");
    let cfg = model_config(run, vocab, eos);
    let cfg_json =
        serde_json::to_string_pretty(&cfg).map_err(|e| PipelineError::Config(e.to_string()))?;
    let cfg_path = run.data.join("model-config.json");
    write(&cfg_path, &cfg_json)?;
    let total_steps: usize = run.args.stages.iter().map(|s| s.steps).sum();
    let mut extra = toml_table(&format!(
        "mode = \"pretrain\"\nseed = {}\nforce = true\n[model]\nconfig = {}\n[data]\ntokenizer = {}\n[train]\nsteps = {}",
        run.args.seed,
        pstr(&cfg_path),
        pstr(tokenizer_json),
        total_steps
    ))?;
    extra.insert("out".into(), pstr(&run.out.join("pretrain")));
    extra.insert("stages".into(), toml::Value::Array(stages));
    let pre = mimo_train::train(&train_args(run.out, "pretrain", &run.args.pretrain, extra)?)?;
    let base = pre
        .model_dir
        .ok_or_else(|| PipelineError::stage("pretrain", "no final model"))?;
    run.lap("pretrain");
    Ok(base)
}

/// Stage 5: Prompt-masked SFT of the base model on the chat-rendered problems (design §3.1). Returns the SFT model.
pub(crate) fn sft(run: &mut Run, base: &Path, tokenizer_json: &Path) -> Result<PathBuf> {
    run.log("sft: prompt-masked SFT, MTP tuned");
    let mut extra = toml_table(&format!(
        "mode = \"sft\"\nseed = {}\nforce = true\n[model]\ninit = {}\n[data]\npath = {}\ntokenizer = {}",
        run.args.seed,
        pstr(base),
        pstr(&run.train_jsonl()),
        pstr(tokenizer_json)
    ))?;
    extra.insert("out".into(), pstr(&run.out.join("sft")));
    let sft = mimo_train::train(&train_args(run.out, "sft", &run.args.sft, extra)?)?;
    let dir = sft
        .model_dir
        .ok_or_else(|| PipelineError::stage("sft", "no final model"))?;
    run.lap("sft");
    Ok(dir)
}

/// The held-out math problems the evaluations use (`eval.kinds`, at most `eval.problems`).
pub(crate) fn heldout_problems(run: &Run) -> Result<Vec<Problem>> {
    let path = run.data.join("synth").join("heldout.jsonl");
    Ok(load_problems(&path, &run.args.eval.kinds)?
        .into_iter()
        .filter(|p| !p.is_code())
        .take(run.args.eval.problems)
        .collect())
}

/// An engine for the evaluations: f32 on the CPU, 512-token context.
fn eval_engine(dir: &Path, mtp: usize, max_num_seqs: usize) -> Result<Loaded> {
    let cfg = EngineConfig {
        max_num_seqs,
        mtp_drafts: mtp,
        max_model_len: Some(512),
        ..Default::default()
    };
    Ok(Loaded::open(
        dir,
        mimo_model::WeightFormat::float(DType::F32),
        &Device::Cpu,
        cfg,
    )?)
}

/// Held-out pass@1 of one checkpoint from `k` samples per problem, the fraction of samples with a `\boxed{}`
/// answer and their mean completion tokens; the samples go to `samples_out`.
pub(crate) fn eval_model(
    dir: &Path,
    problems: &[Problem],
    e: &EvalSection,
    k: usize,
    seed: u64,
    samples_out: &Path,
) -> Result<(EvalReport, f64, f64)> {
    let mut l = eval_engine(dir, 0, 64)?;
    let opts = EvalOptions {
        k,
        temperature: e.temperature,
        top_p: e.top_p,
        max_tokens: e.max_tokens,
        seed,
        instruction: String::new(),
        ..Default::default()
    };
    let (engine, text) = l.engine_and_text()?;
    let report = evaluate(engine, text, problems, &opts)?;
    let rows: Vec<serde_json::Value> = report
        .samples
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    jsonl(samples_out, &rows)?;
    let n = report.samples.len().max(1) as f64;
    let boxed = report
        .samples
        .iter()
        .filter(|s| s.text.contains("\\boxed{"))
        .count() as f64
        / n;
    let tokens = report
        .samples
        .iter()
        .map(|s| s.completion_tokens as f64)
        .sum::<f64>()
        / n;
    Ok((report, boxed, tokens))
}

/// Greedy MTP (k = 1) acceptance over the first `n` held-out prompts (design §1.6).
pub(crate) fn mtp_acceptance(
    dir: &Path,
    problems: &[Problem],
    n: usize,
    max_tokens: usize,
) -> Result<f64> {
    let mut l = eval_engine(dir, 1, 32)?;
    let (engine, text) = l.engine_and_text()?;
    for p in problems.iter().take(n) {
        let ids = text.user_prompt_ids(&p.prompt)?;
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

/// Stage 7: GRPO with the Seamless Rollout Engine from the SFT model (design §3.3–§4.1). Returns the RL report,
/// every step's metrics and the arguments it ran with.
pub(crate) fn rl(run: &mut Run, sft: &Path) -> Result<(RlReport, Vec<RlStepMetrics>, RlArgs)> {
    run.log("rl: GRPO with the Seamless Rollout Engine");
    let mut table = run.args.rl.clone();
    let mut extra = toml::Table::new();
    extra.insert("seed".into(), toml::Value::Integer(run.args.seed as i64));
    extra.insert("out".into(), pstr(&run.out.join("rl")));
    extra.insert("model".into(), pstr(sft));
    extra.insert("data".into(), pstr(&run.train_jsonl()));
    extra.insert("force".into(), toml::Value::Boolean(true));
    merge(&mut table, extra);
    write(
        &run.out.join("rl.toml"),
        &toml::to_string(&table).map_err(|e| PipelineError::Config(e.to_string()))?,
    )?;
    let args: RlArgs = table
        .try_into()
        .map_err(|e| PipelineError::Config(format!("[rl]: {e}")))?;
    let mut steps: Vec<RlStepMetrics> = vec![];
    let report = run_rl(&args, |m| steps.push(m.clone()))?;
    run.lap("rl");
    Ok((report, steps, args))
}

/// The rollout benchmark's results on both devices.
pub(crate) struct BenchResults {
    pub seamless: Vec<RolloutStats>,
    pub naive: Vec<RolloutStats>,
    pub same: bool,
    pub speedup: f64,
    pub sim_device: SimDevice,
    pub sim_seamless: Vec<RolloutStats>,
    pub sim_naive: Vec<RolloutStats>,
    pub sim_same: bool,
    pub sim_speedup: f64,
}

/// Stage 8: Seamless vs naive rollout (paper Table 2) on this CPU with the SFT model, then on the simulated
/// GPU-like device with the problem mix the RL stage measured.
pub(crate) fn bench(
    run: &mut Run,
    sft: &Path,
    kinds: &[String],
    rl_steps: &[RlStepMetrics],
) -> Result<BenchResults> {
    run.log("bench: seamless vs naive rollout on a skewed-length workload");
    let b = &run.args.bench;
    let (seamless, naive, same) = rollout_bench(sft, &run.train_jsonl(), kinds, b, run.args.seed)?;
    let wall = |v: &[RolloutStats]| v.iter().map(|s| s.wall_s).sum::<f64>();
    let speedup = wall(&naive) / wall(&seamless).max(1e-9);
    run.log(&format!(
        "  speedup {speedup:.2}× on this CPU (identical batches: {same})"
    ));
    let sim_bench = BenchSection {
        steps: b.steps.max(3),
        ..b.clone()
    };
    // The simulated problems fail, pass or split in the proportions the RL stage's groups did.
    let sim_device = SimDevice::with_measured_mix(rl_steps.iter().map(|m| &m.rollout));
    run.log(&format!(
        "  simulated problem mix from the RL stage: {:.0} % always fail, {:.0} % always pass",
        100.0 * sim_device.always_fail,
        100.0 * sim_device.always_pass
    ));
    let (sim_seamless, sim_naive, sim_same) =
        rollout_bench_simulated(&sim_bench, sim_device, run.args.seed)?;
    let sim_speedup = wall(&sim_naive) / wall(&sim_seamless).max(1e-9);
    run.log(&format!(
        "  speedup {sim_speedup:.2}× on the simulated GPU-like device (identical batches: {sim_same})"
    ));
    run.lap("bench");
    Ok(BenchResults {
        seamless,
        naive,
        same,
        speedup,
        sim_device,
        sim_seamless,
        sim_naive,
        sim_same,
        sim_speedup,
    })
}
