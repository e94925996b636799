//! Off-policy overlap with a staleness bound (veRL's one-step off-policy, AReaL's bounded staleness): the
//! rollouts of later steps are generated while earlier steps train.
//!
//! Weight version `v` is the policy after `v` updates (0 = the starting model). With `max_staleness = k` the
//! batch of step `s` (0-based) is sampled with exactly version `max(0, s − k)`, whatever the timing: the rollout
//! side waits for that version and skips older ones, so a run is reproducible. `k = 0` is the sequential loop
//! (every batch sampled by the policy that trains on it); `k = 1` overlaps generating batch `s + 1` with
//! training on batch `s`. The trainer corrects the staleness with the truncated importance weights against
//! the rollouts' engine log-probs (`mimo_train::grpo::RolloutIs`).
//!
//! Written here rather than taken from a crate: it is a two-thread hand-off of batches one way and weight
//! versions the other, a few lines on `std::sync::mpsc`.

use std::collections::BTreeMap;
use std::sync::mpsc;

use crate::error::{Result, RlError};

/// The weight version the batch of step `step` is sampled with under `max_staleness`.
pub fn rollout_version(step: usize, max_staleness: usize) -> u64 {
    step.saturating_sub(max_staleness) as u64
}

/// Runs `steps` steps with the rollouts on a second thread.
///
/// `collect(step, install)` (rollout thread) first installs `install = Some((version, weights))` when the step
/// needs a newer version, then samples step `step`'s batch; `train(step, batch, version)` (this thread) trains
/// on a batch sampled with `version` and returns the new weights, which become version `step + 1`. An error on
/// either side ends the run promptly with that error (the other side stops at its next hand-off).
pub fn run_overlapped<B, W, C, T>(
    steps: usize,
    max_staleness: usize,
    mut collect: C,
    mut train: T,
) -> Result<()>
where
    B: Send,
    W: Send,
    C: FnMut(usize, Option<(u64, W)>) -> Result<B> + Send,
    T: FnMut(usize, B, u64) -> Result<W>,
{
    std::thread::scope(|scope| {
        // Created inside the scope so that both ends drop when this closure returns, before the scope joins
        // the rollout thread: an early error here then unblocks it instead of deadlocking.
        let (batch_tx, batch_rx) = mpsc::channel::<Result<(B, u64)>>();
        let (weights_tx, weights_rx) = mpsc::channel::<(u64, W)>();
        scope.spawn(move || {
            let mut version = 0u64;
            let mut pending: BTreeMap<u64, W> = BTreeMap::new();
            for step in 0..steps {
                let want = rollout_version(step, max_staleness);
                let mut install = None;
                while version < want && install.is_none() {
                    match pending.remove(&want) {
                        Some(w) => {
                            pending.retain(|&v, _| v > want);
                            install = Some((want, w));
                        }
                        None => {
                            // The trainer stopped (error or done): nothing more to generate.
                            let Ok((v, w)) = weights_rx.recv() else {
                                return;
                            };
                            if v >= want {
                                pending.insert(v, w);
                            }
                        }
                    }
                }
                if install.is_some() {
                    version = want;
                }
                let out = collect(step, install).map(|b| (b, version));
                let failed = out.is_err();
                if batch_tx.send(out).is_err() || failed {
                    return;
                }
            }
        });
        for step in 0..steps {
            let (batch, version) = batch_rx
                .recv()
                .map_err(|_| RlError::Data("the rollout thread stopped".into()))??;
            let weights = train(step, batch, version)?;
            // The rollout thread may be done (the last steps need no new weights).
            let _ = weights_tx.send((step as u64 + 1, weights));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records which version each collect saw and what each train step got.
    fn run(steps: usize, k: usize) -> (Vec<u64>, Vec<(usize, usize, u64)>) {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = Arc::clone(&seen);
        let mut installed = 0u64;
        let mut trained = vec![];
        run_overlapped(
            steps,
            k,
            move |step, install: Option<(u64, u64)>| {
                if let Some((v, w)) = install {
                    assert_eq!(v, w, "weights of version {w} installed as {v}");
                    installed = v;
                }
                s.lock().unwrap().push(installed);
                // Slow rollouts early, slow training late: the schedule must not depend on timing.
                std::thread::sleep(std::time::Duration::from_millis(if step < 2 {
                    5
                } else {
                    0
                }));
                Ok(step * 10)
            },
            |step, batch, version| {
                trained.push((step, batch, version));
                std::thread::sleep(std::time::Duration::from_millis(if step >= 2 {
                    5
                } else {
                    0
                }));
                Ok(step as u64 + 1)
            },
        )
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, trained)
    }

    #[test]
    fn each_batch_is_sampled_with_the_bounded_version() {
        for k in 0..3 {
            let (seen, trained) = run(6, k);
            let want: Vec<u64> = (0..6).map(|s| rollout_version(s, k)).collect();
            assert_eq!(seen, want, "k = {k}");
            for (i, &(step, batch, version)) in trained.iter().enumerate() {
                assert_eq!((step, batch, version), (i, i * 10, want[i]), "k = {k}");
            }
        }
        assert_eq!(rollout_version(5, 1), 4);
        assert_eq!(rollout_version(0, 1), 0);
    }

    #[test]
    fn errors_end_the_run_without_hanging() {
        let e = run_overlapped(
            5,
            1,
            |step, _: Option<(u64, ())>| {
                if step == 2 {
                    Err(RlError::Data("rollout broke".into()))
                } else {
                    Ok(step)
                }
            },
            |_, _, _| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("rollout broke"), "{e}");
        let e = run_overlapped(
            5,
            1,
            |step, _: Option<(u64, ())>| Ok(step),
            |step, _, _| {
                if step == 1 {
                    Err(RlError::Data("update broke".into()))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("update broke"), "{e}");
        let e = run_overlapped(
            5,
            1,
            |step, install: Option<(u64, ())>| match install {
                Some((2, _)) => Err(RlError::Data("hand-off broke".into())),
                _ => Ok(step),
            },
            |_, _, _| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("hand-off broke"), "{e}");
    }
}
