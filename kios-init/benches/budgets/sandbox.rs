//! Figures measured in the namespace sandbox: kios-init (and, with
//! `--reference`, another init) as PID 1 of fresh namespaces with the
//! cri-o and kubelet stand-ins (the e2e harness).
//!
//! Method. Every repetition boots a fresh sandbox. "Kubelet exec" is the
//! same instant for every init: the kernel's time of the exec of a new
//! child of init whose `comm` is `kubelet`, from the process connector's
//! exec event ([`kios_e2e::proc_events`]), subscribed before the clock
//! starts. Waiting for it costs the host no CPU. (Where the connector is
//! not available, a watcher polls `/proc/<init>/task/*/children` every
//! 20 us instead, and the run says so: that took most of a core from the
//! init it measured.) Sandbox
//! start is the instant unshare was spawned. kios-init's own figures (init
//! start to kubelet exec, the mounts, the wait for cri-o) come from its
//! `boot` reply's milestones. Memory is read from `/proc/<init>/status`
//! once the kubelet stand-in says `kubelet connected` (with kios-init, also
//! once `status` lists it as a client). A crash is a SIGKILL to the
//! kubelet; a requested restart is `restart kubelet` on the line protocol,
//! timed from the request's send to the new kubelet's exec (kios-init logs
//! only reap-to-exec for it, so the exec event is the clock).
//! The socket and reaping figures live in [`crate::load`] and
//! [`crate::reaping`].

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kios_e2e::figure::{Budget, Figure};
use kios_e2e::ns::{host_cgroup2_flags, Sandbox, SandboxConfig};
use kios_e2e::proc_events::{instant_ns, Kind, ProcEvents};
use nix::sys::signal::Signal;

use crate::Opts;

/// 700 kB (the figure) in KiB.
pub const VMRSS_BUDGET_KIB: f64 = 700_000.0 / 1024.0;

/// The host pids of init's children (every thread's: orphans may be
/// handed to any thread of the reaper).
pub fn children(init: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{init}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    pids
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// The host pids of init's children that are the kubelet now.
pub fn kubelets(init: i32) -> Vec<i32> {
    children(init)
        .into_iter()
        .filter(|&p| comm(p) == "kubelet")
        .collect()
}

/// Sees init's next kubelet exec. Opened before the clock starts (the
/// kernel's events from then on are kept for [`KubeletWatch::wait`]).
pub struct KubeletWatch {
    events: Option<ProcEvents>,
}

/// Why the process connector could not be used, said once per run.
static POLLING_NOTE: std::sync::Once = std::sync::Once::new();

impl KubeletWatch {
    /// The kernel's exec events, or, where they cannot be had, polling.
    pub fn start() -> KubeletWatch {
        match ProcEvents::open() {
            Ok(events) => KubeletWatch {
                events: Some(events),
            },
            Err(e) => {
                POLLING_NOTE.call_once(|| {
                    eprintln!(
                        "budgets: no exec events from the kernel's process connector ({e}); \
                         kubelet execs are seen by polling /proc every 20 us instead"
                    )
                });
                KubeletWatch { events: None }
            }
        }
    }

    /// Waits until a child of init not in `old` exec'd the kubelet: the
    /// time from `since` to that exec, and to when the old kubelets' last
    /// task exited (exit events; `None` when polling, or none was seen).
    pub fn wait(
        self,
        init: i32,
        old: &[i32],
        since: Instant,
        timeout: Duration,
    ) -> Result<NewKubelet> {
        let deadline = Instant::now() + timeout;
        let Some(mut events) = self.events else {
            let seen = poll_kubelet_exec(init, old, deadline)?;
            return Ok(NewKubelet {
                took: seen.saturating_duration_since(since),
                old_gone: None,
            });
        };
        let since_ns = instant_ns(since);
        let mut old_gone_ns: Option<u64> = None;
        loop {
            let Some(event) = events.next(deadline).context("exec events")? else {
                bail!("no new kubelet exec within {timeout:?}");
            };
            if event.at_ns < since_ns {
                continue;
            }
            match event.kind {
                Kind::Exit if old.contains(&event.pid) => {
                    old_gone_ns = Some(old_gone_ns.unwrap_or(0).max(event.at_ns));
                }
                Kind::Exit => {}
                // Looked up after the event: a kubelet lives on.
                Kind::Exec => {
                    if !old.contains(&event.pid)
                        && parent_and_comm(event.pid)
                            .is_some_and(|(ppid, c)| ppid == init && c == "kubelet")
                    {
                        return Ok(NewKubelet {
                            took: Duration::from_nanos(event.at_ns - since_ns),
                            old_gone: old_gone_ns.map(|at| Duration::from_nanos(at - since_ns)),
                        });
                    }
                }
            }
        }
    }
}

/// A new kubelet's exec, timed.
pub struct NewKubelet {
    /// From the clock's start to the exec.
    pub took: Duration,
    /// From the clock's start to the last task of the old kubelet exiting.
    pub old_gone: Option<Duration>,
}

/// The parent and `comm` of a process, from `/proc/<pid>/stat`.
fn parent_and_comm(pid: i32) -> Option<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After the comm: state, then the parent's pid.
    let ppid = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ppid, comm))
}

/// Without exec events: polls until init has a kubelet child not in
/// `old`; when it was seen.
fn poll_kubelet_exec(init: i32, old: &[i32], deadline: Instant) -> Result<Instant> {
    loop {
        for pid in children(init) {
            if !old.contains(&pid) && comm(pid) == "kubelet" {
                return Ok(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            bail!("no new kubelet exec in time");
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// A `/proc/<pid>/status` field in KiB.
pub fn status_kib(pid: i32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
}

fn milestone_offset(boot: &serde_json::Value, name: &str) -> Option<f64> {
    boot["milestones"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["offset_ms"].as_f64())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000_000.0
}

/// What one init gave, per figure (samples by figure key).
#[derive(Default)]
pub struct Samples(pub Vec<(&'static str, Vec<f64>)>);

impl Samples {
    pub fn push(&mut self, key: &'static str, value: f64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(value),
            None => self.0.push((key, vec![value])),
        }
    }

    pub fn get(&self, key: &str) -> Vec<f64> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// `None` when this init gave no sample of `key` ("not supported").
    pub fn maybe(&self, key: &str) -> Option<Vec<f64>> {
        Some(self.get(key)).filter(|v| !v.is_empty())
    }
}

fn boot_config(name: &str, reference: Option<&[u8]>) -> SandboxConfig {
    let config = SandboxConfig::new(name).init_poll(Duration::from_micros(50));
    match reference {
        Some(bytes) => config.init_binary(bytes.to_vec()),
        None => config,
    }
}

/// Boots; records sandbox start to kubelet exec; waits for the kubelet
/// stand-in to be connected.
fn boot_and_watch(config: SandboxConfig, s: &mut Samples, key: &'static str) -> Result<Sandbox> {
    let watch = KubeletWatch::start();
    let sandbox = Sandbox::boot(config)?;
    let new = watch
        .wait(
            sandbox.init_pid(),
            &[],
            sandbox.started(),
            Duration::from_secs(10),
        )
        .with_context(|| sandbox.diagnostics())?;
    s.push(key, ms(new.took));
    sandbox.wait_event("kubelet connected", Duration::from_secs(10))?;
    Ok(sandbox)
}

fn memory(sandbox: &Sandbox, size: u64, s: &mut Samples) {
    let pid = sandbox.init_pid();
    let mut read = |key: &'static str, field: &str| {
        let v = status_kib(pid, field);
        if let Some(v) = v {
            s.push(key, v);
        }
        v
    };
    read("rss", "VmRSS:");
    read("hwm", "VmHWM:");
    read("file", "RssFile:");
    let anon = read("anon", "RssAnon:");
    let pte = read("pte", "VmPTE:");
    if let (Some(anon), Some(pte)) = (anon, pte) {
        s.push("pays", size as f64 / 1024.0 + anon + pte);
    }
}

/// SIGKILL to the kubelet, then the new one's exec.
fn crash(sandbox: &Sandbox, s: &mut Samples) -> Result<()> {
    let init = sandbox.init_pid();
    let old = kubelets(init);
    let Some(&first) = old.first() else {
        bail!("no kubelet child of init\n{}", sandbox.diagnostics());
    };
    let watch = KubeletWatch::start();
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL)
        .context("cannot kill the kubelet")?;
    let took = watch.wait(init, &old, killed, Duration::from_secs(5))?.took;
    s.push("crash", us(took));
    Ok(())
}

/// kios-init's only: boot milestones, the logged crash reaction, the
/// requested restart.
fn kios_extras(sandbox: &Sandbox, s: &mut Samples, cgroupns: bool) -> Result<()> {
    let boot = sandbox.request("boot")?;
    let get = |name: &str| {
        milestone_offset(&boot, name).ok_or_else(|| anyhow!("no {name} milestone: {boot}"))
    };
    let (mounts, crio, socket, kubelet) = (
        get("mounts")?,
        get("crio-start")?,
        get("crio-socket")?,
        get("kubelet-start")?,
    );
    if !cgroupns {
        s.push("init-kubelet-nocgns", kubelet);
        return Ok(());
    }
    s.push("init-kubelet", kubelet);
    s.push("mounts", mounts);
    s.push("crio-wait", socket - crio);
    s.push("own", kubelet - (socket - crio) - mounts);
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
    Ok(())
}

fn kios_logged_crash(sandbox: &Sandbox, s: &mut Samples) -> Result<()> {
    // The first crash of a fresh kubelet restarts at once (later ones in a
    // row back off, by design): one sample per sandbox.
    let status = sandbox.status()?;
    let kubelet = Sandbox::service(&status, "kubelet")?;
    let old = kubelet["pid"]
        .as_i64()
        .ok_or_else(|| anyhow!("kubelet not running"))? as i32;
    let init = sandbox.init_pid();
    let old_host = kubelets(init);
    // Found before the clock starts: the lookup walks /proc, which the
    // reference's crash (a host pid known in advance) does not time.
    let host = sandbox
        .host_pid_of(old)
        .ok_or_else(|| anyhow!("kubelet {old} not found\n{}", sandbox.diagnostics()))?;
    let watch = KubeletWatch::start();
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), Signal::SIGKILL)
        .context("cannot kill the kubelet")?;
    let took = watch
        .wait(init, &old_host, killed, Duration::from_secs(5))?
        .took;
    s.push("crash", us(took));
    let line = sandbox.wait_log(
        &format!("kubelet (pid {old}) ended"),
        Duration::from_secs(10),
    )?;
    let logged = line
        .split("restarted as pid ")
        .nth(1)
        .and_then(|rest| rest.split(" in ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no immediate restart in: {line}"))?;
    s.push("crash-logged", logged);
    Ok(())
}

/// A requested restart, in microseconds: the whole, and (with exit
/// events) its two parts.
pub struct Restart {
    /// `restart kubelet` sent to the new kubelet's exec.
    pub total: f64,
    /// Sent to the old kubelet's end: init's answer and SIGTERM, then the
    /// kubelet's own stop.
    pub stop: Option<f64>,
    /// The old kubelet's end to the new one's exec: init's reaction.
    pub react: Option<f64>,
}

impl Restart {
    /// Into `k` under `key`, `key-stop` and `key-react`.
    pub fn push(
        &self,
        k: &mut Samples,
        key: &'static str,
        stop: &'static str,
        react: &'static str,
    ) {
        k.push(key, self.total);
        if let (Some(s), Some(r)) = (self.stop, self.react) {
            k.push(stop, s);
            k.push(react, r);
        }
    }
}

/// The two parts of a restart's figure (see [`Restart`]), under
/// `section`, indented below it.
pub fn restart_parts(
    k: &Samples,
    section: &'static str,
    indent: &str,
    stop: &str,
    react: &str,
) -> [Figure; 2] {
    [
        Figure::new(
            section,
            format!("{indent}of which: to the old kubelet's end (init's answer, SIGTERM, the kubelet's own stop)"),
            "us",
        )
        .samples(k.get(stop)),
        Figure::new(
            section,
            format!("{indent}of which: the old kubelet's end to the new one's exec (init's reaction)"),
            "us",
        )
        .samples(k.get(react)),
    ]
}

/// `restart kubelet` sent to the new kubelet's exec.
pub fn requested_restart(
    sandbox: &Sandbox,
    client: &mut kios_e2e::ns::LineClient,
) -> Result<Restart> {
    let init = sandbox.init_pid();
    let old = kubelets(init);
    let watch = KubeletWatch::start();
    let sent = Instant::now();
    let reply = client.request("restart kubelet")?;
    if reply["error"].is_string() || reply["ok"] == false {
        bail!("restart kubelet refused: {reply}");
    }
    let new = watch.wait(init, &old, sent, Duration::from_secs(5))?;
    let total = us(new.took);
    let stop = new.old_gone.map(us);
    Ok(Restart {
        total,
        stop,
        react: stop.map(|s| total - s),
    })
}

/// The sandbox figures.
pub fn figures(opts: &Opts) -> Result<Vec<Figure>> {
    let artifacts = kios_e2e::artifacts::artifacts().context("cannot build the artifacts")?;
    let size_of = |name: &str| -> Result<u64> {
        let path = artifacts.binary(name);
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len())
    };
    let size = size_of("kios-init")?;
    let kiosctl_size = size_of("kiosctl")?;
    let reference = match &opts.reference {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => None,
    };
    let runs = opts.runs.unwrap_or(5);
    let cgroup_flags = host_cgroup2_flags()?;
    let mut k = Samples::default();
    let mut r = Samples::default();
    let mut notes: Vec<String> = Vec::new();

    for i in 0..runs {
        eprintln!("budgets: sandbox run {}/{runs}", i + 1);
        {
            let sandbox =
                boot_and_watch(boot_config(&format!("bench-{i}"), None), &mut k, "start")?;
            kios_extras(&sandbox, &mut k, true)?;
            memory(&sandbox, size, &mut k);
            kios_logged_crash(&sandbox, &mut k)?;
            sandbox.wait_events("kubelet connected", 2, Duration::from_secs(10))?;
            let mut client = sandbox.client()?;
            requested_restart(&sandbox, &mut client)?.push(
                &mut k,
                "restart",
                "restart-stop",
                "restart-react",
            );
            drop(client);
            sandbox.wait_events("kubelet connected", 3, Duration::from_secs(10))?;
            // The churn first, from the state after boot (the budget's
            // baseline); then the 60-client load, whose high-water mark
            // is reported on its own.
            crate::load::churn(&sandbox, &mut k)?;
            crate::load::socket(&sandbox, &mut k)?;
            let reaped = crate::reaping::reap(&sandbox, crate::reaping::ZOMBIES)?;
            if let Some(t) = reaped.took {
                k.push("reap", t);
            }
            k.push("reap-left", reaped.left as f64);
        }
        if cgroup_flags.is_empty() {
            let config = boot_config(&format!("bench-nocgns-{i}"), None).no_cgroup_namespace();
            let sandbox = boot_and_watch(config, &mut k, "start-nocgns")?;
            kios_extras(&sandbox, &mut k, false)?;
            drop(sandbox);
        }
        if let Some(bytes) = &reference {
            match reference_run(i, bytes, &mut r) {
                Ok(()) => {}
                Err(e) => {
                    let note = format!("reference run {}: {e:#}", i + 1);
                    eprintln!("budgets: {note}");
                    notes.push(note);
                }
            }
        }
    }
    if !cgroup_flags.is_empty() {
        notes.push(format!(
            "no boot without a cgroup namespace: the host's cgroup2 has {cgroup_flags:?} set, \
             which init's option-less cgroup2 mount would clear"
        ));
    }
    for n in &notes {
        eprintln!("budgets: note: {n}");
    }

    let rf = |key: &str| reference.as_ref().and_then(|_| r.maybe(key));
    let mut figures = vec![
        Figure::new("binary", "kios-init, static and stripped", "B")
            .samples(vec![size as f64])
            .reference(reference.as_ref().map(|b| vec![b.len() as f64]))
            .budget(Budget::AtMost(1024.0 * 1024.0)),
        Figure::new("binary", "kiosctl, static and stripped", "B")
            .samples(vec![kiosctl_size as f64])
            .budget(Budget::AtMost(1_572_864.0)),
        Figure::new("boot", "sandbox start to kubelet exec (exec event)", "ms")
            .samples(k.get("start"))
            .reference(rf("start"))
            .budget(Budget::AtMostOfReference(0.5)),
        Figure::new("boot", "init start to kubelet exec (milestones)", "ms")
            .samples(k.get("init-kubelet")),
        Figure::new(
            "boot",
            "  same, excluding the wait for cri-o, beyond the mounts",
            "ms",
        )
        .samples(k.get("own"))
        .budget(Budget::AtMost(2.0)),
        Figure::new("boot", "  the mounts (milestone)", "ms").samples(k.get("mounts")),
        Figure::new(
            "boot",
            "  the wait for cri-o (crio-start to crio-socket)",
            "ms",
        )
        .samples(k.get("crio-wait")),
    ];
    if cgroup_flags.is_empty() {
        figures.push(
            Figure::new("boot", "sandbox start to kubelet exec, no cgroupns", "ms")
                .samples(k.get("start-nocgns")),
        );
        figures.push(
            Figure::new("boot", "init start to kubelet exec, no cgroupns", "ms")
                .samples(k.get("init-kubelet-nocgns")),
        );
    }
    let mem = |key: &str, name: &str| {
        Figure::new("memory", name.to_string(), "KiB")
            .samples(k.get(key))
            .reference(rf(key))
    };
    figures.extend([
        mem(
            "rss",
            "VmRSS after boot, kubelet connected (700 kB = 683.6 KiB)",
        )
        .budget(Budget::AtMost(VMRSS_BUDGET_KIB)),
        mem("hwm", "VmHWM after boot"),
        mem("file", "RssFile after boot"),
        mem("anon", "RssAnon after boot"),
        mem("pte", "VmPTE (page tables) after boot"),
        mem("pays", "what the node pays: binary + RssAnon + VmPTE").budget(Budget::AtMost(1024.0)),
        Figure::new(
            "memory",
            "RssAnon growth after 10k conns + 100k requests",
            "KiB",
        )
        .samples(k.get("anon-growth"))
        .budget(Budget::AtMost(16.0)),
        Figure::new(
            "memory",
            "VmRSS after 10k conns + 100k requests (700 kB)",
            "KiB",
        )
        .samples(k.get("rss-after"))
        .budget(Budget::AtMost(VMRSS_BUDGET_KIB)),
        Figure::new(
            "memory",
            "VmRSS after the 60-client load below (its high-water mark)",
            "KiB",
        )
        .samples(k.get("rss-after-load")),
        Figure::new(
            "reaction",
            "kubelet SIGKILL to new kubelet exec (exec event)",
            "us",
        )
        .samples(k.get("crash"))
        .reference(rf("crash"))
        .budget(Budget::AtMost(1000.0)),
        Figure::new("reaction", "  same, init's log (reap to exec)", "us")
            .samples(k.get("crash-logged"))
            .budget(Budget::AtMost(1000.0)),
        Figure::new(
            "reaction",
            "`restart kubelet` sent to new kubelet exec",
            "us",
        )
        .samples(k.get("restart"))
        .budget(Budget::AtMost(1000.0)),
    ]);
    figures.extend(restart_parts(
        &k,
        "reaction",
        "  ",
        "restart-stop",
        "restart-react",
    ));
    figures.extend(crate::load::figures(&k));
    figures.push(
        Figure::new(
            "reaping",
            format!(
                "{} orphaned zombies reaped, none left",
                crate::reaping::ZOMBIES
            ),
            "ms",
        )
        .samples(k.get("reap"))
        .reference(rf("reap")),
    );
    figures.push(
        Figure::new("reaping", "  of those, left unreaped after 20 s", "procs")
            .samples(k.get("reap-left"))
            .reference(rf("reap-left"))
            .budget(Budget::AtMost(0.0)),
    );
    Ok(figures)
}

/// One run of the reference init: what it supports.
fn reference_run(i: usize, bytes: &[u8], r: &mut Samples) -> Result<()> {
    let sandbox = boot_and_watch(
        boot_config(&format!("bench-ref-{i}"), Some(bytes)),
        r,
        "start",
    )?;
    memory(&sandbox, bytes.len() as u64, r);
    crash(&sandbox, r)?;
    let reaped = crate::reaping::reap(&sandbox, crate::reaping::ZOMBIES)?;
    if let Some(t) = reaped.took {
        r.push("reap", t);
    }
    r.push("reap-left", reaped.left as f64);
    Ok(())
}
