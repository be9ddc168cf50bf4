//! The deploy check: do the instances that wait in the store still replay under the code in
//! this binary?
//!
//! A node loads an instance only when it is due, so an instance that waits for a signal or a
//! timer meets new code only when it wakes — and stops `incompatible` then if the code no
//! longer follows its journal. [`Runtime::check_compatibility`] finds those instances on
//! demand, before or after a deploy: it replays the journal of every waiting (running or
//! suspended) instance against this binary's workflows without calling any step and without
//! writing anything, and reports each one whose journal the code does not follow, with where
//! and how they part ways. It pages through the store, so a check of 100,000 waiting instances
//! holds one page in memory at a time.

use crate::error::Error;
use crate::replayer::{REPLAY_TIMEOUT, Replayed, Replayer};
use crate::runtime::Runtime;
use crate::store::Status;
use serde::Serialize;

/// The most instances one call of [`Runtime::check_compatibility`] checks.
pub const MAX_CHECK: usize = 10_000;

/// How many instances a check loads and replays at a time (its memory is one batch of loaded
/// journals).
const BATCH: usize = 64;

/// Which waiting instances [`Runtime::check_compatibility`] checks: those of `workflow` (all
/// by default), in id order after the id `after`, at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct CompatibilityQuery {
    /// Only instances of this workflow (of any name by default, including names this binary
    /// does not have).
    pub workflow: Option<String>,
    /// Continue after this instance id: the previous report's
    /// [`next`](CompatibilityReport::next).
    pub after: Option<String>,
    /// Check at most this many instances (1 to [`MAX_CHECK`]; 0 means [`MAX_CHECK`]).
    pub limit: usize,
}

/// What one call of [`Runtime::check_compatibility`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompatibilityReport {
    /// Waiting instances checked.
    pub checked: usize,
    /// Of those, how many replayed to the end of their journal under this code.
    pub compatible: usize,
    /// The others, in id order, each with the first place its journal and the code part ways.
    pub incompatible: Vec<Incompatibility>,
    /// Where the next call continues, an instance id (`None`: every waiting instance has been
    /// checked).
    #[serde(skip)]
    pub next: Option<String>,
}

/// A waiting instance that the code in this binary would not run on, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Incompatibility {
    /// The instance.
    pub id: String,
    /// Its workflow.
    pub workflow: String,
    /// Its status (running or suspended).
    pub status: Status,
    /// The workflow version it started under.
    pub version: String,
    /// This binary's version of the workflow (`None`: this binary does not have it).
    pub current_version: Option<String>,
    /// The journal seq where the journal and the code part ways (`None` when the instance
    /// fails before any: its input or its workflow).
    pub seq: Option<u32>,
    /// What happens: what the journal holds at `seq` and what the code asked for instead, or
    /// why replay failed, and what to do.
    pub message: String,
}

impl Runtime {
    /// Replays the journal of each waiting (running or suspended) instance matching `query`
    /// against the workflows in this binary — calling no step, changing nothing — and reports
    /// those the code does not follow, with the first divergence in words, and how many replay
    /// to the end of their journal. An instance whose workflow this binary lacks, whose input
    /// no longer fits the input type, or whose replay fails or does not settle is reported too.
    ///
    /// Checks at most `query.limit` instances per call, in id order; continue with
    /// [`CompatibilityReport::next`] until it is `None` to check them all. Memory stays bounded
    /// by a small batch of journals, however many instances wait, and a walk over all pages
    /// reads each instance once. An instance that finishes while the check runs is left out.
    pub async fn check_compatibility(
        &self,
        query: CompatibilityQuery,
    ) -> Result<CompatibilityReport, Error> {
        let limit = match query.limit {
            0 => MAX_CHECK,
            n if n > MAX_CHECK => {
                return Err(Error::InvalidArgument(format!(
                    "a compatibility check covers at most {MAX_CHECK} instances per call, \
                     asked for {n}: check in pages and follow the cursor"
                )));
            }
            n => n,
        };
        if let Some(w) = &query.workflow
            && w.is_empty()
        {
            return Err(Error::InvalidArgument(
                "the workflow filter is empty: name a workflow, or leave it out to check all"
                    .into(),
            ));
        }
        let replayer = Replayer::new(self.inner.registry.clone(), BATCH);
        let mut report = CompatibilityReport::default();
        let mut after = query.after;
        let mut left = limit;
        while left > 0 {
            let want = left.min(BATCH);
            let ids = self
                .inner
                .store
                .unfinished(query.workflow.clone(), after.clone(), want)
                .await?;
            let Some(last) = ids.last() else {
                return Ok(report);
            };
            after = Some(last.clone());
            left -= ids.len();
            let full = ids.len() == want;
            let verdicts =
                futures_util::future::join_all(ids.iter().map(|id| self.check_one(&replayer, id)))
                    .await;
            for verdict in verdicts {
                match verdict? {
                    Verdict::Gone => {}
                    Verdict::Compatible => {
                        report.checked += 1;
                        report.compatible += 1;
                    }
                    Verdict::Incompatible(i) => {
                        report.checked += 1;
                        report.incompatible.push(*i);
                    }
                }
            }
            if !full {
                return Ok(report);
            }
        }
        // The limit was reached: more may follow.
        report.next = after;
        Ok(report)
    }

    /// Replays one instance as stored now.
    async fn check_one(&self, replayer: &Replayer, id: &str) -> Result<Verdict, Error> {
        let Some(loaded) = self.inner.store.load(id).await? else {
            return Ok(Verdict::Gone);
        };
        if loaded.record.status.is_final() {
            return Ok(Verdict::Gone);
        }
        let rec = &loaded.record;
        let base = Incompatibility {
            id: rec.id.clone(),
            workflow: rec.workflow.clone(),
            status: rec.status,
            version: rec.version.clone(),
            current_version: self
                .inner
                .registry
                .get(&rec.workflow)
                .ok()
                .map(|def| def.version.to_string()),
            seq: None,
            message: String::new(),
        };
        let incompatible = |seq: Option<u32>, message: String| {
            Verdict::Incompatible(Box::new(Incompatibility {
                seq,
                message,
                ..base.clone()
            }))
        };
        let found = match replayer.replay(loaded).await {
            Replayed::Frontier { .. } | Replayed::Finished { .. } => Verdict::Compatible,
            Replayed::Incompatible { seq, message } => incompatible(Some(seq), message),
            Replayed::Failed(message) => {
                incompatible(None, format!("it would fail when it wakes: {message}"))
            }
            Replayed::UnknownWorkflow(message) => incompatible(
                None,
                format!(
                    "this binary cannot run it: {message}; deploy code that has workflow `{}`, \
                     or terminate the instance",
                    base.workflow
                ),
            ),
            Replayed::Stuck => incompatible(
                None,
                format!(
                    "its replay did not reach a durable call or the end within {} s: the \
                     workflow body loops or blocks outside orch's calls",
                    REPLAY_TIMEOUT.as_secs()
                ),
            ),
        };
        Ok(found)
    }
}

/// What checking one instance found.
enum Verdict {
    /// It finished or vanished since it was listed: it no longer waits.
    Gone,
    /// The code follows its journal.
    Compatible,
    /// The code cannot run it.
    Incompatible(Box<Incompatibility>),
}
