//! kios-init: PID 1 of a kiOS node. The folder tree is the code map:
//!
//! - `boot/`: the boot path, run once before any child exists: base mounts,
//!   early kernel modules, the data partition and its layout, network
//!   basics, the services' command lines, the boot timeline, and the
//!   unmounting that shutdown ends with.
//! - `runtime/`: the event loop that supervises cri-o and the kubelet, reaps
//!   every zombie, captures service output, serves the system socket
//!   (`runtime/server/`) and runs the graceful shutdown.
//! - `sys/`: every syscall with side effects on the machine, behind the
//!   `Sys` trait; the only module with `unsafe`.
//! - `kmsg`: the kernel log, written by both halves.

pub mod boot;
pub mod decimal;
pub mod kmsg;
pub mod kmsgread;
pub mod panic;
pub mod runtime;
pub mod sys;
