//! Step progress for long jobs (pretrain, SFT, RL): an indicatif bar on a terminal; elsewhere (CI logs,
//! `tee`, a pipe) plain lines, about twenty per run plus the last step, so logs show the run advancing.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of a run of `steps` steps.
pub struct Progress {
    bar: ProgressBar,
    /// Plain-line mode: the label, the steps, how often to print, when the run started.
    plain: Option<(String, u64, u64, Instant)>,
    pos: u64,
    msg: String,
}

impl Progress {
    /// Progress labelled `label` over `steps` steps from `start`; nothing at all when `show` is off.
    pub fn new(label: &str, show: bool, steps: usize, start: usize) -> Self {
        let steps = steps as u64;
        let tty = std::io::stderr().is_terminal();
        let bar = if show && tty {
            let b = ProgressBar::new(steps);
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{label:<6}{{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed_precise}}<{{eta_precise}}]"
            )) {
                b.set_style(style);
            }
            b.set_position(start as u64);
            b
        } else {
            ProgressBar::hidden()
        };
        let plain = (show && !tty).then(|| {
            (
                label.to_string(),
                steps,
                (steps / 20).max(1),
                Instant::now(),
            )
        });
        Self {
            bar,
            plain,
            pos: start as u64,
            msg: String::new(),
        }
    }

    /// The message shown with the position.
    pub fn set_message(&mut self, msg: String) {
        self.bar.set_message(msg.clone());
        self.msg = msg;
    }

    /// Moves to step `pos` (steps done); prints a plain line when due.
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        self.bar.set_position(pos);
        if let Some((label, steps, every, t0)) = &self.plain {
            if pos.is_multiple_of(*every) || pos == *steps {
                eprintln!(
                    "{label} step {pos}/{steps} {} [{:.0}s]",
                    self.msg,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// One more step done.
    pub fn inc(&mut self) {
        self.set_position(self.pos + 1);
    }

    /// Ends the bar (a plain run already printed its last step).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
