//! Data partition faults in the VM (issue 11): the partition is missing, is
//! not ext4, is a corrupted ext4, or sits on a read-only disk. Each time
//! init says so in the kernel log, `status` shows the partition's state,
//! everything else still works (both services run, `restart crio` starts
//! a new cri-o, status answers, /var/log is writable) and the ACPI power
//! button shuts the node down gracefully and powers the VM off; the
//! disk holds exactly the bytes it had before the boot (init never wrote
//! to a partition it could not use), and an ext4 one is e2fsck-clean.
//!
//! The cases share one image (built once, under `target/vm/vm_datapart/`)
//! and take turns with it; each has its own disk in a subfolder and its
//! own console log (`target/vm/vm_datapart/<case>.console.log`). The
//! stand-ins' settings and the admin script are baked into the image: with
//! no usable partition there is no /etc overlay to carry them.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use kios_e2e::vm::disk::DATA_PARTITION_TYPE;
use kios_e2e::vm::node::{DEBUG_CGROUP, SCRIPT_PATH};
use kios_e2e::vm::{
    deadline, service, starts, DataDisk, DiskLayout, ImageConfig, Must, Node, NodeSpec,
    PartitionFormat, Script, Vm, VmConfig,
};

/// A Linux filesystem partition's type GUID: not the kiOS data type.
const LINUX_DATA_TYPE: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// The admin script every case runs, and its command numbers.
struct Commands {
    status_json: u32,
    restart_crio: u32,
    status_table: u32,
    planted: String,
}

fn script() -> (Script, Commands) {
    let mut s = Script::new();
    let status_json = s.kiosctl("status -o json");
    let restart_crio = s.kiosctl("restart crio");
    let status_table = s.kiosctl("status");
    // /var/log is writable whatever became of the partition.
    let planted = "/var/log/kios-e2e-datapart-mark".to_owned();
    s.plant(&planted);
    (
        s,
        Commands {
            status_json,
            restart_crio,
            status_table,
            planted,
        },
    )
}

/// The one node (and image) the cases share, one case at a time.
fn node() -> MutexGuard<'static, Node> {
    static NODE: OnceLock<Mutex<Node>> = OnceLock::new();
    NODE.get_or_init(|| {
        let mut spec = NodeSpec::new("vm_datapart");
        let (script, _) = script();
        let kubelet_conf =
            format!("grace_ms=500\nscript={SCRIPT_PATH}\ndebug_cgroup={DEBUG_CGROUP}\n");
        spec.image = ImageConfig::default()
            .file("/etc/kios-e2e/kubelet.conf", kubelet_conf, 0o644)
            .file(SCRIPT_PATH, script.text(), 0o644);
        Mutex::new(Node::prepare(&spec).must())
    })
    .lock()
    .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes the case's disk in `<node dir>/<case>/`.
fn disk(node: &Node, case: &str, layout: &DiskLayout) -> DataDisk {
    let dir = node.dir().join(case);
    std::fs::create_dir_all(&dir).unwrap();
    DataDisk::create(&dir, layout).must()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What one case saw.
struct Outcome {
    vm: Vm,
    /// The kernel log line init wrote about the partition.
    line: String,
    /// `status -o json`'s node.datapart.
    datapart: serde_json::Value,
    status_table: String,
}

/// Boots the node on `disk` (read-only when asked) with extra command line
/// words, waits for init's line containing `logged`, and checks that the
/// node does everything else and powers off. The disk must hold the same
/// bytes afterwards.
fn run_case(
    node: &mut Node,
    case: &str,
    disk: &DataDisk,
    readonly: bool,
    cmdline: &[&str],
    logged: &str,
) -> Outcome {
    let t0 = Instant::now();
    let before = read(disk.image());
    let mut config: VmConfig = node.next_config();
    config.name = case.to_owned();
    config.disk = Some(disk.image().to_owned());
    config.disk_readonly = readonly;
    config
        .cmdline
        .extend(cmdline.iter().map(|w| (*w).to_owned()));
    let mut vm = node.boot_with(config).must();
    let (_, commands) = script();

    let line = vm.wait_for(logged, deadline::BOOT).must().text;
    assert!(line.contains("kiOS: "), "{case}: init's line: {line}");
    vm.wait_for("KIOS-E2E kubelet started", deadline::BOOT)
        .must();
    let to_kubelet = vm.elapsed();

    let status = vm
        .wait_admin(commands.status_json, deadline::COMMAND)
        .must();
    assert_eq!(status.rc, Some(0), "{case}: status:\n{}", status.text());
    let status = status.json().expect("status -o json prints JSON");
    for name in ["crio", "kubelet"] {
        assert_eq!(
            service(&status, name)["state"],
            "running",
            "{case}: {name} in {status}"
        );
    }
    let crio_pid = service(&status, "crio")["pid"].as_u64();
    let restart = vm
        .wait_admin(commands.restart_crio, deadline::COMMAND)
        .must();
    assert_eq!(
        restart.rc,
        Some(0),
        "{case}: restart crio:\n{}",
        restart.text()
    );
    let table = vm
        .wait_admin(commands.status_table, deadline::COMMAND)
        .must();
    assert_eq!(table.rc, Some(0), "{case}: status:\n{}", table.text());
    vm.wait_for(
        &format!("KIOS-E2E planted {}", commands.planted),
        deadline::COMMAND,
    )
    .must();

    // The restarted cri-o runs (polled: its start may come before or after
    // the lines waited for above), then the power button shuts down.
    let until = Instant::now() + deadline::COMMAND;
    while starts(vm.console().lines(), "crio").len() < 2 {
        assert!(
            vm.refresh().must().is_none() && Instant::now() < until,
            "{case}: no second cri-o start; console {}",
            vm.config().console_path().display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let asked = Instant::now();
    vm.power_button().must();
    vm.wait_for("KIOS-E2E kubelet grace-done", deadline::POWER_OFF)
        .must();
    let exit = vm.wait_exit(deadline::POWER_OFF).must();
    let power_off = asked.elapsed();
    assert!(exit.success(), "{case}: qemu exit {exit}");
    let texts = vm.console().texts().join("\n");
    assert!(
        texts.contains("reboot: Power down"),
        "{case}: the guest powered off (console {})",
        vm.config().console_path().display()
    );
    assert!(!texts.contains("Kernel panic"), "{case}: kernel panic");
    let crio = starts(vm.console().lines(), "crio");
    assert_eq!(crio.len(), 2, "{case}: cri-o started, then restarted");
    assert!(crio_pid.is_some(), "{case}: cri-o's pid in status");
    assert_eq!(
        starts(vm.console().lines(), "kubelet").len(),
        1,
        "{case}: the kubelet started once"
    );
    assert!(
        read(disk.image()) == before,
        "{case}: the disk changed while init could not use its partition ({})",
        disk.image().display()
    );
    eprintln!(
        "vm_datapart {case}: qemu start to kubelet {to_kubelet:?}, shutdown request to qemu exit \
         {power_off:?}, case {:?}",
        t0.elapsed()
    );
    Outcome {
        vm,
        line,
        datapart: status["node"]["datapart"].clone(),
        status_table: table.text(),
    }
}

/// The wanted-but-unmounted shape of `status`.
fn assert_unmounted(case: &str, datapart: &serde_json::Value, wanted: &str, problem: &str) {
    assert_eq!(datapart["mounted"], false, "{case}: {datapart}");
    assert_eq!(
        datapart["device"],
        serde_json::Value::Null,
        "{case}: {datapart}"
    );
    assert!(
        datapart["wanted"]
            .as_str()
            .is_some_and(|w| w.starts_with(wanted)),
        "{case}: wanted {wanted}: {datapart}"
    );
    assert!(
        datapart["problem"]
            .as_str()
            .is_some_and(|p| p.contains(problem)),
        "{case}: problem {problem:?}: {datapart}"
    );
    assert!(datapart.get("read_only").is_none(), "{case}: {datapart}");
}

#[test]
fn no_data_partition_on_the_disk() {
    let mut node = node();
    // A disk with an ext4 partition of the Linux type: not the node's to use.
    let layout = DiskLayout {
        partition_type: LINUX_DATA_TYPE.to_owned(),
        ..DiskLayout::default()
    };
    let disk = disk(&node, "missing", &layout);
    let mut out = run_case(
        &mut node,
        "missing",
        &disk,
        false,
        &["kios.datapart_timeout=2"],
        "DATA PARTITION MISSING:",
    );
    assert!(
        out.line.contains(&format!(
            "DATA PARTITION MISSING: auto (gpt type {DATA_PARTITION_TYPE}) not found within 2s; \
             continuing without it (node state is ephemeral)"
        )),
        "{}",
        out.line
    );
    assert_unmounted("missing", &out.datapart, "auto", "not found within 2s");
    assert!(
        out.status_table.contains("not mounted (wanted auto"),
        "{}",
        out.status_table
    );
    let texts = out.vm.console().texts().join("\n");
    assert!(
        texts.contains("waiting up to 2s for the data partition"),
        "init said it waits"
    );
    disk.fsck()
        .unwrap_or_else(|e| panic!("the foreign partition: {e}"));
}

#[test]
fn the_partition_is_not_ext4() {
    let mut node = node();
    let layout = DiskLayout {
        format: PartitionFormat::Vfat,
        ..DiskLayout::default()
    };
    let disk = disk(&node, "vfat", &layout);
    let out = run_case(
        &mut node,
        "vfat",
        &disk,
        false,
        &[],
        "DATA PARTITION MISSING:",
    );
    assert!(
        out.line.contains(
            "DATA PARTITION MISSING: mount ext4 /dev/vda1 on /run/kios/datapart: \
             Invalid argument (os error 22): the kernel said: EXT4-fs (vda1): VFS: Can't find \
             ext4 filesystem; continuing without it"
        ),
        "{}",
        out.line
    );
    assert_unmounted(
        "vfat",
        &out.datapart,
        "/dev/vda1",
        "Can't find ext4 filesystem",
    );
    assert!(
        out.status_table.contains("Can't find ext4 filesystem"),
        "{}",
        out.status_table
    );
}

#[test]
fn the_ext4_partition_is_corrupted() {
    let mut node = node();
    let disk = disk(&node, "corrupt", &DiskLayout::default());
    // The superblock is at 1024 bytes; its volume name at 0x78 in it.
    // Changing the name without the superblock checksum (metadata_csum, on
    // by default) is a corruption the kernel refuses to mount.
    disk.patch_partition(1024 + 0x78, b"corrupted").must();
    assert!(
        disk.fsck().is_err(),
        "e2fsck sees the corruption before the boot"
    );
    let out = run_case(
        &mut node,
        "corrupt",
        &disk,
        false,
        &[],
        "DATA PARTITION MISSING:",
    );
    assert!(
        out.line.contains(
            "DATA PARTITION MISSING: mount ext4 /dev/vda1 on /run/kios/datapart: \
             Bad message (os error 74): the kernel said: EXT4-fs (vda1): VFS: Found ext4 \
             filesystem with invalid superblock checksum."
        ),
        "{}",
        out.line
    );
    assert_unmounted(
        "corrupt",
        &out.datapart,
        "/dev/vda1",
        "invalid superblock checksum",
    );
}

#[test]
fn the_disk_is_read_only() {
    let mut node = node();
    // The partition's /etc still configures the node: its node-labels.
    let layout = DiskLayout::default().etc_file("kubernetes/node-labels", "disk: read-only\n");
    let disk = disk(&node, "readonly", &layout);
    let mut out = run_case(
        &mut node,
        "readonly",
        &disk,
        true,
        &[],
        "DATA PARTITION READ-ONLY:",
    );
    assert!(
        out.line.contains(
            "DATA PARTITION READ-ONLY: /dev/vda1 is write-protected (Permission denied (os error \
             13)); mounted read-only"
        ),
        "{}",
        out.line
    );
    let d = &out.datapart;
    assert_eq!(d["mounted"], true, "{d}");
    assert_eq!(d["read_only"], true, "{d}");
    assert_eq!(d["device"], "/dev/vda1", "{d}");
    assert!(
        d["problem"]
            .as_str()
            .is_some_and(|p| p.contains("write-protected")),
        "{d}"
    );
    assert!(
        out.status_table.contains("/dev/vda1 (mounted READ-ONLY)"),
        "{}",
        out.status_table
    );
    let kubelet = starts(out.vm.console().lines(), "kubelet");
    let argv = kubelet[0]
        .argv
        .clone()
        .expect("kubelet argv on the console");
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--node-labels" && w[1] == "disk=read-only"),
        "the read-only partition's /etc reached the kubelet: {argv:?}"
    );
    disk.fsck()
        .unwrap_or_else(|e| panic!("the read-only partition: {e}"));
}
