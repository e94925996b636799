//! The Seamless Rollout Engine (design §4.1) and the `naive` dynamic-sampling baseline it is measured against.
//!
//! A *task* is one prompt rolled out `G` times (a GRPO group). One call of [`RolloutEngine::collect`] fills a
//! training batch of `B` valid groups (rewards not all equal, [`is_valid_group`]):
//!
//! * **Seamless** — continuous rollout: no barrier between generation and reward; a rollout is sent to the
//!   reward workers the moment it finishes, and a new task is launched only while the tasks in flight are
//!   predicted to be insufficient (`valid + p̂ · in_flight < B`, `p̂` the running valid rate). Asynchronous
//!   reward: a worker pool separate from generation scores rollouts while decoding goes on. Early termination,
//!   FIFO: valid groups are selected in launch order; in-flight work is aborted only once `B` valid groups exist
//!   **and** every task launched before the last selected one has finished, so long responses are not biased
//!   against.
//! * **Naive** — launch a round of `B` tasks, generate all of them, then reward all of them, then filter; repeat
//!   until `B` valid groups exist; take the first `B` in launch order.
//!
//! Both modes draw problems in the same order and seed every request by (seed, step, task, rollout), so on the
//! same weights they select the same groups with the same responses; only the time differs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mimo_engine::engine::{Engine, EngineError, FinishReason};
use mimo_engine::SamplingParams;
use mimo_reward::{group_rewards, score, Problem, RewardSettings, Score, TestHistory};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};
use crate::sampler::{is_valid_group, Origin, ProblemSampler};

/// A request that finished: its completion tokens and the log-prob each was sampled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub id: u64,
    pub tokens: Vec<u32>,
    /// One per token (the sampler's distribution at the request's temperature, before top-p truncation), or
    /// empty when the generator does not report them.
    pub logprobs: Vec<f32>,
}

impl Finished {
    /// A finished request without log-probs.
    pub fn new(id: u64, tokens: Vec<u32>) -> Self {
        Self {
            id,
            tokens,
            logprobs: vec![],
        }
    }
}

/// What the rollout engine needs from a generator (the candle [`Engine`], or a scripted one in tests).
pub trait Generator {
    /// Queues one request.
    fn submit(&mut self, prompt: &[u32], params: SamplingParams) -> Result<u64>;
    /// One decoding step; returns the requests that finished, with their completion tokens.
    fn step(&mut self) -> Result<Vec<Finished>>;
    /// Drops a request; returns how many tokens it had generated.
    fn abort(&mut self, id: u64) -> usize;
    /// True while requests are queued or running.
    fn has_work(&self) -> bool;
    /// Sequences decoding now.
    fn running(&self) -> usize;
    /// Most sequences decoded at once.
    fn capacity(&self) -> usize;
}

/// [`Generator`] over the candle engine.
pub struct EngineGenerator<'a> {
    pub engine: &'a mut Engine,
    pub capacity: usize,
    partial: HashMap<u64, Finished>,
}

impl<'a> EngineGenerator<'a> {
    /// Wraps `engine`, whose `max_num_seqs` is `capacity`.
    pub fn new(engine: &'a mut Engine, capacity: usize) -> Self {
        Self {
            engine,
            capacity,
            partial: HashMap::new(),
        }
    }
}

impl Generator for EngineGenerator<'_> {
    fn submit(&mut self, prompt: &[u32], params: SamplingParams) -> Result<u64> {
        Ok(self.engine.add_request(prompt.to_vec(), params)?)
    }
    fn step(&mut self) -> Result<Vec<Finished>> {
        let mut done = vec![];
        for o in self.engine.step()? {
            if o.finish == Some(FinishReason::Error) {
                // E.g. NaN logits: the policy is broken; training on a truncated rollout would hide it.
                self.partial.remove(&o.id);
                return Err(EngineError::Sequence {
                    id: o.id,
                    message: o.error.unwrap_or_default(),
                }
                .into());
            }
            let f = self
                .partial
                .entry(o.id)
                .or_insert_with(|| Finished::new(o.id, vec![]));
            f.tokens.extend(&o.tokens);
            f.logprobs.extend(o.logprobs.iter().map(|l| l.logprob));
            if o.finish.is_some() {
                done.extend(self.partial.remove(&o.id));
            }
        }
        Ok(done)
    }
    fn abort(&mut self, id: u64) -> usize {
        self.engine.abort(id);
        self.partial.remove(&id).map_or(0, |f| f.tokens.len())
    }
    fn has_work(&self) -> bool {
        self.engine.has_work()
    }
    fn running(&self) -> usize {
        self.engine.num_running()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Rollout scheduling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RolloutMode {
    #[default]
    Seamless,
    Naive,
}

/// A benchmark workload with skewed response lengths: a rollout is long with probability `long_fraction`
/// (deterministic per request), and EOS should be ignored by the generator so lengths are exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LengthSkew {
    pub short: usize,
    pub long: usize,
    pub long_fraction: f64,
}

/// Rollout settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutArgs {
    pub mode: RolloutMode,
    /// Valid groups per training batch (B).
    pub groups: usize,
    /// Rollouts per prompt (G).
    pub group_size: usize,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Reward worker threads.
    pub reward_workers: usize,
    /// Easy-pool re-sampling probability α.
    pub easy_alpha: f64,
    /// Upper bound on tasks in flight (seamless); 0 = 4·B.
    pub max_inflight: usize,
    /// Tasks per naive round; 0 = B.
    pub naive_round: usize,
    /// Give up on a step after this many tasks without filling the batch (0 = 50·B).
    pub max_tasks_per_step: usize,
    pub length_skew: Option<LengthSkew>,
}

impl Default for RolloutArgs {
    fn default() -> Self {
        Self {
            mode: RolloutMode::Seamless,
            groups: 8,
            group_size: 8,
            max_tokens: 160,
            temperature: 1.0,
            top_p: 1.0,
            reward_workers: 1,
            easy_alpha: 0.1,
            max_inflight: 0,
            naive_round: 0,
            max_tasks_per_step: 0,
            length_skew: None,
        }
    }
}

impl RolloutArgs {
    /// Tasks a step may launch before it gives up (`max_tasks_per_step`, 0 = 50·B).
    fn task_limit(&self) -> usize {
        match self.max_tasks_per_step {
            0 => 50 * self.groups,
            n => n,
        }
    }

    /// Tasks in flight at most in seamless mode (`max_inflight`, 0 = 4·B).
    fn inflight_limit(&self) -> usize {
        match self.max_inflight {
            0 => 4 * self.groups,
            n => n,
        }
    }

    /// Tasks per naive round (`naive_round`, 0 = B).
    fn round_size(&self) -> usize {
        match self.naive_round {
            0 => self.groups,
            n => n,
        }
    }
}

/// One selected group, ready for the GRPO update.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOut {
    pub problem: usize,
    pub origin: Origin,
    /// Launch order within the step.
    pub seq: usize,
    pub prompt: Vec<u32>,
    pub responses: Vec<Vec<u32>>,
    /// Per response, the engine's log-prob of each token (empty when the generator gave none).
    #[serde(skip)]
    pub logprobs: Vec<Vec<f32>>,
    pub texts: Vec<String>,
    pub rewards: Vec<f64>,
}

/// Timings and counts of one step (the paper's Table 2 columns).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RolloutStats {
    pub mode: String,
    pub wall_s: f64,
    /// Time inside generation steps.
    pub generate_s: f64,
    /// Time the generator had nothing to do while the step was not over (waiting for rewards).
    pub reward_wait_s: f64,
    /// 1 − (Σ running · dt) / (capacity · wall): the share of decode slots left empty.
    pub idle_fraction: f64,
    pub tasks_launched: usize,
    pub tasks_finished: usize,
    pub tasks_aborted: usize,
    /// Launch-order indices of the aborted tasks.
    pub aborted: Vec<usize>,
    pub valid_groups: usize,
    /// Finished groups whose rewards were all 0 (nothing to learn, dropped by dynamic sampling).
    #[serde(default)]
    pub groups_all_fail: usize,
    /// Finished groups whose rewards were all 1 (dropped too; the problem joins the easy pool).
    #[serde(default)]
    pub groups_all_pass: usize,
    /// Mean reward over every finished group (the step's pass rate for 0/1 rewards).
    pub mean_reward: f64,
    pub tokens_generated: usize,
    /// Tokens of rollouts that did not end up in the batch, over all generated tokens.
    pub token_waste: f64,
    /// Rollouts generated (finished or aborted with tokens) that did not end up in the batch, over all.
    pub sample_waste: f64,
    pub easy_pool: usize,
    /// The batch could not be filled within `max_tasks_per_step`.
    pub short: bool,
}

struct Job {
    step: u64,
    task: usize,
    rollout: usize,
    problem: Arc<Problem>,
    text: String,
}

/// (step, task, rollout, score).
type Scored = (u64, usize, usize, Score);

/// A pool of reward threads, separate from generation.
struct RewardPool {
    tx: Option<Sender<Job>>,
    rx: Receiver<Scored>,
    handles: Vec<JoinHandle<()>>,
}

impl RewardPool {
    fn new(workers: usize, settings: Arc<RewardSettings>, current: Arc<AtomicU64>) -> Self {
        let (tx, job_rx) = mpsc::channel::<Job>();
        let (out_tx, rx) = mpsc::channel::<Scored>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let handles = (0..workers.max(1))
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let out_tx = out_tx.clone();
                let settings = Arc::clone(&settings);
                let current = Arc::clone(&current);
                std::thread::spawn(move || loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        },
                        Err(_) => return,
                    };
                    // Jobs of a step that already ended (aborted tasks) are skipped, not scored.
                    if job.step != current.load(Ordering::Acquire) {
                        continue;
                    }
                    let score = score(&job.problem, &job.text, &settings);
                    if out_tx
                        .send((job.step, job.task, job.rollout, score))
                        .is_err()
                    {
                        return;
                    }
                })
            })
            .collect();
        Self {
            tx: Some(tx),
            rx,
            handles,
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| RlError::Data("reward workers stopped".into()))
    }
}

impl Drop for RewardPool {
    fn drop(&mut self) {
        self.tx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[derive(Debug, PartialEq)]
enum TaskState {
    Running,
    Done { valid: bool },
    Aborted,
}

struct Task {
    problem: usize,
    origin: Origin,
    /// Engine request id per rollout (None once finished or aborted).
    requests: Vec<Option<u64>>,
    responses: Vec<Option<Vec<u32>>>,
    logprobs: Vec<Vec<f32>>,
    /// Tokens generated per rollout (finished or aborted).
    rollout_tokens: Vec<usize>,
    texts: Vec<String>,
    scores: Vec<Option<Score>>,
    rewards: Vec<f64>,
    state: TaskState,
}

/// The state of one [`RolloutEngine::collect`] call, shared by both modes.
struct StepState {
    /// Tasks in launch order.
    tasks: Vec<Task>,
    /// Engine request id → (task, rollout).
    owner: HashMap<u64, (usize, usize)>,
    /// Problems that reached pass rate 1. They join the easy pool when the step ends, so the order problems are
    /// drawn in within a step does not depend on the mode's timing.
    easy: Vec<usize>,
    stats: RolloutStats,
    /// Σ running · dt over generation steps: the decode-slot time in use.
    slot_time: f64,
}

impl StepState {
    fn new(mode: RolloutMode) -> Self {
        Self {
            tasks: vec![],
            owner: HashMap::new(),
            easy: vec![],
            stats: RolloutStats {
                mode: format!("{mode:?}").to_lowercase(),
                ..Default::default()
            },
            slot_time: 0.0,
        }
    }

    /// Tasks in `state`.
    fn count(&self, state: &TaskState) -> usize {
        self.tasks.iter().filter(|t| t.state == *state).count()
    }

    /// Launch-order indices of the valid finished tasks.
    fn valid_tasks(&self) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&i| self.tasks[i].state == TaskState::Done { valid: true })
            .collect()
    }

    /// One timed generation step; returns the finished requests.
    fn generate(&mut self, gen: &mut dyn Generator) -> Result<Vec<Finished>> {
        let running = gen.running();
        let t0 = Instant::now();
        let done = gen.step();
        let dt = t0.elapsed().as_secs_f64();
        self.stats.generate_s += dt;
        self.slot_time += running.max(gen.running()) as f64 * dt;
        done
    }

    /// Early termination: aborts whatever is still in flight, keeping the tokens it had generated for the
    /// waste accounting.
    fn abort_in_flight(&mut self, gen: &mut dyn Generator) {
        for (i, t) in self.tasks.iter_mut().enumerate() {
            if t.state == TaskState::Running {
                self.stats.aborted.push(i);
                for (r, req) in t.requests.iter_mut().enumerate() {
                    if let Some(id) = req.take() {
                        t.rollout_tokens[r] = gen.abort(id);
                    }
                }
                t.state = TaskState::Aborted;
                self.stats.tasks_aborted += 1;
            }
        }
    }

    /// Fills the step's timings, counts, rewards and waste (all but the easy-pool size) given the `selected`
    /// tasks.
    fn finish_stats(&mut self, selected: &[usize], wall_s: f64, capacity: usize) {
        let (st, tasks) = (&mut self.stats, &self.tasks);
        st.wall_s = wall_s;
        st.idle_fraction = 1.0 - self.slot_time / (capacity.max(1) as f64 * st.wall_s.max(1e-9));
        st.tasks_launched = tasks.len();
        let finished: Vec<&Task> = tasks
            .iter()
            .filter(|t| matches!(t.state, TaskState::Done { .. }))
            .collect();
        st.tasks_finished = finished.len();
        let all = |t: &Task, v: f64| !t.rewards.is_empty() && t.rewards.iter().all(|&r| r == v);
        st.groups_all_fail = finished.iter().filter(|t| all(t, 0.0)).count();
        st.groups_all_pass = finished.iter().filter(|t| all(t, 1.0)).count();
        st.valid_groups = selected.len();
        st.mean_reward = if finished.is_empty() {
            0.0
        } else {
            finished
                .iter()
                .map(|t| t.rewards.iter().sum::<f64>() / t.rewards.len() as f64)
                .sum::<f64>()
                / finished.len() as f64
        };
        let tokens = |t: &Task| t.rollout_tokens.iter().sum::<usize>();
        let samples = |t: &Task| t.rollout_tokens.iter().filter(|&&n| n > 0).count();
        st.tokens_generated = tasks.iter().map(tokens).sum();
        let used_tokens: usize = selected.iter().map(|&i| tokens(&tasks[i])).sum();
        st.token_waste = 1.0 - used_tokens as f64 / st.tokens_generated.max(1) as f64;
        let all_samples: usize = tasks.iter().map(samples).sum();
        let used_samples: usize = selected.iter().map(|&i| samples(&tasks[i])).sum();
        st.sample_waste = 1.0 - used_samples as f64 / all_samples.max(1) as f64;
    }

    /// Moves the `selected` tasks out as training groups.
    fn take_groups(&mut self, selected: Vec<usize>, prompts: &[Vec<u32>]) -> Vec<GroupOut> {
        selected
            .into_iter()
            .map(|i| {
                let t = &mut self.tasks[i];
                GroupOut {
                    problem: t.problem,
                    origin: t.origin,
                    seq: i,
                    prompt: prompts[t.problem].clone(),
                    responses: t
                        .responses
                        .iter_mut()
                        .map(|r| r.take().unwrap_or_default())
                        .collect(),
                    logprobs: std::mem::take(&mut t.logprobs),
                    texts: std::mem::take(&mut t.texts),
                    rewards: std::mem::take(&mut t.rewards),
                }
            })
            .collect()
    }
}

/// Token ids → response text (the reward sees text).
pub type Decode = Box<dyn Fn(&[u32]) -> String + Send>;

/// The rollout engine: problems, prompts, the sampler with its easy pool, per-problem test histories and the
/// reward workers. The generator (with the current policy weights) is passed to every [`collect`] call.
///
/// [`collect`]: RolloutEngine::collect
pub struct RolloutEngine {
    pub args: RolloutArgs,
    problems: Vec<Arc<Problem>>,
    prompts: Vec<Vec<u32>>,
    pub sampler: ProblemSampler,
    histories: HashMap<usize, TestHistory>,
    settings: Arc<RewardSettings>,
    pool: RewardPool,
    /// The step whose reward jobs the workers still score.
    current: Arc<AtomicU64>,
    seed: u64,
    step: u64,
    valid_seen: u64,
    groups_seen: u64,
    decode: Decode,
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl RolloutEngine {
    /// A rollout engine over `problems` with their tokenized prompts; `decode` turns completion tokens into text
    /// for the reward.
    pub fn new(
        args: RolloutArgs,
        problems: Vec<Problem>,
        prompts: Vec<Vec<u32>>,
        settings: RewardSettings,
        seed: u64,
        decode: Decode,
    ) -> Result<Self> {
        if problems.len() != prompts.len() || problems.is_empty() {
            return Err(RlError::Config(format!(
                "{} problems but {} prompts (need the same number, > 0)",
                problems.len(),
                prompts.len()
            )));
        }
        if args.groups == 0 || args.group_size < 2 || args.max_tokens == 0 {
            return Err(RlError::Config(
                "rollout.groups must be > 0, rollout.group_size ≥ 2 and rollout.max_tokens > 0"
                    .into(),
            ));
        }
        let settings = Arc::new(settings);
        let current = Arc::new(AtomicU64::new(0));
        Ok(Self {
            sampler: ProblemSampler::new(problems.len(), args.easy_alpha, seed),
            pool: RewardPool::new(
                args.reward_workers,
                Arc::clone(&settings),
                Arc::clone(&current),
            ),
            current,
            problems: problems.into_iter().map(Arc::new).collect(),
            prompts,
            histories: HashMap::new(),
            settings,
            seed,
            step: 0,
            valid_seen: 0,
            groups_seen: 0,
            decode,
            args,
        })
    }

    /// The problems.
    pub fn problems(&self) -> &[Arc<Problem>] {
        &self.problems
    }

    /// Sets the step counter (request seeds depend on it), e.g. when a benchmark replays one step in both modes.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    fn params(&self, task: usize, rollout: usize) -> SamplingParams {
        let h = mix(self.seed
            ^ mix(self.step.wrapping_mul(0x1_0000_0001) ^ mix(task as u64 * 131 + rollout as u64)));
        let max_tokens = match self.args.length_skew {
            Some(s) if ((h >> 11) as f64 / (1u64 << 53) as f64) < s.long_fraction => s.long,
            Some(s) => s.short,
            None => self.args.max_tokens,
        };
        SamplingParams {
            temperature: self.args.temperature,
            top_p: self.args.top_p,
            max_tokens,
            seed: Some(h),
            // The sampled token's log-prob, for the trainer's mismatch correction.
            logprobs: Some(0),
            ..Default::default()
        }
    }

    /// Launches one task (the launch bookkeeping of both modes): draws a problem from the sampler (easy pool
    /// included), submits its `G` rollout requests seeded by (seed, step, task, rollout), and records which task
    /// and rollout slot each request fills.
    fn launch(&mut self, gen: &mut dyn Generator, s: &mut StepState) -> Result<()> {
        let (problem, origin) = self.sampler.draw();
        let seq = s.tasks.len();
        let g = self.args.group_size;
        let mut requests = Vec::with_capacity(g);
        for r in 0..g {
            let id = gen.submit(&self.prompts[problem], self.params(seq, r))?;
            s.owner.insert(id, (seq, r));
            requests.push(Some(id));
        }
        s.tasks.push(Task {
            problem,
            origin,
            requests,
            responses: vec![None; g],
            logprobs: vec![vec![]; g],
            rollout_tokens: vec![0; g],
            texts: vec![String::new(); g],
            scores: vec![None; g],
            rewards: vec![],
            state: TaskState::Running,
        });
        Ok(())
    }

    /// Sends rollout `rollout` of task `task` (on `problem`) to the reward workers.
    fn send_reward(&self, task: usize, rollout: usize, problem: usize, text: String) -> Result<()> {
        self.pool.send(Job {
            step: self.step,
            task,
            rollout,
            problem: Arc::clone(&self.problems[problem]),
            text,
        })
    }

    /// Records finished generations; with asynchronous reward (seamless) they go to the reward workers at once.
    fn on_finished(&self, done: Vec<Finished>, s: &mut StepState, send_now: bool) -> Result<()> {
        for Finished {
            id,
            tokens,
            logprobs,
        } in done
        {
            let Some(&(t, r)) = s.owner.get(&id) else {
                continue;
            };
            let text = (self.decode)(&tokens);
            let task = &mut s.tasks[t];
            task.rollout_tokens[r] = tokens.len();
            task.requests[r] = None;
            task.texts[r] = text.clone();
            task.responses[r] = Some(tokens);
            task.logprobs[r] = logprobs;
            if send_now {
                self.send_reward(t, r, task.problem, text)?;
            }
        }
        Ok(())
    }

    /// Stores a score; when the group is complete, computes its rewards, validity (dynamic sampling) and
    /// easy-pool membership.
    fn on_scored(&mut self, (step, t, r, score): Scored, s: &mut StepState) {
        if step != self.step || t >= s.tasks.len() {
            return;
        }
        let task = &mut s.tasks[t];
        if task.state != TaskState::Running {
            return;
        }
        task.scores[r] = Some(score);
        if task.scores.iter().any(Option::is_none) {
            return;
        }
        let scores: Vec<Score> = task.scores.iter().flatten().cloned().collect();
        let problem = Arc::clone(&self.problems[task.problem]);
        let history = self.histories.entry(task.problem).or_default();
        if problem.is_code() {
            history.add(&scores.iter().collect::<Vec<_>>());
        }
        task.rewards = group_rewards(&problem, &scores, history, &self.settings);
        let valid = is_valid_group(&task.rewards);
        if scores.iter().all(|s| s.passed.iter().all(|&p| p)) {
            s.easy.push(task.problem);
        }
        self.groups_seen += 1;
        self.valid_seen += valid as u64;
        task.state = TaskState::Done { valid };
    }

    /// FIFO early termination: the first `B` valid tasks in launch order, once every task launched before the
    /// last of them has finished.
    fn fifo_selection(&self, tasks: &[Task]) -> Option<Vec<usize>> {
        let b = self.args.groups;
        let mut selected = Vec::with_capacity(b);
        for (i, t) in tasks.iter().enumerate() {
            match t.state {
                TaskState::Running => return None,
                TaskState::Done { valid: true } => {
                    selected.push(i);
                    if selected.len() == b {
                        return Some(selected);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Fills one training batch of `B` valid groups from `gen` in the configured [`RolloutMode`] (see the module
    /// docs), then aborts whatever is still in flight, moves perfect problems into the easy pool and fills the
    /// step's statistics.
    pub fn collect(&mut self, gen: &mut dyn Generator) -> Result<(Vec<GroupOut>, RolloutStats)> {
        let start = Instant::now();
        let mut s = StepState::new(self.args.mode);
        self.current.store(self.step, Ordering::Release);
        let selected = match self.args.mode {
            RolloutMode::Seamless => self.collect_seamless(gen, &mut s)?,
            RolloutMode::Naive => self.collect_naive(gen, &mut s)?,
        };
        s.abort_in_flight(gen);
        for &p in &s.easy {
            self.sampler.mark_easy(p);
        }
        let selected = match selected {
            Some(selected) => selected,
            None => {
                s.stats.short = true;
                s.valid_tasks()
            }
        };
        s.finish_stats(&selected, start.elapsed().as_secs_f64(), gen.capacity());
        s.stats.easy_pool = self.sampler.easy_pool_len();
        self.step += 1;
        self.current.store(self.step, Ordering::Release);
        let groups = s.take_groups(selected, &self.prompts);
        Ok((groups, s.stats))
    }

    /// The Seamless Rollout Engine. *Continuous rollout*: a new task is launched whenever the tasks in flight are
    /// predicted not to fill the batch (`valid + p̂ · in_flight < B`, `p̂` the running valid rate), with no barrier
    /// between generation and reward. *Asynchronous reward*: each finished rollout goes to the reward workers at
    /// once and scores are gathered between decode steps. *Early termination*: stops as soon as
    /// [`Self::fifo_selection`] holds `B` valid groups (dynamic sampling drops the invalid ones) and returns
    /// them; `None` once the task budget is spent and nothing is left in flight.
    fn collect_seamless(
        &mut self,
        gen: &mut dyn Generator,
        s: &mut StepState,
    ) -> Result<Option<Vec<usize>>> {
        let b = self.args.groups;
        let (max_inflight, max_tasks) = (self.args.inflight_limit(), self.args.task_limit());
        loop {
            if let Some(selected) = self.fifo_selection(&s.tasks) {
                return Ok(Some(selected));
            }
            // Launch only while the tasks in flight are predicted not to fill the batch.
            let p_valid = (self.valid_seen as f64 + 1.0) / (self.groups_seen as f64 + 2.0);
            loop {
                let valid = s.count(&TaskState::Done { valid: true });
                let in_flight = s.count(&TaskState::Running);
                let predicted = valid as f64 + p_valid * in_flight as f64;
                let at_limit = in_flight >= max_inflight || s.tasks.len() >= max_tasks;
                if predicted >= b as f64 || at_limit {
                    break;
                }
                self.launch(gen, s)?;
            }
            if gen.has_work() {
                let done = s.generate(gen)?;
                self.on_finished(done, s, true)?;
                while let Ok(scored) = self.pool.rx.try_recv() {
                    self.on_scored(scored, s);
                }
            } else if s.count(&TaskState::Running) > 0 {
                // Everything is generated; the generator idles until the reward workers catch up.
                let t0 = Instant::now();
                let got = self.pool.rx.recv_timeout(Duration::from_secs(60));
                s.stats.reward_wait_s += t0.elapsed().as_secs_f64();
                match got {
                    Ok(scored) => self.on_scored(scored, s),
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(RlError::Data("no reward result within 60 s".into()))
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(RlError::Data("reward workers stopped".into()))
                    }
                }
            } else {
                return Ok(None);
            }
        }
    }

    /// The naive dynamic-sampling baseline: launch a round of tasks, generate all of them, then reward all of
    /// them (the generator idles meanwhile), then filter; repeat until `B` valid groups exist and return the
    /// first `B` in launch order, or `None` once the task budget is spent.
    fn collect_naive(
        &mut self,
        gen: &mut dyn Generator,
        s: &mut StepState,
    ) -> Result<Option<Vec<usize>>> {
        let b = self.args.groups;
        let (round, max_tasks) = (self.args.round_size(), self.args.task_limit());
        loop {
            let valid = s.valid_tasks();
            if valid.len() >= b {
                return Ok(Some(valid[..b].to_vec()));
            }
            if s.tasks.len() >= max_tasks {
                return Ok(None);
            }
            let first = s.tasks.len();
            for _ in 0..round {
                self.launch(gen, s)?;
            }
            // Generate everything…
            while gen.has_work() {
                let done = s.generate(gen)?;
                self.on_finished(done, s, false)?;
            }
            // …then reward everything (the generator idles meanwhile), then filter.
            let t0 = Instant::now();
            let mut pending = 0;
            for (t, task) in s.tasks.iter().enumerate().skip(first) {
                for (r, text) in task.texts.iter().enumerate() {
                    self.send_reward(t, r, task.problem, text.clone())?;
                    pending += 1;
                }
            }
            for _ in 0..pending {
                let scored = self
                    .pool
                    .rx
                    .recv_timeout(Duration::from_secs(60))
                    .map_err(|_| RlError::Data("reward workers stopped or stalled".into()))?;
                self.on_scored(scored, s);
            }
            s.stats.reward_wait_s += t0.elapsed().as_secs_f64();
        }
    }
}
