//! `kiosctl status` end to end: the static musl kiosctl binary spawned on
//! the host with `--socket /proc/<init>/root/run/system.sock` against a
//! booted namespace sandbox, timed from spawn to exit (fork, exec, connect,
//! request, reply, rendering the table, exit), output to a pipe. No
//! nsenter in the path. One untimed run first (page cache), then 50 (or
//! `--runs`, at least 50) timed runs; judged on the median.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use kios_e2e::figure::{Budget, Figure};
use kios_e2e::ns::{Sandbox, SandboxConfig, SOCKET};

use crate::Opts;

const RUNS: usize = 50;

pub fn figures(opts: &Opts) -> Result<Vec<Figure>> {
    let artifacts = kios_e2e::artifacts::artifacts().context("cannot build the artifacts")?;
    let kiosctl = artifacts.binary("kiosctl");
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("bench-kiosctl"))?;
    let socket = sandbox.path(SOCKET);
    let run = || -> Result<f64> {
        let t = Instant::now();
        let out = Command::new(&kiosctl)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", kiosctl.display()))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        ensure!(
            out.status.success() && !out.stdout.is_empty(),
            "kiosctl status: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(ms)
    };
    run()?;
    let runs = opts.runs.unwrap_or(RUNS).max(RUNS);
    let samples = (0..runs).map(|_| run()).collect::<Result<Vec<f64>>>()?;
    Ok(vec![Figure::new(
        "kiosctl",
        "kiosctl status, spawn to exit (static musl, on the host, --socket)",
        "ms",
    )
    .samples(samples)
    .budget(Budget::AtMost(5.0))])
}
