//! orch's own top-down layout: a sequence runs down one axis; the arms of a branch or of a
//! parallel sit side by side, each as wide as it needs (computed bottom-up); a loop's back
//! edge runs up its left side; background work hangs to the right of the flow. Every block
//! is measured around its axis (extent left and right of it) so blocks of any size nest.

use super::text::{self, Label};
use super::{Node, NodeRun, Trace, Tree};

/// Main text: monospace, 13px.
pub(crate) const FONT: f64 = 13.0;
/// Box captions, arm and branch labels: sans-serif, 10–11px.
pub(crate) const SMALL: f64 = 11.0;
const BOX_H: f64 = 46.0;
const BOX_MIN_W: f64 = 150.0;
const V_GAP: f64 = 30.0;
const H_GAP: f64 = 44.0;
const DIAMOND: f64 = 34.0;
const LABEL_MAX: usize = 52;

/// Width of `s` in the monospace font at `size`.
pub(crate) fn mono_w(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.61
}

/// Width of `s` in the sans-serif font at `size` (generous: no metrics at hand).
pub(crate) fn sans_w(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.57
}

/// Width of an upper-case caption at `size` with its letter spacing.
pub(crate) fn caption_w(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * (size * 0.72 + 0.8)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wire {
    Flow,
    Back,
    Background,
    Error,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Terminal {
    Start,
    End,
    Return,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Anchor {
    Start,
    End,
}

#[derive(Clone, Debug)]
pub(crate) struct NodeBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub id: usize,
    pub kind: &'static str,
    pub name: String,
    pub caption: &'static str,
    pub text: String,
    pub badge: String,
    pub run: Option<NodeRun>,
}

/// Something to draw, in block coordinates (axis at x = 0, top at y = 0).
#[derive(Clone, Debug)]
pub(crate) enum Item {
    Box(NodeBox),
    Decision {
        cx: f64,
        cy: f64,
        id: usize,
        text: String,
        anchor: Anchor,
    },
    LoopHead {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        id: usize,
        text: String,
    },
    Terminal {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        kind: Terminal,
    },
    Exit {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
    },
    Bar {
        x: f64,
        y: f64,
        w: f64,
    },
    Wire {
        pts: Vec<(f64, f64)>,
        arrow: bool,
        kind: Wire,
    },
    Label {
        x: f64,
        y: f64,
        text: String,
        anchor: Anchor,
    },
    Dot {
        x: f64,
        y: f64,
    },
}

impl Item {
    fn shift(&mut self, dx: f64, dy: f64) {
        match self {
            Item::Box(b) => {
                b.x += dx;
                b.y += dy;
            }
            Item::Decision { cx, cy, .. } => {
                *cx += dx;
                *cy += dy;
            }
            Item::LoopHead { x, y, .. }
            | Item::Terminal { x, y, .. }
            | Item::Exit { x, y, .. }
            | Item::Bar { x, y, .. }
            | Item::Label { x, y, .. }
            | Item::Dot { x, y } => {
                *x += dx;
                *y += dy;
            }
            Item::Wire { pts, .. } => pts.iter_mut().for_each(|p| {
                p.0 += dx;
                p.1 += dy;
            }),
        }
    }
}

/// A laid-out part of the drawing: `l` and `r` are its extents left and right of its axis.
#[derive(Clone, Debug, Default)]
pub(crate) struct Block {
    pub l: f64,
    pub r: f64,
    pub h: f64,
    /// Control reaches the bottom (no `return` on every path).
    pub falls: bool,
    /// The incoming edge ends in an arrowhead (false for pass-through blocks).
    pub arrow_in: bool,
    pub items: Vec<Item>,
}

impl Block {
    fn empty() -> Block {
        Block {
            falls: true,
            ..Block::default()
        }
    }

    /// Adds `other`'s items with its axis at `x` and its top at `y`.
    fn put(&mut self, other: Block, x: f64, y: f64) {
        for mut it in other.items {
            it.shift(x, y);
            self.items.push(it);
        }
    }

    fn wire(&mut self, pts: Vec<(f64, f64)>, arrow: bool, kind: Wire) {
        self.items.push(Item::Wire { pts, arrow, kind });
    }
}

/// Lays out a whole workflow: start, body, end.
pub(crate) fn workflow(shape: &Node, run: Option<&Trace>) -> Block {
    let tree = Tree::of(shape);
    let body = Layout { run }.node(&tree);
    let mut out = Block::empty();
    let start = terminal(Terminal::Start, "start");
    let mut y = start.h;
    out.l = start.l;
    out.r = start.r;
    out.put(start, 0.0, 0.0);
    let falls = body.falls;
    if body.h > 0.0 {
        out.wire(vec![(0.0, y), (0.0, y + V_GAP)], body.arrow_in, Wire::Flow);
        y += V_GAP;
        out.l = out.l.max(body.l);
        out.r = out.r.max(body.r);
        let h = body.h;
        out.put(body, 0.0, y);
        y += h;
    }
    if falls {
        let end = terminal(Terminal::End, "end");
        out.wire(vec![(0.0, y), (0.0, y + V_GAP)], true, Wire::Flow);
        y += V_GAP;
        let h = end.h;
        out.put(end, 0.0, y);
        y += h;
    }
    out.h = y;
    out
}

fn terminal(kind: Terminal, text: &str) -> Block {
    let w = (sans_w(text, 12.0) + 36.0).max(72.0);
    let h = 30.0;
    Block {
        l: w / 2.0,
        r: w / 2.0,
        h,
        falls: kind != Terminal::Return,
        arrow_in: true,
        items: vec![Item::Terminal {
            x: -w / 2.0,
            y: 0.0,
            w,
            h,
            kind,
        }],
    }
}

struct Layout<'r> {
    run: Option<&'r Trace>,
}

impl Layout<'_> {
    fn run_of(&self, id: usize) -> Option<NodeRun> {
        self.run.and_then(|r| r.get(id)).copied()
    }

    fn node(&self, t: &Tree<'_>) -> Block {
        match t.node {
            Node::Seq(_) => self.seq(&t.groups[0]),
            Node::Status { .. } => Block::empty(),
            Node::Call { .. } | Node::Child { .. } | Node::Sleep { .. } | Node::Signal { .. } => {
                self.leaf(t, false)
            }
            Node::Background(_) => self.background(t),
            Node::Branch { label, arms } => {
                let labels: Vec<&str> = arms.iter().map(|a| a.label).collect();
                self.branch(t, label, &labels)
            }
            Node::Loop { label, .. } => self.repeat(t, label),
            Node::Parallel(_) => self.parallel(t),
            Node::Return => terminal(Terminal::Return, "return"),
        }
    }

    fn seq(&self, items: &[Tree<'_>]) -> Block {
        let mut out = Block::empty();
        let mut first = true;
        let mut y = 0.0;
        for t in items.iter().filter(|t| t.has_drawn()) {
            let b = self.node(t);
            if b.h == 0.0 {
                continue;
            }
            if first {
                out.arrow_in = b.arrow_in;
                first = false;
            } else {
                out.wire(vec![(0.0, y), (0.0, y + V_GAP)], b.arrow_in, Wire::Flow);
                y += V_GAP;
            }
            out.l = out.l.max(b.l);
            out.r = out.r.max(b.r);
            out.falls = b.falls;
            let h = b.h;
            out.put(b, 0.0, y);
            y += h;
            if !out.falls {
                break;
            }
        }
        out.h = y;
        out
    }

    fn leaf(&self, t: &Tree<'_>, background: bool) -> Block {
        let Some(Label { caption, text }) = text::leaf(t.node) else {
            return Block::empty();
        };
        let caption = if background && caption == "step" {
            "background step"
        } else {
            caption
        };
        let text = text::shorten(&text, LABEL_MAX);
        let run = self.run_of(t.id);
        let badge = match run {
            Some(r) if r.runs > 1 && r.attempts > r.runs => {
                format!("×{} · {} attempts", r.runs, r.attempts)
            }
            Some(r) if r.runs > 1 => format!("×{}", r.runs),
            Some(r) if r.attempts > 1 => format!("{} attempts", r.attempts),
            _ => String::new(),
        };
        let head = caption_w(caption, 9.5)
            + if badge.is_empty() {
                0.0
            } else {
                sans_w(&badge, 10.0) + 14.0
            }
            + if run.is_some() { 24.0 } else { 0.0 };
        let w = (mono_w(&text, FONT).max(head) + 36.0).max(BOX_MIN_W).ceil();
        let kind = if background {
            "background"
        } else if text::is_child(t.node) {
            "child"
        } else {
            match t.node {
                Node::Sleep { .. } => "timer",
                Node::Signal { .. } => "signal",
                _ => "step",
            }
        };
        let name = match t.node {
            Node::Call { name, .. } | Node::Signal { name, .. } => name.to_string(),
            Node::Child { workflow, .. } => workflow.to_string(),
            _ => String::new(),
        };
        let mut out = Block {
            l: w / 2.0,
            r: w / 2.0,
            h: BOX_H,
            falls: true,
            arrow_in: true,
            items: vec![Item::Box(NodeBox {
                x: -w / 2.0,
                y: 0.0,
                w,
                h: BOX_H,
                id: t.id,
                kind,
                name,
                caption,
                text,
                badge,
                run,
            })],
        };
        if text::may_fail(t.node) {
            let (stub, ew, eh) = (16.0, 50.0, 20.0);
            let x = w / 2.0;
            out.wire(
                vec![(x, BOX_H / 2.0), (x + stub, BOX_H / 2.0)],
                false,
                Wire::Error,
            );
            out.items.push(Item::Exit {
                x: x + stub,
                y: (BOX_H - eh) / 2.0,
                w: ew,
                h: eh,
            });
            out.r += stub + ew;
        }
        out
    }

    /// Background work beside the flow: a dashed wire from the axis, the work to the right.
    fn background(&self, t: &Tree<'_>) -> Block {
        let inner = match t.groups[0].as_slice() {
            [one] if matches!(one.node, Node::Call { .. } | Node::Child { .. }) => {
                self.leaf(one, true)
            }
            items => self.seq(items),
        };
        if inner.h == 0.0 {
            return Block::empty();
        }
        let off = 36.0 + inner.l;
        let mid = BOX_H / 2.0;
        let mut out = Block {
            l: 4.0,
            r: off + inner.r,
            h: inner.h,
            falls: true,
            arrow_in: false,
            items: Vec::new(),
        };
        out.wire(vec![(0.0, 0.0), (0.0, inner.h)], false, Wire::Flow);
        out.wire(
            vec![(0.0, mid), (off - inner.l, mid)],
            true,
            Wire::Background,
        );
        out.items.push(Item::Dot { x: 0.0, y: mid });
        out.put(inner, off, 0.0);
        out
    }

    fn branch(&self, t: &Tree<'_>, label: &str, arm_labels: &[&str]) -> Block {
        let arms: Vec<Block> = t.groups.iter().map(|g| self.seq(g)).collect();
        let labels: Vec<String> = arm_labels
            .iter()
            .map(|l| text::shorten(l, LABEL_MAX))
            .collect();
        let falling: Vec<usize> = (0..arms.len()).filter(|&i| arms[i].falls).collect();
        // The arm drawn straight down the axis: the only one that goes on, or an empty one.
        let main = match falling.as_slice() {
            [one] => Some(*one),
            _ => arms.iter().position(|a| a.h == 0.0),
        };
        let slots: Vec<(f64, f64)> = (0..arms.len())
            .map(|i| {
                let need = mono_w(&labels[i], SMALL) + 10.0;
                (arms[i].l.max(12.0), arms[i].r.max(need))
            })
            .collect();
        let slot = |i: usize| slots[i];
        // Axis positions of the arms.
        let mut xs = vec![0.0; arms.len()];
        match main {
            Some(m) => {
                let mut right = slot(m).1;
                for i in (0..arms.len()).filter(|&i| i != m) {
                    let (l, r) = slot(i);
                    xs[i] = right + H_GAP + l;
                    right = xs[i] + r;
                }
            }
            None => {
                let mut cursor = 0.0;
                for (i, x) in xs.iter_mut().enumerate() {
                    let (l, r) = slot(i);
                    *x = cursor + l;
                    cursor = *x + r + H_GAP;
                }
                let mid = match (xs.first(), xs.last()) {
                    (Some(first), Some(last)) => (first + last) / 2.0,
                    _ => 0.0, // a branch without arms: nothing to centre
                };
                xs.iter_mut().for_each(|x| *x -= mid);
            }
        }
        let half = DIAMOND / 2.0;
        let text = text::shorten(label, LABEL_MAX);
        let label_w = mono_w(&text, 12.0) + 10.0;
        let mut out = Block {
            falls: !falling.is_empty(),
            arrow_in: true,
            ..Block::default()
        };
        // Condition label beside the diamond, on the side no wire leaves from.
        let anchor = if main.is_some() {
            out.l = half + label_w;
            out.r = half;
            Anchor::End
        } else {
            out.l = half;
            out.r = half + label_w;
            Anchor::Start
        };
        out.items.push(Item::Decision {
            cx: 0.0,
            cy: half,
            id: t.id,
            text,
            anchor,
        });
        let bus = DIAMOND + 12.0;
        let top = DIAMOND + 36.0;
        let xmin = xs.iter().copied().fold(0.0_f64, f64::min);
        let xmax = xs.iter().copied().fold(0.0_f64, f64::max);
        if main.is_some() {
            out.wire(vec![(0.0, DIAMOND), (0.0, bus)], false, Wire::Flow);
            for (i, &x) in xs.iter().enumerate() {
                if Some(i) != main {
                    out.wire(vec![(half, half), (x, half), (x, bus)], false, Wire::Flow);
                }
            }
        } else {
            out.wire(vec![(0.0, DIAMOND), (0.0, bus)], false, Wire::Flow);
            out.wire(vec![(xmin, bus), (xmax, bus)], false, Wire::Flow);
        }
        let deepest = arms.iter().map(|a| a.h).fold(0.0_f64, f64::max);
        let merge = top + deepest + if deepest > 0.0 { 18.0 } else { 0.0 };
        let mut merged: Vec<f64> = Vec::new();
        for (i, arm) in arms.into_iter().enumerate() {
            let x = xs[i];
            out.items.push(Item::Label {
                x: x + 7.0,
                y: top - 9.0,
                text: labels[i].clone(),
                anchor: Anchor::Start,
            });
            let (l, r) = slot(i);
            out.l = out.l.max(l - x);
            out.r = out.r.max(x + r);
            if arm.h == 0.0 {
                out.wire(vec![(x, bus), (x, merge)], false, Wire::Flow);
                merged.push(x);
                continue;
            }
            out.wire(vec![(x, bus), (x, top)], arm.arrow_in, Wire::Flow);
            let (h, falls) = (arm.h, arm.falls);
            out.put(arm, x, top);
            if falls {
                out.wire(vec![(x, top + h), (x, merge)], false, Wire::Flow);
                merged.push(x);
            }
        }
        if !merged.is_empty() {
            let lo = merged.iter().copied().fold(0.0_f64, f64::min);
            let hi = merged.iter().copied().fold(0.0_f64, f64::max);
            if hi > lo {
                out.wire(vec![(lo, merge), (hi, merge)], false, Wire::Flow);
            }
        }
        out.h = merge;
        out
    }

    fn repeat(&self, t: &Tree<'_>, label: &str) -> Block {
        let body = self.seq(&t.groups[0]);
        let text = text::shorten(label, LABEL_MAX);
        let hw = ((mono_w(&text, FONT) + 56.0).max(BOX_MIN_W) / 2.0).ceil();
        let hh = 34.0;
        let mut out = Block {
            l: hw,
            r: hw,
            falls: true,
            arrow_in: true,
            ..Block::default()
        };
        out.items.push(Item::LoopHead {
            x: -hw,
            y: 0.0,
            w: 2.0 * hw,
            h: hh,
            id: t.id,
            text,
        });
        let top = hh + V_GAP;
        out.wire(vec![(0.0, hh), (0.0, top)], body.arrow_in, Wire::Flow);
        let back_x = -(body.l.max(hw) + 22.0);
        let (bh, bl, br, falls) = (body.h, body.l, body.r, body.falls);
        out.put(body, 0.0, top);
        let bottom = top + bh;
        let turn = bottom + 14.0;
        if falls {
            out.wire(vec![(0.0, bottom), (0.0, turn + 12.0)], false, Wire::Flow);
            out.wire(
                vec![
                    (0.0, turn),
                    (back_x, turn),
                    (back_x, hh / 2.0),
                    (-hw, hh / 2.0),
                ],
                true,
                Wire::Back,
            );
            out.items.push(Item::Dot { x: 0.0, y: turn });
        }
        out.l = out.l.max(bl).max(-back_x + 4.0);
        out.r = out.r.max(br);
        out.h = turn + 12.0;
        out
    }

    fn parallel(&self, t: &Tree<'_>) -> Block {
        let arms: Vec<Block> = t.groups.iter().map(|g| self.seq(g)).collect();
        let mut xs = Vec::with_capacity(arms.len());
        let mut cursor = 0.0;
        for a in &arms {
            let x = cursor + a.l.max(20.0);
            xs.push(x);
            cursor = x + a.r.max(20.0) + H_GAP * 0.6;
        }
        let mid = (xs.first().copied().unwrap_or(0.0) + xs.last().copied().unwrap_or(0.0)) / 2.0;
        xs.iter_mut().for_each(|x| *x -= mid);
        let (lo, hi) = (
            xs.first().copied().unwrap_or(0.0) - 24.0,
            xs.last().copied().unwrap_or(0.0) + 24.0,
        );
        let bar = 5.0;
        let top = bar + 24.0;
        let deepest = arms.iter().map(|a| a.h).fold(0.0_f64, f64::max);
        let join = top + deepest + 24.0;
        let mut out = Block {
            l: -lo,
            r: hi,
            falls: true,
            arrow_in: true,
            ..Block::default()
        };
        out.items.push(Item::Bar {
            x: lo,
            y: 0.0,
            w: hi - lo,
        });
        out.items.push(Item::Label {
            x: hi + 6.0,
            y: bar + 3.0,
            text: "parallel".into(),
            anchor: Anchor::Start,
        });
        out.r = out.r.max(hi + 6.0 + sans_w("parallel", SMALL));
        for (a, &x) in arms.into_iter().zip(&xs) {
            out.l = out.l.max(a.l - x);
            out.r = out.r.max(x + a.r);
            out.wire(vec![(x, bar), (x, top)], a.arrow_in, Wire::Flow);
            let (h, falls) = (a.h, a.falls);
            out.put(a, x, top);
            if falls {
                out.wire(vec![(x, top + h), (x, join)], true, Wire::Flow);
            }
        }
        out.items.push(Item::Bar {
            x: lo,
            y: join,
            w: hi - lo,
        });
        out.h = join + bar;
        out
    }
}
