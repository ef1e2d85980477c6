//! Placeholder until the memory example is written.
fn main() {}
