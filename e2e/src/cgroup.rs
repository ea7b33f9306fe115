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

/// Where the pids controller's hierarchy is mounted and the test's cgroup
/// in it.
fn own_pids_cgroup() -> Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let mounts: Vec<crate::ns::MountInfo> = mountinfo
        .lines()
        .filter_map(crate::ns::MountInfo::parse)
        .collect();
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
    // v2: the unified hierarchy, with pids delegated to our subtree.
    let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("no pids controller: neither a v1 pids hierarchy nor cgroup v2 in /proc/self/cgroup");
    };
    let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        bail!("cgroup v2 is not mounted");
    };
    let own = Path::new(&mount.mount_point).join(path.trim_start_matches('/'));
    let subtree = std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    if !subtree.split_whitespace().any(|c| c == "pids") {
        bail!(
            "cgroup v2: the pids controller is not enabled for the children of {} \
             (its cgroup.subtree_control is '{}'); enabling it would change the test's own cgroup",
            own.display(),
            subtree.trim()
        );
    }
    Ok(own)
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
