//! End-to-end harnesses for kiOS: namespace sandbox, qemu VM, and the service stand-ins.

#[cfg(feature = "harness")]
pub mod vm;
