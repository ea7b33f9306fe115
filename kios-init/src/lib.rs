//! kios-init: PID 1 of a kiOS node.
//!
//! The boot path (`boot`) mounts the base filesystems, loads early kernel
//! modules, finds and mounts the data partition and sets up the network
//! basics. The runtime (`runtime`) then supervises cri-o and the kubelet,
//! reaps every zombie, serves the system socket and runs the graceful
//! shutdown. Every syscall with side effects on the machine goes through
//! `sys`.

// System layer (boot side).
pub mod argv;
pub mod boot;
pub mod datapart;
pub mod gpt;
pub mod grace;
pub mod kmsg;
pub mod milestones;
pub mod modules;
pub mod mounts;
pub mod netsetup;
pub mod sys;
pub mod teardown;

// Runtime (supervision, socket, shutdown).
pub mod logcapture;
pub mod logind;
pub mod power_button;
pub mod reaper;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod supervisor;
