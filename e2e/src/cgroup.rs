//! A pids cgroup of the test's own for a sandbox: created under the cgroup
//! the test process is in (never changing that one), limited through its
//! own `pids.max`, removed when dropped.
//!
//! Both layouts are handled: cgroup v2 (`0::/PATH` in /proc/self/cgroup,
//! the pids controller enabled in that cgroup's `cgroup.subtree_control`)
//! and a v1 `pids` hierarchy (`N:pids:/PATH`), as on hosts that still mount
//! the controllers one by one. The sandbox's shell joins it before
//! `unshare --cgroup`, so the cgroup is also the root of the sandbox's
//! cgroup namespace ([`crate::ns::SandboxConfig::cgroup`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A cgroup with the pids controller that this test created.
#[derive(Debug)]
pub struct PidsCgroup {
    dir: PathBuf,
}

/// Where the sandbox's pids cgroup goes, for this process.
fn own_pids_cgroup() -> Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let mounts: Vec<crate::ns::MountInfo> = mountinfo
        .lines()
        .filter_map(crate::ns::MountInfo::parse)
        .collect();
    pids_parent(&cgroups, &mounts, |dir| {
        std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default()
    })
}

/// The cgroup under which a pids cgroup can be made, from
/// /proc/self/cgroup, the mount table and a reader of a v2 cgroup's
/// `cgroup.subtree_control`:
/// - v1: the test's own cgroup in the `pids` hierarchy;
/// - v2: the test's own cgroup when the pids controller is enabled for its
///   children; else the hierarchy's root when it is enabled there (as
///   systemd does). cgroup v2 allows no controller for the children of a
///   non-root cgroup that holds processes, and the test's holds the test,
///   so the sandbox's cgroup goes beside it, as under v1's root; the test's
///   own cgroup is never changed.
fn pids_parent(
    cgroups: &str,
    mounts: &[crate::ns::MountInfo],
    subtree_control: impl Fn(&Path) -> String,
) -> Result<PathBuf> {
    // v1: a hierarchy of its own for pids.
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if !controllers.split(',').any(|c| c == "pids") {
            continue;
        }
        let Some(mount) = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == "pids"))
        else {
            bail!("the pids controller (v1) is not mounted");
        };
        return Ok(Path::new(&mount.mount_point).join(path.trim_start_matches('/')));
    }
    // v2: the unified hierarchy.
    let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("no pids controller: neither a v1 pids hierarchy nor cgroup v2 in /proc/self/cgroup");
    };
    let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        bail!("cgroup v2 is not mounted");
    };
    let root = PathBuf::from(&mount.mount_point);
    let own = root.join(path.trim_start_matches('/'));
    let has_pids = |dir: &Path| subtree_control(dir).split_whitespace().any(|c| c == "pids");
    if has_pids(&own) {
        return Ok(own);
    }
    if has_pids(&root) {
        return Ok(root);
    }
    bail!(
        "cgroup v2: the pids controller is enabled neither for the children of {} nor at the \
         root {} (cgroup.subtree_control); enabling it would change the test's own cgroup",
        own.display(),
        root.display()
    )
}

impl PidsCgroup {
    /// Creates `kios-e2e-NAME-PID` under the test's own pids cgroup, with
    /// no limit yet.
    pub fn create(name: &str) -> Result<PidsCgroup> {
        let parent = own_pids_cgroup()?;
        let dir = parent.join(format!("kios-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cgroup = PidsCgroup { dir };
        cgroup.set_max(None)?;
        Ok(cgroup)
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `pids.max`: a number of tasks (threads count), or no limit.
    pub fn set_max(&self, max: Option<u64>) -> Result<()> {
        let value = max.map_or("max".to_string(), |n| n.to_string());
        let path = self.dir.join("pids.max");
        std::fs::write(&path, &value)
            .with_context(|| format!("cannot write {value} to {}", path.display()))
    }

    /// `pids.current`: the tasks in it now.
    pub fn current(&self) -> Result<u64> {
        let path = self.dir.join("pids.current");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", path.display()))
    }

    /// The process ids in it (`cgroup.procs`).
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for PidsCgroup {
    /// Removes the cgroup once the sandbox's processes have left it (they
    /// die with the sandbox; give them a moment).
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::MountInfo;

    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
40 30 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,pids
";
    const UNIFIED_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    fn mounts(text: &str) -> Vec<MountInfo> {
        text.lines().filter_map(MountInfo::parse).collect()
    }

    #[test]
    fn v1_uses_the_tests_own_pids_cgroup() {
        let cgroups = "12:pids:/\n1:name=systemd:/user.slice\n0::/user.slice\n";
        let got = pids_parent(cgroups, &mounts(HYBRID_MOUNTS), |_| String::new()).unwrap();
        assert_eq!(got, PathBuf::from("/sys/fs/cgroup/pids"));
    }

    #[test]
    fn v2_uses_its_own_cgroup_when_delegated_else_the_root() {
        let cgroups = "0::/user.slice/user-0.slice/session-3.scope\n";
        let own = PathBuf::from("/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope");
        let root = PathBuf::from("/sys/fs/cgroup");
        let unified = mounts(UNIFIED_MOUNTS);
        // Delegated to the test's cgroup (a systemd unit with Delegate=).
        let delegated = |dir: &Path| {
            if dir == own {
                "pids".into()
            } else {
                String::new()
            }
        };
        assert_eq!(pids_parent(cgroups, &unified, delegated).unwrap(), own);
        // A login session: only the root enables pids (systemd's default).
        let at_root = |dir: &Path| {
            if dir == Path::new("/sys/fs/cgroup") {
                "cpu io memory pids".into()
            } else {
                String::new()
            }
        };
        assert_eq!(pids_parent(cgroups, &unified, at_root).unwrap(), root);
        // Nowhere: a clear error, nothing chosen.
        let err = pids_parent(cgroups, &unified, |_| "cpu memory".into()).unwrap_err();
        assert!(err.to_string().contains("enabled neither"), "{err}");
    }
}
