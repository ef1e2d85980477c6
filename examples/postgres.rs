//! Placeholder until the postgres example is written.
fn main() {}
