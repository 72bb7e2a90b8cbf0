// Broker benchmarks: being written.
fn main() {}
