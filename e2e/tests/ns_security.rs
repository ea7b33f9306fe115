//! Namespace sandbox security checks (issue 11): what the services inherit
//! from init (descriptors, environment) after init has been busy, no
//! world-writable path on the node, the socket's owner and mode, and the
//! kernel-log audit of every state-changing request.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};

/// The `socket:[N]`, `pipe:[N]` and `anon_inode:` targets of a process's fds.
fn kernel_objects(host_pid: i32) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{host_pid}/fd"))
        .with_context(|| format!("cannot list the fds of {host_pid}"))?
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if target.starts_with("socket:") || target.starts_with("anon_inode:") {
                out.insert(target);
            }
        }
    }
    Ok(out)
}

fn environment(host_pid: i32) -> Result<Vec<String>> {
    let environ = std::fs::read(format!("/proc/{host_pid}/environ"))?;
    let mut vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    vars.sort();
    Ok(vars)
}

#[test]
fn services_started_while_init_is_busy_inherit_no_descriptors_and_a_clean_environment() -> Result<()>
{
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("inherit"))?;
    // Init holds many more descriptors now: clients of every kind.
    let mut held = Vec::new();
    for i in 0..12 {
        let mut stream = sandbox.connect()?;
        match i % 3 {
            0 => stream.write_all(b"watch\n")?,
            1 => stream.write_all(b"logs kubelet 5 follow\n")?,
            _ => stream.write_all(b"stat")?,
        }
        held.push(stream);
    }
    let before = sandbox.status()?;
    for name in ["crio", "kubelet"] {
        let old = Sandbox::service(&before, name)?["pid"].clone();
        let reply = sandbox.request(&format!("restart {name}"))?;
        ensure!(reply["ok"] == true, "restart {name}: {reply}");
        sandbox.wait_service(name, DEFAULT_WAIT, |s| {
            s["state"] == "running" && s["pid"] != old && s["pid"].is_number()
        })?;
    }
    sandbox.wait_event("kubelet connected", DEFAULT_WAIT)?;
    let status = sandbox.status()?;
    let init_objects = kernel_objects(sandbox.init_pid())?;
    for name in ["crio", "kubelet"] {
        let host_pid = sandbox.service_host_pid(&status, name)?;
        // What it inherited at exec, as it recorded before opening anything.
        let fds = sandbox.read(&format!("/run/kios-e2e/{name}.fds"))?;
        let numbers: Vec<&str> = fds.lines().filter_map(|l| l.split(' ').next()).collect();
        ensure!(
            numbers == ["0", "1", "2"],
            "{name} restarted while init held {} clients inherited:\n{fds}",
            held.len()
        );
        // And now, seen from the host: no socket or anonymous inode (epoll,
        // signalfd, inotify, eventfd) of init is open in the service.
        let shared: Vec<String> = kernel_objects(host_pid)?
            .intersection(&init_objects)
            .cloned()
            .collect();
        ensure!(
            shared.is_empty(),
            "{name} shares init's kernel objects {shared:?}\ninit fds: {:#?}",
            sandbox.init_fds()
        );
        let vars = environment(host_pid)?;
        ensure!(
            vars == ["HOME=/", "PATH=/bin"],
            "{name}'s environment is not exactly PATH=/bin HOME=/: {vars:?}"
        );
    }
    drop(held);
    Ok(())
}

/// World-writable paths under `dir` (not following symlinks, staying out
/// of the kernel's filesystems). Sticky directories (/tmp) are allowed.
fn world_writable(dir: &Path, skip: &[&Path], out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip.iter().any(|s| path == *s) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
        if mode & 0o002 != 0 && !sticky_dir {
            out.push(format!("{} {:o}", path.display(), mode & 0o7777));
        }
        if meta.is_dir() {
            world_writable(&path, skip, out);
        }
    }
}

#[test]
fn no_world_writable_path_on_the_node_and_the_socket_is_root_only() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("world-writable"))?;
    // Let the services write their logs and records first.
    sandbox.status()?;
    let root = sandbox.path("/");
    // /proc, /sys and /dev are the kernel's (device nodes like /dev/null
    // are 0666 by design); /kios-e2e and /run/kios-e2e are the harness's.
    let skip: Vec<_> = ["proc", "sys", "dev", "kios-e2e", "run/kios-e2e"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    let skip: Vec<&Path> = skip.iter().map(|p| p.as_path()).collect();
    let mut found = Vec::new();
    world_writable(&root, &skip, &mut found);
    ensure!(
        found.is_empty(),
        "world-writable paths on the node:\n{}",
        found.join("\n")
    );
    for (inside, mode) in [
        ("/run/system.sock", 0o600),
        ("/run", 0o755),
        ("/var/run/dbus/system_bus_socket", 0o600),
        ("/var/run/dbus", 0o755),
    ] {
        let meta = std::fs::symlink_metadata(sandbox.path(inside))?;
        ensure!(
            meta.permissions().mode() & 0o7777 == mode && meta.uid() == 0 && meta.gid() == 0,
            "{inside}: mode {:o} owner {}:{} (want {mode:o} 0:0)",
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            meta.gid()
        );
    }
    Ok(())
}

/// Runs the project's kiosctl as uid/gid 65534 against the sandbox's
/// socket. It keeps CAP_DAC_OVERRIDE and CAP_SYS_PTRACE as ambient
/// capabilities only to reach the root-only socket through
/// /proc/<init>/root: init sees uid 65534 (SO_PEERCRED) and pid 0, as the
/// peer is outside its PID namespace.
fn kiosctl_as_nobody(sandbox: &Sandbox, args: &[&str]) -> Result<std::process::Output> {
    let kiosctl = kios_e2e::artifacts::artifacts()?.binary("kiosctl");
    let mut command = std::process::Command::new("setpriv");
    command
        .args(kios_e2e::ns::AS_NOBODY)
        .arg(kiosctl)
        .arg("--socket")
        .arg(sandbox.path("/run/system.sock"))
        .args(["-o", "json"])
        .args(args);
    kios_e2e::ns::run_with_deadline(command, DEFAULT_WAIT)
}

#[test]
fn state_changing_requests_are_audited_with_the_peer_and_refusals_too() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("audit"))?;
    let reply = sandbox.request("restart crio")?;
    ensure!(reply["ok"] == true, "restart crio: {reply}");
    let audit = sandbox.wait_log("request 'restart crio' from pid", DEFAULT_WAIT)?;
    ensure!(
        audit.contains("uid 0"),
        "audit line without the uid: {audit}"
    );
    let before = sandbox.status()?;
    let verbs: [&[&str]; 4] = [
        &["shutdown"],
        &["reboot", "--force"],
        &["restart", "kubelet"],
        &["restart", "crio"],
    ];
    for args in verbs {
        let output = kiosctl_as_nobody(&sandbox, args)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success() && format!("{stdout}{stderr}").contains("not-permitted"),
            "{args:?} as uid 65534: {}\n{stdout}\n{stderr}",
            output.status
        );
    }
    for verb in [
        "shutdown poweroff",
        "shutdown reboot force",
        "restart kubelet",
        "restart crio",
    ] {
        let line = sandbox.wait_log(&format!("refused '{verb}' from pid"), DEFAULT_WAIT)?;
        ensure!(
            line.contains("uid 65534"),
            "refusal not audited with the peer's uid and command: {line}"
        );
    }
    // Nothing changed: no shutdown, the same kubelet.
    let after = sandbox.status()?;
    ensure!(after["node"]["shutdown"].is_null(), "{after}");
    ensure!(
        Sandbox::service(&before, "kubelet")?["pid"] == Sandbox::service(&after, "kubelet")?["pid"],
        "the kubelet was restarted by uid 65534"
    );
    Ok(())
}
