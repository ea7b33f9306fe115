//! The data partition: which device (`datapart=`), finding it by GPT TYPE
//! GUID when `auto`, waiting for it with a bound, mounting it (ext4) and
//! mounting its layout over the image:
//!
//! | on the partition | at runtime                               |
//! |------------------|------------------------------------------|
//! | meta/etc         | /etc (overlay upper; work meta/.etc.work)|
//! | meta/log         | /var/log (nodev,noexec,nosuid)           |
//! | data/oci         | /var/lib/containers/storage (nodev)      |
//! | data/pods        | /var/lib/kubelet/pods (nodev)            |
//! | modules          | /lib/modules (ro,nosuid,nodev; only when non-empty) |
//! | meta             | /var/meta (nodev,noexec,nosuid)          |
//!
//! and, with or without a partition, /etc/seccomp bound onto
//! /var/lib/kubelet/seccomp (ro,nodev,noexec,nosuid). Missing directories
//! on the partition are created. The partition itself is mounted at
//! [`DATAPART_MOUNT`] nodev,noexec,nosuid: only container storage and pod
//! volumes, where containers run programs, get exec (and suid) back.
//!
//! A write-protected device (the kernel refuses a read-write mount with
//! EACCES or EROFS) is mounted read-only instead ([`DatapartStatus::ReadOnly`])
//! with [`READ_ONLY_LAYOUT_PLAN`]: its /etc is the overlay's lower layer
//! under an upper layer on /run (the node's configuration is used, what is
//! written there is lost at shutdown), its modules are bound as usual, and
//! /var/log, container storage, pod volumes and /var/meta stay on the image
//! (ephemeral), so nothing that writes fails for want of a writable disk.

use crate::boot::gpt;
use crate::boot::mounts::{self, BindWhen, MountStep};
use crate::sys::{MountCall, Sys, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The flags of what holds no programs: the partition itself, /var/log,
/// /var/meta (and what a bind inherits unless remounted).
const NO_PROGRAMS: crate::sys::MountFlags = MS_NODEV | MS_NOEXEC | MS_NOSUID;

/// Where the partition itself is mounted.
pub const DATAPART_MOUNT: &str = "/run/kios/datapart";
/// Longest single wait between two scans for the device.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Most block devices looked at in one scan.
pub const MAX_DISKS: usize = 256;

/// The `datapart=` boot parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatapartSpec {
    /// Scan every disk for a GPT partition of the kiOS data TYPE GUID.
    Auto,
    /// No data partition: an ephemeral node.
    None,
    /// This device (a path under /dev).
    Device(PathBuf),
}

impl DatapartSpec {
    /// Parse a `datapart=` value: `auto`, `none` or `/dev/...`.
    pub fn parse(v: &str) -> Result<DatapartSpec, String> {
        match v {
            "auto" => Ok(DatapartSpec::Auto),
            "none" => Ok(DatapartSpec::None),
            p if p.starts_with("/dev/") && p.len() > 5 && !p.split('/').any(|c| c == "..") => {
                Ok(DatapartSpec::Device(PathBuf::from(p)))
            }
            other => Err(format!(
                "datapart={other:?}: expected auto, none or /dev/<device>"
            )),
        }
    }

    /// The text form, as in the boot parameter.
    pub fn describe(&self) -> String {
        match self {
            DatapartSpec::Auto => format!("auto (gpt type {})", gpt::DATAPART_TYPE_GUID),
            DatapartSpec::None => "none".into(),
            DatapartSpec::Device(p) => p.display().to_string(),
        }
    }
}

/// The device mounted as data partition, for teardown (which may remount
/// exactly this file system read-only at the superblock level).
static MOUNTED_DEVICE: Mutex<Option<String>> = Mutex::new(None);

/// The data partition device mounted at boot, if any.
pub fn mounted_device() -> Option<String> {
    MOUNTED_DEVICE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn remember_device(dev: &str) {
    *MOUNTED_DEVICE.lock().unwrap_or_else(|e| e.into_inner()) = Some(dev.to_string());
}

/// The state of the data partition after boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatapartStatus {
    /// `datapart=none`: an ephemeral node.
    Disabled,
    Mounted {
        device: String,
    },
    /// Mounted read-only (the device refused writes): its /etc is used,
    /// nothing the node writes persists.
    ReadOnly {
        device: String,
        reason: String,
    },
    /// Wanted but not mounted; the node runs without it.
    Missing {
        wanted: String,
        reason: String,
    },
}

/// What a scan of /sys/block found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// Matching partition devices (/dev/...), in disk name order.
    pub matches: Vec<String>,
    /// Disks whose table could not be read (not an error: most are not GPT).
    pub unreadable: Vec<String>,
}

/// Find the partition name of partition `n` of `disk` in sysfs (the
/// `partition` file of each child directory), falling back to the naming
/// rule when sysfs does not list it (yet).
fn partition_device(sys: &dyn Sys, disk: &str, n: u32) -> String {
    let dir = Path::new("/sys/block").join(disk);
    if let Ok(children) = sys.list_dir(&dir) {
        for child in children.iter().filter(|c| c.starts_with(disk)) {
            if let Ok(b) = sys.read_file(&dir.join(child).join("partition"), 32) {
                if String::from_utf8_lossy(&b).trim().parse::<u32>().ok() == Some(n) {
                    return child.clone();
                }
            }
        }
    }
    gpt::partition_name(disk, n)
}

/// Scan every disk in /sys/block for partitions with the data TYPE GUID.
pub fn scan_for_datapart(sys: &dyn Sys) -> ScanResult {
    let mut result = ScanResult::default();
    let Ok(guid) = gpt::parse_guid(gpt::DATAPART_TYPE_GUID) else {
        return result;
    };
    let mut disks = sys.list_dir(Path::new("/sys/block")).unwrap_or_default();
    disks.sort();
    disks.truncate(MAX_DISKS);
    for disk in disks {
        // RAM disks, floppies and optical drives never hold the data
        // partition; a floppy read can hang for seconds: skip them.
        if ["ram", "zram", "fd", "sr"]
            .iter()
            .any(|p| disk.starts_with(p))
            || disk.contains('/')
        {
            continue;
        }
        let dev = Path::new("/dev").join(&disk);
        match gpt::find_partitions_by_type(sys, &dev, &guid) {
            Ok(numbers) => {
                for n in numbers {
                    result
                        .matches
                        .push(format!("/dev/{}", partition_device(sys, &disk, n)));
                }
            }
            Err(_) => result.unreadable.push(disk),
        }
    }
    result
}

/// Wait (bounded) until the wanted device exists; returns its path.
fn wait_for_device(
    sys: &dyn Sys,
    spec: &DatapartSpec,
    timeout: Duration,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let mut waited = false;
    let found = wait_for_device_until(sys, spec, timeout, warnings, &mut waited);
    if waited {
        sys.end_dir_watch();
    }
    found
}

fn wait_for_device_until(
    sys: &dyn Sys,
    spec: &DatapartSpec,
    timeout: Duration,
    warnings: &mut Vec<String>,
    waited: &mut bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = match spec {
            DatapartSpec::Device(p) => sys.path_exists(p).then(|| p.display().to_string()),
            DatapartSpec::Auto => {
                let scan = scan_for_datapart(sys);
                if scan.matches.len() > 1 {
                    let msg = format!(
                        "several data partitions found ({}); using {}",
                        scan.matches.join(", "),
                        scan.matches[0]
                    );
                    crate::kwarn!("{msg}");
                    warnings.push(msg);
                }
                scan.matches
                    .into_iter()
                    .find(|m| sys.path_exists(Path::new(m)))
            }
            DatapartSpec::None => return None,
        };
        if found.is_some() {
            return found;
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        if !*waited {
            crate::kinfo!(
                "waiting up to {}s for the data partition {}",
                timeout.as_secs(),
                spec.describe()
            );
            *waited = true;
        }
        if let Err(e) =
            sys.wait_for_dir_change(Path::new("/dev"), (deadline - now).min(RESCAN_INTERVAL))
        {
            // No watch (no inotify?): rescan once per interval instead. This
            // only happens on an error path, inside the bounded wait.
            crate::kwarn!(
                "watch /dev: {e}; rescanning every {} ms",
                RESCAN_INTERVAL.as_millis()
            );
            std::thread::sleep((deadline - now).min(RESCAN_INTERVAL));
        }
    }
}

/// A path on the mounted partition (under [`DATAPART_MOUNT`]), as a
/// `&'static str` for the mount plans below.
macro_rules! on_part {
    ($p:literal) => {
        concat!("/run/kios/datapart/", $p)
    };
}

/// The layout of a mounted partition over the image, walked by the same
/// plan runner as the base mounts ([`mounts::run_plan`]): the partition's
/// directories (created when missing), the /etc overlay, then the binds.
/// A failed step is logged and reported; the others still happen.
pub const LAYOUT_PLAN: &[MountStep] = &[
    MountStep::Mkdir {
        path: on_part!("meta/etc"),
        mode: 0o755,
    },
    MountStep::Mkdir {
        path: on_part!("meta/.etc.work"),
        mode: 0o700,
    },
    MountStep::Mkdir {
        path: on_part!("meta/log"),
        mode: 0o755,
    },
    MountStep::Mkdir {
        path: on_part!("data/oci"),
        mode: 0o700,
    },
    MountStep::Mkdir {
        path: on_part!("data/pods"),
        mode: 0o750,
    },
    MountStep::Mkdir {
        path: on_part!("modules"),
        mode: 0o755,
    },
    MountStep::Mount {
        source: "overlay",
        target: "/etc",
        fstype: "overlay",
        flags: 0,
        data: Some(concat!(
            "lowerdir=/etc,upperdir=",
            on_part!("meta/etc"),
            ",workdir=",
            on_part!("meta/.etc.work")
        )),
    },
    MountStep::Bind {
        source: on_part!("meta/log"),
        target: "/var/log",
        flags: NO_PROGRAMS,
        when: BindWhen::Always,
    },
    MountStep::Bind {
        source: on_part!("data/oci"),
        target: "/var/lib/containers/storage",
        flags: MS_NODEV,
        when: BindWhen::Always,
    },
    MountStep::Bind {
        source: on_part!("data/pods"),
        target: "/var/lib/kubelet/pods",
        flags: MS_NODEV,
        when: BindWhen::Always,
    },
    // The image's own early modules live in /lib/modules too: an empty
    // modules directory on the partition must not hide them.
    MountStep::Bind {
        source: on_part!("modules"),
        target: "/lib/modules",
        flags: MS_RDONLY | MS_NOSUID | MS_NODEV,
        when: BindWhen::SourceNotEmpty,
    },
    MountStep::Bind {
        source: on_part!("meta"),
        target: "/var/meta",
        flags: NO_PROGRAMS,
        when: BindWhen::Always,
    },
];

/// Where the /etc overlay's upper and work directories live when the
/// partition is read-only (on /run's tmpfs: one file system, as overlay
/// wants).
pub const READ_ONLY_ETC_UPPER: &str = "/run/kios/etc-upper";
pub const READ_ONLY_ETC_WORK: &str = "/run/kios/etc-work";

/// The layout of a read-only partition: the partition's /etc over the
/// image's, both read-only lower layers under an ephemeral upper layer on
/// /run, and its modules. Nothing that the node writes goes to it.
pub const READ_ONLY_LAYOUT_PLAN: &[MountStep] = &[
    MountStep::Mkdir {
        path: READ_ONLY_ETC_UPPER,
        mode: 0o755,
    },
    MountStep::Mkdir {
        path: READ_ONLY_ETC_WORK,
        mode: 0o700,
    },
    MountStep::Mount {
        source: "overlay",
        target: "/etc",
        fstype: "overlay",
        flags: 0,
        data: Some(concat!(
            "lowerdir=",
            on_part!("meta/etc"),
            ":/etc,upperdir=/run/kios/etc-upper,workdir=/run/kios/etc-work"
        )),
    },
    MountStep::Bind {
        source: on_part!("modules"),
        target: "/lib/modules",
        flags: MS_RDONLY | MS_NOSUID | MS_NODEV,
        when: BindWhen::SourceNotEmpty,
    },
];

/// With or without a partition (after the /etc overlay): /etc/seccomp
/// onto /var/lib/kubelet/seccomp, where the kubelet looks for seccomp
/// profiles; nothing when the image has none.
pub const SECCOMP_PLAN: &[MountStep] = &[MountStep::Bind {
    source: "/etc/seccomp",
    target: "/var/lib/kubelet/seccomp",
    flags: MS_RDONLY | NO_PROGRAMS,
    when: BindWhen::SourceExists,
}];

/// Find, wait for and mount the data partition and its layout, then the
/// seccomp bind. Returns the status and the problems met (kernel-logged).
pub fn setup(
    sys: &dyn Sys,
    spec: &DatapartSpec,
    timeout: Duration,
) -> (DatapartStatus, Vec<String>) {
    let mut warnings = Vec::new();
    let status = match spec {
        DatapartSpec::None => {
            crate::kinfo!("datapart=none: no data partition, node state is ephemeral");
            DatapartStatus::Disabled
        }
        _ => match wait_for_device(sys, spec, timeout, &mut warnings) {
            None => {
                let reason = if timeout.subsec_millis() == 0 {
                    format!("not found within {}s", timeout.as_secs())
                } else {
                    format!("not found within {}ms", timeout.as_millis())
                };
                crate::kerr!("DATA PARTITION MISSING: {} {reason}; continuing without it (node state is ephemeral)", spec.describe());
                DatapartStatus::Missing {
                    wanted: spec.describe(),
                    reason,
                }
            }
            Some(device) => mount_device(sys, &device, &mut warnings),
        },
    };
    warnings.extend(mounts::run_plan(sys, SECCOMP_PLAN).failures);
    (status, warnings)
}

/// Whether a mount error means the device refuses writes: the block
/// layer answers a read-write open of a read-only device with EACCES, some
/// drivers and file systems with EROFS.
fn is_write_protected(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS))
}

fn mount_ext4(sys: &dyn Sys, device: &str, flags: crate::sys::MountFlags) -> std::io::Result<()> {
    sys.mount(&MountCall {
        source: Some(device),
        target: Path::new(DATAPART_MOUNT),
        fstype: Some("ext4"),
        flags,
        data: None,
    })
}

/// The reason of a failed mount: the error, and what the kernel logged
/// about it (the errno alone hides the cause: ENOENT for a missing crc32c
/// driver, EINVAL for "not ext4", EBADMSG for a bad checksum).
fn mount_failure(sys: &dyn Sys, device: &str, what: &str, e: &std::io::Error) -> String {
    let mut reason = format!("mount {what} {device} on {DATAPART_MOUNT}: {e}");
    let messages = sys.kernel_messages();
    if let Some(cause) = crate::boot::kernlog::mount_failure_cause(&messages, "ext4", device) {
        reason = format!("{reason}: {cause}");
    }
    reason
}

fn missing(device: &str, reason: String) -> DatapartStatus {
    crate::kerr!(
        "DATA PARTITION MISSING: {reason}; continuing without it (node state is ephemeral)"
    );
    DatapartStatus::Missing {
        wanted: device.to_string(),
        reason,
    }
}

fn mount_device(sys: &dyn Sys, device: &str, warnings: &mut Vec<String>) -> DatapartStatus {
    let root = Path::new(DATAPART_MOUNT);
    if let Err(e) = sys.create_dir_all(root, 0o700) {
        return missing(device, format!("create {DATAPART_MOUNT}: {e}"));
    }
    match mount_ext4(sys, device, NO_PROGRAMS) {
        Ok(()) => {
            remember_device(device);
            crate::kinfo!("data partition {device} mounted on {DATAPART_MOUNT}");
            warnings.extend(mounts::run_plan(sys, LAYOUT_PLAN).failures);
            DatapartStatus::Mounted {
                device: device.to_string(),
            }
        }
        Err(e) if is_write_protected(&e) => {
            let rw = mount_failure(sys, device, "ext4", &e);
            match mount_ext4(sys, device, NO_PROGRAMS | MS_RDONLY) {
                Err(ro) => missing(
                    device,
                    format!(
                        "{rw}; {}",
                        mount_failure(sys, device, "ext4 read-only", &ro)
                    ),
                ),
                Ok(()) => {
                    remember_device(device);
                    let reason = format!(
                        "{device} is write-protected ({e}); mounted read-only: its /etc is used, \
                         /var/log, container storage and pod volumes are ephemeral"
                    );
                    crate::kerr!("DATA PARTITION READ-ONLY: {reason}");
                    warnings.push(format!("data partition read-only: {reason}"));
                    warnings.extend(mounts::run_plan(sys, READ_ONLY_LAYOUT_PLAN).failures);
                    DatapartStatus::ReadOnly {
                        device: device.to_string(),
                        reason,
                    }
                }
            }
        }
        Err(e) => missing(device, mount_failure(sys, device, "ext4", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::gpt::tests::build_image;
    use crate::boot::gpt::DATAPART_TYPE_GUID;
    use crate::sys::fake::{Call, FakeSys};
    use crate::sys::{MS_BIND, MS_REMOUNT};

    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    #[test]
    fn spec_parse_table() {
        assert_eq!(DatapartSpec::parse("auto"), Ok(DatapartSpec::Auto));
        assert_eq!(DatapartSpec::parse("none"), Ok(DatapartSpec::None));
        assert_eq!(
            DatapartSpec::parse("/dev/vda1"),
            Ok(DatapartSpec::Device("/dev/vda1".into()))
        );
        for bad in ["", "vda1", "/dev/", "/etc/passwd", "/dev/../etc/x", "AUTO"] {
            assert!(DatapartSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn disk(sys: &FakeSys, name: &str, parts: &[(u32, &str)]) {
        sys.add_file(&format!("/dev/{name}"), build_image(512, parts));
        sys.add_dir(&format!("/sys/block/{name}"));
    }

    #[test]
    fn scan_finds_partitions_by_type_with_kernel_names() {
        let sys = FakeSys::new();
        disk(&sys, "sda", &[(1, LINUX), (2, DATAPART_TYPE_GUID)]);
        disk(&sys, "nvme0n1", &[(1, DATAPART_TYPE_GUID)]);
        disk(&sys, "vda", &[(1, LINUX)]);
        sys.add_dir("/sys/block/loop0"); // no /dev node: unreadable
        sys.add_dir("/sys/block/ram0"); // skipped
        sys.add_dir("/sys/block/fd0"); // skipped
        sys.add_dir("/sys/block/sr0"); // skipped
        let r = scan_for_datapart(&sys);
        assert_eq!(r.matches, ["/dev/nvme0n1p1", "/dev/sda2"]);
        assert_eq!(r.unreadable, ["loop0"]);
    }

    #[test]
    fn scan_uses_the_sysfs_partition_number() {
        let sys = FakeSys::new();
        disk(&sys, "mmcblk0", &[(2, DATAPART_TYPE_GUID)]);
        sys.add_file("/sys/block/mmcblk0/mmcblk0p1/partition", "1\n");
        sys.add_file("/sys/block/mmcblk0/mmcblk0p2/partition", "2\n");
        assert_eq!(scan_for_datapart(&sys).matches, ["/dev/mmcblk0p2"]);
    }

    fn layout_targets(sys: &FakeSys) -> Vec<(String, u64)> {
        sys.mounts().into_iter().map(|(t, _, f)| (t, f)).collect()
    }

    #[test]
    fn auto_mounts_partition_and_layout() {
        let sys = FakeSys::new();
        disk(&sys, "vda", &[(1, DATAPART_TYPE_GUID)]);
        sys.add_file("/dev/vda1", "");
        sys.add_file("/run/kios/datapart/modules/6.1.0/modules.dep", "");
        sys.add_dir("/etc/seccomp");
        let (status, warnings) = setup(&sys, &DatapartSpec::Auto, Duration::from_secs(1));
        assert_eq!(
            status,
            DatapartStatus::Mounted {
                device: "/dev/vda1".into()
            }
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        // (Other tests mount other devices in parallel: only presence here.)
        assert!(mounted_device().is_some());
        let m = layout_targets(&sys);
        let want: Vec<(String, u64)> = vec![
            ("/run/kios/datapart".into(), NO_PROGRAMS),
            ("/etc".into(), 0),
            ("/var/log".into(), MS_BIND),
            ("/var/log".into(), MS_REMOUNT | MS_BIND | NO_PROGRAMS),
            ("/var/lib/containers/storage".into(), MS_BIND),
            (
                "/var/lib/containers/storage".into(),
                MS_REMOUNT | MS_BIND | MS_NODEV,
            ),
            ("/var/lib/kubelet/pods".into(), MS_BIND),
            (
                "/var/lib/kubelet/pods".into(),
                MS_REMOUNT | MS_BIND | MS_NODEV,
            ),
            ("/lib/modules".into(), MS_BIND),
            (
                "/lib/modules".into(),
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
            ),
            ("/var/meta".into(), MS_BIND),
            (
                "/var/meta".into(),
                MS_REMOUNT | MS_BIND | MS_NODEV | MS_NOEXEC | MS_NOSUID,
            ),
            ("/var/lib/kubelet/seccomp".into(), MS_BIND),
            (
                "/var/lib/kubelet/seccomp".into(),
                MS_REMOUNT | MS_BIND | MS_RDONLY | NO_PROGRAMS,
            ),
        ];
        assert_eq!(m, want);
        let calls = sys.calls();
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: Some(s), fstype: Some(f), .. } if s == "/dev/vda1" && f == "ext4")));
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { fstype: Some(f), data: Some(d), .. }
            if f == "overlay" && d == "lowerdir=/etc,upperdir=/run/kios/datapart/meta/etc,workdir=/run/kios/datapart/meta/.etc.work")));
        for dir in [
            "meta/etc",
            "meta/.etc.work",
            "meta/log",
            "data/oci",
            "data/pods",
        ] {
            let p = format!("/run/kios/datapart/{dir}");
            assert!(
                calls
                    .iter()
                    .any(|c| matches!(c, Call::Mkdir(d, _) if *d == p)),
                "{p} created"
            );
        }
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: Some(s), target, .. } if s == "/run/kios/datapart/data/oci" && target == "/var/lib/containers/storage")));
    }

    #[test]
    fn empty_modules_dir_does_not_hide_the_image_modules() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vdb1", "");
        let (status, _) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vdb1".into()),
            Duration::ZERO,
        );
        assert_eq!(
            status,
            DatapartStatus::Mounted {
                device: "/dev/vdb1".into()
            }
        );
        assert!(!layout_targets(&sys)
            .iter()
            .any(|(t, _)| t == "/lib/modules"));
        // No /etc/seccomp in this image: no bind.
        assert!(!layout_targets(&sys)
            .iter()
            .any(|(t, _)| t == "/var/lib/kubelet/seccomp"));
    }

    #[test]
    fn device_appearing_while_waiting_is_used() {
        let sys = FakeSys::new();
        sys.appear_after_waits(3, "/dev/vdc1", "");
        let (status, _) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vdc1".into()),
            Duration::from_secs(30),
        );
        assert_eq!(
            status,
            DatapartStatus::Mounted {
                device: "/dev/vdc1".into()
            }
        );
        assert_eq!(
            sys.calls().iter().filter(|c| **c == Call::EndWatch).count(),
            1
        );
        let waits = sys
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::WaitDir(d) if d == "/dev"))
            .count();
        assert_eq!(waits, 3);
    }

    #[test]
    fn auto_partition_appearing_while_waiting_is_found() {
        let sys = FakeSys::new();
        sys.add_dir("/sys/block");
        sys.appear_after_waits(1, "/dev/sdb", build_image(512, &[(1, DATAPART_TYPE_GUID)]));
        sys.appear_after_waits(1, "/sys/block/sdb/sdb1/partition", "1");
        sys.appear_after_waits(2, "/dev/sdb1", "");
        let (status, _) = setup(&sys, &DatapartSpec::Auto, Duration::from_secs(30));
        assert_eq!(
            status,
            DatapartStatus::Mounted {
                device: "/dev/sdb1".into()
            }
        );
    }

    #[test]
    fn timeout_reports_missing_and_mounts_nothing_of_the_layout() {
        let sys = FakeSys::new();
        sys.add_dir("/sys/block");
        let started = Instant::now();
        let (status, _) = setup(&sys, &DatapartSpec::Auto, Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
        match status {
            DatapartStatus::Missing { wanted, reason } => {
                assert!(wanted.starts_with("auto"), "{wanted}");
                assert!(reason.contains("not found"), "{reason}");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(sys.mounts().is_empty());
    }

    #[test]
    fn mount_failure_reports_missing() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.fail("mount", "/run/kios/datapart", libc::EINVAL);
        let (status, _) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        assert!(
            matches!(status, DatapartStatus::Missing { ref reason, .. } if reason.contains("mount ext4 /dev/vda1")),
            "{status:?}"
        );
        assert_eq!(
            sys.mounts().len(),
            1,
            "nothing of the layout after a failed mount"
        );
    }

    #[test]
    fn a_missing_driver_named_by_the_kernel_is_the_reason() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.add_file("/dev/kmsg", "EXT4-fs (vda1): Cannot load crc32c driver.\n");
        sys.fail("mount", "/run/kios/datapart", libc::ENOENT);
        let (status, _) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        match status {
            DatapartStatus::Missing { reason, .. } => assert!(
                reason.starts_with("mount ext4 /dev/vda1 on /run/kios/datapart: No such file or directory (os error 2): ext4 could not load its crc32c driver"),
                "{reason}"
            ),
            other => panic!("expected Missing, got {other:?}"),
        }
    }

    #[test]
    fn a_write_protected_device_is_mounted_read_only_with_its_etc() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.add_file("/run/kios/datapart/modules/6.1.0/modules.dep", "");
        // The block layer refuses a read-write open of a read-only device.
        sys.fail("mount", "/run/kios/datapart", libc::EACCES);
        let (status, w) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        match &status {
            DatapartStatus::ReadOnly { device, reason } => {
                assert_eq!(device, "/dev/vda1");
                assert!(
                    reason.starts_with("/dev/vda1 is write-protected (Permission denied (os error 13)); mounted read-only"),
                    "{reason}"
                );
            }
            other => panic!("expected ReadOnly, got {other:?}"),
        }
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("data partition read-only: "), "{w:?}");
        let m = layout_targets(&sys);
        let want: Vec<(String, u64)> = vec![
            ("/run/kios/datapart".into(), NO_PROGRAMS),
            ("/run/kios/datapart".into(), NO_PROGRAMS | MS_RDONLY),
            ("/etc".into(), 0),
            ("/lib/modules".into(), MS_BIND),
            (
                "/lib/modules".into(),
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
            ),
        ];
        assert_eq!(m, want, "nothing that is written lands on the partition");
        assert!(sys.calls().iter().any(|c| matches!(c, Call::Mount { fstype: Some(f), data: Some(d), .. }
            if f == "overlay" && d == "lowerdir=/run/kios/datapart/meta/etc:/etc,upperdir=/run/kios/etc-upper,workdir=/run/kios/etc-work")));
        assert!(
            !sys.calls()
                .iter()
                .any(|c| matches!(c, Call::Mkdir(d, _) if d.starts_with(DATAPART_MOUNT))),
            "no directory is created on a read-only partition"
        );
    }

    #[test]
    fn erofs_is_write_protection_too_and_a_failing_read_only_mount_is_missing() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.fail("mount", "/run/kios/datapart", libc::EROFS);
        sys.fail("mount", "/run/kios/datapart", libc::EINVAL);
        let (status, _) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        match status {
            DatapartStatus::Missing { wanted, reason } => {
                assert_eq!(wanted, "/dev/vda1");
                assert!(reason.starts_with("mount ext4 /dev/vda1 on /run/kios/datapart: Read-only file system (os error 30); mount ext4 read-only /dev/vda1 on /run/kios/datapart: Invalid argument (os error 22)"), "{reason}");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert_eq!(
            sys.mounts().len(),
            2,
            "a read-write and a read-only attempt, nothing of a layout"
        );
    }

    #[test]
    fn a_read_write_refusal_for_another_cause_is_not_retried_read_only() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.add_file(
            "/dev/kmsg",
            "EXT4-fs (vda1): VFS: Found ext4 filesystem with invalid superblock checksum.  Run e2fsck?\n",
        );
        sys.fail("mount", "/run/kios/datapart", libc::EBADMSG);
        let (status, _) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        match status {
            DatapartStatus::Missing { reason, .. } => assert!(
                reason.ends_with("the kernel said: EXT4-fs (vda1): VFS: Found ext4 filesystem with invalid superblock checksum.  Run e2fsck?"),
                "{reason}"
            ),
            other => panic!("expected Missing, got {other:?}"),
        }
        let mounts = sys
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .count();
        assert_eq!(mounts, 1, "one attempt only");
    }

    #[test]
    fn the_read_only_layout_writes_nothing_to_the_partition() {
        for step in READ_ONLY_LAYOUT_PLAN {
            match step {
                MountStep::Mkdir { path, .. } => assert!(path.starts_with("/run/kios/etc-")),
                MountStep::Bind { flags, .. } => assert!(flags & MS_RDONLY != 0),
                MountStep::Mount { target, data, .. } => {
                    assert_eq!(*target, "/etc");
                    let upper = data
                        .and_then(|d| d.split(',').find_map(|o| o.strip_prefix("upperdir=")))
                        .unwrap();
                    assert_eq!(upper, READ_ONLY_ETC_UPPER);
                }
                MountStep::MakeShared { .. } => panic!("the layout shares nothing"),
            }
        }
    }

    #[test]
    fn none_is_disabled_and_touches_no_disk() {
        let sys = FakeSys::new();
        disk(&sys, "sda", &[(1, DATAPART_TYPE_GUID)]);
        let (status, w) = setup(&sys, &DatapartSpec::None, Duration::from_secs(30));
        assert_eq!(status, DatapartStatus::Disabled);
        assert!(w.is_empty());
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn the_layout_plan_is_under_the_partition_mount() {
        assert_eq!(on_part!(""), format!("{DATAPART_MOUNT}/"));
        for step in LAYOUT_PLAN {
            match step {
                MountStep::Mkdir { path, .. } => assert!(path.starts_with(DATAPART_MOUNT)),
                MountStep::Bind { source, .. } => assert!(source.starts_with(DATAPART_MOUNT)),
                MountStep::Mount { target, .. } => assert_eq!(*target, "/etc"),
                MountStep::MakeShared { .. } => panic!("the layout shares nothing"),
            }
        }
    }

    #[test]
    fn an_unlistable_modules_dir_is_a_failure_and_the_rest_still_mounts() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.fail("list_dir", "/run/kios/datapart/modules", libc::EIO);
        let (status, w) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        assert!(matches!(status, DatapartStatus::Mounted { .. }));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("list /run/kios/datapart/modules"), "{w:?}");
        assert!(!layout_targets(&sys)
            .iter()
            .any(|(t, _)| t == "/lib/modules"));
        assert!(layout_targets(&sys).iter().any(|(t, _)| t == "/var/meta"));
    }

    #[test]
    fn layout_failures_are_reported_and_the_rest_still_mounts() {
        let sys = FakeSys::new();
        sys.add_file("/dev/vda1", "");
        sys.fail("mount", "/etc", libc::EINVAL);
        let (status, w) = setup(
            &sys,
            &DatapartSpec::Device("/dev/vda1".into()),
            Duration::ZERO,
        );
        assert!(matches!(status, DatapartStatus::Mounted { .. }));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("overlay on /etc"));
        assert!(layout_targets(&sys).iter().any(|(t, _)| t == "/var/meta"));
    }
}
