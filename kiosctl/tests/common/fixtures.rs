//! Replies of a made-up node, built from the protocol crate's own types so
//! they always have the shape kios-init sends. Times are fixed: the node
//! booted at 2026-11-29T08:00:50Z and has been up 3h 12m 5s.

use kios_protocol::*;

pub const BOOT: u64 = 1_795_939_250_000;
pub const UPTIME: u64 = (3 * 3600 + 12 * 60 + 5) * 1000;
pub const NOW: u64 = BOOT + UPTIME;

fn ok<T: serde::Serialize>(body: &T) -> String {
    encode_ok(body)
}

pub fn error(code: ErrorCode, message: &str) -> String {
    encode_error(&ErrorBody::new(code, message))
}

fn service(
    name: ServiceName,
    state: ServiceState,
    pid: Option<u32>,
    since_ms: u64,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    next_start_ms: Option<u64>,
) -> ServiceStatus {
    ServiceStatus {
        name,
        state,
        pid,
        since_ms,
        restarts,
        last_exit,
        next_start_ms,
    }
}

pub fn status_healthy() -> StatusReply {
    StatusReply {
        node: NodeStatus {
            hostname: "node-a".into(),
            kernel: "6.1.0-28-amd64".into(),
            boot_ms: BOOT,
            uptime_ms: UPTIME,
            now_ms: BOOT + UPTIME,
            datapart: Some(DatapartStatus {
                device: Some("/dev/vda1".into()),
                mounted: true,
                wanted: "auto".into(),
                problem: None,
                read_only: false,
            }),
            shutdown: None,
            graceful_shutdown_armed: true,
            previous_shutdown: Some(audit_entries().remove(1)),
            inhibitors: vec![],
            log_lines_dropped: 0,
            clock_steps: 0,
            last_clock_step_ms: 0,
        },
        services: vec![
            service(
                ServiceName::Crio,
                ServiceState::Running,
                Some(112),
                BOOT + 1_500,
                0,
                None,
                None,
            ),
            service(
                ServiceName::Kubelet,
                ServiceState::Running,
                Some(131),
                NOW - 302_000,
                1,
                Some(ExitStatus {
                    code: None,
                    signal: Some(9),
                    at_ms: NOW - 303_000,
                }),
                None,
            ),
        ],
        clients: vec![
            ClientInfo {
                id: 1,
                pid: Some(131),
                uid: Some(0),
                command: Some("kubelet".into()),
                dialect: Dialect::Silent,
                kubelet: true,
                since_ms: NOW - 301_000,
            },
            ClientInfo {
                id: 7,
                pid: Some(4242),
                uid: Some(0),
                command: Some("kiosctl".into()),
                dialect: Dialect::Line,
                kubelet: false,
                since_ms: NOW,
            },
        ],
    }
}

pub fn status_troubled() -> StatusReply {
    StatusReply {
        node: NodeStatus {
            hostname: "node-b".into(),
            kernel: "6.1.0-28-amd64".into(),
            boot_ms: BOOT,
            uptime_ms: 45_000,
            now_ms: BOOT + 45_000,
            datapart: Some(DatapartStatus {
                device: None,
                mounted: false,
                wanted: "auto".into(),
                problem: Some("no partition with the kiOS type GUID appeared within 30s".into()),
                read_only: false,
            }),
            shutdown: Some(ShutdownStatus {
                phase: ShutdownPhase::Draining,
                mode: PowerMode::Poweroff,
                since_ms: BOOT + 33_000,
                requested_by: "socket pid 4242 uid 0 (kiosctl)".into(),
                force: false,
                phase_since_ms: BOOT + 33_000,
            }),
            graceful_shutdown_armed: false,
            previous_shutdown: None,
            inhibitors: vec![],
            log_lines_dropped: 1523,
            clock_steps: 2,
            last_clock_step_ms: 86_400_000,
        },
        services: vec![
            service(
                ServiceName::Crio,
                ServiceState::Backoff,
                None,
                BOOT + 43_000,
                3,
                Some(ExitStatus {
                    code: Some(1),
                    signal: None,
                    at_ms: BOOT + 43_000,
                }),
                Some(BOOT + 49_000),
            ),
            service(
                ServiceName::Kubelet,
                ServiceState::Waiting,
                None,
                BOOT + 1_000,
                0,
                None,
                None,
            ),
        ],
        clients: vec![],
    }
}

pub fn status_line(reply: &StatusReply) -> String {
    ok(reply)
}

pub fn boot_line() -> String {
    let m = |name: &str, offset_ms: f64| Milestone {
        name: name.into(),
        at_ms: BOOT + offset_ms as u64,
        offset_ms,
    };
    ok(&BootReply {
        milestones: vec![
            m("init-start", 0.0),
            m("mounts", 4.25),
            m("modules", 181.5),
            m("datapart", 412.0),
            m("network", 415.75),
            m("socket", 416.0),
            m("crio-started", 418.5),
            m("crio-ready", 1_893.0),
            m("kubelet-started", 1_896.25),
        ],
    })
}

fn file(path: &str, kind: &str, mode: &str, component: &str, why: &str) -> FileInfo {
    FileInfo {
        path: path.into(),
        kind: kind.into(),
        mode: mode.into(),
        owner: "0:0".into(),
        component: component.into(),
        why: why.into(),
        used_by: vec![],
        notes: None,
        target: None,
        size: None,
        sha256: None,
    }
}

pub fn files() -> Vec<FileInfo> {
    let mut init = file(
        "/init",
        "file",
        "0500",
        "kios-init",
        "The first process of the system: the kernel runs it as PID 1. It mounts the kernel filesystems, finds the data partition, starts cri-o and the kubelet and restarts them, reaps orphans and runs the graceful shutdown.",
    );
    init.size = Some(1_482_136);
    init.sha256 = Some("9f2c4e0c5b1d8a7e6f3b2a1908d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9".into());
    let mut crio = file(
        "/bin/crio",
        "file",
        "0500",
        "cri-o",
        "The container runtime the kubelet talks to over CRI. It pulls images and asks crun to run containers.",
    );
    crio.size = Some(41_902_112);
    crio.used_by = vec!["kios-init".into(), "kubelet".into()];
    crio.sha256 = Some("0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e".into());
    let mut poweroff = file(
        "/bin/poweroff",
        "hardlink",
        "0500",
        "kiosctl",
        "kiosctl under this name asks kios-init for a graceful power-off; the kernel runs /sbin/poweroff for orderly power-off requests.",
    );
    poweroff.target = Some("/bin/kiosctl".into());
    let mut hosts = file(
        "/etc/hosts",
        "file",
        "0444",
        "base",
        "Name resolution for localhost, which cri-o and the kubelet use.",
    );
    hosts.notes = Some("Override it on the data partition (meta/etc/hosts) to add entries.".into());
    hosts.size = Some(58);
    vec![init, crio, poweroff, hosts]
}

pub fn files_line() -> String {
    ok(&FilesReply { files: files() })
}

pub fn file_line(path: &str) -> String {
    ok(&FilesReply {
        files: files().into_iter().filter(|f| f.path == path).collect(),
    })
}

fn finding(path: &str, problem: &str, detail: &str) -> Finding {
    Finding {
        path: path.into(),
        problem: problem.into(),
        detail: detail.into(),
    }
}

pub fn verify_clean_line() -> String {
    ok(&VerifyReply {
        clean: true,
        checked: 214,
        findings: vec![finding(
            "/etc/kubernetes/node-labels",
            "overridden",
            "replaced by meta/etc/kubernetes/node-labels on the data partition",
        )],
        out_of_scope: vec![
            "/var/lib/containers/storage".into(),
            "/var/lib/kubelet/pods".into(),
        ],
    })
}

pub fn verify_dirty_line() -> String {
    ok(&VerifyReply {
        clean: false,
        checked: 215,
        findings: vec![
            finding(
                "/etc/kubernetes/node-labels",
                "overridden",
                "replaced by meta/etc/kubernetes/node-labels on the data partition",
            ),
            finding(
                "/etc/kubernetes/node-labels",
                "overridden",
                "size 13 bytes, expected 227; overridden on the data partition",
            ),
            finding(
                "/bin/kios-e2e-planted",
                "unexpected",
                "a file the image does not have",
            ),
            finding("/bin/crun", "mode", "mode 0755, expected 0500"),
            finding(r"/bin/\xff\xfekworker", "unexpected", "file, mode 0755"),
            finding(
                "/tmp",
                "mount",
                "remounted rw,exec,suid,nodev (at boot rw,noexec,nosuid,nodev)",
            ),
        ],
        out_of_scope: vec!["/var/lib/containers/storage".into()],
    })
}

pub fn logs_line(lines: &[&str]) -> String {
    ok(&LogsReply {
        service: ServiceName::Kubelet,
        lines: lines.iter().map(|l| l.to_string()).collect(),
    })
}

pub fn watch_line() -> String {
    ok(&WatchReply {
        events: vec!["service".into(), "shutdown".into(), "milestone".into()],
    })
}

pub fn version_line() -> String {
    ok(&VersionReply {
        protocol: 1,
        init: "0.1.0".into(),
        image_version: None,
        inventory_sha256: Some("5e".repeat(32)),
        build_id: Some("0123456789abcdef".into()),
    })
}

pub fn version_line_with_image() -> String {
    ok(&VersionReply {
        protocol: 1,
        init: "0.1.0".into(),
        image_version: Some("0.2.0".into()),
        inventory_sha256: None,
        build_id: Some("0123abcd".into()),
    })
}

pub fn restart_line(service: ServiceName, old_pid: Option<u32>) -> String {
    ok(&RestartReply { service, old_pid })
}

pub fn shutdown_line(mode: PowerMode) -> String {
    ok(&ShutdownReply {
        mode,
        phase: ShutdownPhase::Draining,
    })
}

pub fn event(event: &Event) -> String {
    event.encode()
}

/// Two entries of the previous boot (a restart, then the reboot that ended
/// it) and a refused one of this boot.
pub fn audit_entries() -> Vec<AuditEntry> {
    let entry =
        |at_ms: u64, boot_ms: u64, action: &str, pid: i32, uid: u32, outcome: &str| AuditEntry {
            at_ms,
            boot_ms,
            action: action.into(),
            by: format!("socket pid {pid} uid {uid} (kiosctl)"),
            pid: Some(pid),
            uid: Some(uid),
            command: Some("kiosctl".into()),
            outcome: outcome.into(),
            shutdown: action.starts_with("shutdown") && outcome == "started",
        };
    vec![
        entry(
            NOW - 7_200_000,
            NOW - 9_000_000,
            "restart kubelet",
            412,
            0,
            "ok",
        ),
        entry(
            NOW - 3_700_000,
            NOW - 9_000_000,
            "shutdown reboot",
            530,
            0,
            "started",
        ),
        entry(
            NOW - 60_000,
            NOW - 3_600_000,
            "restart crio",
            901,
            1000,
            "not-permitted",
        ),
    ]
}

pub fn audit_line() -> String {
    ok(&AuditReply {
        boot_ms: NOW - 3_600_000,
        entries: audit_entries(),
    })
}

fn process(pid: u32, ppid: u32, role: &str, command: &str) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid,
        uid: 0,
        age_ms: 3_540_000,
        cpu_ms: 1_250,
        rss_kib: 24_576,
        role: role.into(),
        why: format!("why {role}"),
        pod: None,
        container: None,
        command: command.into(),
        cgroup: "/".into(),
        exe: command.split(' ').next().map(str::to_string),
    }
}

pub fn ps_reply() -> PsReply {
    let in_pod = |mut p: ProcessInfo| {
        p.pod = Some("default/web-1".into());
        p.container = Some("nginx".into());
        p.cgroup = "/kubepods/besteffort/pod5f1c/crio-abc123".into();
        p
    };
    PsReply {
        processes: vec![
            process(1, 0, "init", "/init"),
            process(97, 1, "crio", "/bin/crio --config /etc/crio/crio.conf"),
            process(120, 1, "kubelet", "/bin/kubelet --config /var/lib/kubelet/config.yaml"),
            in_pod(process(
                300,
                1,
                "conmon",
                "/bin/conmon -b /run/containers/storage/overlay-containers/abc123/userdata -c abc123 \
                 --exit-dir /var/run/crio/exits -l /var/log/pods/default_web-1_5f1c/nginx/0.log -n k8s_nginx_web-1_default_5f1c_0",
            )),
            in_pod(process(301, 300, "container", "nginx: master process nginx")),
            in_pod(process(302, 301, "container", "nginx: worker process")),
            process(666, 1, "unexpected", "/tmp/miner --evil\u{1b}[2J \u{202e}nim.sh"),
        ],
        kernel_threads: 38,
        unexpected: 1,
        truncated: false,
    }
}

pub fn ps_line() -> String {
    ok(&ps_reply())
}

pub fn kmsg(seq: u64, level: u8, usec: u64, message: &str) -> KmsgRecord {
    KmsgRecord {
        seq,
        level,
        usec,
        init: message.starts_with("kiOS:"),
        message: message.into(),
    }
}

pub fn kernel_log_line() -> String {
    ok(&KernelLogReply {
        boot_ms: NOW - 3_600_000,
        records: vec![
            kmsg(0, 5, 0, "Linux version 6.1.0-kios (gcc 12.2.0)"),
            kmsg(310, 6, 1_532_004, "kiOS: cri-o started (pid 97)"),
            kmsg(
                311,
                4,
                2_100_450,
                "kiOS: kubelet exited with code 1; restarting in 1s",
            ),
            kmsg(
                312,
                3,
                2_200_000,
                "EXT4-fs (vda1): error count since last fsck: 1",
            ),
        ],
    })
}
