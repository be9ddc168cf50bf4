//! Iterating a HashMap or HashSet: the order differs between processes.

use orch_runtime::prelude::*;
use std::collections::{HashMap, HashSet};

#[workflow]
async fn tally(counts: HashMap<String, u32>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, _) in counts {
        out.push(name);
    }
    let mut tags = HashSet::new();
    tags.insert("a".to_string());
    for tag in &tags {
        out.push(tag.clone());
    }
    let sizes: HashMap<u32, u32> = HashMap::with_capacity(2);
    out.extend(sizes.keys().map(|k| k.to_string()));
    // A misspelled marker does not opt out.
    #[orch(determinstic)]
    let first = tags.iter().next().cloned();
    out.extend(first);
    out
}

fn main() {}
