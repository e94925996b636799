//! The Seamless Rollout Engine (spec §4.1) and the `naive` dynamic-sampling baseline it is measured against.
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
use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};
use crate::problem::RlProblem;
use crate::reward::{group_rewards, score_rollout, RewardSettings, RolloutScore, TestHistory};
use crate::sampler::{is_valid_group, Origin, ProblemSampler};

/// What the rollout engine needs from a generator (the candle [`Engine`], or a scripted one in tests).
pub trait Generator {
    /// Queues one request.
    fn submit(&mut self, prompt: &[u32], params: SamplingParams) -> Result<u64>;
    /// One decoding step; returns the requests that finished, with their completion tokens.
    fn step(&mut self) -> Result<Vec<(u64, Vec<u32>)>>;
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
    partial: HashMap<u64, Vec<u32>>,
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
    fn step(&mut self) -> Result<Vec<(u64, Vec<u32>)>> {
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
            self.partial.entry(o.id).or_default().extend(&o.tokens);
            if o.finish.is_some() {
                done.push((o.id, self.partial.remove(&o.id).unwrap_or_default()));
            }
        }
        Ok(done)
    }
    fn abort(&mut self, id: u64) -> usize {
        self.engine.abort(id);
        self.partial.remove(&id).map_or(0, |t| t.len())
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

/// One selected group, ready for the GRPO update.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOut {
    pub problem: usize,
    pub origin: Origin,
    /// Launch order within the step.
    pub seq: usize,
    pub prompt: Vec<u32>,
    pub responses: Vec<Vec<u32>>,
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
    problem: Arc<RlProblem>,
    text: String,
}

/// (step, task, rollout, score).
type Scored = (u64, usize, usize, RolloutScore);

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
                    let score = score_rollout(&job.problem, &job.text, &settings);
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
    /// Tokens generated per rollout (finished or aborted).
    rollout_tokens: Vec<usize>,
    texts: Vec<String>,
    scores: Vec<Option<RolloutScore>>,
    rewards: Vec<f64>,
    state: TaskState,
}

/// Token ids → response text (the reward sees text).
pub type Decode = Box<dyn Fn(&[u32]) -> String + Send>;

/// The rollout engine: problems, prompts, the sampler with its easy pool, per-problem test histories and the
/// reward workers. The generator (with the current policy weights) is passed to every [`collect`] call.
///
/// [`collect`]: RolloutEngine::collect
pub struct RolloutEngine {
    pub args: RolloutArgs,
    problems: Vec<Arc<RlProblem>>,
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
        problems: Vec<RlProblem>,
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
    pub fn problems(&self) -> &[Arc<RlProblem>] {
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
            ..Default::default()
        }
    }

    fn launch(&mut self, gen: &mut dyn Generator, tasks: &mut Vec<Task>) -> Result<()> {
        let (problem, origin) = self.sampler.draw();
        let seq = tasks.len();
        let g = self.args.group_size;
        let mut requests = Vec::with_capacity(g);
        for r in 0..g {
            let p = self.params(seq, r);
            requests.push(Some(gen.submit(&self.prompts[problem], p)?));
        }
        tasks.push(Task {
            problem,
            origin,
            requests,
            responses: vec![None; g],
            rollout_tokens: vec![0; g],
            texts: vec![String::new(); g],
            scores: vec![None; g],
            rewards: vec![],
            state: TaskState::Running,
        });
        Ok(())
    }

    /// Records finished generations; in seamless mode they go to the reward workers at once.
    fn on_finished(
        &mut self,
        done: Vec<(u64, Vec<u32>)>,
        owner: &HashMap<u64, (usize, usize)>,
        tasks: &mut [Task],
        send_now: bool,
    ) -> Result<()> {
        for (id, tokens) in done {
            let Some(&(t, r)) = owner.get(&id) else {
                continue;
            };
            let text = (self.decode)(&tokens);
            let task = &mut tasks[t];
            task.rollout_tokens[r] = tokens.len();
            task.requests[r] = None;
            task.texts[r] = text.clone();
            task.responses[r] = Some(tokens);
            if send_now {
                self.pool.send(Job {
                    step: self.step,
                    task: t,
                    rollout: r,
                    problem: Arc::clone(&self.problems[task.problem]),
                    text,
                })?;
            }
        }
        Ok(())
    }

    /// Stores a score; when the group is complete, computes its rewards, validity and easy-pool membership.
    fn on_scored(
        &mut self,
        (step, t, r, score): Scored,
        tasks: &mut [Task],
        easy: &mut Vec<usize>,
    ) {
        if step != self.step || t >= tasks.len() {
            return;
        }
        let task = &mut tasks[t];
        if task.state != TaskState::Running {
            return;
        }
        task.scores[r] = Some(score);
        if task.scores.iter().any(Option::is_none) {
            return;
        }
        let scores: Vec<RolloutScore> = task.scores.iter().flatten().cloned().collect();
        let problem = Arc::clone(&self.problems[task.problem]);
        let history = self.histories.entry(task.problem).or_default();
        if problem.is_code() {
            history.add(&scores.iter().collect::<Vec<_>>());
        }
        task.rewards = group_rewards(&problem, &scores, history, &self.settings);
        let valid = is_valid_group(&task.rewards);
        if scores.iter().all(|s| s.passed.iter().all(|&p| p)) {
            easy.push(task.problem);
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

    /// Fills one training batch of `B` valid groups from `gen` (see the module docs for the two modes).
    pub fn collect(&mut self, gen: &mut dyn Generator) -> Result<(Vec<GroupOut>, RolloutStats)> {
        let start = Instant::now();
        let mut tasks: Vec<Task> = vec![];
        // Problems that reached pass rate 1 join the easy pool when the step ends, so the order problems are
        // drawn in within a step does not depend on the mode's timing.
        let mut easy: Vec<usize> = vec![];
        self.current.store(self.step, Ordering::Release);
        let mut owner: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut st = RolloutStats {
            mode: format!("{:?}", self.args.mode).to_lowercase(),
            ..Default::default()
        };
        let b = self.args.groups;
        let max_tasks = if self.args.max_tasks_per_step == 0 {
            50 * b
        } else {
            self.args.max_tasks_per_step
        };
        let mut slot_time = 0.0;
        let gen_step = |gen: &mut dyn Generator, st: &mut RolloutStats, slot_time: &mut f64| {
            let running = gen.running();
            let t0 = Instant::now();
            let done = gen.step();
            let dt = t0.elapsed().as_secs_f64();
            st.generate_s += dt;
            *slot_time += running.max(gen.running()) as f64 * dt;
            done
        };
        let selected = match self.args.mode {
            RolloutMode::Seamless => {
                let max_inflight = if self.args.max_inflight == 0 {
                    4 * b
                } else {
                    self.args.max_inflight
                };
                loop {
                    if let Some(sel) = self.fifo_selection(&tasks) {
                        break Some(sel);
                    }
                    // Launch only while the tasks in flight are predicted not to fill the batch.
                    let p_valid = (self.valid_seen as f64 + 1.0) / (self.groups_seen as f64 + 2.0);
                    loop {
                        let valid = tasks
                            .iter()
                            .filter(|t| t.state == TaskState::Done { valid: true })
                            .count();
                        let in_flight = tasks
                            .iter()
                            .filter(|t| t.state == TaskState::Running)
                            .count();
                        let predicted = valid as f64 + p_valid * in_flight as f64;
                        if predicted >= b as f64
                            || in_flight >= max_inflight
                            || tasks.len() >= max_tasks
                        {
                            break;
                        }
                        self.launch(gen, &mut tasks)?;
                        let t = tasks.len() - 1;
                        for (r, id) in tasks[t].requests.iter().enumerate() {
                            owner.insert(id.unwrap_or(u64::MAX), (t, r));
                        }
                    }
                    if gen.has_work() {
                        let done = gen_step(gen, &mut st, &mut slot_time)?;
                        self.on_finished(done, &owner, &mut tasks, true)?;
                        while let Ok(s) = self.pool.rx.try_recv() {
                            self.on_scored(s, &mut tasks, &mut easy);
                        }
                    } else if tasks.iter().any(|t| t.state == TaskState::Running) {
                        let t0 = Instant::now();
                        let got = self.pool.rx.recv_timeout(Duration::from_secs(60));
                        st.reward_wait_s += t0.elapsed().as_secs_f64();
                        match got {
                            Ok(s) => self.on_scored(s, &mut tasks, &mut easy),
                            Err(RecvTimeoutError::Timeout) => {
                                return Err(RlError::Data("no reward result within 60 s".into()))
                            }
                            Err(RecvTimeoutError::Disconnected) => {
                                return Err(RlError::Data("reward workers stopped".into()))
                            }
                        }
                    } else {
                        break None;
                    }
                }
            }
            RolloutMode::Naive => {
                let round = if self.args.naive_round == 0 {
                    b
                } else {
                    self.args.naive_round
                };
                loop {
                    let valid: Vec<usize> = (0..tasks.len())
                        .filter(|&i| tasks[i].state == TaskState::Done { valid: true })
                        .collect();
                    if valid.len() >= b {
                        break Some(valid[..b].to_vec());
                    }
                    if tasks.len() >= max_tasks {
                        break None;
                    }
                    let first = tasks.len();
                    for _ in 0..round {
                        self.launch(gen, &mut tasks)?;
                        let t = tasks.len() - 1;
                        for (r, id) in tasks[t].requests.iter().enumerate() {
                            owner.insert(id.unwrap_or(u64::MAX), (t, r));
                        }
                    }
                    // Generate everything…
                    while gen.has_work() {
                        let done = gen_step(gen, &mut st, &mut slot_time)?;
                        self.on_finished(done, &owner, &mut tasks, false)?;
                    }
                    // …then reward everything (the generator idles meanwhile), then filter.
                    let t0 = Instant::now();
                    let mut pending = 0;
                    for (t, task) in tasks.iter().enumerate().skip(first) {
                        for r in 0..self.args.group_size {
                            self.pool.send(Job {
                                step: self.step,
                                task: t,
                                rollout: r,
                                problem: Arc::clone(&self.problems[task.problem]),
                                text: task.texts[r].clone(),
                            })?;
                            pending += 1;
                        }
                    }
                    for _ in 0..pending {
                        let s =
                            self.pool
                                .rx
                                .recv_timeout(Duration::from_secs(60))
                                .map_err(|_| {
                                    RlError::Data("reward workers stopped or stalled".into())
                                })?;
                        self.on_scored(s, &mut tasks, &mut easy);
                    }
                    st.reward_wait_s += t0.elapsed().as_secs_f64();
                }
            }
        };
        // Early termination: abort whatever is still in flight.
        for (i, t) in tasks.iter_mut().enumerate() {
            if t.state == TaskState::Running {
                st.aborted.push(i);
                for (r, req) in t.requests.iter_mut().enumerate() {
                    if let Some(id) = req.take() {
                        t.rollout_tokens[r] = gen.abort(id);
                    }
                }
                t.state = TaskState::Aborted;
                st.tasks_aborted += 1;
            }
        }
        for p in easy {
            self.sampler.mark_easy(p);
        }

        let selected = selected.unwrap_or_else(|| {
            st.short = true;
            (0..tasks.len())
                .filter(|&i| tasks[i].state == TaskState::Done { valid: true })
                .collect()
        });
        st.wall_s = start.elapsed().as_secs_f64();
        st.idle_fraction = 1.0 - slot_time / (gen.capacity().max(1) as f64 * st.wall_s.max(1e-9));
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
        st.easy_pool = self.sampler.easy_pool_len();
        self.step += 1;
        self.current.store(self.step, Ordering::Release);

        let groups = selected
            .into_iter()
            .map(|i| {
                let t = &mut tasks[i];
                GroupOut {
                    problem: t.problem,
                    origin: t.origin,
                    seq: i,
                    prompt: self.prompts[t.problem].clone(),
                    responses: t
                        .responses
                        .iter_mut()
                        .map(|r| r.take().unwrap_or_default())
                        .collect(),
                    texts: std::mem::take(&mut t.texts),
                    rewards: std::mem::take(&mut t.rewards),
                }
            })
            .collect();
        Ok((groups, st))
    }
}
