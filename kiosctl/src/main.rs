//! kiosctl: the administrators CLI.
fn main() {}
