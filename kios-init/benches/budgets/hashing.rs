//! verify's hashing, measured two ways.
//!
//! Throughput: one 256 MiB file of pseudo-random bytes in a tmpfs
//! (`/dev/shm`, else the temporary directory), hashed in the same run, in
//! turns, by kios-rootfs's `hash::sha256_file` (the code `verify` runs,
//! called in this process), by `sha256sum FILE` and by
//! `openssl dgst -sha256 FILE`. Each round times the three on the same
//! file already in the page cache; the external tools are timed from spawn
//! to exit (their start-up is a few ms of a ~0.3 s run). The digests must
//! agree. Ours must reach 80% of each tool's median.
//!
//! Responsiveness: a namespace sandbox boots kios-init; one connection
//! sends `verify` (again and again until enough samples), another sends
//! `status` in a loop meanwhile, each round trip timed on the client side.
//! Only round trips that started while a `verify` was outstanding count.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use kios_e2e::figure::{Budget, Figure};
use kios_e2e::ns::{Sandbox, SandboxConfig};
use kios_rootfs::hash;

use crate::Opts;

/// Size of the hashed file.
const FILE_MIB: usize = 256;
/// Rounds of the three hashers by default.
const ROUNDS: usize = 5;
/// `status` round trips wanted during verifies.
const STATUS_SAMPLES: usize = 2000;
/// At most this many verifies for them.
const MAX_VERIFIES: usize = 200;

pub fn figures(opts: &Opts) -> Result<Vec<Figure>> {
    let mut figures = throughput(opts.runs.unwrap_or(ROUNDS))?;
    figures.extend(status_during_verify()?);
    Ok(figures)
}

/// Removes the file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_file() -> Result<TempFile> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let file = TempFile(dir.join(format!("kios-budgets-hash-{}", std::process::id())));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&file.0)
            .with_context(|| format!("cannot create {}", file.0.display()))?,
    );
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..FILE_MIB {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        out.write_all(&block)?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", file.0.display()))?;
    Ok(file)
}

/// Runs `program args... FILE`, returns (seconds, the first hex word of
/// its output that is a digest).
fn external(program: &str, args: &[&str], file: &Path) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let s = t.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text
        .split(|c: char| c.is_whitespace() || c == '=')
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("no digest in {program}'s output: {text}"))?;
    Ok((s, digest.to_ascii_lowercase()))
}

fn throughput(rounds: usize) -> Result<Vec<Figure>> {
    let file = write_file()?;
    let mb = (FILE_MIB * 1024 * 1024) as f64 / 1e6;
    // Page cache warm for everyone.
    let (want, n) = hash::sha256_file(&file.0)?;
    ensure!(n as usize == FILE_MIB << 20, "read {n} bytes");
    let want = hash::hex(&want);
    let mut ours = Vec::new();
    let mut sha256sum = Vec::new();
    let mut openssl = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let (digest, _) = hash::sha256_file(&file.0)?;
        ours.push(mb / t.elapsed().as_secs_f64());
        ensure!(hash::hex(&digest) == want, "our digest changed");
        let (s, digest) = external("sha256sum", &[], &file.0)?;
        ensure!(digest == want, "sha256sum says {digest}, we say {want}");
        sha256sum.push(mb / s);
        let (s, digest) = external("openssl", &["dgst", "-sha256"], &file.0)?;
        ensure!(digest == want, "openssl says {digest}, we say {want}");
        openssl.push(mb / s);
    }
    let shani = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.split_whitespace().any(|w| w == "sha_ni"))
        .unwrap_or(false);
    let cpu = if shani {
        "CPU has SHA-NI"
    } else {
        "CPU without SHA-NI"
    };
    Ok(vec![
        Figure::new(
            "verify",
            format!("sha256 of a {FILE_MIB} MiB tmpfs file, kios-rootfs (verify's code) vs sha256sum; {cpu}"),
            "MB/s",
        )
        .samples(ours.clone())
        .budget(Budget::AtLeastOf("sha256sum".into(), sha256sum.clone(), 0.8)),
        Figure::new(
            "verify",
            format!("sha256 of a {FILE_MIB} MiB tmpfs file, kios-rootfs (verify's code) vs openssl dgst"),
            "MB/s",
        )
        .samples(ours)
        .budget(Budget::AtLeastOf("openssl".into(), openssl.clone(), 0.8)),
        Figure::new("verify", "sha256 of the same file, sha256sum (spawn to exit)", "MB/s")
            .samples(sha256sum),
        Figure::new(
            "verify",
            "sha256 of the same file, openssl dgst -sha256 (spawn to exit)",
            "MB/s",
        )
        .samples(openssl),
    ])
}

/// The p-th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn status_during_verify() -> Result<Vec<Figure>> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("bench-verify-status"))?;
    let mut verifier = sandbox.client()?;
    verifier
        .stream()
        .set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut status = sandbox.client()?;
    let verifying = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut verify_ms = Vec::new();
    let mut round_trips_ms: Vec<f64> = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let flag = Arc::clone(&verifying);
        let stop = Arc::clone(&done);
        let verifies = scope.spawn(move || -> Result<Vec<f64>> {
            let mut times = Vec::new();
            let result = (|| -> Result<()> {
                for _ in 0..MAX_VERIFIES {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    flag.store(true, Ordering::SeqCst);
                    let t = Instant::now();
                    let reply = verifier.request("verify");
                    flag.store(false, Ordering::SeqCst);
                    let reply = reply?;
                    ensure!(reply["ok"] == true, "verify failed: {reply}");
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(())
            })();
            // The status loop ends with the verifies, whatever happened.
            stop.store(true, Ordering::SeqCst);
            result.map(|()| times)
        });
        while !done.load(Ordering::SeqCst) {
            let during = verifying.load(Ordering::SeqCst);
            let t = Instant::now();
            let reply = status.request("status");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match reply {
                Ok(r) if r["ok"] == true => {}
                other => {
                    done.store(true, Ordering::SeqCst);
                    bail!("status failed: {other:?}");
                }
            }
            // Counted only if a verify was outstanding before and after.
            if during && verifying.load(Ordering::SeqCst) {
                round_trips_ms.push(ms);
                if round_trips_ms.len() >= STATUS_SAMPLES {
                    done.store(true, Ordering::SeqCst);
                }
            }
        }
        verify_ms = verifies
            .join()
            .map_err(|_| anyhow!("the verify thread panicked"))??;
        Ok(())
    })?;
    ensure!(
        !round_trips_ms.is_empty(),
        "no status round trip while a verify ran ({} verifies)",
        verify_ms.len()
    );
    let mut sorted = round_trips_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = percentile(&sorted, 99.0);
    let max = sorted[sorted.len() - 1];
    let n = sorted.len();
    Ok(vec![
        Figure::new(
            "verify",
            "verify of the sandbox image, socket round trip",
            "ms",
        )
        .samples(verify_ms),
        Figure::new(
            "verify",
            format!("status round trip during verify, p99 of {n}"),
            "ms",
        )
        .samples(vec![p99])
        .budget(Budget::AtMost(5.0)),
        Figure::new(
            "verify",
            format!("status round trip during verify, max of {n}"),
            "ms",
        )
        .samples(vec![max])
        .budget(Budget::AtMost(5.0)),
    ])
}
