//! Namespace sandbox faults (issue 11): a cri-o that never creates its
//! socket, a cri-o that dies before it is ready, /etc/kubernetes files
//! that are malformed, huge, binary or not files at all, and a full
//! /var/log under a log flood. Each time the
//! kernel log says what is wrong, `status` shows it, and the node keeps
//! doing everything else, shutdown included.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;

/// A sandbox whose kubelet evicts its pods in 100 ms at shutdown.
fn fault(name: &str) -> SandboxConfig {
    SandboxConfig::new(name).kubelet_conf("grace_ms=100\n")
}

/// A graceful poweroff that must complete.
fn shuts_down(sandbox: &Sandbox) -> Result<()> {
    let reply = sandbox.request("shutdown poweroff")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    let ended = sandbox.wait_end(Duration::from_secs(30))?;
    ensure!(
        ended.is_poweroff(),
        "ended {ended:?}\n{}",
        sandbox.diagnostics()
    );
    Ok(())
}

#[test]
fn crio_that_never_creates_its_socket_keeps_the_kubelet_waiting_not_init() -> Result<()> {
    let sandbox = Sandbox::boot(fault("crio-no-socket").crio_conf("listen_delay_ms=3600000\n"))?;
    sandbox.wait_event("crio started", DEFAULT_WAIT)?;
    let kubelet = sandbox.wait_service("kubelet", DEFAULT_WAIT, |s| s["state"] == "waiting")?;
    ensure!(
        kubelet["pid"].is_null(),
        "a kubelet runs without cri-o: {kubelet}"
    );
    let status = sandbox.status()?;
    ensure!(
        Sandbox::service(&status, "crio")?["state"] == "starting",
        "{status}"
    );
    ensure!(
        sandbox.count_events("kubelet started") == 0,
        "the kubelet started without cri-o's socket"
    );
    // Everything else works: other verbs, a restart of cri-o, shutdown.
    ensure!(sandbox.request("boot")?["ok"] == true);
    ensure!(sandbox.request("restart crio")?["ok"] == true);
    sandbox.wait_events("crio started", 2, DEFAULT_WAIT)?;
    shuts_down(&sandbox)
}

#[test]
fn crio_that_dies_before_it_is_ready_is_restarted_and_the_kubelet_follows() -> Result<()> {
    let sandbox = Sandbox::boot(
        fault("crio-dies-early")
            .crio_conf("exit_before_listen=true\nexit_after_ms=100\nexit_code=3\ncrash_times=2\n"),
    )?;
    // Two early deaths, then a cri-o that listens; only then a kubelet.
    sandbox.wait_events("crio started", 3, Duration::from_secs(30))?;
    sandbox.wait_event("kubelet connected", Duration::from_secs(30))?;
    let status = sandbox.status()?;
    let crio = Sandbox::service(&status, "crio")?;
    ensure!(
        crio["state"] == "running" && crio["restarts"] == 2,
        "crio after two early deaths: {crio}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        crio["last_exit"]["code"] == 3,
        "the last exit is not shown: {crio}"
    );
    ensure!(
        sandbox.count_events("kubelet started") == 1,
        "the kubelet started {} times",
        sandbox.count_events("kubelet started")
    );
    let log = sandbox.init_log();
    ensure!(
        log.lines()
            .any(|l| l.contains("crio") && l.contains("code 3")),
        "no kernel-log line for cri-o's exit code\n{}",
        sandbox.diagnostics()
    );
    shuts_down(&sandbox)
}

#[test]
fn bad_etc_kubernetes_files_are_logged_and_the_kubelet_starts_without_them() -> Result<()> {
    let mut binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    binary.extend_from_slice(b"\nzone: a\n");
    let sandbox = Sandbox::boot_ready(
        fault("bad-etc-kubernetes")
            // Binary: whatever survives the character filter, and warnings.
            .file("/etc/kubernetes/node-labels", binary)
            // Huge: over the 64 KiB limit, so not used at all.
            .file("/etc/kubernetes/node-ip", vec![b'1'; 200 * 1024])
            // Not a file at all: config.yaml is a directory.
            .file("/etc/kubernetes/config.yaml/oops", "x"),
    )?;
    let argv = sandbox.recorded_argv("kubelet")?;
    ensure!(
        !argv.iter().any(|a| a == "--node-ip"),
        "a 200 KiB node-ip was used: {argv:?}"
    );
    let log = sandbox.init_log();
    for needle in ["node-labels line", "larger than 65536 bytes"] {
        ensure!(
            log.contains(needle),
            "no kernel-log line with '{needle}'\n{}",
            sandbox.diagnostics()
        );
    }
    ensure!(sandbox.status()?["ok"] == true);
    shuts_down(&sandbox)
}

/// `log_lines_dropped` of a status reply.
fn lines_dropped(sandbox: &Sandbox) -> Result<u64> {
    let status = sandbox.status()?;
    status["node"]["log_lines_dropped"]
        .as_u64()
        .with_context(|| format!("no log_lines_dropped in {status}"))
}

#[test]
fn a_full_var_log_drops_lines_with_a_count_and_blocks_nothing() -> Result<()> {
    const FLOOD_LINES: u64 = 5_000;
    // /var/log a 64 KiB tmpfs of the sandbox's own mount namespace: full
    // after the first floods' few hundred lines.
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("var-log-full")
            .kubelet_conf(&format!(
                "grace_ms=100\nflood_lines={FLOOD_LINES}\nflood_line_bytes=200\n"
            ))
            .setup("mount -t tmpfs -o size=64k,mode=0755 kios-e2e-varlog var/log"),
    )?;
    let full = sandbox
        .mounts()?
        .into_iter()
        .any(|m| m.mount_point == "/var/log" && m.fstype == "tmpfs");
    ensure!(
        full,
        "/var/log is not the small tmpfs: {:?}",
        sandbox.mounts()?
    );
    ensure!(
        lines_dropped(&sandbox)? == 0,
        "lines dropped before the flood"
    );

    let kubelet = Sandbox::service(&sandbox.status()?, "kubelet")?["pid"]
        .as_i64()
        .context("kubelet pid")? as i32;
    sandbox.kill_ns_pid(kubelet, Signal::SIGUSR1)?;
    sandbox.wait_event("kubelet flood-done", Duration::from_secs(60))?;
    let first = sandbox.wait_for("lines dropped", DEFAULT_WAIT, || {
        lines_dropped(&sandbox).ok().filter(|n| *n > 0)
    })?;
    // A second flood: the count grows, the node goes on.
    sandbox.kill_ns_pid(kubelet, Signal::SIGUSR1)?;
    sandbox.wait_events("kubelet flood-done", 2, Duration::from_secs(60))?;
    // With the disk full, every line of it is dropped and counted.
    let second = sandbox
        .wait_for("the whole second flood counted", DEFAULT_WAIT, || {
            lines_dropped(&sandbox)
                .ok()
                .filter(|n| *n >= first + FLOOD_LINES)
        })
        .with_context(|| format!("dropped: {:?}", lines_dropped(&sandbox)))?;
    // Every line still reached the in-memory tail.
    let reply = sandbox.request("logs kubelet 5")?;
    let last = format!("kubelet flood line {} ", FLOOD_LINES - 1);
    ensure!(
        reply["lines"].as_array().is_some_and(|lines| lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with(&last)))),
        "the tail does not end with the flood: {reply}"
    );
    // Said once in the kernel log, not per line.
    let log = sandbox.init_log();
    let notices = log
        .lines()
        .filter(|l| l.contains("cannot write /var/log/kubelet.log"))
        .count();
    ensure!(
        notices == 1,
        "{notices} kernel-log notices of the full /var/log (want one)\n{}",
        sandbox.diagnostics()
    );
    // Everything else still works: kiosctl shows the count, a restart,
    // and the shutdown completes.
    let shown = sandbox.kiosctl(&["status"])?;
    let text = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        text.contains("lines of service output dropped"),
        "kiosctl status does not show the drops:\n{text}"
    );
    ensure!(sandbox.request("restart kubelet")?["ok"] == true);
    sandbox.wait_events("kubelet connected", 2, DEFAULT_WAIT)?;
    eprintln!("/var/log full: {first} then {second} lines dropped, {notices} notice");
    shuts_down(&sandbox)
}
