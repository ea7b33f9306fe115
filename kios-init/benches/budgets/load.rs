//! The socket figures and the memory churn, in a booted kios-init sandbox.
//!
//! Method. Latency: 2,000 sequential `status` requests on one connection
//! (from the host, through `/proc/<init>/root/run/system.sock`), each timed
//! from its write to its reply line; p50 and p99 per run. Throughput:
//! [`CLIENTS`] threads, each its own connection and [`PER_CLIENT`]
//! `status` requests, total over the wall time from the first start to the
//! last reply; meanwhile one more connection sends `restart kubelet` every
//! 100 ms (each timed from its send to the new kubelet's exec, the
//! "restart under load" figure) and [`crate::reaping::UNDER_LOAD`] orphans
//! are handed to init to reap. init serves at most 64 clients, the kubelet
//! and the restarter being two: and a connection closed a moment ago may still count while init's loop
//! has not seen its end: hence 60 loaders, not 64 (a loader refused with
//! `busy` at its first request connects again). init's CPU time per
//! request is its user + system time over that window (/proc/PID/stat)
//! divided by the requests: unlike requests/s, it does not depend on how
//! many cores the loaders leave it. Churn: VmRSS and
//! RssAnon before and after (from the state after boot, before the
//! throughput figure) 10,000 connections (one `status` each, then
//! closed) and 100,000 `status` requests over 4 kept connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use kios_e2e::figure::{Budget, Figure};
use kios_e2e::ns::{LineClient, Sandbox};

use crate::sandbox::{requested_restart, restart_parts, status_kib, Restart, Samples};

/// Concurrent clients of the throughput figure.
pub const CLIENTS: usize = 60;
/// Requests per client.
pub const PER_CLIENT: usize = 1_000;
const SEQUENTIAL: usize = 2_000;

/// The CPU time (user + system) `pid` used so far, in microseconds, from
/// /proc/PID/stat (clock ticks: 100 per second here).
fn cpu_us(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux, whatever the kernel's HZ.
    Some((utime + stime) * 10_000.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One `status` whose reply is a success. The reply is checked by its
/// start, not parsed: the load must measure init, not the clients' JSON
/// parsing on the same cores (a reply lists every client: 60 of them make
/// it about 8 KB).
fn status_ok(client: &mut LineClient) -> Result<()> {
    let mut reply = String::new();
    client.request_raw("status", &mut reply)?;
    if !reply
        .trim_start_matches('\u{1}')
        .starts_with("{\"ok\":true")
    {
        return Err(anyhow!("status failed: {}", reply.trim_end()));
    }
    Ok(())
}

/// A connection whose first `status` was served (counts as one request).
fn connect_not_busy(sandbox: &Sandbox) -> Result<LineClient> {
    let mut last = None;
    for _ in 0..200 {
        let mut client = sandbox.client()?;
        let reply = client.request("status")?;
        if reply["error"]["code"] == "busy" {
            last = Some(reply);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if reply.get("error").is_some() {
            return Err(anyhow!("status failed: {reply}"));
        }
        return Ok(client);
    }
    Err(anyhow!("init stayed busy: {last:?}"))
}

/// Latency, then throughput under restarts and reaping.
pub fn socket(sandbox: &Sandbox, k: &mut Samples) -> Result<()> {
    let mut client = sandbox.client()?;
    let mut times = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        status_ok(&mut client)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(client);
    times.sort_by(f64::total_cmp);
    k.push("p50", percentile(&times, 0.5));
    k.push("p99", percentile(&times, 0.99));

    let done = Arc::new(AtomicBool::new(false));
    let restarts = std::thread::scope(|scope| -> Result<Vec<Restart>> {
        let restarter = {
            let done = done.clone();
            scope.spawn(move || -> Result<Vec<Restart>> {
                let mut client = sandbox.client()?;
                let mut times = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let next = Instant::now() + Duration::from_millis(100);
                    times.push(requested_restart(sandbox, &mut client)?);
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
                Ok(times)
            })
        };
        let reaper = scope.spawn(|| crate::reaping::reap(sandbox, crate::reaping::UNDER_LOAD));
        let start = Instant::now();
        let cpu_before = cpu_us(sandbox.init_pid());
        let loaders: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut client = connect_not_busy(sandbox)?;
                    for _ in 1..PER_CLIENT {
                        status_ok(&mut client)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut failed = None;
        for l in loaders {
            if let Err(e) = l.join().map_err(|_| anyhow!("a loader panicked"))? {
                failed = Some(e);
            }
        }
        let elapsed = start.elapsed();
        let cpu_after = cpu_us(sandbox.init_pid());
        done.store(true, Ordering::Relaxed);
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            k.push(
                "cpu-per-req",
                (after - before) / (CLIENTS * PER_CLIENT) as f64,
            );
        }
        if let Some(e) = failed {
            return Err(e.context("a loader failed"));
        }
        k.push("rps", (CLIENTS * PER_CLIENT) as f64 / elapsed.as_secs_f64());
        let reaped = reaper
            .join()
            .map_err(|_| anyhow!("the reaper panicked"))??;
        if let Some(t) = reaped.took {
            k.push("reap-load", t);
        }
        k.push("reap-load-left", reaped.left as f64);
        restarter
            .join()
            .map_err(|_| anyhow!("the restarter panicked"))?
    })?;
    for r in restarts {
        r.push(k, "restart-load", "restart-load-stop", "restart-load-react");
    }
    // Once the loaders' connections are gone from init's registry.
    let pid = sandbox.init_pid();
    sandbox.wait_for("init back to its kubelet", Duration::from_secs(5), || {
        let status = sandbox.status().ok()?;
        (status["clients"].as_array()?.len() <= 2).then_some(())
    })?;
    if let Some(rss) = status_kib(pid, "VmRSS:") {
        k.push("rss-after-load", rss);
    }
    Ok(())
}

/// Memory before and after 10,000 connections and 100,000 requests.
pub fn churn(sandbox: &Sandbox, k: &mut Samples) -> Result<()> {
    let pid = sandbox.init_pid();
    let field = |f: &str| status_kib(pid, f).ok_or_else(|| anyhow!("no {f} for init"));
    // Once before measuring, at the churn's concurrency (its 4 kept
    // connections and one more): what that many connections allocate once
    // (buffers grown, the allocator's first pages for them) is not growth.
    let mut warm: Vec<LineClient> = (0..5).map(|_| sandbox.client()).collect::<Result<_>>()?;
    for client in &mut warm {
        status_ok(client)?;
    }
    drop(warm);
    let anon_before = field("RssAnon:")?;
    for _ in 0..10_000 {
        status_ok(&mut sandbox.client()?).context("one of the 10,000 connections")?;
    }
    std::thread::scope(|scope| -> Result<()> {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut client = sandbox.client()?;
                    for _ in 0..25_000 {
                        status_ok(&mut client)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    // The server closes its side of the last connections on its loop.
    let after = sandbox.wait_for("init back to its kubelet", Duration::from_secs(5), || {
        let status = sandbox.status().ok()?;
        (status["clients"].as_array()?.len() <= 2).then_some(())
    });
    if let Err(e) = after {
        let clients = sandbox.status().map(|s| s["clients"].clone());
        eprintln!("budgets: churn: {e:#}: clients {clients:?}");
    }
    k.push("anon-growth", field("RssAnon:")? - anon_before);
    k.push("rss-after", field("VmRSS:")?);
    Ok(())
}

/// The socket figures.
pub fn figures(k: &Samples) -> Vec<Figure> {
    let mut figures = vec![
        Figure::new("socket", "`status` round trip p50 (2,000 sequential)", "us")
            .samples(k.get("p50"))
            .budget(Budget::AtMost(100.0)),
        Figure::new("socket", "`status` round trip p99", "us")
            .samples(k.get("p99"))
            .budget(Budget::AtMost(1000.0)),
        Figure::new(
            "socket",
            format!("`status` req/s, {CLIENTS} clients, restarts + reaping"),
            "req/s",
        )
        .samples(k.get("rps"))
        .budget(Budget::AtLeast(20_000.0)),
        Figure::new(
            "socket",
            "  init's CPU time per request under that load (all its work)",
            "us",
        )
        .samples(k.get("cpu-per-req")),
        Figure::new(
            "socket",
            "  `restart kubelet` to exec under that load",
            "us",
        )
        .samples(k.get("restart-load"))
        .budget(Budget::AtMost(1000.0)),
    ];
    figures.extend(restart_parts(
        k,
        "socket",
        "    ",
        "restart-load-stop",
        "restart-load-react",
    ));
    figures.extend([
        Figure::new(
            "socket",
            format!(
                "  {} orphans reaped under that load",
                crate::reaping::UNDER_LOAD
            ),
            "ms",
        )
        .samples(k.get("reap-load")),
        Figure::new("socket", "  of those, left unreaped after 20 s", "procs")
            .samples(k.get("reap-load-left"))
            .budget(Budget::AtMost(0.0)),
    ]);
    figures
}
