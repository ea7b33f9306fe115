//! Namespace sandbox tests of the system socket and kiosctl (issue 3):
//! kiosctl through nsenter and the way a `kubectl debug node` pod reaches
//! it, non-root peers, connection hygiene (fds, silent clients, long lines)
//! and the line dialect's basic verbs.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};

#[test]
fn kiosctl_reaches_init_through_nsenter() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("kiosctl-nsenter"))?;
    let output = sandbox.kiosctl(&["status"])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "kiosctl status failed ({}): {stdout}\n{stderr}\n{}",
        output.status,
        sandbox.diagnostics()
    );
    ensure!(
        stdout.contains("kubelet") && stdout.contains("crio") && stdout.contains("running"),
        "kiosctl status output: {stdout}"
    );
    // -o json is the server's data.
    let output = sandbox.kiosctl(&["status", "-o", "json"])?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "kiosctl -o json: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    ensure!(
        json["services"].as_array().is_some_and(|s| s.len() == 2),
        "{json}"
    );
    Ok(())
}

#[test]
fn kiosctl_in_a_debug_pod_finds_the_socket_under_host() -> Result<()> {
    let script = "kiosctl status\nkiosctl version\nkiosctl restart nosuch\n";
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("debug-pod")
            .file("/etc/kios-e2e/admin-script", script)
            .kubelet_conf("script=/etc/kios-e2e/admin-script\n"),
    )?;
    sandbox.wait_event("debug-pod done", DEFAULT_WAIT)?;
    let events = sandbox.events();
    let block = |n: usize| -> Result<(Vec<String>, String)> {
        let begin = events
            .iter()
            .position(|e| e.starts_with(&format!("BEGIN {n} ")))
            .with_context(|| format!("no BEGIN {n}\n{}", sandbox.diagnostics()))?;
        let end = events[begin..]
            .iter()
            .position(|e| e.starts_with(&format!("END {n} ")))
            .map(|i| begin + i)
            .with_context(|| format!("no END {n}\n{}", sandbox.diagnostics()))?;
        let rc = events[end].rsplit("rc=").next().unwrap_or("").to_string();
        Ok((events[begin + 1..end].to_vec(), rc))
    };
    let (status, rc) = block(1)?;
    ensure!(
        rc == "0",
        "kiosctl status in the debug pod: rc={rc} {status:?}"
    );
    ensure!(
        status.iter().any(|l| l.contains("kubelet")),
        "kiosctl status output: {status:?}"
    );
    let (_, rc) = block(2)?;
    ensure!(rc == "0", "kiosctl version in the debug pod: rc={rc}");
    let (refused, rc) = block(3)?;
    ensure!(
        rc == "1" || rc == "2",
        "restart nosuch: rc={rc} {refused:?}"
    );
    Ok(())
}

#[test]
fn a_non_root_peer_may_read_but_not_change_state() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("non-root"))?;
    let before = sandbox.status()?;
    let replies = sandbox.request_as_nobody(&[
        "version",
        "restart kubelet",
        "shutdown",
        "continue-shutdown",
    ])?;
    ensure!(
        replies[0]["ok"] == true,
        "version as nobody: {}",
        replies[0]
    );
    for reply in &replies[1..] {
        ensure!(
            reply["ok"] == false && reply["error"]["code"] == "not-permitted",
            "a state change by uid 65534 was not refused: {reply}"
        );
    }
    let after = sandbox.status()?;
    ensure!(
        after["node"]["shutdown"].is_null(),
        "a shutdown began: {after}"
    );
    let (b, a) = (
        Sandbox::service(&before, "kubelet")?,
        Sandbox::service(&after, "kubelet")?,
    );
    ensure!(
        b["pid"] == a["pid"],
        "the kubelet was restarted: {b} -> {a}"
    );
    Ok(())
}

/// The log writer opens the services' log files at their first line: wait
/// for both before counting init's descriptors.
fn logs_open(sandbox: &Sandbox) -> Result<()> {
    sandbox.wait_for("the services' log files open", DEFAULT_WAIT, || {
        let fds = sandbox.init_fds();
        let open = |name: &str| fds.iter().any(|f| f.ends_with(name));
        (open("/var/log/crio.log") && open("/var/log/kubelet.log")).then_some(())
    })
}

#[test]
fn a_thousand_connections_leave_no_descriptors_behind() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("fd-leak"))?;
    // Let boot-time descriptors settle: the count must be stable first.
    sandbox.status()?;
    logs_open(&sandbox)?;
    let baseline = sandbox.init_fd_count()?;
    let baseline_fds = sandbox.init_fds();
    for i in 0..1000 {
        let mut stream = sandbox.connect()?;
        match i % 4 {
            // Connect and vanish.
            0 => {}
            // A full request and its reply.
            1 => {
                stream.write_all(b"version\n")?;
                let mut buf = [0u8; 256];
                let _ = stream.read(&mut buf)?;
            }
            // Half a line, then gone.
            2 => stream.write_all(b"stat")?,
            // A legacy byte that changes nothing.
            _ => stream.write_all(&[0x7f])?,
        }
    }
    sandbox
        .wait_for(
            &format!("init's fd count back to {baseline}"),
            DEFAULT_WAIT,
            || (sandbox.init_fd_count().ok()? <= baseline).then_some(()),
        )
        .with_context(|| {
            format!(
                "fds before: {baseline_fds:#?}\nfds now: {:#?}",
                sandbox.init_fds()
            )
        })?;
    ensure!(sandbox.has_ended()?.is_none(), "init ended");
    Ok(())
}

#[test]
fn silent_and_stalled_clients_do_not_stall_others() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("silent"))?;
    let _silent = sandbox.connect()?;
    let mut stalled = sandbox.connect()?;
    stalled.write_all(b"stat")?;
    let mut unread = sandbox.connect()?;
    unread.write_all(b"watch\n")?;
    let started = Instant::now();
    let reply = sandbox.request("status")?;
    ensure!(reply["ok"] == true, "status: {reply}");
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "status took {:?} with a silent client connected",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn line_dialect_basics_and_errors() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("line-dialect"))?;
    let mut client = sandbox.client()?;
    let version = client.request("version")?;
    ensure!(
        version["ok"] == true && version["protocol"] == 1,
        "version: {version}"
    );
    ensure!(
        version["init"].as_str().is_some_and(|v| !v.is_empty()),
        "{version}"
    );
    let help = client.request("help")?;
    let verbs: Vec<&str> = help["verbs"]
        .as_array()
        .context("help without verbs")?
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for verb in [
        "status",
        "restart",
        "shutdown",
        "continue-shutdown",
        "logs",
        "watch",
        "boot",
    ] {
        ensure!(verbs.contains(&verb), "help lacks {verb}: {verbs:?}");
    }
    let unknown = client.request("frobnicate")?;
    ensure!(
        unknown["ok"] == false && unknown["error"]["code"] == "unknown-verb",
        "frobnicate: {unknown}"
    );
    // The same connection carries on, and \r\n works.
    let status = client.request("status\r")?;
    ensure!(status["ok"] == true, "status after an error: {status}");
    let boot = client.request("boot")?;
    ensure!(
        boot["milestones"].as_array().is_some_and(|m| !m.is_empty()),
        "boot: {boot}"
    );
    let node = &status["node"];
    ensure!(
        node["datapart"].is_null(),
        "datapart=none but status says {node}"
    );
    ensure!(node["uptime_ms"].as_u64().is_some(), "status node: {node}");

    // A line longer than 4096 bytes: line-too-long, then the server closes.
    let mut long = sandbox.client()?;
    long.stream().write_all(&vec![b'a'; 5000])?;
    let reply = long.read_value()?;
    ensure!(
        reply["error"]["code"] == "line-too-long",
        "long line: {reply}"
    );
    ensure!(
        long.read_value().is_err(),
        "the connection stayed open after line-too-long"
    );
    Ok(())
}

#[test]
fn the_socket_is_root_only() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("socket-mode"))?;
    let meta = std::fs::symlink_metadata(sandbox.path("/run/system.sock"))?;
    ensure!(
        meta.permissions().mode() & 0o777 == 0o600,
        "mode {:o}",
        meta.permissions().mode()
    );
    ensure!(
        meta.uid() == 0 && meta.gid() == 0,
        "owner {}:{}",
        meta.uid(),
        meta.gid()
    );
    Ok(())
}

#[test]
fn status_shows_the_kubelet_client_so_graceful_shutdown_is_armed() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("armed"))?;
    let status = sandbox.status()?;
    let kubelet_pid = Sandbox::service(&status, "kubelet")?["pid"].clone();
    let clients = status["clients"]
        .as_array()
        .context("status without clients")?;
    let kubelet = clients
        .iter()
        .find(|c| c["kubelet"] == true)
        .with_context(|| format!("no client marked as the kubelet: {status}"))?;
    ensure!(
        kubelet["pid"] == kubelet_pid,
        "kubelet client {kubelet} vs service pid {kubelet_pid}"
    );
    ensure!(
        status["node"]["graceful_shutdown_armed"] == true,
        "graceful shutdown not armed with the kubelet connected: {}",
        status["node"]
    );
    Ok(())
}

#[test]
fn watch_streams_service_events() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("watch"))?;
    let mut watcher = sandbox.client()?;
    let reply = watcher.request("watch")?;
    ensure!(reply["ok"] == true, "watch: {reply}");
    let restart = sandbox.request("restart kubelet")?;
    ensure!(restart["ok"] == true, "restart: {restart}");
    let old = restart["old_pid"].clone();
    // The stream may start with a snapshot of the current state; wait for
    // the kubelet running again under a new pid.
    let deadline = Instant::now() + DEFAULT_WAIT;
    let mut seen = Vec::new();
    loop {
        let event = watcher.read_value()?;
        let done = event["event"] == "service"
            && event["name"] == "kubelet"
            && event["state"] == "running"
            && event["pid"] != old;
        seen.push(event);
        if done {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no event of the kubelet running again: {seen:#?}"
        );
    }
    Ok(())
}

#[test]
fn too_many_connections_get_busy_and_init_recovers() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Room for many connections in this test process.
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("busy"))?;
    sandbox.status()?;
    logs_open(&sandbox)?;
    let baseline = sandbox.init_fd_count()?;
    let baseline_fds = sandbox.init_fds();
    let mut open = Vec::new();
    let mut busy = None;
    for _ in 0..5000 {
        let mut client = sandbox.client()?;
        // Over the limit the server sends `busy` and closes at once, so
        // the write may fail; the reply is still there to read.
        let _ = client.stream().write_all(b"version\n");
        match client.read_value() {
            Ok(reply) if reply["ok"] == true => open.push(client),
            Ok(reply) => {
                busy = Some(reply);
                break;
            }
            Err(e) => return Err(e.context(format!("after {} connections", open.len()))),
        }
    }
    let busy = busy.with_context(|| format!("no 'busy' after {} connections", open.len()))?;
    ensure!(busy["error"]["code"] == "busy", "over the limit: {busy}");
    drop(open);
    sandbox
        .wait_for(
            &format!("init's fd count back to {baseline}"),
            DEFAULT_WAIT,
            || (sandbox.init_fd_count().ok()? <= baseline).then_some(()),
        )
        .with_context(|| {
            format!(
                "fds before: {baseline_fds:#?}\nfds now: {:#?}",
                sandbox.init_fds()
            )
        })?;
    let status = sandbox.status()?;
    ensure!(status["ok"] == true, "status after the flood: {status}");
    Ok(())
}

#[test]
fn a_client_stalled_mid_line_is_dropped_after_a_timeout() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("stalled"))?;
    let mut stalled = sandbox.connect()?;
    stalled.set_read_timeout(Some(Duration::from_secs(60)))?;
    stalled.write_all(b"stat")?;
    let started = Instant::now();
    // Whatever the server says (an error line or nothing), it then closes.
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(60),
        "a client stalled mid-line was not dropped within 60 s"
    );
    ensure!(
        took >= Duration::from_millis(500),
        "the stalled client was dropped at once ({took:?}): {:?}",
        String::from_utf8_lossy(&rest)
    );
    ensure!(sandbox.status()?["ok"] == true);
    Ok(())
}
