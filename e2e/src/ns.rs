//! The namespace sandbox: a real kios-init as PID 1 of fresh namespaces.
//!
//! [`Sandbox::boot`] runs
//! `unshare --pid --fork --mount --uts --ipc --net --cgroup --propagation private`
//! with a small host-side `sh` script that, inside the new mount namespace,
//! mounts an overlay (lower: the image tree of [`crate::artifacts`], shared
//! read-only by every sandbox; upper: a per-sandbox directory holding the
//! test's files) as the sandbox root and chroots into it exec'ing `/init`
//! with a clean environment (`datapart=none kios.log=stderr
//! kios.power_button=off` plus the test's boot parameters), stdin
//! /dev/null, stdout and stderr to files.
//!
//! The root is an overlay of its own, never a bind of a host directory: a
//! shutdown that remounts `/` read-only must only ever reach the sandbox's
//! superblock, never the host's filesystem. The overlay's mount source is
//! [`crate::standin::SANDBOX_ROOT_SOURCE`], by which the stand-ins know not
//! to write to /dev/console (the host's, in here).
//!
//! Unless the sandbox is pristine, `/etc/kios-e2e/common.conf` sends the
//! stand-ins' progress lines to `/kios-e2e/events` on the root overlay, so
//! the harness reads them from the upper directory on the host, even after
//! the sandbox has ended. Pristine sandboxes (for `verify`, which must find
//! nothing the image does not have) keep them in `/run/kios-e2e/events`,
//! readable only while init lives.
//!
//! Init's end: in a child PID namespace reboot(2) kills init with SIGINT
//! (power off) or SIGHUP (restart); unshare reports that as its own death by
//! the same signal (or exit 128+N), see [`Ended`].
//!
//! Drop kills the sandbox BY PID: SIGKILL to the namespace's init (which
//! kills every process of the namespace), then reaps unshare.
//!
//! [`TRACER_ENV`] (a dev hook, off unless set) names a program and its
//! arguments, separated by spaces, to run the unshare command under (e.g.
//! `entry-trace`, which records the functions kios-init runs: see
//! kios-init/layout/README.md); init is then unshare's grandchild of the
//! harness instead of its child.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use crate::artifacts;
use crate::standin::SANDBOX_ROOT_SOURCE;

/// The system socket inside the sandbox.
pub const SOCKET: &str = "/run/system.sock";

/// Where stand-in events go in a non-pristine sandbox (on the root overlay).
pub const EVENTS_IN_ROOT: &str = "/kios-e2e/events";

/// `setpriv`'s arguments that make a peer uid and gid 65534 with only
/// CAP_DAC_OVERRIDE and CAP_SYS_PTRACE (to reach the socket through
/// /proc/<init>/root), before the program to run.
pub const AS_NOBODY: [&str; 6] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_override,+sys_ptrace",
    "--ambient-caps=+dac_override,+sys_ptrace",
    "--",
];

/// A program and its arguments (space-separated) to run the unshare command
/// under; unset: unshare runs directly.
pub const TRACER_ENV: &str = "KIOS_E2E_TRACER";

/// Default deadline of the waiting helpers.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// How often the waiting helpers look.
const POLL: Duration = Duration::from_millis(5);

/// What a sandbox boots with.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    name: String,
    files: Vec<(String, Vec<u8>, u32)>,
    removed: Vec<String>,
    env: Vec<(String, String)>,
    setup: Vec<String>,
    pristine: bool,
    cgroup: Option<PathBuf>,
    cgroup_namespace: bool,
    init_poll: Duration,
}

impl SandboxConfig {
    /// A sandbox named after the test (used for its scratch directory).
    pub fn new(name: &str) -> SandboxConfig {
        SandboxConfig {
            name: name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
            files: Vec::new(),
            removed: Vec::new(),
            env: Vec::new(),
            setup: Vec::new(),
            pristine: false,
            cgroup: None,
            cgroup_namespace: true,
            init_poll: POLL,
        }
    }

    /// Boots WITHOUT a cgroup namespace of its own (for the benchmark's
    /// "what does the cgroup namespace cost" figure).
    ///
    /// Init mounts cgroup2 with no options. A cgroup2 mount made from the
    /// initial cgroup namespace applies its root flags (nsdelegate,
    /// favordynmods, memory_localevents, memory_recursiveprot, ...) to the
    /// ONE cgroup2 hierarchy of the machine: an option-less mount clears
    /// them on the host. So [`Sandbox::boot`] refuses this unless
    /// [`host_cgroup2_flags`] finds none set (then the mount changes
    /// nothing). kios-init itself never writes to cgroupfs, and the mount
    /// is in the sandbox's private mount namespace: the host's mount table
    /// is untouched. Only for kios-init: another init may write cgroupfs.
    pub fn no_cgroup_namespace(mut self) -> SandboxConfig {
        self.cgroup_namespace = false;
        self
    }

    /// How often [`Sandbox::boot`] looks for init's exec (default 5 ms): a
    /// benchmark that times from init's start wants it finer.
    pub fn init_poll(mut self, every: Duration) -> SandboxConfig {
        self.init_poll = every;
        self
    }

    /// Runs another init binary as `/init` (a reference init for the
    /// benchmark), instead of kios-init.
    pub fn init_binary(self, content: impl Into<Vec<u8>>) -> SandboxConfig {
        self.file_mode("/init", content, 0o755)
    }

    /// A shell command run inside the sandbox's mount namespace before init
    /// starts, in the sandbox root (the working directory; paths relative,
    /// e.g. `mount -t tmpfs -o size=64k kios-e2e-varlog var/log`). What it
    /// mounts is the sandbox's alone, never the host's.
    pub fn setup(mut self, command: &str) -> SandboxConfig {
        self.setup.push(command.to_string());
        self
    }

    /// Adds (or replaces) a file in the sandbox root, mode 0644.
    pub fn file(self, path: &str, content: impl Into<Vec<u8>>) -> SandboxConfig {
        self.file_mode(path, content, 0o644)
    }

    /// Adds (or replaces) a file with a mode.
    pub fn file_mode(
        mut self,
        path: &str,
        content: impl Into<Vec<u8>>,
        mode: u32,
    ) -> SandboxConfig {
        self.files.push((path.to_string(), content.into(), mode));
        self
    }

    /// Removes a file of the image from the sandbox root.
    pub fn remove(mut self, path: &str) -> SandboxConfig {
        self.removed.push(path.to_string());
        self
    }

    /// `/etc/kios-e2e/crio.conf`.
    pub fn crio_conf(self, text: &str) -> SandboxConfig {
        self.file("/etc/kios-e2e/crio.conf", text)
    }

    /// `/etc/kios-e2e/kubelet.conf`.
    pub fn kubelet_conf(self, text: &str) -> SandboxConfig {
        self.file("/etc/kios-e2e/kubelet.conf", text)
    }

    /// A boot parameter (init's environment), e.g. `kios.datapart_timeout`.
    pub fn env(mut self, key: &str, value: &str) -> SandboxConfig {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs the sandbox in this cgroup (a directory of a cgroup hierarchy
    /// the test created, e.g. [`crate::cgroup::PidsCgroup`]): the shell
    /// joins it before `unshare`, so init and everything it starts are in
    /// it, and it is the root of the sandbox's cgroup namespace.
    pub fn cgroup(mut self, dir: &Path) -> SandboxConfig {
        self.cgroup = Some(dir.to_path_buf());
        self
    }

    /// No test files at all (not even the stand-ins' common.conf): the root
    /// is exactly the image, for `verify`.
    pub fn pristine(mut self) -> SandboxConfig {
        self.pristine = true;
        self
    }
}

/// The root flags set on the host's cgroup2 hierarchy (the super options
/// of its cgroup2 mounts in our mount namespace, beyond rw/ro and
/// seclabel): what an option-less cgroup2 mount from the initial cgroup
/// namespace would clear.
pub fn host_cgroup2_flags() -> Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    let mut flags = Vec::new();
    for line in text.lines() {
        let Some((_, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = after.split_whitespace();
        if fields.next() != Some("cgroup2") {
            continue;
        }
        let super_options = fields.nth(1).unwrap_or("");
        for option in super_options.split(',') {
            if !matches!(option, "rw" | "ro" | "seclabel" | "")
                && !flags.iter().any(|f| f == option)
            {
                flags.push(option.to_string());
            }
        }
    }
    Ok(flags)
}

/// How a sandbox ended, as unshare reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Init was killed by this signal (SIGINT: reboot(POWER_OFF); SIGHUP:
    /// reboot(RESTART); SIGKILL: the harness).
    Signal(i32),
    /// Init exited with this code (it should never do that).
    Code(i32),
}

impl Ended {
    fn from_status(status: ExitStatus) -> Ended {
        match (status.signal(), status.code()) {
            (Some(sig), _) => Ended::Signal(sig),
            // util-linux versions that do not re-raise report 128+N.
            (None, Some(code)) if code > 128 && code < 128 + 65 => Ended::Signal(code - 128),
            (None, Some(code)) => Ended::Code(code),
            (None, None) => Ended::Code(-1),
        }
    }

    /// Init powered off (reboot(2) with POWER_OFF in a PID namespace).
    pub fn is_poweroff(self) -> bool {
        self == Ended::Signal(libc_sig(Signal::SIGINT))
    }

    /// Init restarted (reboot(2) with RESTART in a PID namespace).
    pub fn is_reboot(self) -> bool {
        self == Ended::Signal(libc_sig(Signal::SIGHUP))
    }
}

fn libc_sig(signal: Signal) -> i32 {
    signal as i32
}

/// A process of the sandbox's PID namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub host_pid: i32,
    /// Its pid inside the sandbox.
    pub ns_pid: i32,
    /// The state letter of /proc/PID/stat (`Z` for a zombie).
    pub state: char,
    pub comm: String,
}

/// Who a socket peer started by the harness is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUser {
    Root,
    /// uid and gid 65534.
    Nobody,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running sandbox. See the module docs.
pub struct Sandbox {
    name: String,
    dir: PathBuf,
    upper: PathBuf,
    root: PathBuf,
    unshare: Mutex<Child>,
    init_pid: i32,
    pid_ns: PathBuf,
    ended: Mutex<Option<Ended>>,
    pristine: bool,
    started: Instant,
}

impl Sandbox {
    /// Builds the sandbox root and starts kios-init as its PID 1. Returns
    /// once init is exec'd (not once it has booted: use the waiting helpers,
    /// e.g. [`Sandbox::boot_ready`]).
    pub fn boot(config: SandboxConfig) -> Result<Sandbox> {
        let image = artifacts::image_tree().context("cannot build the test image")?;
        let artifacts = artifacts::artifacts()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = artifacts.run_dir.join(format!("ns-{}-{n}", config.name));
        let _ = std::fs::remove_dir_all(&dir);
        let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        for d in [&upper, &work, &root] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        // The overlay's root shows the upper directory's attributes.
        copy_attributes(image, &upper)?;
        let mut files = config.files.clone();
        if !config.pristine {
            files.insert(
                0,
                (
                    "/etc/kios-e2e/common.conf".to_string(),
                    format!("events={EVENTS_IN_ROOT}\nconsole=false\n").into_bytes(),
                    0o644,
                ),
            );
        }
        for (path, content, mode) in &files {
            stage_file(image, &upper, path, content, *mode)?;
        }
        for path in &config.removed {
            stage_whiteout(image, &upper, path)?;
        }

        let stdout = File::create(dir.join("init.stdout"))?;
        let stderr = File::create(dir.join("init.stderr"))?;
        // The sandbox's /dev is a devtmpfs with the host's input devices:
        // init must not watch them for a power button here.
        let mut env = vec![
            "datapart=none".to_string(),
            "kios.log=stderr".to_string(),
            "kios.power_button=off".to_string(),
        ];
        env.extend(config.env.iter().map(|(k, v)| format!("{k}={v}")));
        let setup: String = config.setup.iter().map(|c| format!("{c}\n")).collect();
        let script = format!(
            "set -e\n\
             mount -t overlay -o \"lowerdir=$1,upperdir=$2,workdir=$3\" {SANDBOX_ROOT_SOURCE} \"$4\"\n\
             cd \"$4\"\n\
             shift 4\n\
             {setup}\
             chroot=$(command -v chroot)\n\
             exec env -i \"$@\" \"$chroot\" . /init\n"
        );
        let mut argv: Vec<std::ffi::OsString> = std::env::var(TRACER_ENV)
            .unwrap_or_default()
            .split_whitespace()
            .map(Into::into)
            .collect();
        match &config.cgroup {
            None => argv.push("unshare".into()),
            Some(dir) => {
                // Join the cgroup, then become unshare.
                argv.extend(["sh", "-c", "echo $$ > \"$0\" && exec \"$@\""].map(Into::into));
                argv.push(dir.join("cgroup.procs").into());
                argv.push("unshare".into());
            }
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if !config.cgroup_namespace {
            let flags = host_cgroup2_flags()?;
            if !flags.is_empty() {
                bail!(
                    "will not boot without a cgroup namespace: init's option-less cgroup2 \
                     mount would clear {flags:?} on the host's cgroup2 hierarchy"
                );
            }
        }
        command.args(["--pid", "--fork", "--mount", "--uts", "--ipc", "--net"]);
        if config.cgroup_namespace {
            // Its own cgroup namespace: init mounts cgroup2, and without
            // one that mount would reconfigure the host's cgroup2 root.
            command.arg("--cgroup");
        }
        command
            .args([
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                &script,
                "kios-e2e-sandbox",
            ])
            .arg(image)
            .arg(&upper)
            .arg(&work)
            .arg(&root)
            .args(&env)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let unshare = command.spawn().context("cannot run unshare (util-linux)")?;
        let mut sandbox = Sandbox {
            name: config.name.clone(),
            dir,
            upper,
            root,
            init_pid: 0,
            pid_ns: PathBuf::new(),
            unshare: Mutex::new(unshare),
            ended: Mutex::new(None),
            pristine: config.pristine,
            started: Instant::now(),
        };
        sandbox.find_init(config.init_poll)?;
        Ok(sandbox)
    }

    /// Boots and waits until the kubelet stand-in is connected to the
    /// system socket (cri-o up, kubelet started, socket served).
    pub fn boot_ready(config: SandboxConfig) -> Result<Sandbox> {
        let sandbox = Sandbox::boot(config)?;
        sandbox.wait_event("kubelet connected", DEFAULT_WAIT)?;
        Ok(sandbox)
    }

    /// Waits for unshare's child to become `/init` inside the root.
    fn find_init(&mut self, poll: Duration) -> Result<()> {
        let unshare_pid = self
            .unshare
            .lock()
            .map_err(|_| anyhow!("poisoned lock"))?
            .id();
        let children = PathBuf::from(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"));
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            if let Some(ended) = self.has_ended()? {
                bail!(
                    "the sandbox ended ({ended:?}) before the harness saw init running\n{}",
                    self.diagnostics()
                );
            }
            let first_child = |of: &Path| {
                std::fs::read_to_string(of).ok().and_then(|t| {
                    t.split_whitespace()
                        .next()
                        .and_then(|p| p.parse::<i32>().ok())
                })
            };
            // Under a tracer (TRACER_ENV), unshare is the child and init
            // the grandchild.
            let mut child = first_child(&children);
            for _ in 0..3 {
                let Some(pid) = child else { break };
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.starts_with(&self.root) {
                    self.init_pid = pid;
                    self.pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                        .context("cannot read init's pid namespace")?;
                    return Ok(());
                }
                child = first_child(Path::new(&format!("/proc/{pid}/task/{pid}/children")));
            }
            if Instant::now() >= deadline {
                bail!(
                    "init did not start within {DEFAULT_WAIT:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(poll);
        }
    }

    /// When unshare was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Init's pid on the host.
    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// The sandbox's scratch directory (init.stderr, upper/, ...).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the sandbox, seen from the host through
    /// `/proc/<init>/root` (valid while init lives).
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid)).join(inside.trim_start_matches('/'))
    }

    /// Init's stderr so far (its log, with `kios.log=stderr`).
    pub fn init_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("init.stderr")).unwrap_or_default()
    }

    fn events_file(&self) -> PathBuf {
        if self.pristine {
            self.path("/run/kios-e2e/events")
        } else {
            self.upper.join(EVENTS_IN_ROOT.trim_start_matches('/'))
        }
    }

    /// The stand-ins' progress lines so far, without the `KIOS-E2E ` prefix.
    pub fn events(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.events_file()).unwrap_or_default();
        text.lines()
            .map(|l| l.strip_prefix("KIOS-E2E ").unwrap_or(l).to_string())
            .collect()
    }

    /// How many event lines start with `prefix`.
    pub fn count_events(&self, prefix: &str) -> usize {
        self.events()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// The last lines of init's log and of the events: for error messages.
    pub fn diagnostics(&self) -> String {
        fn tail(text: &str, n: usize) -> String {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        let stdout = std::fs::read_to_string(self.dir.join("init.stdout")).unwrap_or_default();
        format!(
            "--- sandbox {} ({}), {:?} after start, init host pid {} ---\n\
             --- init stderr (last 60 lines) ---\n{}\n\
             --- init stdout (last 10 lines) ---\n{}\n\
             --- stand-in events (last 40) ---\n{}\n---",
            self.name,
            self.dir.display(),
            self.started.elapsed(),
            self.init_pid,
            tail(&self.init_log(), 60),
            tail(&stdout, 10),
            tail(&self.events().join("\n"), 40),
        )
    }

    /// Polls `check` until it returns `Some` or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return Ok(value);
            }
            if let Some(ended) = self.has_ended()? {
                // What it waits for may have happened just before the end
                // (events outlive the sandbox): one last look.
                if let Some(value) = check() {
                    return Ok(value);
                }
                bail!(
                    "the sandbox ended ({ended:?}) while waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for an event line starting with `prefix`; returns it.
    pub fn wait_event(&self, prefix: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("event '{prefix}'"), timeout, || {
            self.events().into_iter().find(|l| l.starts_with(prefix))
        })
    }

    /// Waits until `n` event lines start with `prefix`; returns them all.
    pub fn wait_events(&self, prefix: &str, n: usize, timeout: Duration) -> Result<Vec<String>> {
        self.wait_for(&format!("{n} events '{prefix}'"), timeout, || {
            let found: Vec<String> = self
                .events()
                .into_iter()
                .filter(|l| l.starts_with(prefix))
                .collect();
            (found.len() >= n).then_some(found)
        })
    }

    /// Waits for a path inside the sandbox to exist.
    pub fn wait_file(&self, inside: &str, timeout: Duration) -> Result<PathBuf> {
        let path = self.path(inside);
        self.wait_for(&format!("file {inside}"), timeout, || {
            path.symlink_metadata().is_ok().then(|| path.clone())
        })
    }

    /// Waits for a line containing `needle` in init's log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(
            &format!("init log line containing '{needle}'"),
            timeout,
            || {
                self.init_log()
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_string)
            },
        )
    }

    /// Reads a file inside the sandbox.
    pub fn read(&self, inside: &str) -> Result<String> {
        let path = self.path(inside);
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {inside} in the sandbox"))
    }

    /// Writes a file inside the sandbox (through init's root).
    pub fn write(&self, inside: &str, content: impl AsRef<[u8]>) -> Result<()> {
        let path = self.path(inside);
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {inside} in the sandbox"))
    }

    /// A recorded argv (`/run/kios-e2e/<name>.argv`) as strings.
    pub fn recorded_argv(&self, name: &str) -> Result<Vec<String>> {
        let text = self.read(&format!("/run/kios-e2e/{name}.argv"))?;
        let value: Value = serde_json::from_str(text.trim())
            .with_context(|| format!("{name}.argv is not JSON: {text}"))?;
        value
            .as_array()
            .ok_or_else(|| anyhow!("{name}.argv is not an array: {text}"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("{name}.argv has a non-string: {text}"))
            })
            .collect()
    }

    /// A raw connection to the system socket.
    pub fn connect(&self) -> Result<UnixStream> {
        let path = self.path(SOCKET);
        let stream = UnixStream::connect(&path).with_context(|| {
            format!(
                "cannot connect to {}\n{}",
                path.display(),
                self.diagnostics()
            )
        })?;
        stream.set_read_timeout(Some(DEFAULT_WAIT))?;
        stream.set_write_timeout(Some(DEFAULT_WAIT))?;
        Ok(stream)
    }

    /// A line-dialect client.
    pub fn client(&self) -> Result<LineClient> {
        LineClient::new(self.connect()?)
    }

    /// Sends one request on a fresh connection and returns the parsed reply.
    pub fn request(&self, line: &str) -> Result<Value> {
        self.client()?
            .request(line)
            .with_context(|| self.diagnostics())
    }

    /// `status`, which must succeed.
    pub fn status(&self) -> Result<Value> {
        let reply = self.request("status")?;
        if reply["ok"] != Value::Bool(true) {
            bail!("status failed: {reply}\n{}", self.diagnostics());
        }
        Ok(reply)
    }

    /// The entry of `service` in a status reply.
    pub fn service(status: &Value, name: &str) -> Result<Value> {
        status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .cloned()
            .ok_or_else(|| anyhow!("status has no service {name}: {status}"))
    }

    /// The host pid of service `name` as a status reply shows it.
    pub fn service_host_pid(&self, status: &Value, name: &str) -> Result<i32> {
        let ns_pid = Sandbox::service(status, name)?["pid"]
            .as_i64()
            .ok_or_else(|| anyhow!("{name} has no pid: {status}"))? as i32;
        self.host_pid_of(ns_pid)
            .ok_or_else(|| anyhow!("{name} ({ns_pid}) not found\n{}", self.diagnostics()))
    }

    /// Waits until `status` shows `name` running with a pid that `accept`s;
    /// returns that service entry.
    pub fn wait_service(
        &self,
        name: &str,
        timeout: Duration,
        mut accept: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_for(
            &format!("service {name} in the wanted state"),
            timeout,
            || {
                let status = self.status().ok()?;
                let service = Sandbox::service(&status, name).ok()?;
                accept(&service).then_some(service)
            },
        )
    }

    /// Runs `/bin/kiosctl ARGS` inside the sandbox through
    /// `nsenter -t <init> -a -r -w` (init's namespaces and root).
    pub fn kiosctl(&self, args: &[&str]) -> Result<Output> {
        self.run_inside("/bin/kiosctl", args)
    }

    /// Runs a program of the sandbox inside it through
    /// `nsenter -t <init> -a -r -w` (all of init's namespaces, its root and
    /// working directory), with `PATH=/bin` only; killed after
    /// [`DEFAULT_WAIT`].
    pub fn run_inside(&self, program: &str, args: &[&str]) -> Result<Output> {
        run_with_deadline(self.inside(program, args), DEFAULT_WAIT)
    }

    /// Starts a program of the sandbox inside it like [`Sandbox::run_inside`]
    /// but without waiting: a process of the test's own in init's PID
    /// namespace (e.g. a stray one), to end by pid.
    pub fn spawn_inside(&self, program: &str, args: &[&str]) -> Result<std::process::Child> {
        self.inside(program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program} in the sandbox with nsenter"))
    }

    /// `nsenter -t <init> -a -r -w -- PROGRAM ARGS` with `PATH=/bin` only,
    /// for a test that wires its standard streams itself (e.g. reads a
    /// follower's output as it comes); the process is the test's to end.
    pub fn command_inside(&self, program: &str, args: &[&str]) -> Command {
        self.inside(program, args)
    }

    /// `nsenter -t <init> -a -r -w -- PROGRAM ARGS` with `PATH=/bin` only.
    fn inside(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args([
                "-t",
                &self.init_pid.to_string(),
                "-a",
                "-r",
                "-w",
                "--",
                program,
            ])
            .args(args)
            .env_clear()
            .env("PATH", "/bin");
        command
    }

    /// The e2e crate's `socket-peer` (a musl binary built with the
    /// stand-ins) connected to `socket` (a path inside the sandbox), as uid
    /// and gid 65534, with CAP_DAC_OVERRIDE and CAP_SYS_PTRACE as ambient
    /// capabilities only to reach the socket through /proc/<init>/root:
    /// stdin goes to the socket, the socket's bytes to stdout.
    pub fn peer_as_nobody(&self, socket: &str) -> Result<Command> {
        let peer = artifacts::artifacts()?.binary("socket-peer");
        let mut command = Command::new("setpriv");
        command.args(AS_NOBODY).arg(peer).arg(self.path(socket));
        Ok(command)
    }

    /// The e2e crate's `socket-peer` connected to `socket` (a path inside
    /// the sandbox, reached through /proc/<init>/root) from inside init's
    /// PID namespace only (`nsenter -t <init> --pid`, which forks): init
    /// sees its real pid and reads its command name (`socket-peer`), unlike
    /// a peer on the host, whose pid init sees as 0. As [`PeerUser::Nobody`]
    /// it runs through `setpriv` like [`Sandbox::peer_as_nobody`].
    pub fn peer_in_pid_namespace(&self, socket: &str, user: PeerUser) -> Result<Command> {
        let peer = artifacts::artifacts()?.binary("socket-peer");
        let mut command = Command::new("nsenter");
        command.args(["-t", &self.init_pid.to_string(), "--pid", "--"]);
        if user == PeerUser::Nobody {
            command.arg("setpriv").args(AS_NOBODY);
        }
        command.arg(peer).arg(self.path(socket));
        Ok(command)
    }

    /// Sends lines from a process whose uid and gid are 65534
    /// ([`Sandbox::peer_as_nobody`] on the system socket), and returns one
    /// parsed reply per line.
    pub fn request_as_nobody(&self, lines: &[&str]) -> Result<Vec<Value>> {
        let mut child = self
            .peer_as_nobody(SOCKET)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run setpriv (util-linux) + socket-peer")?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let mut replies = Vec::new();
        let mut failure = None;
        for line in lines {
            if let Err(e) = stdin.write_all(format!("{line}\n").as_bytes()) {
                failure = Some(anyhow!("cannot write to socket-peer: {e}"));
                break;
            }
            match rx.recv_timeout(DEFAULT_WAIT) {
                Ok(reply) => match serde_json::from_str::<Value>(&reply) {
                    Ok(v) => replies.push(v),
                    Err(e) => {
                        failure = Some(anyhow!("reply to '{line}' is not JSON ({e}): {reply}"));
                        break;
                    }
                },
                Err(_) => {
                    failure = Some(anyhow!("no reply to '{line}' within {DEFAULT_WAIT:?}"));
                    break;
                }
            }
        }
        drop(stdin);
        let _ = child.kill();
        let output = child.wait_with_output();
        if let Some(failure) = failure {
            let stderr = output
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            return Err(failure.context(format!(
                "socket-peer stderr: {stderr}\n{}",
                self.diagnostics()
            )));
        }
        Ok(replies)
    }

    /// Every process of the sandbox's PID namespace.
    pub fn processes(&self) -> Vec<Proc> {
        let mut procs = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return procs;
        };
        for entry in entries.flatten() {
            let Some(host_pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let ns = std::fs::read_link(format!("/proc/{host_pid}/ns/pid")).unwrap_or_default();
            if ns != self.pid_ns {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(format!("/proc/{host_pid}/status")) else {
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            let ns_pid = field("NSpid:")
                .split_whitespace()
                .last()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let state = field("State:").chars().next().unwrap_or('?');
            procs.push(Proc {
                host_pid,
                ns_pid,
                state,
                comm: field("Name:"),
            });
        }
        procs
    }

    /// Waits for a sandbox process whose command name (`comm`) is `comm`.
    pub fn wait_process(&self, comm: &str, timeout: Duration) -> Result<Proc> {
        self.wait_for(&format!("a process named {comm}"), timeout, || {
            self.processes().into_iter().find(|p| p.comm == comm)
        })
    }

    /// The host pid of the sandbox process whose pid inside is `ns_pid`.
    pub fn host_pid_of(&self, ns_pid: i32) -> Option<i32> {
        self.processes()
            .into_iter()
            .find(|p| p.ns_pid == ns_pid)
            .map(|p| p.host_pid)
    }

    /// Sends a signal to a sandbox process given by its pid inside.
    pub fn kill_ns_pid(&self, ns_pid: i32, signal: Signal) -> Result<()> {
        let host = self
            .host_pid_of(ns_pid)
            .ok_or_else(|| anyhow!("no process {ns_pid} in the sandbox\n{}", self.diagnostics()))?;
        nix::sys::signal::kill(Pid::from_raw(host), signal)
            .with_context(|| format!("cannot send {signal} to {host}"))
    }

    /// Sends a signal to init.
    pub fn signal_init(&self, signal: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.init_pid), signal)
            .with_context(|| format!("cannot send {signal} to init ({})", self.init_pid))
    }

    /// Init's open file descriptors and what they point to.
    pub fn init_fds(&self) -> Vec<String> {
        let dir = format!("/proc/{}/fd", self.init_pid);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut fds: Vec<(u32, String)> = entries
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.to_string_lossy().into_owned()))
            })
            .collect();
        fds.sort();
        fds.into_iter()
            .map(|(fd, t)| format!("{fd} -> {t}"))
            .collect()
    }

    /// The number of file descriptors init has open.
    pub fn init_fd_count(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.init_pid))
            .context("cannot list init's fds")?
            .count())
    }

    /// Init's fd count once boot has settled: the service log files are
    /// opened at the first line each service writes, so this waits until
    /// init has both open.
    pub fn settled_fd_count(&self) -> Result<usize> {
        self.wait_for("init to open both service logs", DEFAULT_WAIT, || {
            let fds = self.init_fds();
            let open = |name: &str| {
                fds.iter()
                    .any(|f| f.ends_with(&format!("/var/log/{name}.log")))
            };
            (open("crio") && open("kubelet")).then_some(())
        })?;
        self.init_fd_count()
    }

    /// Init's resident memory (VmRSS) in KiB.
    pub fn init_rss_kib(&self) -> Result<u64> {
        self.init_status_kib("VmRSS")
    }

    /// Init's private memory (`RssAnon` of /proc/PID/status, KiB): heap and
    /// stacks, without the binary's code pages that merely become resident
    /// as more of the code runs. What a leak would grow.
    pub fn init_anon_kib(&self) -> Result<u64> {
        self.init_status_kib("RssAnon")
    }

    fn init_status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.init_pid))
            .context("cannot read init's status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {field} in init's status"))
    }

    /// Init's mount table (`/proc/<init>/mountinfo`, paths as init sees them).
    pub fn mounts(&self) -> Result<Vec<MountInfo>> {
        let table = std::fs::read(format!("/proc/{}/mountinfo", self.init_pid))
            .context("cannot read init's mountinfo")?;
        Ok(kios_rootfs::mountinfo::parse(&table)
            .into_iter()
            .map(MountInfo::from)
            .collect())
    }

    /// Whether the sandbox has ended (without waiting).
    pub fn has_ended(&self) -> Result<Option<Ended>> {
        let mut ended = self.ended.lock().map_err(|_| anyhow!("poisoned lock"))?;
        if ended.is_none() {
            let mut unshare = self.unshare.lock().map_err(|_| anyhow!("poisoned lock"))?;
            if let Some(status) = unshare.try_wait()? {
                *ended = Some(Ended::from_status(status));
            }
        }
        Ok(*ended)
    }

    /// Waits for the sandbox to end (init gone, unshare exited).
    pub fn wait_end(&self, timeout: Duration) -> Result<Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ended) = self.has_ended()? {
                return Ok(ended);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the sandbox did not end within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The host path of a file written by the sandbox to its root overlay
    /// (readable after the sandbox ended).
    pub fn upper_path(&self, inside: &str) -> PathBuf {
        self.upper.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if matches!(self.has_ended(), Ok(Some(_))) {
            return;
        }
        let Ok(unshare) = self.unshare.get_mut() else {
            return;
        };
        // The namespace's PID 1: init, or the setup script if init never
        // started. SIGKILL to it kills the whole namespace.
        let ns_init = if self.init_pid > 0 {
            Some(self.init_pid)
        } else {
            let first_child = |id: u32| -> Option<u32> {
                std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                    .ok()
                    .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
            };
            let child = first_child(unshare.id());
            // Under a tracer the namespace's PID 1 is unshare's child.
            let child = if std::env::var_os(TRACER_ENV).is_some_and(|t| !t.is_empty()) {
                child.and_then(first_child)
            } else {
                child
            };
            child.and_then(|p| i32::try_from(p).ok())
        };
        if let Some(pid) = ns_init {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(unshare.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(POLL);
        }
        // unshare is our child: ending it by its pid is ours to do.
        let _ = unshare.kill();
        let _ = unshare.wait();
    }
}

/// One line of /proc/PID/mountinfo, as the tests compare it: text fields
/// over the workspace's one parser ([`kios_rootfs::mountinfo`]), the mount
/// point shown lossily (the tests' mount points are plain text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    /// Per-mount options, e.g. `rw,nosuid,nodev,noexec,relatime`.
    pub options: Vec<String>,
    /// Optional fields, e.g. `shared:3`, `master:1`.
    pub propagation: Vec<String>,
    pub super_options: Vec<String>,
}

impl From<kios_rootfs::mountinfo::MountInfo> for MountInfo {
    fn from(m: kios_rootfs::mountinfo::MountInfo) -> MountInfo {
        MountInfo {
            mount_point: m.mount_point.to_string_lossy().into_owned(),
            fstype: m.fstype,
            source: m.source,
            options: m.options,
            propagation: m.propagation,
            super_options: m.super_options,
        }
    }
}

impl MountInfo {
    /// Parses a mountinfo line.
    pub fn parse(line: &str) -> Option<MountInfo> {
        kios_rootfs::mountinfo::MountInfo::parse_line(line.as_bytes()).map(MountInfo::from)
    }

    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }

    pub fn is_shared(&self) -> bool {
        self.propagation.iter().any(|p| p.starts_with("shared:"))
    }
}

/// A line-dialect connection: one request, one JSON reply line.
pub struct LineClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl LineClient {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Result<LineClient> {
        let reader = BufReader::new(stream.try_clone().context("cannot clone the socket")?);
        Ok(LineClient { stream, reader })
    }

    /// Sends a request line and reads one reply line as JSON.
    pub fn request(&mut self, line: &str) -> Result<Value> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("cannot send '{line}'"))?;
        self.read_value()
            .with_context(|| format!("no valid reply to '{line}'"))
    }

    /// Sends a request line and reads one reply line, unparsed, into
    /// `reply` (cleared first): for load generators, whose own JSON parsing
    /// would compete with the server for the CPU.
    pub fn request_raw(&mut self, line: &str, reply: &mut String) -> Result<()> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("cannot send '{line}'"))?;
        reply.clear();
        let n = self
            .reader
            .read_line(reply)
            .context("cannot read a reply")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    /// Reads the next JSON line (a reply or a streamed event).
    pub fn read_value(&mut self) -> Result<Value> {
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .context("cannot read a reply")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        // A client that has sent nothing yet is a silent client for the
        // protocol: if a shutdown begins between its connect and its first
        // request, it gets the legacy shutdown byte 0x01 first.
        let json = reply.trim_start_matches('\u{1}').trim_end();
        serde_json::from_str(json).with_context(|| format!("reply is not JSON: {reply:?}"))
    }

    /// The underlying stream (e.g. for raw bytes or a shutdown).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

/// Reads one byte from a stream (legacy dialect), with the stream's timeout.
pub fn read_byte(stream: &mut UnixStream) -> Result<u8> {
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .context("no byte from the server")?;
    Ok(byte[0])
}

/// Runs a command, killing it after `timeout`.
pub fn run_with_deadline(mut command: Command, timeout: Duration) -> Result<Output> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {description}"))?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{description} did not finish within {timeout:?}");
        }
        std::thread::sleep(POLL);
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Gives `to` the mode and owner of `from`.
fn copy_attributes(from: &Path, to: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(from).with_context(|| format!("cannot stat {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(|| format!("cannot chmod {}", to.display()))?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("cannot chown {}", to.display()))?;
    Ok(())
}

/// Creates the parents of `upper/<path>` with the mode and owner of the
/// image's directories (an overlay shows the upper directory's attributes,
/// so a fresh 0755 directory would look like drift to `verify`).
fn stage_parents(image: &Path, upper: &Path, path: &str) -> Result<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    let mut lower_dir = image.to_path_buf();
    let mut upper_dir = upper.to_path_buf();
    if let Some(parent) = relative.parent() {
        for component in parent.components() {
            lower_dir.push(component);
            upper_dir.push(component);
            if upper_dir.is_dir() {
                continue;
            }
            std::fs::create_dir(&upper_dir)
                .with_context(|| format!("cannot create {}", upper_dir.display()))?;
            if lower_dir.is_dir() {
                copy_attributes(&lower_dir, &upper_dir)?;
            }
        }
    }
    Ok(upper.join(relative))
}

fn stage_file(image: &Path, upper: &Path, path: &str, content: &[u8], mode: u32) -> Result<()> {
    let target = stage_parents(image, upper, path)?;
    std::fs::write(&target, content)
        .with_context(|| format!("cannot write {}", target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// An overlay whiteout (a 0:0 character device) hides the image's file.
fn stage_whiteout(image: &Path, upper: &Path, path: &str) -> Result<()> {
    let target = stage_parents(image, upper, path)?;
    let _ = std::fs::remove_file(&target);
    nix::sys::stat::mknod(
        &target,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .with_context(|| format!("cannot create the whiteout {}", target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let line = "36 35 98:0 / /mnt/my\\040dir rw,nosuid,noexec shared:1 master:2 - tmpfs none rw,mode=755";
        let m = MountInfo::parse(line).expect("parses");
        assert_eq!(m.mount_point, "/mnt/my dir");
        assert_eq!(m.fstype, "tmpfs");
        assert_eq!(m.source, "none");
        assert!(m.has_option("nosuid") && m.has_option("noexec") && !m.has_option("nodev"));
        assert!(m.is_shared());
        assert_eq!(m.super_options, vec!["rw", "mode=755"]);
        assert_eq!(MountInfo::parse("nonsense"), None);
    }

    #[test]
    fn an_escape_above_a_byte_is_kept_not_overflowed() {
        let m = MountInfo::parse("36 35 0:1 / /mnt/a\\477b rw - tmpfs none rw").expect("parses");
        assert_eq!(m.mount_point, "/mnt/a\\477b");
    }

    #[test]
    fn ended_from_signal_or_code() {
        assert!(Ended::from_status(ExitStatus::from_raw(2)).is_poweroff());
        assert!(Ended::from_status(ExitStatus::from_raw(1)).is_reboot());
        assert!(Ended::from_status(ExitStatus::from_raw((128 + 2) << 8)).is_poweroff());
        assert_eq!(
            Ended::from_status(ExitStatus::from_raw(3 << 8)),
            Ended::Code(3)
        );
    }

    #[test]
    fn sandbox_names_are_path_safe() {
        assert_eq!(SandboxConfig::new("a b/c::d").name, "a_b_c__d");
    }
}
