//! What happened at each node of a shape, read from an instance's journal.

use super::{Node, Tree};
use crate::journal::{EntryKind, JournalEntry};
use crate::store::Status;

/// What happened at a node, as a drawing colours it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Not reached yet (the instance is still going).
    Pending,
    /// In progress: the next durable operation of a live instance, or a timer it sleeps on.
    Running,
    /// Every run of it succeeded at the first attempt.
    Done,
    /// It succeeded, but only after failed attempts.
    Retried,
    /// A run of it returned an error (handled by the workflow or not).
    Failed,
    /// The instance finished without running it.
    Skipped,
}

impl NodeState {
    /// The lower-case name used in drawings (`class` and `data-state` attributes).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Running => "running",
            NodeState::Done => "done",
            NodeState::Retried => "retried",
            NodeState::Failed => "failed",
            NodeState::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's part of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRun {
    /// What happened.
    pub state: NodeState,
    /// How many journal entries it got (loop iterations run it several times).
    pub runs: u32,
    /// Attempts over all its runs (more than `runs` when some were retried).
    pub attempts: u32,
}

/// What happened at each node of a shape in one instance.
///
/// Journal entries are matched to nodes in program order: a call node takes the next step or
/// child entry of its name, a timer the next `sleep`, a signal wait the next `signal` of its
/// name. At a branch the arm that accounts for the most following entries (with the fewest
/// calls passed over) is the one taken; when no arm tells (none has a journaled call yet) and the arms are `Ok(…)`/`Err(…)`, the
/// outcome of the call just before decides. A loop runs its body again while that consumes
/// entries. Parallel arms take entries in any order.
///
/// States: a node with entries is failed if one of them holds an error, retried if one took
/// several attempts, done otherwise. A node without entries is skipped once the instance has
/// finished; in a live instance the first such node after the journal's end is running (or,
/// when the instance is suspended right after a timer was set, that timer is), and the ones
/// after it are pending. A step renamed with `#[step(name = "…")]` is journaled under that
/// name and so never matches its call node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    runs: Vec<NodeRun>,
    /// `(node id, name)` of every node that carries a name, for look-ups.
    names: Vec<(usize, &'static str)>,
    unmatched: usize,
}

impl Trace {
    /// Matches `journal` (in seq order) of an instance in `status` to `shape`.
    pub fn of(shape: &Node, status: Status, journal: &[JournalEntry]) -> Trace {
        let tree = Tree::of(shape);
        let entries: Vec<&JournalEntry> = journal
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EntryKind::Step | EntryKind::Child | EntryKind::Sleep | EntryKind::Signal
                )
            })
            .collect();
        let matcher = Matcher { entries: &entries };
        let mut walk = Walk::default();
        let end = matcher.walk(&tree, 0, &mut walk);
        let mut per_node: Vec<Vec<&JournalEntry>> = vec![Vec::new(); tree.len()];
        for (id, at) in &walk.matched {
            per_node[*id].push(entries[*at]);
        }
        let live = !status.is_final();
        let last = walk
            .matched
            .iter()
            .max_by_key(|(_, at)| *at)
            .map(|(id, _)| *id);
        let sleeping = match last {
            Some(id) if status == Status::Suspended && walk.sleeps.contains(&id) => Some(id),
            _ => None,
        };
        let frontier = if sleeping.is_some() {
            None
        } else {
            walk.frontier.flatten()
        };
        let mut runs = Vec::with_capacity(per_node.len());
        for (id, got) in per_node.iter().enumerate() {
            let attempts: u32 = got.iter().map(|e| e.attempts.max(1)).sum();
            let state = if sleeping == Some(id) {
                NodeState::Running
            } else if got.iter().any(|e| failed(e)) {
                NodeState::Failed
            } else if attempts > got.len() as u32 {
                NodeState::Retried
            } else if !got.is_empty() {
                NodeState::Done
            } else if !live {
                NodeState::Skipped
            } else if frontier == Some(id) {
                NodeState::Running
            } else {
                NodeState::Pending
            };
            runs.push(NodeRun {
                state,
                runs: got.len() as u32,
                attempts,
            });
        }
        let mut names = Vec::new();
        collect_names(&tree, &mut names);
        Trace {
            runs,
            names,
            unmatched: entries.len() - end.min(entries.len()),
        }
    }

    /// The run of the node numbered `id` (preorder, the shape's root is 0).
    pub fn get(&self, id: usize) -> Option<&NodeRun> {
        self.runs.get(id)
    }

    /// The state of the first node named `name` (a call, child workflow or signal).
    pub fn state_of(&self, name: &str) -> Option<NodeState> {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .and_then(|(id, _)| self.runs.get(*id))
            .map(|r| r.state)
    }

    /// Journal entries (of the kinds a shape shows) that matched no node: non-zero when the
    /// journal was written by other code than the shape was taken from.
    pub fn unmatched(&self) -> usize {
        self.unmatched
    }
}

fn collect_names(t: &Tree<'_>, out: &mut Vec<(usize, &'static str)>) {
    match t.node {
        Node::Call { name, .. } | Node::Signal { name, .. } => out.push((t.id, *name)),
        Node::Child { workflow, .. } => out.push((t.id, *workflow)),
        _ => {}
    }
    t.groups
        .iter()
        .flatten()
        .for_each(|k| collect_names(k, out));
}

/// Whether an entry's outcome holds an error (see [`Outcome::is_error`]); one that does not
/// decode does not.
///
/// [`Outcome::is_error`]: crate::journal::Outcome::is_error
fn failed(e: &JournalEntry) -> bool {
    e.decode().is_ok_and(|o| o.is_error())
}

/// What the walk found: `(node id, entry index)` pairs, the first unmatched node after the
/// journal's end (`Some(None)` when it cannot be told), and the timer nodes.
#[derive(Clone, Default)]
struct Walk {
    matched: Vec<(usize, usize)>,
    /// Leaves passed over while entries remained (to prefer the arm that explains the
    /// journal with fewer gaps).
    misses: usize,
    frontier: Option<Option<usize>>,
    sleeps: Vec<usize>,
}

struct Matcher<'e, 'j> {
    entries: &'e [&'j JournalEntry],
}

impl Matcher<'_, '_> {
    /// Matches `t` from entry `at` on; returns the position after what it consumed.
    fn walk(&self, t: &Tree<'_>, at: usize, w: &mut Walk) -> usize {
        match t.node {
            Node::Call { .. } | Node::Child { .. } | Node::Sleep { .. } | Node::Signal { .. } => {
                if matches!(t.node, Node::Sleep { .. }) {
                    w.sleeps.push(t.id);
                }
                if let Some(e) = self.entries.get(at)
                    && takes(t.node, e)
                {
                    w.matched.push((t.id, at));
                    return at + 1;
                }
                if at >= self.entries.len() {
                    if w.frontier.is_none() {
                        w.frontier = Some(Some(t.id));
                    }
                } else {
                    w.misses += 1;
                }
                at
            }
            Node::Status { .. } | Node::Return => at,
            Node::Seq(_) | Node::Background(_) => self.seq(&t.groups[0], at, w),
            Node::Loop { .. } => {
                let mut at = at;
                let mut rounds = 0;
                loop {
                    let mut round = w.clone();
                    let next = self.seq(&t.groups[0], at, &mut round);
                    if next == at {
                        if w.frontier.is_none() && at >= self.entries.len() {
                            // Before the first round the body comes next; after one, another
                            // round or what follows the loop may: that cannot be told.
                            w.frontier = if rounds == 0 {
                                round.frontier
                            } else {
                                Some(None)
                            };
                        }
                        return at;
                    }
                    *w = round;
                    at = next;
                    rounds += 1;
                }
            }
            Node::Branch { arms, .. } => {
                let tries: Vec<(usize, Walk)> = t
                    .groups
                    .iter()
                    .map(|g| {
                        let mut arm = w.clone();
                        (self.seq(g, at, &mut arm), arm)
                    })
                    .collect();
                let best = tries.iter().map(|(n, _)| *n).max().unwrap_or(at);
                let chosen = if best > at {
                    tries
                        .iter()
                        .enumerate()
                        .filter(|(_, (n, _))| *n == best)
                        .min_by_key(|(_, (_, arm))| arm.misses)
                        .map(|(i, _)| i)
                } else {
                    self.by_outcome(arms, at)
                };
                match chosen.and_then(|i| tries.into_iter().nth(i)) {
                    Some((next, arm)) => {
                        *w = arm;
                        next
                    }
                    None => {
                        if at >= self.entries.len() && w.frontier.is_none() {
                            w.frontier = Some(None);
                        }
                        at
                    }
                }
            }
            Node::Parallel(_) => {
                let mut leaves = Vec::new();
                t.groups
                    .iter()
                    .flatten()
                    .for_each(|k| collect_leaves(k, &mut leaves));
                let mut used = vec![false; leaves.len()];
                let mut at = at;
                while let Some(e) = self.entries.get(at) {
                    let Some(i) = (0..leaves.len()).find(|&i| !used[i] && takes(leaves[i].1, e))
                    else {
                        break;
                    };
                    used[i] = true;
                    w.matched.push((leaves[i].0, at));
                    at += 1;
                }
                if at >= self.entries.len() && w.frontier.is_none() {
                    w.frontier = Some(
                        leaves
                            .iter()
                            .zip(&used)
                            .find(|(_, u)| !**u)
                            .map(|(l, _)| l.0),
                    );
                }
                at
            }
        }
    }

    fn seq(&self, items: &[Tree<'_>], mut at: usize, w: &mut Walk) -> usize {
        for item in items {
            at = self.walk(item, at, w);
        }
        at
    }

    /// For `match call().await { Ok(…) => …, Err(…) => … }` with nothing journaled in either
    /// arm: the arm that fits the outcome of the entry just before.
    fn by_outcome(&self, arms: &[super::Arm], at: usize) -> Option<usize> {
        let prev = self.entries.get(at.checked_sub(1)?)?;
        let want = if failed(prev) { "Err" } else { "Ok" };
        arms.iter().position(|a| {
            a.label == want
                || a.label
                    .strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with('(') || rest.starts_with(' '))
        })
    }
}

fn collect_leaves<'a>(t: &Tree<'a>, out: &mut Vec<(usize, &'a Node)>) {
    match t.node {
        Node::Call { .. } | Node::Child { .. } | Node::Sleep { .. } | Node::Signal { .. } => {
            out.push((t.id, t.node))
        }
        _ => t
            .groups
            .iter()
            .flatten()
            .for_each(|k| collect_leaves(k, out)),
    }
}

/// Whether entry `e` records node `n`.
fn takes(n: &Node, e: &JournalEntry) -> bool {
    match n {
        Node::Call { name, .. } => {
            matches!(e.kind, EntryKind::Step | EntryKind::Child) && e.name == *name
        }
        Node::Child { workflow, .. } => e.kind == EntryKind::Child && e.name == *workflow,
        Node::Sleep { .. } => e.kind == EntryKind::Sleep,
        Node::Signal { name, .. } => e.kind == EntryKind::Signal && e.name == *name,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u32, kind: EntryKind, name: &str, outcome: &str, attempts: u32) -> JournalEntry {
        JournalEntry {
            seq,
            kind,
            name: name.into(),
            outcome: outcome.into(),
            attempts,
            started_at: 0,
            finished_at: 0,
        }
    }

    /// A step's outcome `Ok(1)`, as the journal writes it.
    fn ok_outcome() -> String {
        crate::journal::encode(&crate::journal::StepOutcome::Value(Ok::<u8, String>(1)))
            .expect("encode")
    }

    static LOOPED: Node = Node::Seq(&[
        Node::Call {
            name: "fetch",
            may_fail: true,
        },
        Node::Loop {
            label: "for item in items",
            body: &[Node::Call {
                name: "process",
                may_fail: false,
            }],
        },
        Node::Signal {
            name: "approve",
            timeout: false,
        },
        Node::Call {
            name: "finish",
            may_fail: false,
        },
    ]);

    #[test]
    fn loop_iterations_count_and_retries_show() {
        let ok = &ok_outcome();
        let journal = [
            entry(1, EntryKind::Step, "fetch", ok, 1),
            entry(2, EntryKind::Step, "process", ok, 1),
            entry(3, EntryKind::Step, "process", ok, 2),
            entry(4, EntryKind::Now, "", "1", 1),
        ];
        let t = Trace::of(&LOOPED, Status::Completed, &journal);
        assert_eq!(t.state_of("fetch"), Some(NodeState::Done));
        let process = t.get(3).copied();
        assert_eq!(
            process,
            Some(NodeRun {
                state: NodeState::Retried,
                runs: 2,
                attempts: 3
            })
        );
        assert_eq!(t.state_of("approve"), Some(NodeState::Skipped));
        assert_eq!(t.unmatched(), 0);

        // Live, after a round of the loop: another round or the wait may be next.
        let t = Trace::of(&LOOPED, Status::Running, &journal);
        assert_eq!(t.state_of("approve"), Some(NodeState::Pending));
    }

    #[test]
    fn the_first_node_after_the_journal_is_running() {
        let ok = &ok_outcome();
        let journal = [entry(1, EntryKind::Step, "fetch", ok, 1)];
        let t = Trace::of(&LOOPED, Status::Running, &journal);
        assert_eq!(t.state_of("fetch"), Some(NodeState::Done));
        assert_eq!(t.state_of("process"), Some(NodeState::Running));
        assert_eq!(t.state_of("approve"), Some(NodeState::Pending));
        assert_eq!(t.state_of("finish"), Some(NodeState::Pending));
    }
}
