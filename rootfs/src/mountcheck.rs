//! The live mount table against the one init recorded at boot (after its
//! last mount, before any other process existed) and against the spec:
//!
//! - every mount of the boot table is still there with the same filesystem
//!   type, source, root and flags (`ro`, `noexec`, `nosuid`, `nodev`);
//! - every mount that was not there at boot is reported, unless it lies in
//!   a delegated area (container storage, pod volumes) or in a runtime area
//!   whose spec allows `mounts` (placed by [`crate::areas::scope_of`], the
//!   rule the area walk shares: a mount tolerated in a runtime area is
//!   walked with that area's rules, so its files are still looked at);
//! - a runtime area that is a mount point is mounted `nodev`, and `noexec`
//!   and `nosuid` unless its spec allows `exec` or `setuid`: this holds init
//!   itself to the spec, not only the node to its boot;
//! - a tolerated mount below a runtime area is held to the same flags as
//!   its area (`nsfs`, a namespace pinned by cri-o, holds no files and is
//!   exempt): an exec tmpfs below /var/lib/kubelet is reported even when
//!   it is still empty.
//!
//! Pure: both tables come from [`crate::mountinfo`]; paths are bytes.

use crate::areas::{areas, scope_of, Area, Scope};
use crate::inventory::{Contents, Inventory};
use crate::mountinfo::MountInfo;
use crate::verify::{Problem, Report};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The per-mount flags verify compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub ro: bool,
    pub noexec: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

impl Flags {
    pub fn of(m: &MountInfo) -> Flags {
        Flags {
            ro: m.has_option("ro"),
            noexec: m.has_option("noexec"),
            nosuid: m.has_option("nosuid"),
            nodev: m.has_option("nodev"),
        }
    }

    fn words(self) -> [&'static str; 4] {
        [
            if self.ro { "ro" } else { "rw" },
            if self.noexec { "noexec" } else { "exec" },
            if self.nosuid { "nosuid" } else { "suid" },
            if self.nodev { "nodev" } else { "dev" },
        ]
    }

    /// e.g. `ro,noexec,nosuid,nodev`.
    pub fn describe(self) -> String {
        self.words().join(",")
    }
}

/// e.g. `tmpfs from tmpfs, rw,noexec,nosuid,nodev`.
pub(crate) fn describe_mount(m: &MountInfo) -> String {
    let root = if m.root.as_os_str() == "/" {
        String::new()
    } else {
        format!(
            " (root {})",
            kios_protocol::path::escape(m.root.as_os_str().as_bytes())
        )
    };
    format!(
        "{} from {}{root}, {}",
        m.fstype,
        kios_protocol::path::escape_str(&m.source),
        Flags::of(m).describe()
    )
}

fn by_point(table: &[MountInfo]) -> BTreeMap<&[u8], Vec<&MountInfo>> {
    let mut map: BTreeMap<&[u8], Vec<&MountInfo>> = BTreeMap::new();
    for m in table {
        map.entry(m.mount_point.as_os_str().as_bytes())
            .or_default()
            .push(m);
    }
    map
}

/// Compares `live` with `boot` and the spec's runtime areas of `inv`.
pub fn check_mounts(
    boot: &[MountInfo],
    live: &[MountInfo],
    inv: &Inventory,
    max_findings: usize,
) -> Report {
    let mut report = Report::default();
    let areas = areas(inv);
    let boot_map = by_point(boot);
    let live_map = by_point(live);
    for (point, at_boot) in &boot_map {
        report.checked += 1;
        let now = live_map.get(point).map(Vec::as_slice).unwrap_or_default();
        let (Some(was), Some(is)) = (at_boot.last(), now.last()) else {
            let was = at_boot
                .last()
                .map(|m| describe_mount(m))
                .unwrap_or_default();
            let detail = format!("not mounted any more (at boot: {was})");
            report.push(max_findings, point, Problem::Mount, detail);
            continue;
        };
        if now.len() > at_boot.len() {
            let detail = format!(
                "mounted over: {} (at boot: {})",
                describe_mount(is),
                describe_mount(was)
            );
            report.push(max_findings, point, Problem::Mount, detail);
            continue;
        }
        let mut changes = Vec::new();
        if is.fstype != was.fstype || is.source != was.source || is.root != was.root {
            changes.push(format!(
                "now {}, at boot {}",
                describe_mount(is),
                describe_mount(was)
            ));
        } else if Flags::of(is) != Flags::of(was) {
            changes.push(format!(
                "remounted {} (at boot {})",
                Flags::of(is).describe(),
                Flags::of(was).describe()
            ));
        }
        if changes.is_empty() {
            spec_flags(&areas, point, is, max_findings, &mut report);
        }
        for detail in changes {
            report.push(max_findings, point, Problem::Mount, detail);
        }
    }
    for (point, now) in &live_map {
        if boot_map.contains_key(point) {
            continue;
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(point));
        match scope_of(&areas, path) {
            Scope::OutOfScope(_) => continue,
            Scope::Walked(area) if area.allow.mounts => {
                for m in now {
                    extra_flags(area, point, m, max_findings, &mut report);
                }
                continue;
            }
            Scope::Walked(_) | Scope::AreaRoot(_) | Scope::Outside => {}
        }
        for m in now {
            let detail = format!("not mounted by init at boot: {}", describe_mount(m));
            report.push(max_findings, point, Problem::Mount, detail);
        }
    }
    report.sort();
    report
}

/// The flags `area` requires that `m` lacks: `nodev` always, `noexec`
/// and `nosuid` unless the area allows programs or setuid files.
fn lacking(area: &Area, m: &MountInfo) -> Vec<&'static str> {
    let f = Flags::of(m);
    let mut lacking = Vec::new();
    if !f.noexec && !area.allow.exec {
        lacking.push("noexec");
    }
    if !f.nosuid && !area.allow.setuid {
        lacking.push("nosuid");
    }
    if !f.nodev {
        lacking.push("nodev");
    }
    lacking
}

/// What `area`'s spec allows, for a detail.
fn allowed(area: &Area) -> String {
    if area.allow.names().is_empty() {
        "no programs, setuid files or devices".to_string()
    } else {
        area.allow.names().join(", ")
    }
}

/// A runtime area mounted with less than its spec requires.
fn spec_flags(areas: &[Area], point: &[u8], m: &MountInfo, max: usize, report: &mut Report) {
    let Some(area) = areas
        .iter()
        .find(|a| a.path.as_bytes() == point && a.contents == Contents::Runtime)
    else {
        return;
    };
    let lacking = lacking(area, m);
    if !lacking.is_empty() {
        let detail = format!(
            "mounted without {} ({}); the spec allows {} here",
            lacking.join(","),
            describe_mount(m),
            allowed(area)
        );
        report.push(max, point, Problem::Mount, detail);
    }
}

/// A mount made since boot below `area`, which allows mounts, with more
/// than the area allows (a namespace file of `nsfs` holds nothing).
fn extra_flags(area: &Area, point: &[u8], m: &MountInfo, max: usize, report: &mut Report) {
    if m.fstype == "nsfs" {
        return;
    }
    let lacking = lacking(area, m);
    if !lacking.is_empty() {
        let detail = format!(
            "mounted since boot without {} ({}); the spec allows only {} below {}",
            lacking.join(","),
            describe_mount(m),
            area.allow.names().join(", "),
            area.path
        );
        report.push(max, point, Problem::Mount, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Allow, Entry, Kind};
    use crate::mountinfo::parse;

    fn inv() -> Inventory {
        let mut tmp = Entry::new("/tmp", Kind::Mount, 0o555);
        tmp.contents = Some(Contents::Runtime);
        let mut run = Entry::new("/var/run", Kind::Mount, 0o555);
        run.contents = Some(Contents::Runtime);
        run.allow = Allow {
            mounts: true,
            ..Allow::default()
        };
        let mut log = Entry::new("/var/log", Kind::Mount, 0o555);
        log.contents = Some(Contents::Runtime);
        let mut pods = Entry::new("/var/lib/kubelet/pods", Kind::Mount, 0o750);
        pods.contents = Some(Contents::Delegated);
        Inventory::new(vec![tmp, run, log, pods], vec![])
    }

    const BOOT: &[u8] = b"\
20 1 0:20 / / rw - rootfs rootfs rw
21 20 0:21 / /tmp rw,nosuid,nodev,noexec - tmpfs tmpfs rw
22 20 0:22 / /var/run rw,nosuid,nodev,noexec shared:2 - tmpfs tmpfs rw
23 20 8:1 /meta/log /var/log rw,nosuid,nodev,noexec - ext4 /dev/vda1 rw
24 20 0:23 / /var/lib/kubelet/pods rw,nodev - ext4 /dev/vda1 rw
";

    fn problems(r: &Report) -> Vec<(String, String)> {
        r.findings
            .iter()
            .map(|f| (f.path.clone(), f.detail.clone()))
            .collect()
    }

    #[test]
    fn the_boot_table_is_clean() {
        let t = parse(BOOT);
        let r = check_mounts(&t, &t, &inv(), 100);
        assert!(r.findings.is_empty(), "{:?}", problems(&r));
        assert_eq!(r.checked, 5);
    }

    #[test]
    fn a_remount_a_bind_over_a_program_and_a_lost_mount_are_reported() {
        let boot = parse(BOOT);
        let live = parse(
            b"\
20 1 0:20 / / rw - rootfs rootfs rw
21 20 0:21 / /tmp rw,relatime - tmpfs tmpfs rw
22 20 0:22 / /var/run rw,nosuid,nodev,noexec shared:2 - tmpfs tmpfs rw
24 20 0:23 / /var/lib/kubelet/pods rw,nodev - ext4 /dev/vda1 rw
30 20 0:30 /evil /bin/kubelet rw - tmpfs tmpfs rw
31 22 0:4 net:[4026] /var/run/netns/x rw - nsfs nsfs rw
32 24 0:40 / /var/lib/kubelet/pods/u/volumes/v rw - tmpfs tmpfs rw
33 20 0:41 / /var/lib/\\377x rw - tmpfs tmpfs rw
",
        );
        let r = check_mounts(&boot, &live, &inv(), 100);
        let found = problems(&r);
        assert!(r.findings.iter().all(|f| f.problem == Problem::Mount));
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["/bin/kubelet", "/tmp", "/var/lib/\\xffx", "/var/log"],
            "{found:?}"
        );
        assert!(
            found[1].1.contains("remounted rw,exec,suid,dev"),
            "{found:?}"
        );
        assert!(found[3].1.contains("not mounted any more"), "{found:?}");
        assert!(found[0].1.contains("root /evil"), "{found:?}");
    }

    #[test]
    fn a_runtime_area_mounted_without_noexec_is_reported_even_at_boot() {
        let t = parse(b"23 20 8:1 /meta/log /var/log rw,relatime - ext4 /dev/vda1 rw\n");
        let r = check_mounts(&t, &t, &inv(), 100);
        let found = problems(&r);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "/var/log");
        assert!(
            found[0].1.contains("without noexec,nosuid,nodev"),
            "{found:?}"
        );
    }

    #[test]
    fn a_second_mount_stacked_on_a_boot_mount_is_reported() {
        let boot = parse(BOOT);
        let mut live = boot.clone();
        live.extend(parse(b"40 21 0:50 / /tmp rw - tmpfs tmpfs rw\n"));
        let r = check_mounts(&boot, &live, &inv(), 100);
        let found = problems(&r);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.starts_with("mounted over"), "{found:?}");
    }

    #[test]
    fn a_tolerated_mount_is_held_to_its_areas_flags() {
        let boot = parse(BOOT);
        let mut live = boot.clone();
        live.extend(parse(
            b"\
40 22 0:50 / /var/run/x rw,relatime - tmpfs tmpfs rw
41 22 0:51 / /var/run/y rw,nosuid,nodev,noexec - tmpfs tmpfs rw
42 22 0:4 net:[4026] /var/run/netns/cni-1 rw - nsfs nsfs rw
43 24 0:52 / /var/lib/kubelet/pods/u/volumes/v rw - tmpfs tmpfs rw
",
        ));
        let r = check_mounts(&boot, &live, &inv(), 100);
        let found = problems(&r);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "/var/run/x");
        assert!(
            found[0]
                .1
                .starts_with("mounted since boot without noexec,nosuid,nodev"),
            "{found:?}"
        );
        assert!(
            found[0]
                .1
                .ends_with("the spec allows only mounts below /var/run"),
            "{found:?}"
        );
    }
}
