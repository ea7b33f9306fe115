//! Namespace sandbox tests of the graceful node shutdown (issues 2 and 3):
//! the kubelet stand-in gets 0x01, evicts for its grace, answers 0x02, and
//! init ends through reboot(2), which in a child PID namespace kills it
//! with SIGINT (power off) or SIGHUP (restart).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use kios_e2e::ns::{read_byte, Ended, Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;

const GRACE_MS: u64 = 400;

fn graceful(name: &str) -> SandboxConfig {
    SandboxConfig::new(name).kubelet_conf(&format!("grace_ms={GRACE_MS}\n"))
}

/// The kubelet saw the event, took its grace, answered; then init ended.
fn expect_graceful_end(sandbox: &Sandbox, started: Instant, end: fn(Ended) -> bool) -> Result<()> {
    sandbox.wait_event("kubelet shutdown-event", DEFAULT_WAIT)?;
    // grace-done is printed just before 0x02 goes out; "continue-sent"
    // after it may be cut short by init stopping the kubelet at once.
    sandbox.wait_event("kubelet grace-done", DEFAULT_WAIT)?;
    let ended = sandbox.wait_end(Duration::from_secs(30))?;
    ensure!(
        end(ended),
        "init ended with {ended:?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(GRACE_MS),
        "init ended before the kubelet's grace was over"
    );
    // The stand-ins were stopped, not just killed with the namespace.
    let events = sandbox.events();
    ensure!(
        events.iter().any(|e| e == "kubelet grace-done"),
        "no grace-done\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        events.iter().any(|e| e == "crio sigterm"),
        "cri-o was not sent SIGTERM\n{}",
        sandbox.diagnostics()
    );
    Ok(())
}

#[test]
fn shutdown_request_drains_the_kubelet_and_powers_off() -> Result<()> {
    let sandbox = Sandbox::boot_ready(graceful("shutdown-verb"))?;
    let started = Instant::now();
    let reply = sandbox.request("shutdown")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    ensure!(reply["mode"] == "poweroff", "shutdown: {reply}");
    ensure!(reply["phase"] == "draining", "shutdown: {reply}");
    // While draining, status shows it and a second shutdown is refused or
    // reported, never a crash.
    let status = sandbox.status()?;
    let shutdown = &status["node"]["shutdown"];
    ensure!(
        shutdown["mode"] == "poweroff" && !shutdown["phase"].is_null(),
        "status during shutdown: {status}"
    );
    expect_graceful_end(&sandbox, started, Ended::is_poweroff)
}

#[test]
fn shutdown_reboot_request_ends_with_a_restart() -> Result<()> {
    let sandbox = Sandbox::boot_ready(graceful("shutdown-reboot"))?;
    let started = Instant::now();
    let reply = sandbox.request("shutdown reboot")?;
    ensure!(
        reply["ok"] == true && reply["mode"] == "reboot",
        "shutdown reboot: {reply}"
    );
    expect_graceful_end(&sandbox, started, Ended::is_reboot)
}

#[test]
fn sigterm_powers_off_gracefully() -> Result<()> {
    let sandbox = Sandbox::boot_ready(graceful("sigterm"))?;
    let started = Instant::now();
    sandbox.signal_init(Signal::SIGTERM)?;
    expect_graceful_end(&sandbox, started, Ended::is_poweroff)
}

#[test]
fn sigint_ctrl_alt_del_reboots_gracefully() -> Result<()> {
    let sandbox = Sandbox::boot_ready(graceful("sigint"))?;
    let started = Instant::now();
    sandbox.signal_init(Signal::SIGINT)?;
    expect_graceful_end(&sandbox, started, Ended::is_reboot)
}

#[test]
fn legacy_soft_shutdown_byte_broadcasts_the_event_to_silent_clients() -> Result<()> {
    let sandbox = Sandbox::boot_ready(graceful("legacy-shutdown"))?;
    // A silent client (like the kubelet before it speaks) gets 0x01 too.
    let mut silent = sandbox.connect()?;
    let mut legacy = sandbox.connect()?;
    let started = Instant::now();
    legacy.write_all(&[0x01])?;
    ensure!(
        read_byte(&mut silent)? == 0x01,
        "the silent client got no 0x01"
    );
    ensure!(
        read_byte(&mut legacy)? == 0x01,
        "the legacy client got no 0x01"
    );
    expect_graceful_end(&sandbox, started, Ended::is_poweroff)
}

#[test]
fn a_kubelet_that_never_answers_is_waited_for_only_up_to_its_grace() -> Result<()> {
    // The grace comes from the kubelet's own configuration (1 s), plus
    // init's margin.
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("no-answer")
            .kubelet_conf("answer_shutdown=false\n")
            .file(
                "/etc/kubernetes/config.yaml",
                "apiVersion: kubelet.config.k8s.io/v1beta1\n\
                 kind: KubeletConfiguration\n\
                 shutdownGracePeriod: 1s\n\
                 shutdownGracePeriodCriticalPods: 500ms\n",
            ),
    )?;
    let started = Instant::now();
    let reply = sandbox.request("shutdown")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    sandbox.wait_event("kubelet not-answering", DEFAULT_WAIT)?;
    // Restarting a service makes no sense while the node shuts down.
    let restart = sandbox.request("restart kubelet")?;
    ensure!(
        restart["ok"] == false && restart["error"]["code"] == "shutting-down",
        "restart during a shutdown: {restart}"
    );
    let ended = sandbox.wait_end(Duration::from_secs(40))?;
    let took = started.elapsed();
    ensure!(
        ended.is_poweroff(),
        "init ended with {ended:?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        took >= Duration::from_secs(1),
        "init did not wait for the kubelet's grace ({took:?})"
    );
    ensure!(
        !sandbox
            .events()
            .iter()
            .any(|e| e == "kubelet grace-done" || e == "kubelet continue-sent"),
        "the stand-in answered although told not to"
    );
    Ok(())
}

#[test]
fn force_skips_the_kubelets_grace() -> Result<()> {
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("force").kubelet_conf("answer_shutdown=false\ngrace_ms=60000\n"),
    )?;
    let started = Instant::now();
    let reply = sandbox.request("shutdown force")?;
    ensure!(reply["ok"] == true, "shutdown force: {reply}");
    let ended = sandbox.wait_end(Duration::from_secs(20))?;
    ensure!(
        ended.is_poweroff(),
        "init ended with {ended:?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "force did not skip the grace"
    );
    Ok(())
}

#[test]
fn kiosctl_shutdown_force_prints_its_reply_before_processes_are_stopped() -> Result<()> {
    // force skips the kubelet's grace, not the TERM grace of processes: the
    // kiosctl that asked must live to print the node's answer.
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("force-cli").kubelet_conf("answer_shutdown=false\ngrace_ms=60000\n"),
    )?;
    let out = sandbox.kiosctl(&["shutdown", "--force", "-o", "json"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0),
        "kiosctl shutdown --force: {:?}\nstdout: {stdout}\nstderr: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sandbox.diagnostics()
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim())?;
    ensure!(
        reply["ok"] == true && reply["mode"] == "poweroff",
        "reply: {reply}"
    );
    let ended = sandbox.wait_end(Duration::from_secs(20))?;
    ensure!(ended.is_poweroff(), "init ended with {ended:?}");
    Ok(())
}

#[test]
fn continue_shutdown_without_a_shutdown_changes_nothing() -> Result<()> {
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("no-shutdown").kubelet_conf("refresh_lock_ms=50\n"),
    )?;
    let before = sandbox.status()?;
    let reply = sandbox.request("continue-shutdown")?;
    ensure!(
        reply["ok"] == false && reply["error"]["code"] == "no-shutdown",
        "continue-shutdown: {reply}"
    );
    // The legacy 0x02 the kubelet sends when refreshing its lock, too.
    let mut legacy = sandbox.connect()?;
    legacy.write_all(&[0x02])?;
    sandbox.wait_events("kubelet refresh-lock", 3, DEFAULT_WAIT)?;
    let after = sandbox.status()?;
    ensure!(
        after["node"]["shutdown"].is_null(),
        "a shutdown began: {after}"
    );
    for name in ["crio", "kubelet"] {
        let (b, a) = (
            Sandbox::service(&before, name)?,
            Sandbox::service(&after, name)?,
        );
        ensure!(
            b["pid"] == a["pid"] && a["state"] == "running",
            "{name} changed: {b} -> {a}"
        );
    }
    ensure!(sandbox.has_ended()?.is_none(), "init ended");
    Ok(())
}

#[test]
fn poweroff_and_reboot_links_to_kiosctl_shut_down_gracefully() -> Result<()> {
    for (link, name, end) in [
        (
            "/bin/poweroff",
            "link-poweroff",
            Ended::is_poweroff as fn(Ended) -> bool,
        ),
        ("/sbin/reboot", "link-reboot", Ended::is_reboot),
    ] {
        let sandbox = Sandbox::boot_ready(graceful(name))?;
        let started = Instant::now();
        // kiosctl runs inside the node; init stops it with everything else,
        // so its own exit status says nothing here.
        let _ = sandbox.run_inside(link, &[]);
        expect_graceful_end(&sandbox, started, end)?;
    }
    Ok(())
}
