//! `ps`: every process of init's PID namespace with its role and why, from
//! one /proc snapshot and the role rule `verify` uses
//! (`kios_rootfs::procs`). Reading /proc is blocking work: the caller runs
//! [`ps`] on the blocking pool.

use kios_protocol::{ErrorBody, ErrorCode, ProcessInfo, PsReply, Reply, Response};
use kios_rootfs::{procs, ProcInfo, Role};
use std::path::Path;

use crate::runtime::server::inventory::ExpectedPids;

/// Clock ticks per second and page size, for CPU time and RSS.
#[derive(Debug, Clone, Copy)]
pub struct Units {
    pub ticks_per_sec: u64,
    pub page_kib: u64,
}

impl Units {
    pub fn of_this_machine() -> Units {
        use nix::unistd::{sysconf, SysconfVar};
        let get = |var, default: i64| sysconf(var).ok().flatten().unwrap_or(default).max(1) as u64;
        Units {
            ticks_per_sec: get(SysconfVar::CLK_TCK, 100),
            page_kib: (get(SysconfVar::PAGE_SIZE, 4096) / 1024).max(1),
        }
    }
}

/// `ps [all]` (blocking): kernel threads folded unless `all`.
pub fn ps(proc_root: &Path, expected: ExpectedPids, all: bool, units: Units) -> Response {
    let snap = procs::snapshot(proc_root).map_err(|e| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!("cannot read the processes: {e}"),
        )
    })?;
    let roles = procs::classify(&snap, &expected.procs());
    Ok(Reply::Ps(build(&snap, &roles, all, units)))
}

/// The reply for a snapshot and its roles (pure).
pub fn build(snap: &procs::Snapshot, roles: &[Role], all: bool, units: Units) -> PsReply {
    let mut reply = PsReply {
        processes: Vec::new(),
        kernel_threads: 0,
        unexpected: 0,
        truncated: snap.truncated,
    };
    let uptime_ms = snap.uptime_secs.map(|s| (s * 1000.0) as u64);
    for (p, role) in snap.procs.iter().zip(roles) {
        match role {
            Role::KernelThread => {
                reply.kernel_threads += 1;
                if !all {
                    continue;
                }
            }
            Role::Unexpected => reply.unexpected += 1,
            _ => {}
        }
        reply.processes.push(info(p, role, uptime_ms, units));
    }
    reply
}

fn info(p: &ProcInfo, role: &Role, uptime_ms: Option<u64>, units: Units) -> ProcessInfo {
    let started_ms = p.start_ticks.saturating_mul(1000) / units.ticks_per_sec;
    let pod = role.pod_ref();
    let command = if p.args.is_empty() {
        // Kernel threads and zombies have no command line: `[comm]`.
        format!("[{}]", p.comm)
    } else {
        p.cmdline()
    };
    ProcessInfo {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        age_ms: uptime_ms.map_or(0, |up| up.saturating_sub(started_ms)),
        cpu_ms: p.cpu_ticks.saturating_mul(1000) / units.ticks_per_sec,
        rss_kib: p.rss_pages.saturating_mul(units.page_kib),
        role: role.as_str().to_string(),
        why: role.why().to_string(),
        pod: pod.and_then(|r| r.pod.clone()),
        container: pod.and_then(|r| r.container.clone()),
        command,
        cgroup: p.cgroup.clone(),
        exe: p.exe.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kios_rootfs::procs::PodRef;

    fn proc(pid: u32, ppid: u32, args: &[&str]) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            state: 'S',
            comm: "x".into(),
            cpu_ticks: 250,
            start_ticks: 1000,
            rss_pages: 10,
            args: args.iter().map(|a| a.to_string()).collect(),
            ..ProcInfo::default()
        }
    }

    #[test]
    fn kernel_threads_are_folded_unless_all_and_units_are_converted() {
        let snap = procs::Snapshot {
            procs: vec![
                proc(1, 0, &["/init"]),
                proc(2, 0, &[]),
                proc(3, 2, &[]),
                proc(40, 1, &["/bin/conmon", "-c", "id"]),
                proc(66, 1, &["/tmp/miner"]),
            ],
            truncated: false,
            uptime_secs: Some(30.0),
        };
        let pod = PodRef {
            pod: Some("default/web".into()),
            container: Some("nginx".into()),
            id: Some("id".into()),
        };
        let roles = vec![
            Role::Init,
            Role::KernelThread,
            Role::KernelThread,
            Role::Conmon(pod),
            Role::Unexpected,
        ];
        let units = Units {
            ticks_per_sec: 100,
            page_kib: 4,
        };
        let folded = build(&snap, &roles, false, units);
        assert_eq!(folded.kernel_threads, 2);
        assert_eq!(folded.unexpected, 1);
        let pids: Vec<u32> = folded.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![1, 40, 66]);
        let init = &folded.processes[0];
        assert_eq!(
            (init.age_ms, init.cpu_ms, init.rss_kib),
            (20_000, 2_500, 40)
        );
        assert_eq!(folded.processes[1].pod.as_deref(), Some("default/web"));
        assert_eq!(folded.processes[1].container.as_deref(), Some("nginx"));
        assert_eq!(folded.processes[2].role, "unexpected");
        let all = build(&snap, &roles, true, units);
        assert_eq!(all.processes.len(), 5);
        assert_eq!(all.processes[1].command, "[x]");
    }
}
