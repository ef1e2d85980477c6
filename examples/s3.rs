//! Placeholder until the s3 example is written.
fn main() {}
