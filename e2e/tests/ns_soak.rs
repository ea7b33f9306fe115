//! A bounded chaos run of one sandboxed node (issue 11): random service
//! kills, restarts over the socket, connection floods, log floods (the
//! kubelet stand-in writes a burst of output on SIGUSR1), log reads and
//! verify runs, for `KIOS_SOAK_SECONDS` (default 120, the CI figure),
//! with the invariants checked all along: at most one kubelet and one
//! cri-o alive, no zombie older than a second, `status` answering, and
//! init's descriptors and memory flat at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;

#[test]
fn soak_with_random_chaos_keeps_every_invariant() -> Result<()> {
    let seconds: u64 = std::env::var("KIOS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    // Each log flood: 1,000 lines of 200 bytes through init's pipe.
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("soak").kubelet_conf("flood_lines=1000\nflood_line_bytes=200\n"),
    )?;
    sandbox.status()?;
    let fds_before = sandbox.settled_fd_count()?;
    let rss_before = sandbox.init_rss_kib()?;
    let anon_at_boot = sandbox.init_anon_kib()?;
    // Init's bounded buffers (service log tails, the audit ring, the kernel
    // log ring, per-client queues) fill in the first part of the run; a
    // leak is growth after that. The private memory is taken again once a
    // third of the run has passed, and must stay there.
    let mut anon_warm: Option<u64> = None;

    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut zombies: BTreeMap<i32, Instant> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        if anon_warm.is_none() && started.elapsed() >= Duration::from_secs(seconds / 3) {
            anon_warm = Some(sandbox.init_anon_kib()?);
        }
        let action = match next() % 11 {
            0 => {
                let status = sandbox.status()?;
                if let Some(pid) = Sandbox::service(&status, "kubelet")?["pid"].as_i64() {
                    let _ = sandbox.kill_ns_pid(pid as i32, Signal::SIGKILL);
                }
                "kill kubelet"
            }
            1 => {
                let status = sandbox.status()?;
                if let Some(pid) = Sandbox::service(&status, "crio")?["pid"].as_i64() {
                    let _ = sandbox.kill_ns_pid(pid as i32, Signal::SIGKILL);
                }
                "kill crio"
            }
            2 | 3 => {
                let service = if next() % 2 == 0 { "kubelet" } else { "crio" };
                let reply = sandbox.request(&format!("restart {service}"))?;
                ensure!(reply["ok"] == true, "restart {service}: {reply}");
                "restart over the socket"
            }
            4 => {
                let held: Vec<_> = (0..40).filter_map(|_| sandbox.connect().ok()).collect();
                drop(held);
                "connection flood (40)"
            }
            5 => {
                let reply = sandbox.request("logs kubelet 10000")?;
                ensure!(reply["ok"] == true, "logs: {reply}");
                "log read"
            }
            6 => {
                let reply = sandbox.request("verify")?;
                ensure!(reply.get("ok").is_some(), "verify: {reply}");
                "verify"
            }
            7 => {
                let status = sandbox.status()?;
                match Sandbox::service(&status, "kubelet")?["pid"].as_i64() {
                    // A kubelet that dies at once takes its flood with it.
                    Some(pid) if sandbox.kill_ns_pid(pid as i32, Signal::SIGUSR1).is_ok() => {
                        "log flood (1,000 lines)"
                    }
                    _ => "log flood, no kubelet",
                }
            }
            _ => {
                let t = Instant::now();
                sandbox.status()?;
                latencies.push(t.elapsed());
                "status"
            }
        };
        *counts.entry(action).or_default() += 1;

        // Invariants, after every action.
        let procs = sandbox.processes();
        for comm in ["kubelet", "crio"] {
            let live = procs
                .iter()
                .filter(|p| p.comm == comm && p.state != 'Z')
                .count();
            ensure!(live <= 1, "{live} {comm} processes alive after '{action}'");
        }
        let now = Instant::now();
        zombies.retain(|pid, _| procs.iter().any(|p| p.host_pid == *pid && p.state == 'Z'));
        for p in procs.iter().filter(|p| p.state == 'Z') {
            let since = *zombies.entry(p.host_pid).or_insert(now);
            if now.duration_since(since) > Duration::from_secs(1) {
                bail!(
                    "zombie {p:?} unreaped for over a second\n{}",
                    sandbox.diagnostics()
                );
            }
        }
        ensure!(
            sandbox.has_ended()?.is_none(),
            "init ended after '{action}'"
        );
    }

    // Back to calm: services up again (a crash back-off may still run, so
    // ask for restarts), descriptors and memory where they were.
    for service in ["crio", "kubelet"] {
        sandbox.request(&format!("restart {service}"))?;
    }
    sandbox.wait_service("crio", DEFAULT_WAIT, |s| s["state"] == "running")?;
    sandbox.wait_service("kubelet", DEFAULT_WAIT, |s| s["state"] == "running")?;
    sandbox.wait_event("kubelet connected", DEFAULT_WAIT)?;
    sandbox
        .wait_for(
            &format!("init's fd count back to {fds_before}"),
            DEFAULT_WAIT,
            || (sandbox.init_fd_count().ok()? <= fds_before).then_some(()),
        )
        .with_context(|| format!("fds now: {:#?}", sandbox.init_fds()))?;
    let rss_after = sandbox.init_rss_kib()?;
    let anon_after = sandbox.init_anon_kib()?;
    let flooded: u64 = sandbox
        .events()
        .iter()
        .filter_map(|e| e.split("kubelet flood-done lines=").nth(1))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    let dropped = sandbox.status()?["node"]["log_lines_dropped"]
        .as_u64()
        .unwrap_or(0);
    let anon_before = anon_warm.unwrap_or(anon_at_boot);
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    eprintln!(
        "soak: {seconds} s, actions {counts:?}, {flooded} flood lines written whole \
         ({dropped} lines dropped from the log files), status p99 {p99:?} of {} \
         (max {:?}), rss {rss_before} -> {rss_after} KiB, private (RssAnon) \
         {anon_at_boot} at boot, {anon_before} warm -> {anon_after} KiB, fds {fds_before} -> baseline",
        latencies.len(),
        latencies.last().copied().unwrap_or_default()
    );
    // A leak grows private memory. VmRSS also counts the binary's code
    // pages, which become resident as the chaos runs code that boot never
    // did (verify, audit, restarts): bounded by the binary's size, not a
    // leak, and reported above.
    ensure!(
        anon_after <= anon_before + 128,
        "init's private memory grew from {anon_before} to {anon_after} KiB"
    );
    // The budget is 5 ms on an idle node; the harness's own request
    // (connect through /proc, JSON) and a loaded CI machine get 100 ms.
    ensure!(p99 < Duration::from_millis(100), "status p99 {p99:?}");
    Ok(())
}
