//! The kiOS image: every path on a node, why it is there, and whether the
//! running node still matches.
//!
//! Always available (kios-init links these, without the `builder` feature):
//! - [`inventory`]: the inventory types, its versioned binary encoding
//!   (magic + version + postcard) and lookup by path;
//! - [`verify`]: the live root filesystem against the inventory;
//! - [`areas`]: the runtime areas (no programs, no setuid files where the
//!   spec allows none);
//! - [`mountcheck`]: the live mount table against the boot one and the spec;
//! - [`reference`]: the inventory and mount table init keeps from boot, and
//!   [`reference::verify_node`], every file and mount check of a node;
//! - [`procs`]: the processes of init's PID namespace;
//! - [`mountinfo`]: the one parser of `/proc/PID/mountinfo`;
//! - [`modprobe`]: modules.dep/softdep/alias/builtin and modprobe's load
//!   order (kios-init loads by it, the builder copies by it);
//! - [`hash`]: fast SHA-256 of files;
//! - [`osrelease`]: the image's os-release text and its version fields.
//!
//! With the `builder` feature (build time only):
//! - [`spec`]: parsing `rootfs/spec/files.toml`, the human-edited spec;
//! - [`elf`]: the interpreter and DT_NEEDED closure of dynamic inputs;
//! - [`kmod`]: early kernel modules and their dependency closure;
//! - [`build`]: the image plan, written as a directory tree or a newc cpio
//!   ([`cpio`]), carrying its inventory;
//! - [`uki`]: the unified kernel image (EFI stub + os-release, command
//!   line, initramfs and kernel sections);
//! - [`disk`]: the GPT disk image with the EFI system partition and the
//!   data partition;
//! - [`docs`]: `docs/reference/files.md` generated from the spec.

pub mod areas;
pub mod hash;
pub mod inventory;
pub mod modprobe;
pub mod mountcheck;
pub mod mountinfo;
pub mod osrelease;
pub mod procs;
pub mod reference;
pub mod verify;

#[cfg(feature = "builder")]
pub mod build;
#[cfg(feature = "builder")]
pub mod cpio;
#[cfg(feature = "builder")]
pub mod disk;
#[cfg(feature = "builder")]
pub mod docs;
#[cfg(feature = "builder")]
pub mod elf;
#[cfg(feature = "builder")]
pub mod kmod;
#[cfg(feature = "builder")]
pub mod spec;
#[cfg(feature = "builder")]
pub mod uki;

#[cfg(feature = "builder")]
pub use build::{build_cpio, build_tree, BuildOptions, Compression, ModulesOptions, Release};
pub use inventory::{Allow, Component, Contents, Entry, Inventory, Kind, Presence, INVENTORY_PATH};
pub use osrelease::ImageRelease;
pub use procs::{classify, snapshot, verify_processes, ExpectedProcs, ProcInfo, Role, Snapshot};
pub use reference::{verify_node, BootReference, NodePaths};
pub use verify::{verify_tree, Finding, Problem, Report, VerifyOptions};
