//! The rootfs command-line tool: builds the initramfs from the spec.
fn main() {}
