//! Reaping: orphaned zombies handed to init at once.
//!
//! Method. `nsenter -t <init> -p` runs this bench binary itself in init's
//! PID namespace (only that namespace: it stays in the host's mount
//! namespace) in its hidden `--fork-zombies N` mode: it starts N children
//! (`/bin/true`) that exit at once, never waits for them, waits until every one has
//! exited (a pipe each inherited reaches end of file), prints `forked N` and
//! exits. Its N zombies are then reparented to init (the PID namespace's
//! child reaper) in one go. Timed from that line to the moment init's
//! children (every thread's `/proc/<init>/task/*/children`) are back to
//! what they were before; then no process of the sandbox may be a zombie.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kios_e2e::ns::Sandbox;

use crate::sandbox::children;

/// Orphans of the reaping figure.
pub const ZOMBIES: usize = 10_000;
/// Orphans handed to init during the throughput figure.
pub const UNDER_LOAD: usize = 2_000;

/// The hidden mode: start `n` children (`/bin/true`) that exit at once,
/// wait for their exits without reaping them (each holds a pipe's write
/// end: end of file once all are gone), say so, exit.
pub fn fork_zombies(n: usize) -> Result<()> {
    let (reader, writer) = nix::unistd::pipe().context("pipe")?;
    let mut forked = 0;
    for _ in 0..n {
        let out = writer.try_clone().context("the children's pipe")?;
        let started = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::null())
            .spawn();
        match started {
            // Never waited for: dropping a Child does not reap it.
            Ok(_child) => forked += 1,
            Err(_) => break,
        }
    }
    drop(writer);
    let mut reader = std::fs::File::from(reader);
    let mut buf = [0u8; 16];
    while reader.read(&mut buf).context("the children's pipe")? > 0 {}
    println!("forked {forked}");
    Ok(())
}

/// What became of the orphans.
pub struct Reaped {
    /// Time to reap them all (ms); `None` when init did not within 20 s.
    pub took: Option<f64>,
    /// How many were still unreaped then (0 when all were).
    pub left: usize,
}

/// Hands `n` orphans to the sandbox's init and times their reaping.
pub fn reap(sandbox: &Sandbox, n: usize) -> Result<Reaped> {
    let init = sandbox.init_pid();
    // During the load figure the kubelet is being restarted: one more
    // child now and then is not an orphan left.
    let baseline = children(init).len() + usize::from(n == UNDER_LOAD);
    let exe = std::env::current_exe().context("cannot find the bench binary")?;
    let mut child = Command::new("nsenter")
        .args(["-t", &init.to_string(), "-p", "--"])
        .arg(&exe)
        .args(["--fork-zombies", &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run nsenter")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let start = Instant::now();
    let status = child.wait()?;
    let forked: usize = line
        .trim()
        .strip_prefix("forked ")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("the zombie forker said {line:?} ({status})"))?;
    if forked != n {
        bail!("the zombie forker made {forked} of {n} children");
    }
    let deadline = start + Duration::from_secs(20);
    loop {
        if children(init).len() <= baseline {
            break;
        }
        if Instant::now() >= deadline {
            let left = children(init).len().saturating_sub(baseline);
            let zombies = sandbox
                .processes()
                .iter()
                .filter(|p| p.state == 'Z')
                .count();
            eprintln!(
                "budgets: {left} of {n} orphans still init's children after 20 s \
                 ({zombies} zombies in the sandbox)"
            );
            return Ok(Reaped {
                took: None,
                left: zombies,
            });
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let took = start.elapsed().as_secs_f64() * 1000.0;
    // None left (a kubelet being restarted may be a zombie for an instant).
    sandbox.wait_for("no zombie in the sandbox", Duration::from_secs(5), || {
        (!sandbox.processes().iter().any(|p| p.state == 'Z')).then_some(())
    })?;
    Ok(Reaped {
        took: Some(took),
        left: 0,
    })
}
