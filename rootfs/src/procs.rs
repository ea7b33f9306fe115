//! The processes of init's PID namespace and the ONE rule of which may run:
//! on a kiOS node only init, cri-o, the kubelet, conmon monitors and
//! containers may run. Kernel threads, zombies, short-lived helpers that
//! cri-o, the kubelet or a conmon run from /bin or /opt/cni/bin (crun,
//! pinns, mount, CNI plugins) and the pids the caller names (e.g. the
//! client that asked) are accepted; anything else is unexpected.
//!
//! [`snapshot`] reads /proc (bounded: [`MAX_PROCESSES`], small reads per
//! file), [`classify`] gives every process its [`Role`]; `verify` turns the
//! unexpected ones into `process` findings ([`verify_processes`]) and
//! `kiosctl ps` shows them all.

use crate::verify::{Finding, Problem, Report};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `PF_KTHREAD` in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;
/// Bytes of a command line kept.
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

/// One process as read from /proc/PID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter of /proc/PID/stat (`S`, `R`, `Z`, ...).
    pub state: char,
    pub flags: u64,
    /// Owner of /proc/PID (the effective uid of a dumpable process).
    pub uid: u32,
    /// The name of /proc/PID/comm, from stat.
    pub comm: String,
    /// User and system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start after boot, in clock ticks.
    pub start_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
    pub exe: Option<String>,
    pub pidns: Option<String>,
    pub cgroup: String,
    /// Arguments (at most [`MAX_CMDLINE_BYTES`] of them, lossily UTF-8).
    pub args: Vec<String>,
}

impl ProcInfo {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// The arguments joined by spaces (not escaped).
    pub fn cmdline(&self) -> String {
        self.args.join(" ")
    }
}

/// Every process of a /proc tree at one moment (as near as /proc allows).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// By pid, ascending.
    pub procs: Vec<ProcInfo>,
    /// The listing had more than [`MAX_PROCESSES`] processes.
    pub truncated: bool,
    /// Seconds since boot (/proc/uptime), when readable.
    pub uptime_secs: Option<f64>,
}

/// Reads every process under `proc_root` (normally `/proc`), at most
/// [`MAX_PROCESSES`]. Processes that vanish while we look are skipped.
pub fn snapshot(proc_root: &Path) -> Result<Snapshot, ProcsError> {
    let rd = std::fs::read_dir(proc_root).map_err(|source| ProcsError::ReadProc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = Vec::new();
    let mut truncated = false;
    for entry in rd.filter_map(|d| d.ok()) {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            if pids.len() >= MAX_PROCESSES {
                truncated = true;
                break;
            }
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    let procs = pids
        .iter()
        .filter_map(|&pid| read_proc(proc_root, pid))
        .collect();
    let uptime_secs = read_small(&proc_root.join("uptime"), 128).and_then(|b| {
        String::from_utf8_lossy(&b)
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
    });
    Ok(Snapshot {
        procs,
        truncated,
        uptime_secs,
    })
}

/// Why a process may run (or that it may not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Init,
    Crio,
    Kubelet,
    /// A container monitor, with the pod and container it monitors.
    Conmon(PodRef),
    /// A process of a container: in another PID namespace or a pod cgroup.
    Container(PodRef),
    /// A short-lived helper from one of the helper directories, run by cri-o,
    /// the kubelet, a conmon or the kernel.
    Helper,
    /// A pid the caller named (e.g. the client asking).
    Allowed,
    KernelThread,
    Zombie,
    /// None of the above: `verify` reports it, `ps` marks it UNEXPECTED.
    Unexpected,
}

/// The pod and container of a conmon or container process, when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    /// `namespace/name`.
    pub pod: Option<String>,
    pub container: Option<String>,
    /// The container id (conmon `-c`, or `crio-<id>` of the cgroup).
    pub id: Option<String>,
}

impl Role {
    /// The role's name, as `ps` shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Crio => "crio",
            Role::Kubelet => "kubelet",
            Role::Conmon(_) => "conmon",
            Role::Container(_) => "container",
            Role::Helper => "helper",
            Role::Allowed => "client",
            Role::KernelThread => "kernel-thread",
            Role::Zombie => "zombie",
            Role::Unexpected => "unexpected",
        }
    }

    /// One short sentence: why the process may run.
    pub fn why(&self) -> &'static str {
        match self {
            Role::Init => "kios-init, PID 1: supervises cri-o and the kubelet",
            Role::Crio => "the container runtime, supervised by init",
            Role::Kubelet => "the node agent, supervised by init",
            Role::Conmon(_) => "cri-o's monitor of one container",
            Role::Container(_) => "runs in a pod (pod cgroup or its own PID namespace)",
            Role::Helper => "short-lived helper run by cri-o, the kubelet or a conmon",
            Role::Allowed => "the client asking init",
            Role::KernelThread => "kernel thread",
            Role::Zombie => "exited, waiting to be reaped",
            Role::Unexpected => "not init, cri-o, the kubelet, a conmon or a container",
        }
    }

    pub fn pod_ref(&self) -> Option<&PodRef> {
        match self {
            Role::Conmon(r) | Role::Container(r) => Some(r),
            _ => None,
        }
    }
}

/// The role of every process of `snap` (same order as `snap.procs`).
pub fn classify(snap: &Snapshot, expected: &ExpectedProcs) -> Vec<Role> {
    let procs = &snap.procs;
    let index: HashMap<u32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let parent_of = |pid: u32| index.get(&pid).map(|&i| procs[i].ppid);
    let init_ns = index
        .get(&expected.init)
        .and_then(|&i| procs[i].pidns.clone());
    let services: Vec<u32> = [expected.crio, expected.kubelet]
        .into_iter()
        .flatten()
        .collect();
    let is_conmon = |p: &ProcInfo| p.exe.as_deref() == Some(expected.conmon_exe.as_str());
    // Helpers run by cri-o, the kubelet, a conmon (crun under conmon) or the
    // kernel (usermode helpers such as /sbin/modprobe are children of kthreadd).
    let mut helper_parents = services.clone();
    helper_parents.extend(
        procs
            .iter()
            .filter(|p| is_conmon(p) || p.is_kernel_thread())
            .map(|p| p.pid),
    );
    // Conmons by pid and by container id, for their containers.
    let conmons: HashMap<u32, PodRef> = procs
        .iter()
        .filter(|p| is_conmon(p))
        .map(|p| (p.pid, conmon_pod_ref(&p.args)))
        .collect();
    let by_id: HashMap<&str, &PodRef> = conmons
        .values()
        .filter_map(|r| r.id.as_deref().map(|id| (id, r)))
        .collect();
    let container_ref = |p: &ProcInfo| -> PodRef {
        if let Some(ancestor) = ancestor_in(p.pid, |pid| conmons.contains_key(&pid), parent_of) {
            if let Some(r) = conmons.get(&ancestor) {
                return r.clone();
            }
        }
        let id = cgroup_container_id(&p.cgroup);
        match id.and_then(|id| by_id.get(id)) {
            Some(r) => (*r).clone(),
            None => PodRef {
                id: id.map(str::to_string),
                ..PodRef::default()
            },
        }
    };

    procs
        .iter()
        .map(|p| {
            if p.pid == expected.init {
                return Role::Init;
            }
            if Some(p.pid) == expected.crio {
                return Role::Crio;
            }
            if Some(p.pid) == expected.kubelet {
                return Role::Kubelet;
            }
            if p.is_kernel_thread() {
                return Role::KernelThread;
            }
            if p.state == 'Z' || p.state == 'X' {
                return Role::Zombie;
            }
            if let Some(r) = conmons.get(&p.pid) {
                return Role::Conmon(r.clone());
            }
            let other_ns = matches!((&init_ns, &p.pidns), (Some(a), Some(b)) if a != b);
            let in_pod_cgroup = expected
                .pod_cgroup_prefixes
                .iter()
                .any(|prefix| under_prefix(&p.cgroup, prefix));
            if other_ns || in_pod_cgroup {
                return Role::Container(container_ref(p));
            }
            if expected.also_allowed.contains(&p.pid) {
                return Role::Allowed;
            }
            let helper = p.exe.as_deref().is_some_and(|exe| {
                let dir = Path::new(exe).parent();
                expected
                    .helper_dirs
                    .iter()
                    .any(|d| dir == Some(Path::new(d)))
            }) && ancestor_in(p.pid, |a| helper_parents.contains(&a), parent_of)
                .is_some();
            if helper {
                Role::Helper
            } else {
                Role::Unexpected
            }
        })
        .collect()
}

/// Pod and container from a conmon command line: the log path
/// `-l /var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` (what
/// cri-o passes for a kubelet container), else the name `-n
/// k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`; the id from `-c`.
pub fn conmon_pod_ref(args: &[String]) -> PodRef {
    let value = |short: &str, long: &str| -> Option<&str> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == short || a == long {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
        None
    };
    let mut r = PodRef {
        id: value("-c", "--cid").map(str::to_string),
        ..PodRef::default()
    };
    if let Some(log) = value("-l", "--log-path") {
        let parts: Vec<&str> = log.split('/').collect();
        if let Some(at) = parts.iter().position(|p| *p == "pods") {
            if let (Some(dir), Some(container)) = (parts.get(at + 1), parts.get(at + 2)) {
                let mut fields = dir.splitn(3, '_');
                if let (Some(ns), Some(pod)) = (fields.next(), fields.next()) {
                    r.pod = Some(format!("{ns}/{pod}"));
                    if parts.len() > at + 3 {
                        r.container = Some((*container).to_string());
                    }
                }
            }
        }
    }
    if r.pod.is_none() {
        if let Some(name) = value("-n", "--name") {
            let f: Vec<&str> = name.split('_').collect();
            if f.len() >= 4 && f[0] == "k8s" {
                r.container = Some(f[1].to_string());
                r.pod = Some(format!("{}/{}", f[3], f[2]));
            }
        }
    }
    r
}

/// The container id of a cri-o container cgroup (`.../crio-<id>` or
/// `.../crio-<id>.scope`).
fn cgroup_container_id(cgroup: &str) -> Option<&str> {
    let last = cgroup.rsplit('/').next()?;
    let id = last.strip_prefix("crio-")?;
    Some(id.strip_suffix(".scope").unwrap_or(id))
}

/// Checks every process listed under `proc_root` (normally `/proc`).
pub fn verify_processes(proc_root: &Path, expected: &ExpectedProcs) -> Result<Report, ProcsError> {
    let snap = snapshot(proc_root)?;
    Ok(report_unexpected(
        &snap,
        &classify(&snap, expected),
        expected,
    ))
}

/// The `process` findings of `verify`: one per unexpected process.
pub fn report_unexpected(snap: &Snapshot, roles: &[Role], expected: &ExpectedProcs) -> Report {
    let mut report = Report::default();
    for (p, role) in snap.procs.iter().zip(roles) {
        report.checked += 1;
        if *role != Role::Unexpected {
            continue;
        }
        let detail = format!(
            "exe {}, ppid {}, cmdline {:?}",
            p.exe.as_deref().unwrap_or("(unreadable)"),
            p.ppid,
            p.cmdline()
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
    report
}

fn under_prefix(cgroup: &str, prefix: &str) -> bool {
    cgroup == prefix
        || cgroup.strip_prefix(prefix).is_some_and(|rest| {
            rest.starts_with('/') || rest.starts_with('.') || rest.starts_with('-')
        })
}

/// The nearest ancestor of `pid` that `is` picks (not `pid` itself).
fn ancestor_in(
    pid: u32,
    is: impl Fn(u32) -> bool,
    parent_of: impl Fn(u32) -> Option<u32>,
) -> Option<u32> {
    let mut cur = pid;
    // Bounded: pid chains are short, and a cycle must not loop forever.
    for _ in 0..64 {
        match parent_of(cur) {
            Some(ppid) if is(ppid) => return Some(ppid),
            Some(ppid) if ppid > 1 && ppid != cur => cur = ppid,
            _ => return None,
        }
    }
    None
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
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close).unwrap_or("").to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Field numbers of proc(5), from 3 (state) on.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let state = fields.first()?.chars().next()?;
    let ppid = u32::try_from(field(4)?).ok()?;
    let flags = field(9)?;
    let cpu_ticks = field(14)
        .unwrap_or(0)
        .saturating_add(field(15).unwrap_or(0));
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
    let args = read_small(&dir.join("cmdline"), MAX_CMDLINE_BYTES)
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid,
        state,
        flags,
        uid: std::fs::metadata(&dir).map(|m| m.uid()).unwrap_or(0),
        comm,
        cpu_ticks,
        start_ticks: field(22).unwrap_or(0),
        rss_pages: field(24).unwrap_or(0),
        exe,
        pidns: read_link(&dir.join("ns/pid")),
        cgroup,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn pod_and_container_from_the_log_path_cri_o_passes() {
        let r = conmon_pod_ref(&args(
            "/bin/conmon -b /run/b -c abc123 --exit-dir /var/run/crio/exits \
             -l /var/log/pods/default_web-1_5f1c/nginx/0.log -n k8s_nginx_web-1_default_5f1c_0 -u abc123",
        ));
        assert_eq!(r.pod.as_deref(), Some("default/web-1"));
        assert_eq!(r.container.as_deref(), Some("nginx"));
        assert_eq!(r.id.as_deref(), Some("abc123"));
    }

    #[test]
    fn pod_from_the_name_when_the_log_path_says_nothing() {
        let r = conmon_pod_ref(&args(
            "/bin/conmon --cid=9f -n k8s_POD_dns_kube-system_77_1 -l /tmp/x.log",
        ));
        assert_eq!(r.pod.as_deref(), Some("kube-system/dns"));
        assert_eq!(r.container.as_deref(), Some("POD"));
        assert_eq!(r.id.as_deref(), Some("9f"));
        assert_eq!(conmon_pod_ref(&args("/bin/conmon")), PodRef::default());
    }

    #[test]
    fn container_id_from_the_cgroup() {
        assert_eq!(
            cgroup_container_id("/kubepods/besteffort/pod1/crio-abc"),
            Some("abc")
        );
        assert_eq!(
            cgroup_container_id("/kubepods.slice/crio-abc.scope"),
            Some("abc")
        );
        assert_eq!(cgroup_container_id("/kubepods/pod1"), None);
    }
}
