//! Namespace sandbox tests of supervision (issue 2): crash -> restart,
//! crash loops back off, orphans are reaped, `restart` and the legacy
//! restart bytes, and kubelet.conf appearing after boot.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;
use serde_json::Value;

fn pid_of(service: &Value) -> Option<i64> {
    service["pid"].as_i64()
}

#[test]
fn a_killed_kubelet_is_restarted_with_a_new_pid() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("kubelet-crash"))?;
    let before = Sandbox::service(&sandbox.status()?, "kubelet")?;
    let old = pid_of(&before).context("kubelet has no pid")?;
    sandbox.kill_ns_pid(old as i32, Signal::SIGKILL)?;
    let after = sandbox.wait_service("kubelet", DEFAULT_WAIT, |s| {
        s["state"] == "running" && pid_of(s).is_some_and(|p| p != old)
    })?;
    ensure!(
        after["restarts"].as_u64() >= Some(1),
        "restarts not counted: {after}"
    );
    ensure!(
        after["last_exit"]["signal"] == 9,
        "last_exit should record SIGKILL: {after}"
    );
    sandbox.wait_events("kubelet started", 2, DEFAULT_WAIT)?;
    Ok(())
}

#[test]
fn a_crashed_crio_is_restarted() -> Result<()> {
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("crio-crash")
            .crio_conf("exit_after_ms=200\nexit_code=7\ncrash_times=1\n"),
    )?;
    sandbox.wait_event("crio exiting code=7", DEFAULT_WAIT)?;
    sandbox.wait_events("crio started", 2, DEFAULT_WAIT)?;
    let crio = sandbox.wait_service("crio", DEFAULT_WAIT, |s| {
        s["state"] == "running" && s["restarts"].as_u64() >= Some(1)
    })?;
    ensure!(
        crio["last_exit"]["code"] == 7,
        "last_exit should be code 7: {crio}"
    );
    Ok(())
}

#[test]
fn a_crash_loop_backs_off_with_growing_delays() -> Result<()> {
    let sandbox = Sandbox::boot(
        SandboxConfig::new("crash-loop").kubelet_conf("crash_times=1000\nexit_code=3\n"),
    )?;
    // Five crashes give four restart delays.
    let crashes = sandbox.wait_events("kubelet crashing", 5, Duration::from_secs(40))?;
    let times: Vec<u64> = crashes
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("mono_ms="))
                .and_then(|t| t.parse().ok())
                .context("crash line without mono_ms")
        })
        .collect::<Result<_>>()?;
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // The first restart is immediate; later ones wait longer and longer.
    ensure!(
        gaps[0] < 1000,
        "the first restart should be immediate, gaps {gaps:?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        gaps[3] > gaps[0] + 50 && gaps[3] >= gaps[1] && gaps[2] + 20 >= gaps[1],
        "restart delays do not grow: {gaps:?} ms\n{}",
        sandbox.diagnostics()
    );
    let kubelet = Sandbox::service(&sandbox.status()?, "kubelet")?;
    ensure!(
        kubelet["restarts"].as_u64() >= Some(4),
        "restarts: {kubelet}"
    );
    ensure!(kubelet["last_exit"]["code"] == 3, "last_exit: {kubelet}");
    // While backing off: state backoff with the next start in the future.
    let backing_off = sandbox.wait_service("kubelet", Duration::from_secs(30), |s| {
        s["state"] == "backoff"
    })?;
    let next = backing_off["next_start_ms"]
        .as_u64()
        .context("backoff without next_start_ms")?;
    let exit_at = backing_off["last_exit"]["at_ms"]
        .as_u64()
        .context("no last_exit.at_ms")?;
    ensure!(
        next > exit_at,
        "next start {next} is not after the exit {exit_at}"
    );
    ensure!(
        backing_off["pid"].is_null(),
        "a backing-off service has no pid: {backing_off}"
    );
    Ok(())
}

#[test]
fn orphans_are_reaped() -> Result<()> {
    let sandbox =
        Sandbox::boot_ready(SandboxConfig::new("orphans").crio_conf("orphans=5\norphan_ms=50\n"))?;
    sandbox.wait_events("crio orphan-exit", 5, DEFAULT_WAIT)?;
    let orphans: Vec<i32> = sandbox
        .events()
        .iter()
        .filter_map(|l| l.strip_prefix("crio orphan pid="))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    ensure!(orphans.len() == 5, "orphans: {orphans:?}");
    sandbox.wait_for("no zombies and no orphans left", DEFAULT_WAIT, || {
        let procs = sandbox.processes();
        let left = procs
            .iter()
            .any(|p| p.state == 'Z' || orphans.contains(&p.ns_pid));
        (!left).then_some(())
    })?;
    Ok(())
}

/// More orphans at once than one drain of init's reaper takes (4,096):
/// their SIGCHLDs merge into one, and the rest must not wait for another
/// child to exit.
#[test]
fn thousands_of_zombies_handed_over_at_once_are_all_reaped() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("zombies").crio_conf(
        "zombies=4500
",
    ))?;
    sandbox.wait_event("crio zombies-handed n=4500", Duration::from_secs(120))?;
    sandbox.wait_for("no zombie left", DEFAULT_WAIT, || {
        (!sandbox.processes().iter().any(|p| p.state == 'Z')).then_some(())
    })?;
    Ok(())
}

#[test]
fn restart_verb_gives_a_new_pid_and_reports_the_old_one() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("restart-verb"))?;
    for name in ["kubelet", "crio"] {
        let old = pid_of(&Sandbox::service(&sandbox.status()?, name)?).context("no pid")?;
        let reply = sandbox.request(&format!("restart {name}"))?;
        ensure!(reply["ok"] == true, "restart {name}: {reply}");
        ensure!(
            reply["service"] == name && reply["old_pid"] == old,
            "restart {name}: {reply}"
        );
        sandbox.wait_service(name, DEFAULT_WAIT, |s| {
            s["state"] == "running" && pid_of(s).is_some_and(|p| p != old)
        })?;
    }
    let reply = sandbox.request("restart sshd")?;
    ensure!(
        reply["ok"] == false && reply["error"]["code"] == "unknown-service",
        "restart sshd: {reply}"
    );
    Ok(())
}

#[test]
fn legacy_restart_bytes_restart_the_services() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("legacy-restart"))?;
    for (byte, name) in [(0x03u8, "kubelet"), (0x04u8, "crio")] {
        let old = pid_of(&Sandbox::service(&sandbox.status()?, name)?).context("no pid")?;
        let mut stream = sandbox.connect()?;
        stream.write_all(&[byte])?;
        sandbox.wait_service(name, DEFAULT_WAIT, |s| {
            s["state"] == "running" && pid_of(s).is_some_and(|p| p != old)
        })?;
    }
    Ok(())
}

#[test]
fn kubelet_conf_appearing_after_boot_restarts_the_kubelet_once() -> Result<()> {
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("kubeconfig-late").remove("/etc/kubernetes/node-labels"),
    )?;
    let first = sandbox.recorded_argv("kubelet")?;
    ensure!(
        !first.contains(&"--kubeconfig".to_string()),
        "argv {first:?}"
    );
    sandbox.write(
        "/etc/kubernetes/kubelet.conf",
        "apiVersion: v1\nkind: Config\n",
    )?;
    sandbox.wait_events("kubelet started", 2, DEFAULT_WAIT)?;
    sandbox.wait_events("kubelet connected", 2, DEFAULT_WAIT)?;
    let second = sandbox.recorded_argv("kubelet")?;
    ensure!(
        second
            .windows(2)
            .any(|w| w[0] == "--kubeconfig" && w[1] == "/etc/kubernetes/kubelet.conf"),
        "the restarted kubelet lacks --kubeconfig: {second:?}"
    );
    // Writing the file again is not a new appearance: no third start.
    sandbox.write(
        "/etc/kubernetes/kubelet.conf",
        "apiVersion: v1\nkind: Config\n# again\n",
    )?;
    // A status round trip makes sure init has seen the change; then count.
    sandbox.status()?;
    ensure!(
        sandbox.count_events("kubelet started") == 2,
        "the kubelet was restarted more than once\n{}",
        sandbox.diagnostics()
    );
    Ok(())
}

#[test]
fn service_output_goes_to_var_log_and_the_logs_verb() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("logs"))?;
    sandbox.wait_for(
        "crio.log with the stand-in's start line",
        DEFAULT_WAIT,
        || {
            let log = sandbox.read("/var/log/crio.log").ok()?;
            log.contains("KIOS-E2E crio started").then_some(())
        },
    )?;
    sandbox.wait_for(
        "kubelet.log with the stand-in's start line",
        DEFAULT_WAIT,
        || {
            let log = sandbox.read("/var/log/kubelet.log").ok()?;
            log.contains("KIOS-E2E kubelet started").then_some(())
        },
    )?;
    let reply = sandbox.request("logs kubelet 50")?;
    let lines = reply["lines"].as_array().context("logs without lines")?;
    ensure!(
        lines.iter().any(|l| l
            .as_str()
            .is_some_and(|l| l.contains("KIOS-E2E kubelet connected"))),
        "logs kubelet: {reply}"
    );
    Ok(())
}

#[test]
fn logs_follow_streams_new_lines() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("logs-follow"))?;
    let mut follower = sandbox.client()?;
    let reply = follower.request("logs crio 5 follow")?;
    ensure!(reply["ok"] == true, "logs crio 5 follow: {reply}");
    let restart = sandbox.request("restart crio")?;
    ensure!(restart["ok"] == true, "restart crio: {restart}");
    // The new cri-o's start line arrives as a log event.
    let mut seen = Vec::new();
    loop {
        let event = follower.read_value()?;
        let done = event["event"] == "log"
            && event["line"]
                .as_str()
                .is_some_and(|l| l.contains("KIOS-E2E crio started") && l.contains("start=2"));
        seen.push(event);
        if done {
            break;
        }
        ensure!(seen.len() < 200, "no log event of the new cri-o: {seen:#?}");
    }
    Ok(())
}
