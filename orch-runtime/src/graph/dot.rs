//! Graphviz DOT output.

use super::flowchart::{Flowchart, Shape, Style};
use super::mermaid::STATE_COLOURS;
use super::text;
use super::{Node, Trace};
use std::fmt::Write;

pub(crate) fn render(shape: &Node, title: Option<&str>, run: Option<&Trace>) -> String {
    let chart = Flowchart::of(shape, run);
    let mut out = String::from("digraph workflow {\n");
    if let Some(title) = title {
        let _ = writeln!(
            out,
            "    label=\"{}\"; labelloc=t; fontname=\"Helvetica\";",
            text::dot(title)
        );
    }
    out.push_str("    rankdir=TB;\n");
    out.push_str(
        "    node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", \
         color=\"#64748b\", fontname=\"Helvetica\"];\n",
    );
    out.push_str("    edge [color=\"#475569\", fontname=\"Helvetica\", fontsize=10];\n");
    for v in &chart.vertices {
        let mut attrs = vec![format!("label=\"{}\"", text::dot(&v.text))];
        match v.shape {
            Shape::Start | Shape::End | Shape::Return => {
                attrs.push("shape=oval".into());
                attrs.push("fillcolor=\"#e2e8f0\"".into());
            }
            Shape::Fail => {
                attrs.push("shape=oval".into());
                attrs.push("fillcolor=\"#fee2e2\", color=\"#dc2626\"".into());
            }
            Shape::Step => {}
            Shape::Background => attrs.push("style=\"rounded,filled,dashed\"".into()),
            Shape::Child => attrs.push("peripheries=2".into()),
            Shape::Wait => attrs.push("shape=cds".into()),
            Shape::Decision => attrs.push("shape=diamond".into()),
            Shape::Loop => attrs.push("shape=hexagon".into()),
            Shape::Fork | Shape::Join => {
                attrs.push("shape=box, height=0.08, width=1.2, fixedsize=true".into());
                attrs.push("fillcolor=\"#334155\", label=\"\"".into());
                attrs.remove(0);
            }
        }
        if let Some(state) = v.state
            && let Some((_, fill, stroke)) = STATE_COLOURS.iter().find(|(s, ..)| *s == state)
        {
            attrs.push(format!(
                "fillcolor=\"{fill}\", color=\"{stroke}\", penwidth=2, class=\"{state}\""
            ));
        }
        let _ = writeln!(out, "    {} [{}];", v.key, attrs.join(", "));
    }
    for e in &chart.edges {
        let mut attrs = Vec::new();
        if let Some(l) = &e.label {
            attrs.push(format!("label=\"{}\"", text::dot(l)));
        }
        match e.style {
            Style::Normal => {}
            Style::Dashed => attrs.push("style=dashed".into()),
            Style::Error => attrs.push("style=dashed, color=\"#dc2626\"".into()),
        }
        if attrs.is_empty() {
            let _ = writeln!(out, "    {} -> {};", e.from, e.to);
        } else {
            let _ = writeln!(out, "    {} -> {} [{}];", e.from, e.to, attrs.join(", "));
        }
    }
    out.push_str("}\n");
    out
}
