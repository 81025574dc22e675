//! Echo server benchmark (being written).
fn main() {}
