//! Verification of the processes in init's PID namespace: on a kiOS node
//! only init, cri-o, the kubelet, conmon monitors and containers may run.
//! Kernel threads, zombies, short-lived helpers that cri-o, the kubelet or
//! a conmon run from /bin or /opt/cni/bin (crun, pinns, mount, CNI plugins)
//! and the pids the caller names
//! (e.g. the client that asked) are accepted; anything else is a `process`
//! finding with its pid, exe and command line.

use crate::verify::{Finding, Problem, Report};
use std::path::{Path, PathBuf};

/// `PF_KTHREAD` in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;
/// Bytes of a command line kept in a finding.
pub const MAX_CMDLINE_BYTES: usize = 512;
/// Bound on the processes examined.
pub const MAX_PROCESSES: usize = 65_536;

/// The processes init knows about.
#[derive(Debug, Clone, Default)]
pub struct ExpectedProcs {
    /// Init's pid as seen in `proc_root` (1 on a node).
    pub init: u32,
    pub crio: Option<u32>,
    pub kubelet: Option<u32>,
    /// Further pids to accept (e.g. the peer of the verify request).
    pub also_allowed: Vec<u32>,
    /// Cgroup path prefixes of cri-o's pods (cgroupfs driver: `/kubepods`).
    pub pod_cgroup_prefixes: Vec<String>,
    /// Executable of the container monitor.
    pub conmon_exe: String,
    /// Directories of programs that cri-o, the kubelet or a conmon may run as
    /// short-lived helpers (the image's /bin, the CNI plugins): accepted while
    /// they live.
    pub helper_dirs: Vec<String>,
    /// Bound on the findings kept; the rest are counted in `omitted`.
    pub max_findings: usize,
}

impl ExpectedProcs {
    /// The defaults of a kiOS node for the given service pids.
    pub fn node(init: u32, crio: Option<u32>, kubelet: Option<u32>) -> ExpectedProcs {
        ExpectedProcs {
            init,
            crio,
            kubelet,
            also_allowed: Vec::new(),
            pod_cgroup_prefixes: vec!["/kubepods".to_string()],
            conmon_exe: "/bin/conmon".to_string(),
            helper_dirs: vec!["/bin".to_string(), "/opt/cni/bin".to_string()],
            max_findings: crate::verify::DEFAULT_MAX_FINDINGS,
        }
    }
}

/// Failure to look at processes at all.
#[derive(Debug, thiserror::Error)]
pub enum ProcsError {
    #[error("read {path}: {source}")]
    ReadProc {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct ProcInfo {
    pid: u32,
    ppid: u32,
    state: char,
    flags: u64,
    exe: Option<String>,
    pidns: Option<String>,
    cgroup: String,
    cmdline: String,
}

/// Checks every process listed under `proc_root` (normally `/proc`).
pub fn verify_processes(proc_root: &Path, expected: &ExpectedProcs) -> Result<Report, ProcsError> {
    let rd = std::fs::read_dir(proc_root).map_err(|source| ProcsError::ReadProc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = rd
        .filter_map(|d| d.ok())
        .filter_map(|d| d.file_name().to_str().and_then(|s| s.parse().ok()))
        .take(MAX_PROCESSES)
        .collect();
    pids.sort_unstable();
    // Processes vanish while we look: a process we cannot read is skipped.
    let procs: Vec<ProcInfo> = pids
        .iter()
        .filter_map(|&pid| read_proc(proc_root, pid))
        .collect();
    let parent_of = |pid: u32| procs.iter().find(|p| p.pid == pid).map(|p| p.ppid);
    let init_ns = read_link(&proc_root.join(expected.init.to_string()).join("ns/pid"));
    let services: Vec<u32> = [expected.crio, expected.kubelet]
        .into_iter()
        .flatten()
        .collect();
    // Helpers run by cri-o, the kubelet, a conmon (crun under conmon) or the
    // kernel (usermode helpers such as /sbin/modprobe are children of kthreadd).
    let mut helper_parents = services.clone();
    helper_parents.extend(
        procs
            .iter()
            .filter(|p| {
                p.exe.as_deref() == Some(expected.conmon_exe.as_str()) || p.flags & PF_KTHREAD != 0
            })
            .map(|p| p.pid),
    );

    let mut report = Report::default();
    for p in &procs {
        report.checked += 1;
        let known = p.pid == expected.init
            || services.contains(&p.pid)
            || expected.also_allowed.contains(&p.pid);
        let kernel_thread = p.flags & PF_KTHREAD != 0;
        let zombie = p.state == 'Z' || p.state == 'X';
        let conmon = p.exe.as_deref() == Some(expected.conmon_exe.as_str());
        let other_ns = match (&init_ns, &p.pidns) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        let in_pod_cgroup = expected
            .pod_cgroup_prefixes
            .iter()
            .any(|prefix| under_prefix(&p.cgroup, prefix));
        let helper = p.exe.as_deref().is_some_and(|exe| {
            let dir = Path::new(exe).parent();
            expected
                .helper_dirs
                .iter()
                .any(|d| dir == Some(Path::new(d)))
        }) && descends_from(p.pid, &helper_parents, parent_of);
        if known || kernel_thread || zombie || conmon || other_ns || in_pod_cgroup || helper {
            continue;
        }
        let detail = format!(
            "exe {}, ppid {}, cmdline {:?}",
            p.exe.as_deref().unwrap_or("(unreadable)"),
            p.ppid,
            p.cmdline
        );
        if report.findings.len() >= expected.max_findings {
            report.omitted += 1;
        } else {
            report.findings.push(Finding {
                path: format!("/proc/{}", p.pid),
                problem: Problem::Process,
                detail,
            });
        }
    }
    Ok(report)
}

fn under_prefix(cgroup: &str, prefix: &str) -> bool {
    cgroup == prefix
        || cgroup.strip_prefix(prefix).is_some_and(|rest| {
            rest.starts_with('/') || rest.starts_with('.') || rest.starts_with('-')
        })
}

fn descends_from(pid: u32, ancestors: &[u32], parent_of: impl Fn(u32) -> Option<u32>) -> bool {
    let mut cur = pid;
    // Bounded: pid chains are short, and a cycle must not loop forever.
    for _ in 0..64 {
        match parent_of(cur) {
            Some(ppid) if ancestors.contains(&ppid) => return true,
            Some(ppid) if ppid > 1 && ppid != cur => cur = ppid,
            _ => return false,
        }
    }
    false
}

fn read_link(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn read_small(path: &Path, max: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

fn read_proc(proc_root: &Path, pid: u32) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let stat = read_small(&dir.join("stat"), 4096)?;
    let stat = String::from_utf8_lossy(&stat);
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // pgrp, session, tty_nr, tpgid, then flags.
    let flags = fields.nth(4)?.parse().ok()?;
    let exe = read_link(&dir.join("exe")).map(|e| {
        e.strip_suffix(" (deleted)")
            .map(str::to_string)
            .unwrap_or(e)
    });
    let cgroup = read_small(&dir.join("cgroup"), 4096)
        .map(|b| {
            let text = String::from_utf8_lossy(&b).into_owned();
            // cgroup v2: "0::/path"; take the unified line (or the first).
            text.lines()
                .find(|l| l.starts_with("0::"))
                .or_else(|| text.lines().next())
                .and_then(|l| l.splitn(3, ':').nth(2))
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let cmdline = read_small(&dir.join("cmdline"), MAX_CMDLINE_BYTES)
        .map(|b| {
            let s: Vec<String> = b
                .split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            s.join(" ")
        })
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid,
        state,
        flags,
        exe,
        pidns: read_link(&dir.join("ns/pid")),
        cgroup,
        cmdline,
    })
}
