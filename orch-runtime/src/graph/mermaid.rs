//! Mermaid `flowchart TD` output.

use super::flowchart::{Flowchart, Shape, Style};
use super::text;
use super::{Node, NodeState, Trace};
use std::fmt::Write;

/// Fill and stroke per state, shared with the DOT output.
pub(crate) const STATE_COLOURS: [(NodeState, &str, &str); 6] = [
    (NodeState::Done, "#dcfce7", "#16a34a"),
    (NodeState::Retried, "#fef3c7", "#d97706"),
    (NodeState::Failed, "#fee2e2", "#dc2626"),
    (NodeState::Running, "#dbeafe", "#2563eb"),
    (NodeState::Skipped, "#f1f5f9", "#94a3b8"),
    (NodeState::Pending, "#ffffff", "#64748b"),
];

pub(crate) fn render(shape: &Node, title: Option<&str>, run: Option<&Trace>) -> String {
    let chart = Flowchart::of(shape, run);
    let mut out = String::new();
    if let Some(title) = title {
        let _ = writeln!(out, "---\ntitle: \"{}\"\n---", text::mermaid(title));
    }
    out.push_str("flowchart TD\n");
    for v in &chart.vertices {
        let t = text::mermaid(&v.text);
        let body = match v.shape {
            Shape::Start | Shape::End | Shape::Return => format!("([\"{t}\"])"),
            Shape::Fail => format!("([\"{t}\"]):::fail"),
            Shape::Step => format!("[\"{t}\"]"),
            Shape::Background => format!("[\"{t}\"]:::background"),
            Shape::Child => format!("[[\"{t}\"]]"),
            Shape::Wait => format!(">\"{t}\"]"),
            Shape::Decision => format!("{{\"{t}\"}}"),
            Shape::Loop => format!("{{{{\"{t}\"}}}}"),
            Shape::Fork => format!("[/\"{t}\"\\]"),
            Shape::Join => format!("[\\\"{t}\"/]"),
        };
        let _ = writeln!(out, "    {}{body}", v.key);
    }
    for e in &chart.edges {
        let arrow = match e.style {
            Style::Normal => "-->",
            Style::Dashed | Style::Error => "-.->",
        };
        match &e.label {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "    {} {arrow}|\"{}\"| {}",
                    e.from,
                    text::mermaid(l),
                    e.to
                );
            }
            None => {
                let _ = writeln!(out, "    {} {arrow} {}", e.from, e.to);
            }
        }
    }
    out.push_str("    classDef background stroke-dasharray: 5 3\n");
    out.push_str("    classDef fail fill:#fee2e2,stroke:#dc2626,color:#991b1b\n");
    if run.is_some() {
        for (state, fill, stroke) in STATE_COLOURS {
            let members: Vec<&str> = chart
                .vertices
                .iter()
                .filter(|v| v.state == Some(state))
                .map(|v| v.key.as_str())
                .collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "    classDef {state} fill:{fill},stroke:{stroke},stroke-width:2px"
            );
            let _ = writeln!(out, "    class {} {state}", members.join(","));
        }
    }
    out
}
