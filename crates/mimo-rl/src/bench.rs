//! The rollout-engine benchmark (spec §4.1, Table 2): seamless vs naive dynamic sampling on a workload with
//! skewed response lengths, same weights, same problems, same request seeds, so both modes select the same
//! batches and only the time differs.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use mimo_engine::engine::{Engine, EngineConfig};
use mimo_engine::{ChatMessage, ModelText};
use mimo_model::MimoModel;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::problem::load_problems;
use crate::rollout::{
    EngineGenerator, LengthSkew, RolloutArgs, RolloutEngine, RolloutMode, RolloutStats,
};
use crate::sampler::ProblemSampler;
use crate::RewardSettings;

/// Renders every problem as a chat prompt (user message = problem + instruction) and tokenizes it.
pub fn render_prompts(
    text: &ModelText,
    prompts: &[String],
    instruction: &str,
) -> Result<Vec<Vec<u32>>> {
    prompts
        .iter()
        .map(|p| {
            let s = text.chat_template.render(
                &[ChatMessage::new("user", format!("{p}{instruction}"))],
                true,
            )?;
            Ok(text.tokenizer.encode(&s, false)?)
        })
        .collect()
}

/// `[bench]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    pub steps: usize,
    pub groups: usize,
    pub group_size: usize,
    pub short: usize,
    pub long: usize,
    pub long_fraction: f64,
}

/// Seamless vs naive on a skewed-length workload (EOS ignored, lengths drawn per rollout), same weights and
/// request seeds: returns per-step stats of both modes.
pub fn rollout_bench(
    model_dir: &Path,
    data: &Path,
    kinds: &[String],
    b: &BenchSection,
    seed: u64,
) -> Result<(Vec<RolloutStats>, Vec<RolloutStats>, bool)> {
    let text = ModelText::load(model_dir)?;
    let model = Arc::new(MimoModel::from_dir(model_dir, DType::F32, &Device::Cpu)?);
    let problems = load_problems(data, kinds)?;
    let prompts = render_prompts(
        &text,
        &problems
            .iter()
            .map(|p| p.prompt.clone())
            .collect::<Vec<_>>(),
        "",
    )?;
    let n = problems.len();
    let capacity = b.groups * b.group_size;
    let mut results = (vec![], vec![]);
    let mut same = true;
    let mut engines = vec![];
    for mode in [RolloutMode::Seamless, RolloutMode::Naive] {
        let tok = text.tokenizer.clone();
        let args = RolloutArgs {
            mode,
            groups: b.groups,
            group_size: b.group_size,
            max_tokens: b.long,
            easy_alpha: 0.0,
            length_skew: Some(LengthSkew {
                short: b.short,
                long: b.long,
                long_fraction: b.long_fraction,
            }),
            ..Default::default()
        };
        engines.push(RolloutEngine::new(
            args,
            problems.clone(),
            prompts.clone(),
            RewardSettings::default(),
            seed,
            Box::new(move |ids: &[u32]| tok.decode(ids, true).unwrap_or_default()),
        )?);
    }
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + b.long + 8;
    for step in 0..b.steps {
        let mut batches = vec![];
        for (i, re) in engines.iter_mut().enumerate() {
            re.set_step(step as u64);
            re.sampler = ProblemSampler::new(n, 0.0, seed.wrapping_add(step as u64));
            // EOS ignored: response lengths are exactly the workload's.
            let mut engine = Engine::new(
                Arc::clone(&model),
                EngineConfig {
                    max_num_seqs: capacity,
                    eos_ids: vec![],
                    max_model_len: Some(max_len),
                    ..Default::default()
                },
            )?;
            let (groups, st) = re.collect(&mut EngineGenerator::new(&mut engine, capacity))?;
            batches.push(
                groups
                    .iter()
                    .map(|g| (g.problem, g.rewards.clone()))
                    .collect::<Vec<_>>(),
            );
            if i == 0 {
                results.0.push(st);
            } else {
                results.1.push(st);
            }
        }
        same &= batches[0] == batches[1];
    }
    Ok((results.0, results.1, same))
}
