//! The checkout example (being written).
fn main() {}
