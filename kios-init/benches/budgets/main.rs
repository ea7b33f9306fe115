//! The issue-2 budgets of kios-init, measured on this machine and printed:
//! `cargo bench -p kios-init --bench budgets` (needs root, unshare, the musl
//! target; see docs/init.md "Budgets").
//!
//! - binary: size of the static, stripped musl build;
//! - boot: sandbox start (unshare spawned) to the kubelet's exec, from the
//!   kubelet-start milestone (epoch ms), plus init's own offset (monotonic,
//!   since init started);
//! - restart: a SIGKILLed kubelet to its replacement's exec, as init logs it
//!   (from reaping the old process to the new one's exec);
//! - memory: VmHWM (and its anonymous/file split) after boot with the
//!   kubelet stand-in connected.
//!
//! Each sandbox is a real kios-init as PID 1 of fresh namespaces (the e2e
//! harness). Not a timed test: it reports, it does not judge.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig};
use nix::sys::signal::Signal;

const BOOTS: usize = 15;

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index.min(values.len() - 1)]
}

fn milestone(boot: &serde_json::Value, name: &str) -> Option<(f64, f64)> {
    boot["milestones"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| Some((m["at_ms"].as_f64()?, m["offset_ms"].as_f64()?)))
}

fn status_kb(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let artifacts = kios_e2e::artifacts::artifacts().context("cannot build the artifacts")?;
    let binary = artifacts.binary("kios-init");
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("cannot stat {}", binary.display()))?
        .len();

    let mut boot_ms = Vec::new();
    let mut init_offset_ms = Vec::new();
    let mut hwm = Vec::new();
    let mut anon = Vec::new();
    let mut file = Vec::new();
    let mut restart_us = Vec::new();
    let mut milestones: Vec<(String, Vec<f64>)> = Vec::new();
    for i in 0..BOOTS {
        let t0 = epoch_ms();
        let sandbox = Sandbox::boot_ready(SandboxConfig::new(&format!("bench-boot-{i}")))?;
        let boot = sandbox.request("boot")?;
        let (at, offset) = milestone(&boot, "kubelet-start")
            .ok_or_else(|| anyhow!("no kubelet-start milestone: {boot}"))?;
        boot_ms.push(at - t0);
        init_offset_ms.push(offset);
        for m in boot["milestones"].as_array().into_iter().flatten() {
            if let (Some(name), Some(offset)) = (m["name"].as_str(), m["offset_ms"].as_f64()) {
                match milestones.iter_mut().find(|(n, _)| n == name) {
                    Some((_, values)) => values.push(offset),
                    None => milestones.push((name.to_string(), vec![offset])),
                }
            }
        }
        // The kubelet is connected (boot_ready); let init settle on its loop.
        sandbox.wait_for(
            "the kubelet client in status",
            Duration::from_secs(10),
            || {
                let status = sandbox.status().ok()?;
                status["clients"]
                    .as_array()?
                    .iter()
                    .any(|c| c["kubelet"] == true)
                    .then_some(())
            },
        )?;
        let pid = sandbox.init_pid();
        hwm.push(status_kb(pid, "VmHWM:").unwrap_or(0) as f64);
        anon.push(status_kb(pid, "RssAnon:").unwrap_or(0) as f64);
        file.push(status_kb(pid, "RssFile:").unwrap_or(0) as f64);

        // The first crash of a fresh kubelet restarts at once (later ones
        // in a row back off, by design): one sample per sandbox.
        let status = sandbox.status()?;
        let kubelet = Sandbox::service(&status, "kubelet")?;
        let old = kubelet["pid"]
            .as_i64()
            .ok_or_else(|| anyhow!("kubelet not running"))? as i32;
        sandbox.kill_ns_pid(old, Signal::SIGKILL)?;
        let line = sandbox.wait_log(
            &format!("kubelet (pid {old}) ended"),
            Duration::from_secs(10),
        )?;
        let us = line
            .split("restarted as pid ")
            .nth(1)
            .and_then(|rest| rest.split(" in ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no immediate restart in: {line}"))?;
        restart_us.push(us);
    }

    println!("kios-init budgets (issue 2), this machine, {BOOTS} sandboxes");
    println!(
        "{:<46} {:>10} {:>10} {:>10}",
        "measure", "median", "p90", "budget"
    );
    println!(
        "{:<46} {:>10} {:>10} {:>10}",
        "binary (static, stripped), KiB",
        size / 1024,
        "",
        1536
    );
    println!(
        "{:<46} {:>10.1} {:>10.1} {:>10}",
        "sandbox start -> kubelet exec, ms",
        percentile(&mut boot_ms, 0.5),
        percentile(&mut boot_ms, 0.9),
        15
    );
    println!(
        "{:<46} {:>10.2} {:>10.2} {:>10}",
        "  of which init start -> kubelet exec, ms",
        percentile(&mut init_offset_ms, 0.5),
        percentile(&mut init_offset_ms, 0.9),
        ""
    );
    println!(
        "{:<46} {:>10.0} {:>10.0} {:>10}",
        "kubelet crash -> new kubelet exec, us",
        percentile(&mut restart_us, 0.5),
        percentile(&mut restart_us, 0.9),
        1000
    );
    println!(
        "{:<46} {:>10.0} {:>10.0} {:>10}",
        "VmHWM after boot, kubelet connected, KiB",
        percentile(&mut hwm, 0.5),
        percentile(&mut hwm, 0.9),
        1024
    );
    println!(
        "{:<46} {:>10.0} {:>10.0} {:>10}",
        "  RssAnon (heap, stacks, data), KiB",
        percentile(&mut anon, 0.5),
        percentile(&mut anon, 0.9),
        ""
    );
    println!(
        "{:<46} {:>10.0} {:>10.0} {:>10}",
        "  RssFile (the binary's pages), KiB",
        percentile(&mut file, 0.5),
        percentile(&mut file, 0.9),
        ""
    );
    println!();
    println!("boot milestones, ms since init started (median, p90):");
    for (name, values) in &mut milestones {
        println!(
            "  {:<44} {:>10.2} {:>10.2}",
            name,
            percentile(values, 0.5),
            percentile(values, 0.9)
        );
    }
    Ok(())
}
