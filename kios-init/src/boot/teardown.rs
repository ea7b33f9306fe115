//! The end of the node's file systems: unmount everything listed in
//! /proc/self/mountinfo, children before parents (by the parent ids of
//! mountinfo, newest first among siblings), and remount read-only what
//! cannot be unmounted (the shutdown then syncs, through `Sys`).
//!
//! Read-only fallback, and why it is careful: pseudo file systems (proc,
//! sysfs, devtmpfs, cgroup2, tmpfs, ...) share their superblock with the
//! rest of the machine in the namespace harness, so they are never
//! remounted. A block-backed mount gets a per-mount read-only bind remount
//! (MS_REMOUNT|MS_BIND|MS_RDONLY), which touches only this mount; only the
//! data partition device that init itself mounted at boot also gets the
//! superblock remount (MS_REMOUNT|MS_RDONLY) that flushes its journal.
//! A busy pseudo file system (/dev holding /dev/kmsg open, /run holding the
//! system socket) holds no data: it is detached lazily (MNT_DETACH).

use crate::sys::{MountCall, Sys, MS_BIND, MS_RDONLY, MS_REMOUNT};
use std::path::Path;

pub use kios_rootfs::mountinfo::{MountInfo, MOUNTINFO_LIMIT};

/// Parse mountinfo text with the workspace's one parser; malformed lines
/// are skipped.
pub fn parse_mountinfo(table: &[u8]) -> Vec<MountInfo> {
    kios_rootfs::mountinfo::parse(table)
}

/// File systems with no backing data: safe to detach lazily when busy.
pub fn is_pseudo(fstype: &str) -> bool {
    matches!(
        fstype,
        "proc"
            | "sysfs"
            | "devtmpfs"
            | "devpts"
            | "securityfs"
            | "cgroup"
            | "cgroup2"
            | "tmpfs"
            | "ramfs"
            | "mqueue"
            | "debugfs"
            | "tracefs"
            | "bpf"
            | "configfs"
            | "pstore"
            | "efivarfs"
            | "hugetlbfs"
            | "fusectl"
            | "binfmt_misc"
            | "nsfs"
    )
}

/// The order to unmount in: every mount after all of its children, newer
/// mounts (higher id) first among those ready. The root of the view (`/`
/// and anything mounted over it) is left out.
pub fn unmount_order(entries: &[MountInfo]) -> Vec<MountInfo> {
    let mut left: Vec<MountInfo> = entries
        .iter()
        .filter(|e| e.mount_point != Path::new("/"))
        .cloned()
        .collect();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        // Mounts no remaining mount has as parent.
        let ready: Vec<usize> = (0..left.len())
            .filter(|&i| {
                !left
                    .iter()
                    .any(|c| c.parent == left[i].id && c.id != left[i].id)
            })
            .collect();
        let pick = if ready.is_empty() {
            // A parent cycle cannot happen in a real table; break it anyway.
            (0..left.len()).max_by_key(|&i| left[i].id).unwrap_or(0)
        } else {
            ready
                .iter()
                .copied()
                .max_by_key(|&i| left[i].id)
                .unwrap_or(ready[0])
        };
        order.push(left.swap_remove(pick));
    }
    order
}

/// What unmounting did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnmountReport {
    /// Mounts gone (including the lazily detached ones).
    pub unmounted: usize,
    /// Busy pseudo file systems detached lazily (MNT_DETACH).
    pub detached: Vec<String>,
    pub remounted_ro: Vec<String>,
    /// (mount point, reason).
    pub failed: Vec<(String, String)>,
}

/// Unmount everything, children first; see the module docs for the
/// read-only fallback. Never fails as a whole; each problem is logged.
pub fn unmount_all(sys: &dyn Sys) -> UnmountReport {
    let device = crate::boot::datapart::mounted_device();
    unmount_all_with(sys, device.as_deref())
}

/// [`unmount_all`] with the data partition device given explicitly.
pub fn unmount_all_with(sys: &dyn Sys, datapart_device: Option<&str>) -> UnmountReport {
    let mut report = UnmountReport::default();
    let table = match sys.read_file(Path::new("/proc/self/mountinfo"), MOUNTINFO_LIMIT) {
        Ok(table) => table,
        Err(e) => {
            crate::kerr!("read /proc/self/mountinfo: {e}; nothing unmounted");
            report
                .failed
                .push(("/proc/self/mountinfo".into(), e.to_string()));
            return report;
        }
    };
    for m in unmount_order(&parse_mountinfo(&table)) {
        let target = m.mount_point.as_path();
        let shown = m.mount_point.display().to_string();
        let err = match sys.umount(target) {
            Ok(()) => {
                report.unmounted += 1;
                continue;
            }
            // Gone already (a propagated unmount took it along).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {
                continue
            }
            Err(e) => e,
        };
        if m.major == 0 {
            if is_pseudo(&m.fstype) {
                // Busy pseudo file system (/dev holding /dev/kmsg, /run
                // holding the system socket): no data to flush, so detach
                // it lazily; never remount it (its superblock may be
                // shared with the host in the namespace harness).
                match sys.umount_detach(target) {
                    Ok(()) => {
                        report.unmounted += 1;
                        report.detached.push(shown.clone());
                    }
                    Err(e2) => {
                        crate::kinfo!(
                            "{} ({}) stays mounted: {err}; detach: {e2}",
                            shown,
                            m.fstype
                        );
                        report
                            .failed
                            .push((shown.clone(), format!("{err}; detach: {e2}")));
                    }
                }
            } else {
                // overlay and other virtual file systems over real data:
                // report, the file systems below get their own fallback.
                crate::kerr!("{shown} ({}) busy: {err}", m.fstype);
                report.failed.push((shown.clone(), err.to_string()));
            }
            continue;
        }
        let mut flags = MS_REMOUNT | MS_RDONLY;
        if datapart_device != Some(m.source.as_str()) {
            flags |= MS_BIND;
        }
        match sys.mount(&MountCall {
            source: None,
            target,
            fstype: None,
            flags,
            data: None,
        }) {
            Ok(()) => {
                crate::kwarn!("{shown} busy ({err}): remounted read-only");
                report.remounted_ro.push(shown.clone());
            }
            Err(e2) => {
                crate::kerr!("{shown} busy ({err}) and read-only remount failed: {e2}");
                report
                    .failed
                    .push((shown.clone(), format!("{err}; remount read-only: {e2}")));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, FakeSys};

    const INFO: &str = "\
1 0 0:2 / / rw - rootfs rootfs rw
20 1 0:20 / /proc rw,nosuid,nodev,noexec - proc proc rw
21 1 0:21 / /sys rw - sysfs sysfs rw
22 1 0:5 / /dev rw - devtmpfs devtmpfs rw
23 22 0:22 / /dev/pts rw - devpts devpts rw
24 21 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
25 1 0:24 / /run rw - tmpfs tmpfs rw
30 25 253:1 / /run/kios/datapart rw - ext4 /dev/vda1 rw
31 1 0:31 / /etc rw - overlay overlay rw,lowerdir=/etc
32 1 253:1 /meta/log /var/log rw - ext4 /dev/vda1 rw
33 1 253:1 /meta /var/meta rw - ext4 /dev/vda1 rw
34 1 0:25 / /var/lib/kubelet rw - tmpfs tmpfs rw
35 34 253:1 /data/pods /var/lib/kubelet/pods rw - ext4 /dev/vda1 rw
36 35 0:40 / /var/lib/kubelet/pods/x/volumes/a\\040b rw - tmpfs tmpfs rw
";

    #[test]
    fn parse_fields_and_escapes() {
        let e = parse_mountinfo(INFO.as_bytes());
        assert_eq!(e.len(), 14);
        let m = &e[7];
        assert_eq!(
            (m.id, m.parent, m.major, m.minor),
            (30, 25, 253, 1),
            "{m:?}"
        );
        assert_eq!(m.mount_point, Path::new("/run/kios/datapart"));
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("ext4", "/dev/vda1")
        );
        assert_eq!(
            e[13].mount_point,
            Path::new("/var/lib/kubelet/pods/x/volumes/a b")
        );
        assert!(parse_mountinfo(b"garbage\n1 2\n").is_empty());
    }

    #[test]
    fn children_before_parents() {
        let order = unmount_order(&parse_mountinfo(INFO.as_bytes()));
        let names: Vec<&str> = order
            .iter()
            .map(|m| m.mount_point.to_str().expect("text"))
            .collect();
        assert!(!names.contains(&"/"));
        assert_eq!(names.len(), 13);
        let pos = |p: &str| names.iter().position(|n| *n == p).expect("present");
        for e in &order {
            if let Some(parent) = order.iter().find(|p| p.id == e.parent) {
                let (child, parent) = (
                    e.mount_point.to_str().expect("text"),
                    parent.mount_point.to_str().expect("text"),
                );
                assert!(pos(child) < pos(parent), "{child} before {parent}");
            }
        }
        assert_eq!(names[0], "/var/lib/kubelet/pods/x/volumes/a b");
    }

    #[test]
    fn unmounts_everything_and_falls_back_carefully() {
        let sys = FakeSys::new();
        sys.add_file("/proc/self/mountinfo", INFO);
        for e in parse_mountinfo(INFO.as_bytes()) {
            sys.add_dir(e.mount_point.to_str().expect("text"));
        }
        sys.fail("umount", "/dev", libc::EBUSY);
        sys.fail("umount", "/var/log", libc::EBUSY);
        sys.fail("umount", "/run/kios/datapart", libc::EBUSY);
        sys.fail("umount", "/sys/fs/cgroup", libc::EINVAL);
        sys.fail("umount", "/etc", libc::EBUSY);
        sys.fail("umount", "/run", libc::EBUSY);
        sys.fail("umount_detach", "/run", libc::EINVAL);
        let r = unmount_all_with(&sys, Some("/dev/vda1"));
        // 13 mounts: cgroup2 already gone, /var/log and the partition
        // remounted read-only, /etc and /run failed, /dev detached.
        assert_eq!(r.unmounted, 8);
        assert_eq!(r.detached, ["/dev"]);
        let mut ro = r.remounted_ro.clone();
        ro.sort();
        assert_eq!(ro, ["/run/kios/datapart", "/var/log"]);
        let mut failed: Vec<&str> = r.failed.iter().map(|(m, _)| m.as_str()).collect();
        failed.sort();
        assert_eq!(failed, ["/etc", "/run"]);
        assert!(sys.calls().contains(&Call::UmountDetach("/dev".into())));
        // Never a lazy detach of a file system with data.
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::UmountDetach(t) if t == "/etc" || t == "/var/log")));
        let remounts: Vec<(String, u64)> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount { target, flags, .. } => Some((target, flags)),
                _ => None,
            })
            .collect();
        // The data partition device itself: superblock read-only; every
        // remount here is of a block-backed mount, never of /dev or /run.
        assert!(remounts.contains(&("/run/kios/datapart".into(), MS_REMOUNT | MS_RDONLY)));
        assert!(remounts.contains(&("/var/log".into(), MS_REMOUNT | MS_RDONLY)));
        assert!(!remounts.iter().any(|(t, _)| t == "/dev" || t == "/run"));
    }

    #[test]
    fn other_block_mounts_only_get_a_per_mount_read_only_flag() {
        let sys = FakeSys::new();
        sys.add_file("/proc/self/mountinfo", INFO);
        for e in parse_mountinfo(INFO.as_bytes()) {
            sys.add_dir(e.mount_point.to_str().expect("text"));
        }
        sys.fail("umount", "/var/meta", libc::EBUSY);
        let r = unmount_all_with(&sys, None);
        assert_eq!(r.remounted_ro, ["/var/meta"]);
        assert!(sys.calls().contains(&Call::Mount {
            source: None,
            target: "/var/meta".into(),
            fstype: None,
            flags: MS_REMOUNT | MS_BIND | MS_RDONLY,
            data: None
        }));
    }

    #[test]
    fn unreadable_mountinfo_changes_nothing() {
        let sys = FakeSys::new();
        let r = unmount_all_with(&sys, None);
        assert_eq!(r.unmounted, 0);
        assert_eq!(r.failed.len(), 1);
        assert!(sys.calls().is_empty());
    }
}
