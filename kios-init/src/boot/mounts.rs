//! The base mounts of a kiOS node as a data table ([`BASE_PLAN`]) walked by
//! one function ([`run_plan`]): proc, sysfs, devtmpfs, devpts, securityfs,
//! cgroup2, the tmpfs set, shared propagation for /var/run and
//! /var/lib/kubelet, the directories cri-o and the kubelet expect, and
//! finally `/` recursively shared so Kubernetes mount propagation works.
//!
//! Mount points are created when missing. A target that is already mounted
//! (EBUSY) is accepted as it is. Any other failure is logged at error level
//! and the plan goes on: a node with one missing pseudo filesystem is more
//! useful (and debuggable) than a kernel panic.

use crate::sys::{
    MountCall, MountFlags, Sys, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_REC, MS_REMOUNT,
    MS_SHARED,
};
use std::path::Path;

/// One step of a mount plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountStep {
    /// mount(source, target, fstype, flags, data), creating `target` first.
    Mount {
        source: &'static str,
        target: &'static str,
        fstype: &'static str,
        flags: MountFlags,
        data: Option<&'static str>,
    },
    /// Make an existing mount shared (recursively or not).
    MakeShared {
        target: &'static str,
        recursive: bool,
    },
    /// mkdir -p with a mode.
    Mkdir { path: &'static str, mode: u32 },
    /// Bind `source` onto `target` (created first), then remount the bind
    /// with `flags` (a bind inherits its source's flags unless remounted),
    /// when `when` holds.
    Bind {
        source: &'static str,
        target: &'static str,
        flags: MountFlags,
        when: BindWhen,
    },
}

/// When a [`MountStep::Bind`] happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindWhen {
    /// Always; a failure is a failure of the plan.
    Always,
    /// Only when the source exists (an image may not ship it): silently
    /// skipped otherwise.
    SourceExists,
    /// Only when the source directory has entries: an empty directory must
    /// not hide what the target already holds (noted in the kernel log).
    SourceNotEmpty,
}

const NSE: MountFlags = MS_NOSUID | MS_NOEXEC;
const NSED: MountFlags = MS_NOSUID | MS_NOEXEC | MS_NODEV;

const fn mnt(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: Option<&'static str>,
) -> MountStep {
    MountStep::Mount {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

/// The base mounts, in order. Flags follow the original init (everything
/// nosuid,noexec; nodev wherever no device node can live), with nodev added
/// on securityfs and cgroup2 too.
pub const BASE_PLAN: &[MountStep] = &[
    mnt("proc", "/proc", "proc", NSED, None),
    mnt("sysfs", "/sys", "sysfs", NSED, None),
    // No options: devtmpfs has ONE superblock per kernel and a new mount
    // reconfigures it, so options here would also change the host's /dev
    // in the namespace harness.
    mnt("devtmpfs", "/dev", "devtmpfs", NSE, None),
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        NSE,
        Some("mode=0620,ptmxmode=0666"),
    ),
    mnt(
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        NSED,
        None,
    ),
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", NSED, None),
    mnt("tmpfs", "/run", "tmpfs", NSED, Some("mode=0755")),
    mnt("tmpfs", "/tmp", "tmpfs", NSED, Some("mode=1777")),
    mnt("tmpfs", "/var/cache", "tmpfs", NSED, Some("mode=0755")),
    mnt("tmpfs", "/var/tmp", "tmpfs", NSED, Some("mode=1777")),
    mnt("tmpfs", "/var/run", "tmpfs", NSED, Some("mode=0755")),
    mnt(
        "tmpfs",
        "/var/lib/kubelet",
        "tmpfs",
        NSED,
        Some("mode=0700"),
    ),
    MountStep::MakeShared {
        target: "/var/run",
        recursive: false,
    },
    MountStep::MakeShared {
        target: "/var/lib/kubelet",
        recursive: false,
    },
    MountStep::Mkdir {
        path: "/var/run/crio",
        mode: 0o755,
    },
    MountStep::Mkdir {
        path: "/var/lib/kubelet/pods",
        mode: 0o750,
    },
    MountStep::Mkdir {
        path: "/var/lib/kubelet/seccomp",
        mode: 0o755,
    },
    MountStep::MakeShared {
        target: "/",
        recursive: true,
    },
];

/// What went wrong while walking a plan (each already kernel-logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PlanReport {
    pub done: usize,
    pub already_mounted: Vec<String>,
    pub failures: Vec<String>,
}

/// Walk a mount plan in order. Never fails as a whole; see [`PlanReport`].
pub fn run_plan(sys: &dyn Sys, plan: &[MountStep]) -> PlanReport {
    let mut report = PlanReport::default();
    for step in plan {
        let started = std::time::Instant::now();
        run_step(sys, step, &mut report);
        let took = started.elapsed();
        if took >= SLOW_STEP {
            crate::kmsg::log(
                crate::kmsg::Level::Debug,
                format_args!(
                    "slow mount step {step:?}: {} ms",
                    crate::decimal::Millis::new(
                        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                        2
                    )
                ),
            );
        }
    }
    report
}

/// Steps slower than this are logged (debug level), for the boot budget.
pub const SLOW_STEP: std::time::Duration = std::time::Duration::from_millis(1);

impl PlanReport {
    /// A step failed: kernel log at error level, and noted; the plan goes on.
    fn fail(&mut self, msg: String) {
        crate::kerr!("{msg}");
        self.failures.push(msg);
    }
}

fn run_step(sys: &dyn Sys, step: &MountStep, report: &mut PlanReport) {
    match *step {
        MountStep::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => {
            let t = Path::new(target);
            if let Err(e) = sys.create_dir_all(t, 0o755) {
                report.fail(format!("create mount point {target}: {e}"));
                return;
            }
            let call = MountCall {
                source: Some(source),
                target: t,
                fstype: Some(fstype),
                flags,
                data,
            };
            match sys.mount(&call) {
                Ok(()) => report.done += 1,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    crate::kinfo!("{target} already mounted, keeping it");
                    report.already_mounted.push(target.to_string());
                }
                Err(e) => report.fail(format!("mount {fstype} on {target}: {e}")),
            }
        }
        MountStep::MakeShared { target, recursive } => {
            let flags = if recursive {
                MS_SHARED | MS_REC
            } else {
                MS_SHARED
            };
            let call = MountCall {
                source: None,
                target: Path::new(target),
                fstype: None,
                flags,
                data: None,
            };
            match sys.mount(&call) {
                Ok(()) => report.done += 1,
                Err(e) => report.fail(format!("make {target} shared: {e}")),
            }
        }
        MountStep::Mkdir { path, mode } => match sys.create_dir_all(Path::new(path), mode) {
            Ok(()) => report.done += 1,
            Err(e) => report.fail(format!("create directory {path}: {e}")),
        },
        MountStep::Bind {
            source,
            target,
            flags,
            when,
        } => {
            let wanted = match when {
                BindWhen::Always => true,
                BindWhen::SourceExists => sys.path_exists(Path::new(source)),
                BindWhen::SourceNotEmpty => match sys.list_dir(Path::new(source)) {
                    Ok(entries) if !entries.is_empty() => true,
                    Ok(_) => {
                        crate::kinfo!("{source} is empty: keeping what {target} holds");
                        false
                    }
                    Err(e) => {
                        report.fail(format!("list {source}: {e}"));
                        false
                    }
                },
            };
            if !wanted {
                return;
            }
            let t = Path::new(target);
            let bind = MountCall {
                source: Some(source),
                target: t,
                fstype: None,
                flags: MS_BIND,
                data: None,
            };
            let remount = MountCall {
                source: None,
                target: t,
                fstype: None,
                flags: MS_REMOUNT | MS_BIND | flags,
                data: None,
            };
            let r = sys
                .create_dir_all(t, 0o755)
                .and_then(|()| sys.mount(&bind))
                .and_then(|()| sys.mount(&remount));
            match r {
                Ok(()) => report.done += 1,
                Err(e) => report.fail(format!("bind {source} on {target}: {e}")),
            }
        }
    }
}

/// Walk [`BASE_PLAN`].
pub fn mount_base(sys: &dyn Sys) -> PlanReport {
    run_plan(sys, BASE_PLAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, FakeSys};

    #[test]
    fn base_plan_order_and_flags() {
        let sys = FakeSys::new();
        let r = mount_base(&sys);
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        let mounts = sys.mounts();
        let got: Vec<(&str, Option<&str>, MountFlags)> = mounts
            .iter()
            .map(|(t, f, fl)| (t.as_str(), f.as_deref(), *fl))
            .collect();
        let want: Vec<(&str, Option<&str>, MountFlags)> = vec![
            ("/proc", Some("proc"), NSED),
            ("/sys", Some("sysfs"), NSED),
            ("/dev", Some("devtmpfs"), NSE),
            ("/dev/pts", Some("devpts"), NSE),
            ("/sys/kernel/security", Some("securityfs"), NSED),
            ("/sys/fs/cgroup", Some("cgroup2"), NSED),
            ("/run", Some("tmpfs"), NSED),
            ("/tmp", Some("tmpfs"), NSED),
            ("/var/cache", Some("tmpfs"), NSED),
            ("/var/tmp", Some("tmpfs"), NSED),
            ("/var/run", Some("tmpfs"), NSED),
            ("/var/lib/kubelet", Some("tmpfs"), NSED),
            ("/var/run", None, MS_SHARED),
            ("/var/lib/kubelet", None, MS_SHARED),
            ("/", None, MS_SHARED | MS_REC),
        ];
        assert_eq!(got, want);
        // nosuid and noexec everywhere; nodev on proc and sysfs.
        assert!(got[..12].iter().all(|(_, _, f)| f & NSE == NSE));
        // The directories are created after their tmpfs is mounted, and
        // `/` is made shared last.
        let calls = sys.calls();
        let pos = |c: &Call| calls.iter().position(|x| x == c).expect("call present");
        let kubelet_tmpfs = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { target, fstype: Some(_), .. } if target == "/var/lib/kubelet"))
            .expect("kubelet tmpfs");
        assert!(pos(&Call::Mkdir("/var/lib/kubelet/pods".into(), 0o750)) > kubelet_tmpfs);
        assert!(pos(&Call::Mkdir("/var/lib/kubelet/seccomp".into(), 0o755)) > kubelet_tmpfs);
        assert!(pos(&Call::Mkdir("/var/run/crio".into(), 0o755)) > kubelet_tmpfs);
        assert!(matches!(calls.last(), Some(Call::Mount { target, .. }) if target == "/"));
    }

    #[test]
    fn missing_mount_points_are_created_before_mounting() {
        let sys = FakeSys::new();
        sys.add_dir("/proc");
        mount_base(&sys);
        let calls = sys.calls();
        // /proc existed: no mkdir for it; /sys/kernel/security did not.
        assert!(!calls.contains(&Call::Mkdir("/proc".into(), 0o755)));
        let mkdir = calls
            .iter()
            .position(|c| *c == Call::Mkdir("/sys/kernel/security".into(), 0o755))
            .expect("mkdir");
        let mount = calls
            .iter()
            .position(
                |c| matches!(c, Call::Mount { target, .. } if target == "/sys/kernel/security"),
            )
            .expect("mount");
        assert!(mkdir < mount);
    }

    #[test]
    fn already_mounted_is_accepted_and_failures_do_not_stop_the_plan() {
        let sys = FakeSys::new();
        sys.fail("mount", "/proc", libc::EBUSY);
        sys.fail("mount", "/sys/kernel/security", libc::ENODEV);
        let r = mount_base(&sys);
        assert_eq!(r.already_mounted, ["/proc"]);
        assert_eq!(r.failures.len(), 1);
        assert!(
            r.failures[0].contains("securityfs on /sys/kernel/security"),
            "{:?}",
            r.failures
        );
        // Everything after the failure still ran.
        assert!(matches!(sys.calls().last(), Some(Call::Mount { target, .. }) if target == "/"));
    }

    #[test]
    fn mkdir_failure_skips_only_that_mount() {
        let sys = FakeSys::new();
        sys.fail("mkdir", "/tmp", libc::EROFS);
        let r = mount_base(&sys);
        assert_eq!(
            r.failures,
            ["create mount point /tmp: Read-only file system (os error 30)"]
        );
        assert!(!sys.mounts().iter().any(|(t, _, _)| t == "/tmp"));
        assert!(sys.mounts().iter().any(|(t, _, _)| t == "/var/tmp"));
    }
}
