//! Namespace sandbox socket abuse (issue 11), against a real kios-init:
//! hostile bytes (1 MB lines, invalid UTF-8, random binary, half-closed
//! sockets), ten thousand held connections, `watch` and `logs -f` clients
//! that never read while the kubelet floods its output, a hundred
//! concurrent `restart kubelet`, and requests through every phase of a shutdown whose
//! services ignore SIGTERM. After each: init answers `status` quickly and
//! its descriptors and memory are back where they were.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;
use serde_json::Value;

/// What must hold after every abuse: `status` answers within a second and
/// the fd count returns to `baseline`.
fn still_well(sandbox: &Sandbox, baseline: usize, after: &str) -> Result<()> {
    let started = Instant::now();
    let status = sandbox
        .status()
        .with_context(|| format!("status after {after}"))?;
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "status took {:?} after {after}",
        started.elapsed()
    );
    ensure!(
        Sandbox::service(&status, "kubelet")?["state"] == "running",
        "the kubelet is not running after {after}: {status}"
    );
    sandbox
        .wait_for(
            &format!("init's fd count back to {baseline} after {after}"),
            DEFAULT_WAIT,
            || (sandbox.init_fd_count().ok()? <= baseline).then_some(()),
        )
        .with_context(|| format!("fds now: {:#?}", sandbox.init_fds()))
}

/// Sends `bytes`, then reads whatever init answers until it closes (or
/// the read times out): never a panic, never a hang of init.
fn send_and_drain(sandbox: &Sandbox, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut stream = sandbox.connect()?;
    // Init may close as soon as it has seen enough (line-too-long): a
    // broken pipe here is an answer, not a failure.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    Ok(reply)
}

fn replies(bytes: &[u8]) -> Result<Vec<Value>> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

/// A small xorshift generator: reproducible "random" bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn hostile_bytes_get_errors_and_change_nothing() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("hostile"))?;
    sandbox.status()?;
    let baseline = sandbox.settled_fd_count()?;
    let rss_before = sandbox.init_rss_kib()?;
    let kubelet_pid = Sandbox::service(&sandbox.status()?, "kubelet")?["pid"].clone();

    // A 1 MB line: one line-too-long error, then init closes.
    let reply = replies(&send_and_drain(&sandbox, &vec![b'x'; 1 << 20])?)?;
    ensure!(
        reply.len() == 1 && reply[0]["error"]["code"] == "line-too-long",
        "1 MB line: {reply:?}"
    );
    still_well(&sandbox, baseline, "a 1 MB line")?;

    // 1 MB of short lines that are not UTF-8: each a bad-request error, in
    // order, on one connection (init answers while the client still sends).
    let mut stream = sandbox.connect()?;
    let writer = {
        let mut stream = stream.try_clone()?;
        std::thread::spawn(move || {
            let line = b"st\xff\xfeatus \xc3\x28\n";
            for _ in 0..(1 << 20) / line.len() {
                if stream.write_all(line).is_err() {
                    return;
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })
    };
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    let _ = writer.join();
    let reply = replies(&all)?;
    ensure!(
        !reply.is_empty() && reply.iter().all(|r| r["error"]["code"] == "bad-request"),
        "invalid UTF-8: {} replies, first {:?}",
        reply.len(),
        reply.first()
    );
    still_well(&sandbox, baseline, "1 MB of invalid UTF-8")?;

    // Random binary in the line dialect (a first byte of 0x01-0x04 would
    // choose the legacy one, whose bytes are commands): errors only.
    for seed in 1..=8u64 {
        let mut bytes = noise(seed, 64 * 1024);
        bytes[0] = b'#';
        let reply = send_and_drain(&sandbox, &bytes)?;
        for value in replies(&reply)? {
            ensure!(
                value["ok"] == false,
                "random bytes (seed {seed}) did something: {value}"
            );
        }
    }
    still_well(&sandbox, baseline, "random binary")?;

    // Half-closed: a whole request then EOF is answered; half a request
    // then EOF runs nothing.
    let reply = replies(&send_and_drain(&sandbox, b"version\n")?)?;
    ensure!(
        reply.len() == 1 && reply[0]["ok"] == true,
        "half-closed: {reply:?}"
    );
    let reply = send_and_drain(&sandbox, b"restart kubelet")?;
    ensure!(
        reply.is_empty(),
        "half a line got {:?}",
        String::from_utf8_lossy(&reply)
    );
    still_well(&sandbox, baseline, "half-closed sockets")?;
    let after = Sandbox::service(&sandbox.status()?, "kubelet")?["pid"].clone();
    ensure!(
        after == kubelet_pid,
        "the kubelet was restarted: {kubelet_pid} -> {after}"
    );

    let rss_after = sandbox.init_rss_kib()?;
    ensure!(
        rss_after <= rss_before + 512,
        "init's memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    Ok(())
}

#[test]
fn ten_thousand_held_connections_are_refused_cleanly_beyond_the_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const CONNECTIONS: usize = 10_000;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ensure!(
        soft as usize > CONNECTIONS + 100,
        "this test needs {CONNECTIONS} descriptors; the limit is {soft}"
    );
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("ten-thousand"))?;
    sandbox.status()?;
    let baseline = sandbox.settled_fd_count()?;
    let rss_before = sandbox.init_rss_kib()?;
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let stream = UnixStream::connect(sandbox.path("/run/system.sock"))
            .with_context(|| format!("connection {i}"))?;
        held.push(stream);
    }
    // Every connection is either served (silent, holding a slot) or told
    // `busy` and closed. Served ones send nothing: a short read timeout.
    let (mut busy, mut served) = (0usize, 0usize);
    for stream in &mut held {
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = Vec::new();
        match stream.read_to_end(&mut buf) {
            Ok(_) => {
                let reply = replies(&buf)?;
                ensure!(
                    reply.len() == 1 && reply[0]["error"]["code"] == "busy",
                    "refused with {reply:?}"
                );
                busy += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => served += 1,
            Err(e) => bail!("reading a held connection: {e}"),
        }
        if served > 64 {
            bail!("more than 64 connections held at once");
        }
    }
    ensure!(
        busy >= CONNECTIONS - 64 && busy + served == CONNECTIONS,
        "busy {busy}, served {served}"
    );
    let peak = sandbox.init_fd_count()?;
    drop(held);
    still_well(&sandbox, baseline, "10,000 held connections")?;
    let rss_after = sandbox.init_rss_kib()?;
    ensure!(
        rss_after <= rss_before + 1024,
        "init's memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!(
        "ten thousand: {served} served, {busy} busy, init fds {baseline} -> {peak} -> baseline, \
         rss {rss_before} -> {rss_after} KiB"
    );
    Ok(())
}

/// The kubelet's pid inside the sandbox.
fn kubelet_pid(sandbox: &Sandbox) -> Result<i32> {
    let status = sandbox.status()?;
    Sandbox::service(&status, "kubelet")?["pid"]
        .as_i64()
        .map(|p| p as i32)
        .with_context(|| format!("no kubelet pid: {status}"))
}

#[test]
fn clients_that_never_read_during_a_log_flood_are_cut_off_and_cost_nothing() -> Result<()> {
    const FLOOD_LINES: u64 = 50_000;
    const LINE_BYTES: u64 = 200;
    const FOLLOWERS: usize = 4;
    const WATCHERS: usize = 4;
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("slow-readers").kubelet_conf(&format!(
        "flood_lines={FLOOD_LINES}\nflood_line_bytes={LINE_BYTES}\n"
    )))?;
    sandbox.status()?;
    let baseline = sandbox.settled_fd_count()?;
    let rss_before = sandbox.init_rss_kib()?;
    // Followers of the kubelet's output and watchers of every change, which
    // read their success line and then never again.
    let mut followers = Vec::new();
    for _ in 0..FOLLOWERS {
        let mut client = sandbox.client()?;
        let reply = client.request("logs kubelet 1 follow")?;
        ensure!(reply["ok"] == true, "logs follow: {reply}");
        followers.push(client);
    }
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut client = sandbox.client()?;
        let reply = client.request("watch")?;
        ensure!(reply["ok"] == true, "watch: {reply}");
        watchers.push(client);
    }
    let held = sandbox.init_fd_count()?;

    // The flood: 10 MB of output, while cri-o restarts give the watchers
    // a stream of service events they do not read either.
    sandbox.kill_ns_pid(kubelet_pid(&sandbox)?, Signal::SIGUSR1)?;
    for _ in 0..20 {
        let reply = sandbox.request("restart crio")?;
        ensure!(
            reply["ok"] == true,
            "restart crio during the flood: {reply}"
        );
    }
    let done = sandbox.wait_event("kubelet flood-done", Duration::from_secs(120))?;
    ensure!(
        done.ends_with(&format!("lines={FLOOD_LINES}")),
        "the flood was cut short: {done}"
    );
    // Init took all of it: the last line is in its tail.
    let last = format!("kubelet flood line {} ", FLOOD_LINES - 1);
    sandbox.wait_for("the flood's last line in the tail", DEFAULT_WAIT, || {
        let reply = sandbox.request("logs kubelet 5").ok()?;
        let lines = reply["lines"].as_array()?.clone();
        lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with(&last)))
            .then_some(())
    })?;

    // Every follower was cut off: what it can still read ends (EOF, not a
    // timeout) long before the flood's 10 MB.
    let mut received = Vec::new();
    for follower in &mut followers {
        let stream = follower.stream();
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .context("a follower was not cut off (its read timed out)")?;
        // Init lets its client tasks write between bursts of output (it
        // does not fill a queue in one go): some of the flood got out.
        ensure!(
            !rest.is_empty(),
            "a follower was cut off before anything was written to it"
        );
        ensure!(
            (rest.len() as u64) < FLOOD_LINES * LINE_BYTES / 2,
            "a follower got {} bytes of a {} byte flood: it was never cut off",
            rest.len(),
            FLOOD_LINES * LINE_BYTES
        );
        received.push(rest.len());
    }
    let cut = sandbox.init_log().matches("cut off:").count();
    ensure!(
        cut >= FOLLOWERS,
        "the kernel log names {cut} cut-off clients, not the {FOLLOWERS} followers\n{}",
        sandbox.diagnostics()
    );

    // Init answers, restarts, and its descriptors and memory are back.
    let before = Sandbox::service(&sandbox.status()?, "kubelet")?["restarts"].clone();
    let reply = sandbox.request("restart kubelet")?;
    ensure!(
        reply["ok"] == true,
        "restart kubelet after the flood: {reply}"
    );
    sandbox.wait_service("kubelet", DEFAULT_WAIT, |s| {
        s["state"] == "running" && s["restarts"] != before
    })?;
    sandbox.wait_events("kubelet connected", 2, DEFAULT_WAIT)?;
    drop(followers);
    drop(watchers);
    still_well(&sandbox, baseline, "a flood with clients that never read")?;
    let rss_after = sandbox.init_rss_kib()?;
    ensure!(
        rss_after <= rss_before + 1024,
        "init's memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!(
        "slow readers: {FOLLOWERS} followers and {WATCHERS} watchers, a {FLOOD_LINES}-line flood; \
         followers got {received:?} bytes before the cut, {cut} clients cut off; init fds \
         {baseline} -> {held} (held) -> baseline, rss {rss_before} -> {rss_after} KiB"
    );
    Ok(())
}

#[test]
fn a_hundred_concurrent_restarts_never_run_two_kubelets() -> Result<()> {
    let sandbox = Arc::new(Sandbox::boot_ready(SandboxConfig::new("restart-storm"))?);
    let status = sandbox.status()?;
    let restarts_before = Sandbox::service(&status, "kubelet")?["restarts"]
        .as_u64()
        .context("restarts")?;
    let baseline = sandbox.settled_fd_count()?;
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (sandbox, done, most) = (sandbox.clone(), done.clone(), most.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let live = sandbox
                    .processes()
                    .iter()
                    .filter(|p| p.comm == "kubelet" && p.state != 'Z')
                    .count();
                most.fetch_max(live, Ordering::Relaxed);
            }
        })
    };
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (sandbox, outcomes) = (sandbox.clone(), outcomes.clone());
            std::thread::spawn(move || {
                // A full server (64 clients) says busy: ask again.
                let deadline = Instant::now() + DEFAULT_WAIT;
                let reply = loop {
                    match sandbox.request("restart kubelet") {
                        Ok(r) if r["error"]["code"] == "busy" && Instant::now() < deadline => {}
                        other => break other.map_err(|e| e.to_string()),
                    }
                };
                if let Ok(mut all) = outcomes.lock() {
                    all.push(reply);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    ensure!(outcomes.len() == 100);
    for reply in &outcomes {
        match reply {
            Ok(r) if r["ok"] == true => {}
            other => bail!("a restart failed: {other:?}"),
        }
    }
    // One restart per accepted request, one after the other.
    let want = restarts_before + 100;
    let status = sandbox
        .wait_service("kubelet", Duration::from_secs(120), |s| {
            s["state"] == "running" && s["restarts"].as_u64().unwrap_or(0) >= want
        })
        .with_context(|| sandbox.diagnostics())?;
    // A kubelet stopped at once for the next queued restart may end before
    // it prints or connects; the last one connects.
    sandbox.wait_for("the last kubelet connected", DEFAULT_WAIT, || {
        let status = sandbox.status().ok()?;
        let clients = status["clients"].as_array()?.clone();
        clients.iter().any(|c| c["kubelet"] == true).then_some(())
    })?;
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    ensure!(
        most.load(Ordering::Relaxed) == 1,
        "{} kubelets ran at once",
        most.load(Ordering::Relaxed)
    );
    let restarts = status["restarts"].as_u64().unwrap_or(0) - restarts_before;
    ensure!(
        restarts == 100,
        "{restarts} restarts for 100 requests: {status}"
    );
    // Init's own record of every start agrees.
    let started = sandbox.init_log().matches("started kubelet (pid").count();
    ensure!(
        started == 101,
        "{started} kubelet starts in the kernel log for boot and 100 restarts"
    );
    still_well(&sandbox, baseline, "100 concurrent restarts")?;
    let status = sandbox.status()?;
    ensure!(
        Sandbox::service(&status, "kubelet")?["restarts"].as_u64() == Some(want),
        "a restart more than asked for: {status}"
    );
    eprintln!(
        "restart storm: 100 requests, {restarts} restarts, one at a time, never two kubelets"
    );
    Ok(())
}

#[test]
fn requests_through_every_shutdown_phase_with_services_ignoring_sigterm() -> Result<()> {
    let sandbox = Arc::new(Sandbox::boot_ready(
        SandboxConfig::new("phases")
            .kubelet_conf("answer_shutdown=false\ngrace_ms=0\nignore_sigterm=true\n")
            .crio_conf("ignore_sigterm=true\n")
            .file(
                "/etc/kubernetes/config.yaml",
                "kind: KubeletConfiguration\nshutdownGracePeriod: 1s\n",
            ),
    )?);
    let reply = sandbox.request("shutdown poweroff")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    // Ask everything, over and over, until the socket is gone.
    let mut phases = Vec::new();
    let mut answered = 0usize;
    let started = Instant::now();
    loop {
        let Ok(mut client) = sandbox.client() else {
            break;
        };
        let mut gone = false;
        for line in [
            "status",
            "restart kubelet",
            "shutdown reboot",
            "logs crio 1",
            "boot",
        ] {
            match client.request(line) {
                Ok(reply) => {
                    answered += 1;
                    if line == "status" {
                        if let Some(phase) = reply["node"]["shutdown"]["phase"].as_str() {
                            if phases.last().map(String::as_str) != Some(phase) {
                                phases.push(phase.to_string());
                            }
                        }
                    }
                    if line == "restart kubelet" {
                        ensure!(
                            reply["error"]["code"] == "shutting-down",
                            "restart during the shutdown: {reply}"
                        );
                    }
                }
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    ensure!(
        phases.first().map(String::as_str) == Some("draining"),
        "phases seen {phases:?}"
    );
    // Both ignore TERM: init KILLs them after its grace and powers off.
    let ended = sandbox.wait_end(Duration::from_secs(60))?;
    ensure!(
        ended.is_poweroff(),
        "ended {ended:?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        sandbox.count_events("kubelet sigterm-ignored") >= 1
            && sandbox.count_events("crio sigterm-ignored") >= 1,
        "the services were not sent TERM\n{}",
        sandbox.diagnostics()
    );
    let log = sandbox.init_log();
    ensure!(
        log.contains("sending SIGKILL"),
        "no SIGKILL for the services that ignored TERM\n{}",
        sandbox.diagnostics()
    );
    eprintln!("shutdown phases seen through the socket: {phases:?}, {answered} replies");
    Ok(())
}
