//! The SVG drawing: [`layout`](super::layout)'s blocks written out as one self-contained
//! document (an inline `<style>`, no scripts, no fonts or images to fetch).
//!
//! Every node is a `<g class="node {kind} {state}" data-id=… data-name=… data-state=…>`, so a
//! web page can style or find nodes without knowing the layout.

use super::layout::{self, Anchor, Block, Item, NodeBox, Terminal, Wire, sans_w};
use super::text::xml;
use super::{Node, NodeRun, NodeState, Trace};
use std::fmt::Write;

const MARGIN: f64 = 28.0;
const SANS: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, \
                    'Liberation Sans', 'DejaVu Sans', sans-serif";
const MONO: &str = "ui-monospace, 'SF Mono', Menlo, Consolas, 'Liberation Mono', \
                    'DejaVu Sans Mono', monospace";

/// Fill, stroke and legend text per state.
const STATES: [(NodeState, &str, &str, &str); 5] = [
    (NodeState::Done, "#dcfce7", "#16a34a", "done"),
    (NodeState::Retried, "#fef3c7", "#d97706", "retried"),
    (NodeState::Failed, "#fee2e2", "#dc2626", "failed"),
    (NodeState::Running, "#dbeafe", "#2563eb", "running"),
    (NodeState::Skipped, "#f8fafc", "#94a3b8", "skipped"),
];

fn style() -> String {
    let mut css = format!(
        ".title{{font:600 17px {SANS};fill:#0f172a}}\
         .subtitle{{font:12px {SANS};fill:#64748b}}\
         .wire{{fill:none;stroke:#94a3b8;stroke-width:1.6;stroke-linejoin:round}}\
         .wire.background{{stroke-dasharray:6 4}}\
         .wire.back{{stroke:#94a3b8}}\
         .wire.error{{stroke:#f87171;stroke-dasharray:3 3}}\
         .joint{{fill:#94a3b8}}\
         .box{{fill:#ffffff;stroke:#64748b;stroke-width:1.6}}\
         .inner{{fill:none;stroke:#64748b;stroke-width:1}}\
         .caption{{font:600 9.5px {SANS};letter-spacing:.8px;fill:#64748b}}\
         .badge{{font:600 10px {SANS};fill:#475569}}\
         .name{{font:13px {MONO};fill:#0f172a}}\
         .node.background .box{{stroke-dasharray:6 4}}\
         .node.timer .caption,.node.signal .caption{{fill:#0e7490}}\
         .node.child .caption{{fill:#7c3aed}}\
         .decision{{fill:#f8fafc;stroke:#64748b;stroke-width:1.6}}\
         .cond{{font:12px {MONO};fill:#334155}}\
         .arm{{font:11px {MONO};fill:#64748b}}\
         .loophead{{fill:#f8fafc;stroke:#64748b;stroke-width:1.6}}\
         .loopicon{{fill:none;stroke:#475569;stroke-width:1.6}}\
         .terminal{{fill:#1e293b}}\
         .terminal.return{{fill:#475569}}\
         .terminal-text{{font:600 12px {SANS};fill:#ffffff}}\
         .exit{{fill:#fef2f2;stroke:#fca5a5;stroke-width:1}}\
         .exit-text{{font:600 10px {SANS};fill:#b91c1c}}\
         .bar{{fill:#334155}}\
         .legend{{font:11px {SANS};fill:#475569}}\
         .icon{{fill:none;stroke:#ffffff;stroke-width:1.8;stroke-linecap:round;stroke-linejoin:round}}\
         .icon.solid{{fill:#ffffff;stroke:none}}\
         .skipped .name,.skipped .caption{{fill:#94a3b8}}\
         .skipped .box{{stroke-dasharray:4 3}}"
    );
    for (state, fill, stroke, _) in STATES {
        let _ = write!(
            css,
            ".{state} .box,.swatch.{state}{{fill:{fill};stroke:{stroke}}}\
             .{state} .inner{{stroke:{stroke}}}\
             .{state} .dot{{fill:{stroke}}}"
        );
    }
    css.push_str(".running .box{stroke-width:2.4}");
    css
}

pub(crate) fn render(shape: &Node, title: Option<&str>, run: Option<&Trace>) -> String {
    let block = layout::workflow(shape, run);
    let uses = Uses::of(&block);
    let legend = legend(run.is_some(), &uses);
    let row_w = |row: &Vec<(f64, String)>| row.iter().map(|(w, _)| *w).sum::<f64>();
    let legend_w = legend.iter().map(row_w).fold(0.0, f64::max);
    let title_h = if title.is_some() { 52.0 } else { 0.0 };
    let title_w = title.map_or(0.0, |t| sans_w(t, 17.0) + 20.0);
    let inner_w = (block.l + block.r).max(legend_w).max(title_w);
    let width = (inner_w + 2.0 * MARGIN).ceil();
    let axis = MARGIN + block.l + (inner_w - block.l - block.r) / 2.0;
    let top = MARGIN + title_h;
    let legend_y = top + block.h + 34.0;
    let legend_h = legend.len() as f64 * 24.0;
    let height = (top
        + block.h
        + MARGIN
        + if legend.is_empty() {
            0.0
        } else {
            26.0 + legend_h
        })
    .ceil();

    let mut out = String::new();
    let label = title.unwrap_or("workflow");
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        xml(&format!("Workflow {label}"))
    );
    let _ = writeln!(out, "<title>{}</title>", xml(label));
    let _ = writeln!(out, "<style>{}</style>", style());
    out.push_str(
        "<defs>\
         <marker id=\"orch-arrow\" viewBox=\"0 0 10 10\" refX=\"9.5\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" markerUnits=\"userSpaceOnUse\" orient=\"auto\">\
         <path d=\"M0,0.5 L10,5 L0,9.5 z\" fill=\"#64748b\"/></marker>\
         </defs>\n",
    );
    let _ = writeln!(
        out,
        "<rect width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    if let Some(title) = title {
        let _ = writeln!(
            out,
            "<text class=\"title\" x=\"{MARGIN}\" y=\"{:.1}\">{}</text>",
            MARGIN + 12.0,
            xml(title)
        );
        let sub = if run.is_some() {
            "workflow · one instance's run"
        } else {
            "workflow · drawn from the code"
        };
        let _ = writeln!(
            out,
            "<text class=\"subtitle\" x=\"{MARGIN}\" y=\"{:.1}\">{sub}</text>",
            MARGIN + 30.0
        );
    }
    let _ = writeln!(out, "<g transform=\"translate({axis:.1},{top:.1})\">");
    // Wires first, so boxes sit on top of them.
    for it in block
        .items
        .iter()
        .filter(|i| matches!(i, Item::Wire { .. }))
    {
        item(&mut out, it);
    }
    for it in block
        .items
        .iter()
        .filter(|i| !matches!(i, Item::Wire { .. }))
    {
        item(&mut out, it);
    }
    out.push_str("</g>\n");
    for (i, row) in legend.iter().enumerate() {
        let y = legend_y + i as f64 * 24.0;
        let _ = writeln!(
            out,
            "<g class=\"legend-row\" transform=\"translate({MARGIN:.1},{y:.1})\">"
        );
        let mut x = 0.0;
        for (w, svg) in row {
            let _ = writeln!(out, "<g transform=\"translate({x:.1},0)\">{svg}</g>");
            x += w;
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

/// Which kinds of things the drawing shows, for the legend.
struct Uses {
    exit: bool,
    background: bool,
}

impl Uses {
    fn of(b: &Block) -> Uses {
        Uses {
            exit: b.items.iter().any(|i| matches!(i, Item::Exit { .. })),
            background: b.items.iter().any(|i| {
                matches!(
                    i,
                    Item::Wire {
                        kind: Wire::Background,
                        ..
                    }
                )
            }),
        }
    }
}

/// Legend rows (states, then symbols) of entries: (width, svg).
fn legend(coloured: bool, uses: &Uses) -> Vec<Vec<(f64, String)>> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    if coloured {
        for (state, _, _, text) in STATES {
            let svg = format!(
                "<rect class=\"swatch {state}\" x=\"0\" y=\"-10\" width=\"14\" height=\"14\" rx=\"3\" \
                 stroke-width=\"1.6\"/><text class=\"legend\" x=\"20\" y=\"1.5\">{text}</text>"
            );
            out.push((20.0 + sans_w(text, 11.0) + 18.0, svg));
        }
        rows.push(std::mem::take(&mut out));
    }
    if uses.exit {
        let text = "an error ends the workflow (?)";
        let svg = format!(
            "<rect class=\"exit\" x=\"0\" y=\"-11\" width=\"40\" height=\"16\" rx=\"8\"/>\
             <text class=\"exit-text\" x=\"20\" y=\"0.5\" text-anchor=\"middle\">? exit</text>\
             <text class=\"legend\" x=\"46\" y=\"1.5\">{}</text>",
            xml(text)
        );
        out.push((46.0 + sans_w(text, 11.0) + 18.0, svg));
    }
    if uses.background {
        let text = "background: runs beside, never fails the workflow";
        let svg = format!(
            "<path class=\"wire background\" d=\"M0,-3 L26,-3\"/>\
             <text class=\"legend\" x=\"32\" y=\"1.5\">{}</text>",
            xml(text)
        );
        out.push((32.0 + sans_w(text, 11.0) + 18.0, svg));
    }
    if !out.is_empty() {
        rows.push(out);
    }
    rows
}

fn item(out: &mut String, it: &Item) {
    match it {
        Item::Wire { pts, arrow, kind } => {
            let mut d = String::new();
            for (i, (x, y)) in pts.iter().enumerate() {
                let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" });
            }
            let class = match kind {
                Wire::Flow => "wire",
                Wire::Back => "wire back",
                Wire::Background => "wire background",
                Wire::Error => "wire error",
            };
            let marker = if *arrow {
                " marker-end=\"url(#orch-arrow)\""
            } else {
                ""
            };
            let _ = writeln!(out, "<path class=\"{class}\" d=\"{d}\"{marker}/>");
        }
        Item::Box(b) => node_box(out, b),
        Item::Decision {
            cx,
            cy,
            id,
            text,
            anchor,
        } => {
            let h = 17.0;
            let _ = write!(
                out,
                "<g class=\"node branch\" data-id=\"{id}\" data-label=\"{}\">\
                 <polygon class=\"decision\" points=\"{cx:.1},{:.1} {:.1},{cy:.1} {cx:.1},{:.1} {:.1},{cy:.1}\"/>",
                xml(text),
                cy - h,
                cx + h,
                cy + h,
                cx - h
            );
            let (x, a) = match anchor {
                Anchor::Start => (cx + h + 8.0, "start"),
                Anchor::End => (cx - h - 8.0, "end"),
            };
            let _ = writeln!(
                out,
                "<text class=\"cond\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{a}\">{}</text></g>",
                cy + 4.0,
                xml(text)
            );
        }
        Item::LoopHead {
            x,
            y,
            w,
            h,
            id,
            text,
        } => {
            let r = h / 2.0;
            let (ix, iy) = (x + 20.0, y + r);
            let _ = writeln!(
                out,
                "<g class=\"node loop\" data-id=\"{id}\" data-label=\"{}\">\
                 <rect class=\"loophead\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" rx=\"{r:.1}\"/>\
                 <path class=\"loopicon\" d=\"M{:.1},{:.1} A6,6 0 1 1 {:.1},{:.1}\"/>\
                 <path d=\"M{:.1},{:.1} l4,-1 l-1,4 z\" fill=\"#475569\" stroke=\"#475569\" stroke-width=\"1\"/>\
                 <text class=\"name\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
                xml(text),
                ix + 6.0,
                iy,
                ix,
                iy - 6.0,
                ix - 1.5,
                iy - 7.5,
                x + w / 2.0 + 10.0,
                y + r + 4.5,
                xml(text)
            );
        }
        Item::Terminal { x, y, w, h, kind } => {
            let (class, text) = match kind {
                Terminal::Start => ("terminal start", "start"),
                Terminal::End => ("terminal end", "end"),
                Terminal::Return => ("terminal return", "return"),
            };
            let _ = writeln!(
                out,
                "<g class=\"{class}-node\"><rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" \
                 width=\"{w:.1}\" height=\"{h:.1}\" rx=\"{:.1}\"/>\
                 <text class=\"terminal-text\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{text}</text></g>",
                h / 2.0,
                x + w / 2.0,
                y + h / 2.0 + 4.0
            );
        }
        Item::Exit { x, y, w, h } => {
            let _ = writeln!(
                out,
                "<g class=\"exit-node\"><rect class=\"exit\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" \
                 height=\"{h:.1}\" rx=\"{:.1}\"/><text class=\"exit-text\" x=\"{:.1}\" y=\"{:.1}\" \
                 text-anchor=\"middle\">? exit</text></g>",
                h / 2.0,
                x + w / 2.0,
                y + h / 2.0 + 3.5
            );
        }
        Item::Bar { x, y, w } => {
            let _ = writeln!(
                out,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"5\" rx=\"2\"/>"
            );
        }
        Item::Label { x, y, text, anchor } => {
            let a = match anchor {
                Anchor::Start => "start",
                Anchor::End => "end",
            };
            let _ = writeln!(
                out,
                "<text class=\"arm\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{a}\">{}</text>",
                xml(text)
            );
        }
        Item::Dot { x, y } => {
            let _ = writeln!(
                out,
                "<circle class=\"joint\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"/>"
            );
        }
    }
}

fn node_box(out: &mut String, b: &NodeBox) {
    let NodeBox {
        x,
        y,
        w,
        h,
        id,
        kind,
        name,
        caption,
        text,
        badge,
        run,
    } = b;
    let state = run.map(|r| r.state);
    let class = match state {
        Some(s) => format!("node {kind} {s}"),
        None => format!("node {kind}"),
    };
    let _ = write!(
        out,
        "<g class=\"{class}\" data-id=\"{id}\" data-kind=\"{kind}\""
    );
    if !name.is_empty() {
        let _ = write!(out, " data-name=\"{}\"", xml(name));
    }
    if let Some(NodeRun {
        state,
        runs,
        attempts,
    }) = run
    {
        let _ = write!(
            out,
            " data-state=\"{state}\" data-runs=\"{runs}\" data-attempts=\"{attempts}\""
        );
    }
    out.push('>');
    let tip = match run {
        Some(r) => format!("{caption} {text}: {}", r.state),
        None => format!("{caption} {text}"),
    };
    let _ = write!(out, "<title>{}</title>", xml(&tip));
    let _ = write!(
        out,
        "<rect class=\"box\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" rx=\"8\"/>"
    );
    if *kind == "child" {
        let _ = write!(
            out,
            "<rect class=\"inner\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"5\"/>",
            x + 4.0,
            y + 4.0,
            w - 8.0,
            h - 8.0
        );
    }
    let _ = write!(
        out,
        "<text class=\"caption\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        x + 14.0,
        y + 16.5,
        xml(&caption.to_uppercase())
    );
    let _ = write!(
        out,
        "<text class=\"name\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        x + 14.0,
        y + 35.0,
        xml(text)
    );
    let icon_x = x + w - 15.0;
    if !badge.is_empty() {
        let bx = if run.is_some() {
            icon_x - 12.0
        } else {
            x + w - 12.0
        };
        let _ = write!(
            out,
            "<text class=\"badge\" x=\"{bx:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            y + 16.5,
            xml(badge)
        );
    }
    if let Some(state) = state {
        icon(out, state, icon_x, y + 14.0);
    }
    out.push_str("</g>\n");
}

/// A small state icon: a filled circle in the state's colour with a white mark.
fn icon(out: &mut String, state: NodeState, cx: f64, cy: f64) {
    let mark = match state {
        NodeState::Done | NodeState::Retried => {
            format!(
                "<path class=\"icon\" d=\"M{:.1},{:.1} l2.2,2.4 l4.2,-4.8\"/>",
                cx - 3.2,
                cy + 0.2
            )
        }
        NodeState::Failed => format!(
            "<path class=\"icon\" d=\"M{:.1},{:.1} l5,5 M{:.1},{:.1} l-5,5\"/>",
            cx - 2.5,
            cy - 2.5,
            cx + 2.5,
            cy - 2.5
        ),
        NodeState::Running => format!(
            "<path class=\"icon solid\" d=\"M{:.1},{:.1} l5,3 l-5,3 z\"/>",
            cx - 2.0,
            cy - 3.0
        ),
        NodeState::Skipped => format!("<path class=\"icon\" d=\"M{:.1},{cy:.1} l6,0\"/>", cx - 3.0),
        NodeState::Pending => return,
    };
    let _ = write!(
        out,
        "<circle class=\"dot\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"7\"/>{mark}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        static SHAPE: Node = Node::Seq(&[Node::Branch {
            label: "if a < b && c > \"d\"",
            arms: &[super::super::Arm {
                label: "then",
                body: &[Node::Call {
                    name: "x",
                    may_fail: false,
                }],
            }],
        }]);
        let svg = render(&SHAPE, Some("<&>"), None);
        assert!(svg.contains("if a &lt; b &amp;&amp; c &gt; &quot;d&quot;"));
        assert!(svg.contains("<title>&lt;&amp;&gt;</title>"));
    }
}
