//! How nodes are named in drawings, and escaping for the output formats.

use super::{Node, is_workflow};

/// What a drawn box says: a small caption (its kind) and its main text.
pub(crate) struct Label {
    pub caption: &'static str,
    pub text: String,
}

/// The caption and text of a leaf node; `None` for nodes drawn otherwise.
pub(crate) fn leaf(node: &Node) -> Option<Label> {
    let (caption, text) = match node {
        Node::Call { name, .. } if is_workflow(name) => ("workflow", name.to_string()),
        Node::Call { name, .. } => ("step", name.to_string()),
        Node::Child { workflow, .. } => ("workflow", workflow.to_string()),
        Node::Sleep { label } => ("timer", format!("sleep {label}")),
        Node::Signal {
            name,
            timeout: false,
        } => ("signal", format!("wait for \"{name}\"")),
        Node::Signal {
            name,
            timeout: true,
        } => ("signal · timeout", format!("wait for \"{name}\"")),
        _ => return None,
    };
    Some(Label { caption, text })
}

/// Whether the node is a call followed by `?`.
pub(crate) fn may_fail(node: &Node) -> bool {
    matches!(
        node,
        Node::Call { may_fail: true, .. } | Node::Child { may_fail: true, .. }
    )
}

/// Whether the node is drawn as a child workflow.
pub(crate) fn is_child(node: &Node) -> bool {
    match node {
        Node::Call { name, .. } => is_workflow(name),
        Node::Child { .. } => true,
        _ => false,
    }
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Text for XML character data and attribute values.
pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all: dropped.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Text inside a Mermaid `"…"` label.
pub(crate) fn mermaid(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' => out.push_str("#35;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text inside a DOT `"…"` string.
pub(crate) fn dot(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(xml("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(mermaid("say \"hi\" #1"), "say #quot;hi#quot; #35;1");
        assert_eq!(dot("a\"b\\"), "a\\\"b\\\\");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
