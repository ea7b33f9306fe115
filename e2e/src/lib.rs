//! End-to-end harnesses for kiOS: the service stand-ins, the musl artifact
//! builder, the namespace sandbox (kios-init as PID 1 of fresh namespaces)
//! and the qemu VM harness.
//!
//! - [`standin`]: cri-o, kubelet and pinns stand-ins (built static, installed
//!   in test images); std and nix only.
//! - `artifacts` (feature `harness`): builds the static binaries once and the
//!   image tree with the rootfs builder.
//! - `ns` (feature `harness`): the namespace sandbox; `cgroup`: a pids
//!   cgroup of a test's own for one.
//! - `programs` (feature `harness`): which programs the workspace runs and
//!   whether a fresh Debian machine has them after scripts/deps.
//! - `proc_events` (feature `harness`): the kernel's exec and exit events
//!   with their times (the process connector), the bench's clock for "new
//!   kubelet running".
//! - `figure` (feature `harness`): the budgets bench's table (figures,
//!   budgets, min/median/max, pass or fail, ratio to a reference init).

pub mod standin;

#[cfg(feature = "harness")]
pub mod artifacts;
#[cfg(feature = "harness")]
pub mod cgroup;
#[cfg(feature = "harness")]
pub mod figure;
#[cfg(feature = "harness")]
pub mod ns;
#[cfg(feature = "harness")]
pub mod proc_events;
#[cfg(feature = "harness")]
pub mod programs;
#[cfg(feature = "harness")]
pub mod vm;
