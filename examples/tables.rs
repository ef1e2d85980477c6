//! Placeholder until the tables example is written.
fn main() {}
