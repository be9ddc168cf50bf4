//! The process drawn from the code: the static shape `#[workflow]` extracts from a workflow
//! body, and its renderings as Mermaid, Graphviz DOT and a self-contained SVG.
//!
//! The macro reads the body once at compile time and registers a [`Node`] tree with the
//! definition ([`WorkflowDef::shape`](crate::workflow::WorkflowDef::shape), or
//! `Checkout::SHAPE` on the generated type). Given an instance's journal, a [`Trace`] says what
//! happened at each node, and the same drawing colours each node by it (done, failed, retried,
//! running, skipped).
//!
//! ```
//! use orch_runtime::graph::{Drawing, Node};
//!
//! static SHAPE: Node = Node::Seq(&[
//!     Node::Call { name: "charge", may_fail: true },
//!     Node::Sleep { label: "secs(3600)" },
//! ]);
//! let mermaid = Drawing::new(&SHAPE).mermaid();
//! assert!(mermaid.contains(r#"n1["charge"]"#));
//! let svg = Drawing::new(&SHAPE).title("checkout").svg();
//! assert!(svg.starts_with("<svg"));
//! ```
//!
//! # What the macro sees
//!
//! The shape is syntactic. Every awaited call of a plain path, `name(…).await`, is a durable
//! call named by the path's last segment (calls into `std`, `core`, `tokio` and `futures` are
//! left out). The macro cannot tell a step from a child workflow or from a plain async helper:
//! at render time a call whose name is a registered workflow is drawn as a child workflow; a
//! helper that is not a step is drawn as a call that never appears in a journal. Durable
//! primitives are recognised when called as `orch::…` (`sleep`, `sleep_until`, `signal`,
//! `signal_with_timeout`, `background`, `set_status`, `call_workflow`); `now`, `random`,
//! `uuid` and `patched` are not part of the shape. `if`, `if let`, `match` and `let … else`
//! become branches, `for`, `while` and `loop` loops, `join!`/`try_join!` parallel arms, and
//! `return` an exit. Branches and loops holding no durable call or exit are left out. Calls
//! made inside closures, or futures created in one place and awaited in another, are not seen.

mod dot;
mod flowchart;
mod layout;
mod mermaid;
mod svg;
mod text;
mod trace;

pub use trace::{NodeRun, NodeState, Trace};

/// One element of a workflow's shape. Built by `#[workflow]` as a `static`, so every part is
/// `'static` and const-constructible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// An awaited call `name(…).await`: a step, or a child workflow when `name` is the name of
    /// a registered workflow.
    Call {
        /// The called function's name (last path segment).
        name: &'static str,
        /// Followed by `?`: an error ends the workflow here.
        may_fail: bool,
    },
    /// `orch::call_workflow::<W>(…)`: a child workflow, by registered name.
    Child {
        /// The child's registered name.
        workflow: &'static str,
        /// Followed by `?`.
        may_fail: bool,
    },
    /// `orch::sleep(…)` or `orch::sleep_until(…)`: a durable timer.
    Sleep {
        /// How long or until when, as written (`secs(3600)`, `until deadline`).
        label: &'static str,
    },
    /// `orch::signal("name")` or `orch::signal_with_timeout("name", …)`: a wait for a signal.
    Signal {
        /// The signal's name (the argument as written when it is not a string literal).
        name: &'static str,
        /// Whether the wait gives up after a timeout.
        timeout: bool,
    },
    /// `orch::background(…)`: work that runs beside the workflow and never fails it.
    Background(&'static Node),
    /// `orch::set_status(…)`: part of the shape, left out of drawings.
    Status {
        /// The new status, as written.
        label: &'static str,
    },
    /// Nodes run one after the other.
    Seq(&'static [Node]),
    /// `if`, `if let`, `match` or `let … else`: one of the arms runs.
    Branch {
        /// The condition or scrutinee, as written (shortened).
        label: &'static str,
        /// The arms, in source order; an `if` without `else` has an empty `no` arm.
        arms: &'static [Arm],
    },
    /// `for`, `while` or `loop`: the body runs any number of times.
    Loop {
        /// `for x in xs`, `while cond` or `loop`, as written (shortened).
        label: &'static str,
        /// The body.
        body: &'static [Node],
    },
    /// `join!`/`try_join!`: the arms run concurrently.
    Parallel(&'static [Node]),
    /// `return`: the workflow ends here.
    Return,
}

/// One arm of a [`Node::Branch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arm {
    /// `yes`/`no` for `if`, the pattern (and guard) for `match` and `if let`, `else`.
    pub label: &'static str,
    /// What runs in the arm.
    pub body: &'static [Node],
}

impl Node {
    /// The shape of a workflow whose body is unknown (an empty sequence).
    pub const EMPTY: Node = Node::Seq(&[]);

    /// Whether the node is drawn (status changes are not).
    pub fn is_drawn(&self) -> bool {
        !matches!(self, Node::Status { .. })
    }

    /// Every call name in the shape, in program order (for checks and look-ups).
    pub fn calls(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        self.each(&mut |n| match n {
            Node::Call { name, .. } => out.push(*name),
            Node::Child { workflow, .. } => out.push(*workflow),
            _ => {}
        });
        out
    }

    fn each(&self, f: &mut impl FnMut(&Node)) {
        f(self);
        match self {
            Node::Seq(nodes) | Node::Parallel(nodes) | Node::Loop { body: nodes, .. } => {
                nodes.iter().for_each(|n| n.each(f))
            }
            Node::Branch { arms, .. } => arms
                .iter()
                .flat_map(|a| a.body.iter())
                .for_each(|n| n.each(f)),
            Node::Background(inner) => inner.each(f),
            _ => {}
        }
    }
}

/// A node with its number in preorder and its children grouped (one group per arm of a
/// branch or parallel, one for a sequence, loop body or background). Renderers and [`Trace`]
/// number nodes the same way through this.
pub(crate) struct Tree<'a> {
    pub id: usize,
    pub node: &'a Node,
    pub groups: Vec<Vec<Tree<'a>>>,
}

impl<'a> Tree<'a> {
    pub fn of(node: &'a Node) -> Tree<'a> {
        let mut next = 0;
        Tree::build(node, &mut next)
    }

    fn build(node: &'a Node, next: &mut usize) -> Tree<'a> {
        let id = *next;
        *next += 1;
        let mut list = |nodes: &'a [Node]| nodes.iter().map(|n| Tree::build(n, next)).collect();
        let groups = match node {
            Node::Seq(nodes) | Node::Loop { body: nodes, .. } => vec![list(nodes)],
            Node::Branch { arms, .. } => arms.iter().map(|a| list(a.body)).collect(),
            Node::Parallel(nodes) => nodes
                .iter()
                .map(|n| list(std::slice::from_ref(n)))
                .collect(),
            Node::Background(inner) => vec![list(std::slice::from_ref(*inner))],
            _ => Vec::new(),
        };
        Tree { id, node, groups }
    }

    /// How many nodes the tree holds.
    pub fn len(&self) -> usize {
        1 + self.groups.iter().flatten().map(Tree::len).sum::<usize>()
    }

    /// Whether anything in the tree is drawn.
    pub fn has_drawn(&self) -> bool {
        match self.node {
            Node::Seq(_) => self.groups.iter().flatten().any(Tree::has_drawn),
            n => n.is_drawn(),
        }
    }
}

/// Whether `name` is a workflow registered in this binary (a call to it is a child workflow).
pub(crate) fn is_workflow(name: &str) -> bool {
    inventory::iter::<crate::workflow::WorkflowDef>
        .into_iter()
        .any(|d| d.name == name)
}

/// A drawing of a shape, optionally titled and coloured by a run.
///
/// ```
/// # use orch_runtime::graph::{Drawing, Node};
/// static SHAPE: Node = Node::Seq(&[Node::Call { name: "ship", may_fail: false }]);
/// let dot = Drawing::new(&SHAPE).title("shipping").dot();
/// assert!(dot.starts_with("digraph"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Drawing<'a> {
    shape: &'a Node,
    title: Option<&'a str>,
    run: Option<&'a Trace>,
}

impl<'a> Drawing<'a> {
    /// A drawing of `shape`, uncoloured and untitled.
    pub fn new(shape: &'a Node) -> Self {
        Drawing {
            shape,
            title: None,
            run: None,
        }
    }

    /// Titles the drawing (the workflow's name, usually).
    pub fn title(mut self, title: &'a str) -> Self {
        self.title = Some(title);
        self
    }

    /// Colours each node by what happened in `run` (made from the same shape).
    pub fn run(mut self, run: &'a Trace) -> Self {
        self.run = Some(run);
        self
    }

    /// A Mermaid `flowchart TD`.
    pub fn mermaid(&self) -> String {
        mermaid::render(self.shape, self.title, self.run)
    }

    /// A Graphviz `digraph`.
    pub fn dot(&self) -> String {
        dot::render(self.shape, self.title, self.run)
    }

    /// A self-contained SVG document (no scripts, stylesheets or fonts to fetch), laid out by
    /// orch.
    pub fn svg(&self) -> String {
        svg::render(self.shape, self.title, self.run)
    }
}

/// `shape` as a Mermaid `flowchart TD`.
pub fn to_mermaid(shape: &Node) -> String {
    Drawing::new(shape).mermaid()
}

/// `shape` as a Graphviz `digraph`.
pub fn to_dot(shape: &Node) -> String {
    Drawing::new(shape).dot()
}

/// `shape` as a self-contained SVG, coloured by `run` when given.
pub fn to_svg(shape: &Node, run: Option<&Trace>) -> String {
    let mut d = Drawing::new(shape);
    if let Some(run) = run {
        d = d.run(run);
    }
    d.svg()
}

/// The shape as a JSON tree (served by the HTTP API): `{"seq": [...]}`,
/// `{"call": {"name": "charge", "may_fail": true}}`, `{"branch": {"label": …, "arms": […]}}` …
pub fn shape_json(node: &Node) -> serde_json::Value {
    use serde_json::json;
    let many = |nodes: &[Node]| nodes.iter().map(shape_json).collect::<Vec<_>>();
    match node {
        Node::Call { name, may_fail } => json!({"call": {"name": name, "may_fail": may_fail}}),
        Node::Child { workflow, may_fail } => {
            json!({"child": {"workflow": workflow, "may_fail": may_fail}})
        }
        Node::Sleep { label } => json!({"sleep": {"label": label}}),
        Node::Signal { name, timeout } => json!({"signal": {"name": name, "timeout": timeout}}),
        Node::Background(inner) => json!({"background": shape_json(inner)}),
        Node::Status { label } => json!({"status": {"label": label}}),
        Node::Seq(nodes) => json!({"seq": many(nodes)}),
        Node::Branch { label, arms } => json!({"branch": {
            "label": label,
            "arms": arms.iter().map(|a| json!({"label": a.label, "body": many(a.body)})).collect::<Vec<_>>(),
        }}),
        Node::Loop { label, body } => json!({"loop": {"label": label, "body": many(body)}}),
        Node::Parallel(arms) => json!({"parallel": many(arms)}),
        Node::Return => json!("return"),
    }
}
