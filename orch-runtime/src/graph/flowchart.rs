//! A shape lowered to vertices and edges, for the text formats (Mermaid, DOT) that lay
//! graphs out themselves.

use super::text::{self, Label};
use super::{Node, NodeState, Trace, Tree};

/// How a vertex is drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Start,
    End,
    /// Where `?` exits lead.
    Fail,
    Return,
    Step,
    Child,
    Wait,
    Background,
    Decision,
    Loop,
    Fork,
    Join,
}

pub(crate) struct Vertex {
    pub key: String,
    pub shape: Shape,
    pub text: String,
    pub state: Option<NodeState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Normal,
    /// To background work.
    Dashed,
    /// A `?` exit.
    Error,
}

pub(crate) struct Edge {
    pub from: String,
    pub to: String,
    pub label: Option<String>,
    pub style: Style,
}

#[derive(Default)]
pub(crate) struct Flowchart {
    pub vertices: Vec<Vertex>,
    pub edges: Vec<Edge>,
}

/// Where control leaves a part of the chart: a vertex, and the label of the edge out of it.
type Exits = Vec<(String, Option<String>)>;

const LABEL_MAX: usize = 40;

impl Flowchart {
    pub fn of(shape: &Node, run: Option<&Trace>) -> Flowchart {
        let tree = Tree::of(shape);
        let mut f = Flowchart::default();
        f.vertex("start", Shape::Start, "start".into(), None);
        let exits = f.lower(&tree, vec![("start".into(), None)], run);
        f.vertex("finish", Shape::End, "end".into(), None);
        f.connect(exits, "finish", Style::Normal);
        f
    }

    fn vertex(&mut self, key: &str, shape: Shape, text: String, state: Option<NodeState>) {
        self.vertices.push(Vertex {
            key: key.into(),
            shape,
            text,
            state,
        });
    }

    fn connect(&mut self, from: Exits, to: &str, style: Style) {
        for (key, label) in from {
            self.edges.push(Edge {
                from: key,
                to: to.into(),
                label,
                style,
            });
        }
    }

    fn lower(&mut self, t: &Tree<'_>, preds: Exits, run: Option<&Trace>) -> Exits {
        let key = format!("n{}", t.id);
        let state = run.and_then(|r| r.get(t.id)).map(|r| r.state);
        match t.node {
            Node::Seq(_) => t.groups[0]
                .iter()
                .fold(preds, |preds, k| self.lower(k, preds, run)),
            Node::Status { .. } => preds,
            Node::Call { .. } | Node::Child { .. } | Node::Sleep { .. } | Node::Signal { .. } => {
                let Some(Label { text, .. }) = text::leaf(t.node) else {
                    return preds;
                };
                let shape = match t.node {
                    Node::Sleep { .. } | Node::Signal { .. } => Shape::Wait,
                    n if text::is_child(n) => Shape::Child,
                    _ => Shape::Step,
                };
                self.vertex(&key, shape, text, state);
                self.connect(preds, &key, Style::Normal);
                if text::may_fail(t.node) {
                    self.fail_vertex();
                    self.connect(
                        vec![(key.clone(), Some("Err".into()))],
                        "error_exit",
                        Style::Error,
                    );
                }
                vec![(key, None)]
            }
            Node::Background(_) => {
                // Hung off the flow by dashed edges: the workflow goes on without waiting.
                let (edges, vertices) = (self.edges.len(), self.vertices.len());
                let from = preds.iter().map(|(k, _)| (k.clone(), None)).collect();
                t.groups[0].iter().fold(from, |p, k| self.lower(k, p, run));
                for e in &mut self.edges[edges..] {
                    if e.style == Style::Normal {
                        e.style = Style::Dashed;
                    }
                }
                for v in &mut self.vertices[vertices..] {
                    if v.shape == Shape::Step {
                        v.shape = Shape::Background;
                    }
                }
                preds
            }
            Node::Branch { label, arms } => {
                let text = text::shorten(label, LABEL_MAX);
                self.vertex(&key, Shape::Decision, text, state);
                self.connect(preds, &key, Style::Normal);
                let mut exits = Vec::new();
                for (arm, group) in arms.iter().zip(&t.groups) {
                    let from = vec![(key.clone(), Some(text::shorten(arm.label, LABEL_MAX)))];
                    let out = group.iter().fold(from, |p, k| self.lower(k, p, run));
                    exits.extend(out);
                }
                exits
            }
            Node::Loop { label, .. } => {
                let text = text::shorten(label, LABEL_MAX);
                self.vertex(&key, Shape::Loop, text, state);
                self.connect(preds, &key, Style::Normal);
                let body = t.groups[0]
                    .iter()
                    .fold(vec![(key.clone(), None)], |p, k| self.lower(k, p, run));
                let body: Exits = body
                    .into_iter()
                    .map(|(k, l)| (k, l.or_else(|| Some("next".into()))))
                    .collect();
                self.connect(body, &key, Style::Normal);
                vec![(key, Some("done".into()))]
            }
            Node::Parallel(_) => {
                self.vertex(&key, Shape::Fork, "parallel".into(), state);
                self.connect(preds, &key, Style::Normal);
                let join = format!("{key}_join");
                let mut exits = Vec::new();
                for group in &t.groups {
                    let out = group
                        .iter()
                        .fold(vec![(key.clone(), None)], |p, k| self.lower(k, p, run));
                    exits.extend(out);
                }
                self.vertex(&join, Shape::Join, "all done".into(), None);
                self.connect(exits, &join, Style::Normal);
                vec![(join, None)]
            }
            Node::Return => {
                self.vertex(&key, Shape::Return, "return".into(), None);
                self.connect(preds, &key, Style::Normal);
                Vec::new()
            }
        }
    }

    fn fail_vertex(&mut self) {
        if !self.vertices.iter().any(|v| v.key == "error_exit") {
            self.vertex("error_exit", Shape::Fail, "exit with error".into(), None);
        }
    }
}
