//! The rollout-engine benchmark (design §4.1, Table 2): seamless vs naive dynamic sampling on a workload with
//! skewed response lengths, same weights, same problems, same request seeds, so both modes select the same
//! batches and only the time differs.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use mimo_engine::engine::{Engine, EngineConfig};
use mimo_model::MimoModel;
use mimo_reward::{load_problems, Check, Problem, RewardSettings};
use mimo_text::ModelText;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rollout::{
    EngineGenerator, Finished, Generator, LengthSkew, RolloutArgs, RolloutEngine, RolloutMode,
    RolloutStats,
};
use crate::sampler::ProblemSampler;

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

impl BenchSection {
    /// The rollout settings of one benchmark mode: no easy pool, every request `short` or `long` tokens.
    fn rollout_args(&self, mode: RolloutMode) -> RolloutArgs {
        RolloutArgs {
            mode,
            groups: self.groups,
            group_size: self.group_size,
            max_tokens: self.long,
            easy_alpha: 0.0,
            length_skew: Some(LengthSkew {
                short: self.short,
                long: self.long,
                long_fraction: self.long_fraction,
            }),
            ..Default::default()
        }
    }
}

/// Seamless vs naive on a skewed-length workload, same weights and request seeds: every rollout runs to a
/// length drawn per request (`short`, or `long` with probability `long_fraction`; EOS does not stop it, so
/// `short` should exceed the model's natural response length) and is rewarded on its text up to the first EOS.
/// Returns per-step stats of both modes and whether they selected the same batches.
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
    let prompts = problems
        .iter()
        .map(|p| text.user_prompt_ids(&p.user_message("")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let n = problems.len();
    let capacity = b.groups * b.group_size;
    let mut results = (vec![], vec![]);
    let mut same = true;
    let mut engines = vec![];
    for mode in [RolloutMode::Seamless, RolloutMode::Naive] {
        let tok = text.tokenizer.clone();
        let eos = text.eos_ids.clone();
        let args = b.rollout_args(mode);
        engines.push(RolloutEngine::new(
            args,
            problems.clone(),
            prompts.clone(),
            RewardSettings::default(),
            seed,
            // The reward sees the response up to its first EOS: the tokens generated past it only stretch the
            // rollout to the workload's length, they do not change its correctness.
            Box::new(move |ids: &[u32]| {
                let end = ids
                    .iter()
                    .position(|t| eos.contains(t))
                    .unwrap_or(ids.len());
                tok.decode(&ids[..end], true).unwrap_or_default()
            }),
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

/// The device model of the simulated benchmark: a decode step costs `step_ms` whatever the batch (decode on a
/// GPU is memory-bound, so a step over 1 or 64 sequences costs about the same), and each reward takes
/// `reward_ms` on one of `reward_workers` workers (a code sandbox or reward server).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimDevice {
    pub step_ms: f64,
    pub reward_ms: f64,
    pub reward_workers: usize,
    /// Problem difficulty mix: fractions that always fail and always pass (the rest pass half the time).
    pub always_fail: f64,
    pub always_pass: f64,
    pub problems: usize,
}

impl SimDevice {
    /// The default cost model with the problem mix measured in real rollouts: the shares of finished groups
    /// that were all-fail and all-pass over `stats` (e.g. the RL stage's steps). Falls back to the default
    /// mix when `stats` saw no finished group.
    pub fn with_measured_mix<'a>(stats: impl IntoIterator<Item = &'a RolloutStats>) -> Self {
        let (mut fail, mut pass, mut finished) = (0usize, 0usize, 0usize);
        for s in stats {
            fail += s.groups_all_fail;
            pass += s.groups_all_pass;
            finished += s.tasks_finished;
        }
        let d = Self::default();
        if finished == 0 {
            return d;
        }
        Self {
            always_fail: fail as f64 / finished as f64,
            always_pass: pass as f64 / finished as f64,
            ..d
        }
    }
}

impl Default for SimDevice {
    fn default() -> Self {
        Self {
            step_ms: 2.0,
            reward_ms: 20.0,
            reward_workers: 4,
            always_fail: 0.3,
            always_pass: 0.2,
            problems: 512,
        }
    }
}

/// A generator with [`SimDevice`]'s cost model: FIFO admission up to `capacity`, one token per running request
/// per step, each request exactly `max_tokens` long. Its one-token answer depends on the problem's difficulty
/// (the first prompt token) and the request seed.
struct SimGenerator {
    dev: SimDevice,
    capacity: usize,
    queue: std::collections::VecDeque<(u64, u32, u64, usize)>,
    running: Vec<(u64, u32, u64, usize, usize)>,
    next: u64,
}

impl Generator for SimGenerator {
    fn submit(&mut self, prompt: &[u32], p: mimo_engine::SamplingParams) -> Result<u64> {
        self.next += 1;
        let problem = prompt.first().copied().unwrap_or(0);
        self.queue
            .push_back((self.next, problem, p.seed.unwrap_or(0), p.max_tokens));
        Ok(self.next)
    }
    fn step(&mut self) -> Result<Vec<Finished>> {
        while self.running.len() < self.capacity {
            let Some((id, problem, seed, len)) = self.queue.pop_front() else {
                break;
            };
            self.running.push((id, problem, seed, len, 0));
        }
        if !self.running.is_empty() {
            std::thread::sleep(std::time::Duration::from_secs_f64(
                self.dev.step_ms / 1000.0,
            ));
        }
        let dev = self.dev;
        let mut done = vec![];
        self.running.retain_mut(|(id, problem, seed, len, n)| {
            *n += 1;
            if *n < *len {
                return true;
            }
            let u = (*problem as f64 + 0.5) / dev.problems as f64;
            let p = if u < dev.always_fail {
                0.0
            } else if u < dev.always_fail + dev.always_pass {
                1.0
            } else {
                0.5
            };
            let coin = (*seed >> 11) as f64 / (1u64 << 53) as f64;
            done.push(Finished::new(*id, vec![if coin < p { 1 } else { 0 }; *len]));
            false
        });
        Ok(done)
    }
    fn abort(&mut self, id: u64) -> usize {
        self.queue.retain(|q| q.0 != id);
        let n = self.running.iter().find(|r| r.0 == id).map_or(0, |r| r.4);
        self.running.retain(|r| r.0 != id);
        n
    }
    fn has_work(&self) -> bool {
        !self.queue.is_empty() || !self.running.is_empty()
    }
    fn running(&self) -> usize {
        self.running.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The same comparison as [`rollout_bench`] on [`SimDevice`]'s cost model instead of this CPU (where a decode
/// step costs in proportion to the batch, so idle slots are free and continuous rollout has nothing to fill):
/// the scheduling algorithms are the real ones, only generation and reward timing are modelled.
pub fn rollout_bench_simulated(
    b: &BenchSection,
    dev: SimDevice,
    seed: u64,
) -> Result<(Vec<RolloutStats>, Vec<RolloutStats>, bool)> {
    let problems: Vec<Problem> = (0..dev.problems)
        .map(|i| Problem {
            id: format!("sim-{i}"),
            kind: None,
            prompt: String::new(),
            check: Check::Math { answer: "1".into() },
        })
        .collect();
    let prompts: Vec<Vec<u32>> = (0..dev.problems as u32).map(|i| vec![i]).collect();
    let capacity = b.groups * b.group_size;
    let mut out = (vec![], vec![]);
    let mut same = true;
    for step in 0..b.steps {
        let mut batches = vec![];
        for mode in [RolloutMode::Seamless, RolloutMode::Naive] {
            let args = RolloutArgs {
                reward_workers: dev.reward_workers,
                ..b.rollout_args(mode)
            };
            let settings = RewardSettings {
                latency: std::time::Duration::from_secs_f64(dev.reward_ms / 1000.0),
                ..Default::default()
            };
            let mut re = RolloutEngine::new(
                args,
                problems.clone(),
                prompts.clone(),
                settings,
                seed,
                Box::new(|ids: &[u32]| format!("\\boxed{{{}}}", ids.first().copied().unwrap_or(0))),
            )?;
            re.set_step(step as u64);
            re.sampler = ProblemSampler::new(dev.problems, 0.0, seed.wrapping_add(step as u64));
            let mut gen = SimGenerator {
                dev,
                capacity,
                queue: Default::default(),
                running: vec![],
                next: 0,
            };
            let (groups, st) = re.collect(&mut gen)?;
            batches.push(
                groups
                    .iter()
                    .map(|g| (g.problem, g.rewards.clone()))
                    .collect::<Vec<_>>(),
            );
            if mode == RolloutMode::Seamless {
                out.0.push(st);
            } else {
                out.1.push(st);
            }
        }
        same &= batches[0] == batches[1];
    }
    Ok((out.0, out.1, same))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_mix_is_the_share_of_degenerate_groups() {
        let st = |finished, fail, pass| RolloutStats {
            tasks_finished: finished,
            groups_all_fail: fail,
            groups_all_pass: pass,
            ..Default::default()
        };
        let d = SimDevice::with_measured_mix(&[st(10, 6, 1), st(30, 18, 5)]);
        assert!((d.always_fail - 0.6).abs() < 1e-12);
        assert!((d.always_pass - 0.15).abs() < 1e-12);
        assert_eq!(d.step_ms, SimDevice::default().step_ms);
        assert_eq!(SimDevice::with_measured_mix(&[]), SimDevice::default());
    }
}
