//! A kiOS node under test: the built image, the kernel and one data disk
//! that persists across the node's boots, plus the admin script the kubelet
//! stand-in runs like a `kubectl debug node` session.
//!
//! A test describes the node once ([`NodeSpec`]: /etc overlay files on the
//! data partition, the admin script of the first boot), then boots it as
//! often as it needs; between boots it may replace the script
//! ([`Node::set_script`]) or read the partition back ([`Node::disk`]).
//! Console logs are `target/vm/<test>/boot<N>.console.log`.
//!
//! A node is booted one of two ways: the fast path (qemu's `-kernel` with
//! the initramfs, and a data disk of its own), or, with [`NodeSpec::uefi`],
//! the way a machine boots: OVMF firmware starts `EFI/BOOT/BOOTX64.EFI`
//! from the builder's GPT disk image, whose data partition the node uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::disk::{stage_layout, DataDisk, DiskLayout};
use super::firmware::Firmware;
use super::image::{build_disk_image, build_image, DiskImage, ImageConfig};
use super::qemu::{Vm, VmConfig};
use super::{kernel, test_dir, Kernel, TestDir, VmError};

/// Where the admin script lives on the node (on the data partition's /etc
/// overlay, so it can change between boots).
pub const SCRIPT_PATH: &str = "/etc/kios-e2e/admin.script";

/// The cgroup the debug child joins, under the pod cgroup prefix that
/// `verify` treats as cri-o's pods (a real debug pod is a container).
pub const DEBUG_CGROUP: &str = "kubepods/kios-e2e-debug";

/// The admin script: lines the kubelet stand-in runs once per boot.
#[derive(Debug, Clone, Default)]
pub struct Script {
    lines: Vec<String>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    /// Appends a line; returns its 1-based number (the `<n>` of its
    /// `KIOS-E2E BEGIN <n>` block).
    fn push(&mut self, line: String) -> u32 {
        self.lines.push(line);
        u32::try_from(self.lines.len()).unwrap_or(u32::MAX)
    }

    /// `kiosctl ARGS`; its output comes back as admin block N.
    pub fn kiosctl(&mut self, args: &str) -> u32 {
        self.push(format!("kiosctl {args}"))
    }

    pub fn sleep_ms(&mut self, ms: u64) -> u32 {
        self.push(format!("sleep {ms}"))
    }

    /// kill(2) from the debug child, e.g. `signal("TERM", 1)`.
    pub fn signal(&mut self, signal: &str, pid: i32) -> u32 {
        self.push(format!("signal {signal} {pid}"))
    }

    /// Creates an executable file at PATH on the node.
    pub fn plant(&mut self, path: &str) -> u32 {
        self.push(format!("plant {path}"))
    }

    /// Runs a program of the node in init's mount namespace (`host
    /// /bin/busybox mount -o remount,exec /var/log`); admin block N.
    pub fn host(&mut self, args: &str) -> u32 {
        self.push(format!("host {args}"))
    }

    /// Waits up to `ms` for PATH to exist on the node.
    pub fn wait_file(&mut self, path: &str, ms: u64) -> u32 {
        self.push(format!("wait-file {path} {ms}"))
    }

    /// The script text; line N of it is admin block N.
    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}

/// How a node is made.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The test's name: its folder under `target/vm/`.
    pub name: String,
    /// The data partition's contents (the /etc overlay and /var/log).
    pub disk: DiskLayout,
    /// `kubelet.conf` keys for the kubelet stand-in (besides the script).
    pub kubelet_conf: Vec<String>,
    /// `crio.conf` keys for the cri-o stand-in.
    pub crio_conf: Vec<String>,
    /// The first boot's admin script (none: the stand-in runs nothing).
    pub script: Option<Script>,
    /// Additions to the image.
    pub image: ImageConfig,
    /// Boot the builder's disk image through UEFI firmware instead of
    /// `-kernel` (slower under emulation: the firmware, and the kernel
    /// decompressing itself).
    pub uefi: bool,
}

/// Size of a UEFI node's disk image (64 MiB ESP, the rest data).
pub const UEFI_DISK_MIB: u64 = 128;

impl NodeSpec {
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            disk: DiskLayout::default(),
            kubelet_conf: vec!["grace_ms=500".into()],
            crio_conf: Vec::new(),
            script: None,
            image: ImageConfig::default(),
            uefi: false,
        }
    }
}

/// A node: image, kernel and its persistent data disk.
#[derive(Debug)]
pub struct Node {
    dir: PathBuf,
    /// Holds the folder's lock while the node exists.
    _test_dir: TestDir,
    kernel: Kernel,
    initramfs: PathBuf,
    disk: DataDisk,
    /// The disk image and firmware of a UEFI node.
    uefi: Option<(DiskImage, Firmware)>,
    boots: u32,
    /// Time spent preparing (artifacts, kernel, image, disk).
    pub prepare_time: Duration,
}

fn conf_text(keys: &[String]) -> Vec<u8> {
    let mut text = keys.join("\n");
    text.push('\n');
    text.into_bytes()
}

impl Node {
    /// Builds the image and the data disk.
    pub fn prepare(spec: &NodeSpec) -> Result<Node, VmError> {
        let started = Instant::now();
        let test_dir = test_dir(&spec.name)?;
        let dir = test_dir.path().to_owned();
        let kernel = kernel()?.clone();
        let inputs = super::image::inputs_dir()?;

        let mut layout = spec.disk.clone();
        let mut kubelet = spec.kubelet_conf.clone();
        if let Some(script) = &spec.script {
            kubelet.push(format!("script={SCRIPT_PATH}"));
            kubelet.push(format!("debug_cgroup={DEBUG_CGROUP}"));
            layout
                .etc
                .push(("kios-e2e/admin.script".into(), script.text().into_bytes()));
        }
        layout
            .etc
            .push(("kios-e2e/kubelet.conf".into(), conf_text(&kubelet)));
        if !spec.crio_conf.is_empty() {
            layout
                .etc
                .push(("kios-e2e/crio.conf".into(), conf_text(&spec.crio_conf)));
        }
        let (initramfs, disk, uefi) = if spec.uefi {
            let seed = stage_layout(&dir, &layout)?;
            let image =
                build_disk_image(&dir, &inputs, &kernel, &spec.image, UEFI_DISK_MIB, &seed)?;
            let disk = DataDisk::within(&dir, &image.disk, image.data.offset, image.data.bytes);
            let firmware = Firmware::prepare(&dir.join("ovmf-vars.fd"))?;
            (image.efi.clone(), disk, Some((image, firmware)))
        } else {
            let initramfs = build_image(&dir, &inputs, &kernel, &spec.image)?;
            (initramfs, DataDisk::create(&dir, &layout)?, None)
        };
        Ok(Node {
            dir,
            _test_dir: test_dir,
            kernel,
            initramfs,
            disk,
            uefi,
            boots: 0,
            prepare_time: started.elapsed(),
        })
    }

    /// The test's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn disk(&self) -> &DataDisk {
        &self.disk
    }

    /// The disk image of a UEFI node.
    pub fn disk_image(&self) -> Option<&DiskImage> {
        self.uefi.as_ref().map(|(image, _)| image)
    }

    /// The VM configuration of the next boot (for tests that adjust it).
    pub fn next_config(&self) -> VmConfig {
        let mut config = VmConfig::new(
            &self.dir,
            &format!("boot{}", self.boots + 1),
            &self.kernel,
            &self.initramfs,
        );
        config.disk = Some(self.disk.image().to_owned());
        config.firmware = self.uefi.as_ref().map(|(_, firmware)| firmware.clone());
        config
    }

    /// Boots the node (qemu exits when it powers off or reboots).
    pub fn boot(&mut self) -> Result<Vm, VmError> {
        let config = self.next_config();
        self.boot_with(config)
    }

    /// Boots the node with an adjusted configuration.
    pub fn boot_with(&mut self, config: VmConfig) -> Result<Vm, VmError> {
        self.boots += 1;
        eprintln!(
            "vm: {} boot {}: console {}",
            self.dir.display(),
            self.boots,
            config.console_path().display()
        );
        Vm::start(config)
    }

    /// Replaces the admin script on the data partition (VM stopped).
    pub fn set_script(&self, script: &Script) -> Result<(), VmError> {
        self.disk
            .write_file(&format!("/meta{SCRIPT_PATH}"), script.text().as_bytes())
    }
}

/// Default deadlines of the VM tests (software emulation on a shared,
/// 2-core machine: generous, and never a substitute for waiting on events).
pub mod deadline {
    use std::time::Duration;
    /// qemu start to the kubelet stand-in running.
    pub const BOOT: Duration = Duration::from_secs(90);
    /// qemu start to the kubelet stand-in running on the firmware path
    /// (OVMF and the kernel decompressing itself add 10-30 s under
    /// emulation, more on a loaded machine).
    pub const FIRMWARE_BOOT: Duration = Duration::from_secs(180);
    /// One admin command.
    pub const COMMAND: Duration = Duration::from_secs(60);
    /// Shutdown request to qemu's exit.
    pub const POWER_OFF: Duration = Duration::from_secs(90);
}
