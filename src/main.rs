//! The `tidemark` command line.
fn main() {}
