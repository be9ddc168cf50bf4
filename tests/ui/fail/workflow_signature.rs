//! Workflow signatures the runtime cannot resume.

use orch_runtime::prelude::*;

#[workflow]
fn not_async(n: u32) -> u32 {
    n
}

#[workflow]
async fn generic<T: Clone>(x: T) -> u32 {
    let _ = x;
    1
}

#[workflow]
async fn borrowed(name: &str, items: impl Iterator<Item = u32>) -> u32 {
    let _ = name;
    items.sum()
}

#[workflow]
async unsafe fn unsafe_one() -> u32 {
    1
}

#[workflow]
async fn opaque() -> impl std::fmt::Debug {
    1
}

struct Shop;

impl Shop {
    #[workflow]
    async fn checkout(&self) -> u32 {
        1
    }
}

#[workflow]
struct NotAFunction;

fn main() {}
