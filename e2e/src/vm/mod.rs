//! The qemu harness: boots a kiOS image on a real Linux kernel.
//!
//! - [`kernel`]: the kernel to boot (`KIOS_KERNEL` or Debian's stock one,
//!   fetched and cached under `target/kernel/`).
//! - [`image`]: the initramfs, built with the rootfs builder from the inputs
//!   dir of [`crate::artifacts`] plus the kernel's early modules.
//! - [`disk`]: the data partition disk (GPT + ext4 with the kiOS layout),
//!   and reading it back after the VM stopped (fsck, file contents).
//! - [`firmware`]: OVMF (UEFI) with a per-VM variable store, for VMs that
//!   boot the disk image as a machine does.
//! - [`qemu`]: one VM process: command line, monitor, kill by pid on drop.
//! - [`console`]: the serial console log: waiting for lines with a deadline
//!   and parsing the kubelet stand-in's admin script blocks.
//! - [`node`]: a kiOS node under test: image + kernel + a data disk that
//!   persists across its boots, and the admin script the kubelet stand-in
//!   runs like a `kubectl debug node` session.
//!
//! Every VM of a test lives in its own folder `target/vm/<test>/` (console
//! logs, disk, image), kept after the test for debugging.

pub mod console;
pub mod disk;
pub mod firmware;
pub mod image;
pub mod kernel;
pub mod node;
pub mod qemu;
#[cfg(test)]
mod selftest;

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

pub use console::{starts, AdminCommand, Console, Started};
pub use disk::{DataDisk, DiskLayout, PartitionFormat};
pub use firmware::Firmware;
pub use image::{build_image, ImageConfig};
pub use kernel::{kernel, Kernel};
pub use node::{deadline, Node, NodeSpec, Script};
pub use qemu::{Vm, VmConfig};

/// Early kernel modules the stock Debian kernel needs on a kiOS node in
/// qemu, as an administrator writes them: the virtio disk, ext4, the /etc
/// overlay, and the ACPI power button with its event device. Everything
/// else (modules.dep dependencies, ext4's crc32c through modules.softdep
/// and modules.alias) is found as modprobe finds it.
pub const EARLY_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "ext4",
    "overlay",
    "evdev",
    "button",
];

/// Everything that can go wrong while preparing, running or reading a VM.
#[derive(Debug, Error)]
pub enum VmError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {tool}: {source} (install it: {hint})")]
    ToolMissing {
        tool: String,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("image: {0}")]
    Image(String),
    #[error("disk: {0}")]
    Disk(String),
    #[error("start qemu: {0}")]
    Start(String),
    #[error("monitor {}: {source}", path.display())]
    Monitor {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("timed out after {waited_ms} ms waiting for {what}; console tail:\n{tail}")]
    Timeout {
        what: String,
        waited_ms: u128,
        tail: String,
    },
    #[error("the VM exited while waiting for {what}; console tail:\n{tail}")]
    Exited { what: String, tail: String },
}

impl VmError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> VmError {
        VmError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// The Debian package that ships a tool the harness runs.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-system-x86_64" => "apt-get install qemu-system-x86",
        "sgdisk" => "apt-get install gdisk",
        "mkfs.ext4" | "e2fsck" | "debugfs" | "dumpe2fs" => "apt-get install e2fsprogs",
        "mkfs.vfat" => "apt-get install dosfstools",
        "depmod" => "apt-get install kmod",
        "dpkg-deb" => "apt-get install dpkg-dev",
        "apt-get" | "apt-cache" => "a Debian system with apt",
        "cpio" => "apt-get install cpio",
        "mformat" | "mcopy" | "mdir" => "apt-get install mtools",
        "qemu-img" => "apt-get install qemu-utils",
        _ => "see scripts/deps",
    }
}

/// Runs a tool to completion; its stdout on success, a clear error otherwise
/// (with the package to install when the tool is missing).
pub(crate) fn run_tool(command: &mut Command, tool: &str) -> Result<String, VmError> {
    let output = command.output().map_err(|source| VmError::ToolMissing {
        tool: tool.to_owned(),
        hint: package_of(tool),
        source,
    })?;
    if !output.status.success() {
        return Err(VmError::ToolFailed {
            tool: tool.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The workspace root (the parent of the e2e crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A test's folder `target/vm/<name>/`, held exclusively: several test
/// processes on one machine (two engineers, or a test and the demo) that
/// want the same folder take turns instead of overwriting each other's
/// disk and logs. The lock (`target/vm/<name>.lock`) is released on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl TestDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Locks and empties the per-test folder `target/vm/<name>/`.
pub fn test_dir(name: &str) -> Result<TestDir, VmError> {
    let parent = workspace_root().join("target/vm");
    std::fs::create_dir_all(&parent).map_err(|e| VmError::io("create", &parent, e))?;
    let lock_path = parent.join(format!("{name}.lock"));
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| VmError::io("create", &lock_path, e))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "vm: {} is in use by another test process; waiting for it",
            parent.join(name).display()
        );
        lock.lock()
            .map_err(|e| VmError::io("lock", &lock_path, e))?;
    }
    let dir = parent.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| VmError::io("remove", &dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| VmError::io("create", &dir, e))?;
    Ok(TestDir {
        path: dir,
        _lock: lock,
    })
}

/// Unwraps a harness result in a test, panicking with the error's Display
/// (which carries the console tail) rather than its Debug form.
pub trait Must<T> {
    fn must(self) -> T;
}

impl<T, E: std::fmt::Display> Must<T> for Result<T, E> {
    #[track_caller]
    fn must(self) -> T {
        match self {
            Ok(value) => value,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The entry of service `name` in a `status -o json` reply.
pub fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}
