//! Figures measured in the namespace sandbox: kios-init as PID 1 of fresh
//! namespaces with the cri-o and kubelet stand-ins (the e2e harness).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use kios_e2e::figure::{Budget, Figure};
use kios_e2e::ns::{Sandbox, SandboxConfig};
use nix::sys::signal::Signal;

use crate::Opts;

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
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

/// The sandbox figures: binary, boot, memory, reaction.
pub fn figures(opts: &Opts) -> Result<Vec<Figure>> {
    let artifacts = kios_e2e::artifacts::artifacts().context("cannot build the artifacts")?;
    let binary = artifacts.binary("kios-init");
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("cannot stat {}", binary.display()))?
        .len();
    const BOOTS: usize = 15;
    let boots = opts.runs.unwrap_or(BOOTS);
    let mut boot_ms = Vec::new();
    let mut init_offset_ms = Vec::new();
    let mut hwm = Vec::new();
    let mut anon = Vec::new();
    let mut file = Vec::new();
    let mut restart_us = Vec::new();
    let mut milestones: Vec<(String, Vec<f64>)> = Vec::new();
    for i in 0..boots {
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

    let mut figures = vec![
        Figure::new("binary", "kios-init, static and stripped", "B")
            .samples(vec![size as f64])
            .budget(Budget::AtMost(1024.0 * 1024.0)),
        Figure::new("boot", "sandbox start to kubelet exec", "ms").samples(boot_ms),
        Figure::new("boot", "init start to kubelet exec", "ms").samples(init_offset_ms),
        Figure::new("reaction", "kubelet crash to new kubelet exec", "us")
            .samples(restart_us)
            .budget(Budget::AtMost(1000.0)),
        Figure::new("memory", "VmHWM after boot, kubelet connected", "KiB").samples(hwm),
        Figure::new("memory", "RssAnon after boot", "KiB").samples(anon),
        Figure::new("memory", "RssFile after boot", "KiB").samples(file),
    ];
    for (name, values) in milestones {
        figures.push(
            Figure::new("boot", format!("milestone {name} (since init start)"), "ms")
                .samples(values),
        );
    }
    Ok(figures)
}
