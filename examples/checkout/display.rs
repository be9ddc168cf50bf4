//! Live progress in the terminal: which phase each order is in, and a bar for the batch.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use orch_runtime::Status;
use std::time::Duration;

use crate::workflow::PHASES;

/// Where one order stands, as read from the store.
pub struct OrderState {
    /// The order (instance) id.
    pub id: String,
    /// The instance status; `None` while it has not been started yet.
    pub status: Option<Status>,
    /// The custom status the workflow set last (its phase).
    pub phase: Option<String>,
}

/// The live display, or nothing when the output is not a terminal.
pub struct Progress {
    live: Option<Live>,
}

struct Live {
    multi: MultiProgress,
    /// One line per phase, `queued` first.
    lines: Vec<ProgressBar>,
    bar: ProgressBar,
}

/// How many order ids a phase line lists before it says "+N more".
const SHOWN: usize = 8;

impl Progress {
    /// A live display of `total` orders when `live`, else a silent one.
    pub fn new(live: bool, total: u64) -> Progress {
        if !live {
            return Progress { live: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10));
        let line_style = ProgressStyle::with_template("  {prefix:.bold.dim} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut lines = Vec::new();
        for phase in std::iter::once("queued").chain(PHASES) {
            let line = multi.add(ProgressBar::new_spinner());
            line.set_style(line_style.clone());
            line.set_prefix(format!("{phase:>20}"));
            lines.push(line);
        }
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.cyan} [{elapsed_precise}] {bar:40.green/black} {pos:>4}/{len} finished  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress {
            live: Some(Live { multi, lines, bar }),
        }
    }

    /// Redraws from a fresh look at the store.
    pub fn update(&self, orders: &[OrderState]) {
        let Some(live) = &self.live else { return };
        let mut by_line: Vec<Vec<&str>> = vec![Vec::new(); live.lines.len()];
        let (mut completed, mut failed, mut other) = (0u64, 0u64, 0u64);
        for o in orders {
            match o.status {
                Some(Status::Completed) => completed += 1,
                Some(Status::Failed) => failed += 1,
                Some(s) if s.is_final() => other += 1,
                _ => {
                    let line = o
                        .phase
                        .as_deref()
                        .and_then(|p| PHASES.iter().position(|x| *x == p))
                        .map_or(0, |i| i + 1);
                    by_line[line].push(&o.id);
                }
            }
        }
        for (line, ids) in live.lines.iter().zip(&by_line) {
            let mut msg = format!("{:>3}  ", ids.len());
            msg.push_str(&ids[..ids.len().min(SHOWN)].join(" "));
            if ids.len() > SHOWN {
                msg.push_str(&format!(" +{} more", ids.len() - SHOWN));
            }
            line.set_message(msg);
        }
        live.bar.set_position(completed + failed + other);
        let mut msg = format!("✔ {completed} completed  ✘ {failed} failed");
        if other > 0 {
            msg.push_str(&format!("  ? {other} incompatible"));
        }
        live.bar.set_message(msg);
    }

    /// Stops the live display, leaving the bar on screen.
    pub fn finish(&self) {
        let Some(live) = &self.live else { return };
        for line in &live.lines {
            line.finish_and_clear();
            live.multi.remove(line);
        }
        live.bar.finish();
        // End the bar's line: what is printed next starts on a line of its own.
        println!();
    }
}
