//! `entry-trace`: which functions of kios-init run, exactly (a dev tool for
//! kios-init/layout/hot.txt, never in an image; docs/benchmarks.md,
//! "Resident memory").
//!
//! `entry-trace --symbols-of BINARY --out DIR -- COMMAND...` runs COMMAND
//! (the namespace sandbox's unshare command: set `KIOS_E2E_TRACER`, see
//! e2e/src/ns.rs) stopped, attaches to it with `PTRACE_SEIZE` and follows
//! its forks, vforks, clones and execs. When a process execs a file whose
//! content is BINARY (an unstripped, non-PIE kios-init), every function
//! symbol of BINARY (`nm`) gets an int3 over its first byte. A trap at one
//! records the symbol, puts the byte back, rewinds the instruction pointer
//! and continues: each function is seen once, at its first entry. Threads
//! and vfork children share init's memory (one restore serves all); forked
//! children inherit the int3s and are handled the same way (their hits are
//! tagged `fork`: they do not touch init's pages) until their exec, where
//! they are detached. Every other signal is passed through. Hits go to
//! `DIR/entry-<pid>.txt` as they happen (`init NAME` or `fork NAME`), in
//! first-entry order. The tool exits as COMMAND did (same code, or the same
//! signal), so the harness sees unshare's own status.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::errno::Errno;
use nix::sys::ptrace::{self, Event, Options};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const INT3: u8 = 0xcc;

/// What a traced process is to the trace.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Role {
    /// Before kios-init: unshare, sh, env, chroot (no breakpoints).
    Pre,
    /// kios-init, its threads and its vfork children (one memory).
    Init,
    /// A forked child of init (its own copy of init's memory) until exec.
    Fork,
}

struct Args {
    symbols_of: PathBuf,
    out: PathBuf,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut symbols_of, mut out) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--symbols-of" => symbols_of = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--" => break,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let command: Vec<String> = args.collect();
    match (symbols_of, out, command.is_empty()) {
        (Some(symbols_of), Some(out), false) => Ok(Args {
            symbols_of,
            out,
            command,
        }),
        _ => Err("usage: entry-trace --symbols-of BINARY --out DIR -- COMMAND...".to_string()),
    }
}

/// The function symbols of `binary` by address (aliases share one).
fn function_symbols(binary: &Path) -> Result<HashMap<u64, Vec<String>>, String> {
    let output = Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .map_err(|e| format!("cannot run nm (binutils): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "nm {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut symbols: HashMap<u64, Vec<String>> = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "W") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if addr != 0 {
            symbols.entry(addr).or_default().push(name.to_string());
        }
    }
    if symbols.is_empty() {
        return Err(format!(
            "{} has no function symbols: build it unstripped",
            binary.display()
        ));
    }
    Ok(symbols)
}

fn mem(pid: Pid) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
}

struct Tracer {
    symbols: HashMap<u64, Vec<String>>,
    /// The original first byte of every function.
    original: HashMap<u64, u8>,
    binary: Vec<u8>,
    roles: HashMap<Pid, Role>,
    /// New tracees whose first stop came before their parent's event.
    unclaimed: Vec<Pid>,
    /// New tracees whose parent's event came before their first stop.
    awaited: HashMap<Pid, Role>,
    hits: File,
    seen: HashSet<(u64, Role)>,
}

impl Tracer {
    fn is_target(&self, pid: Pid) -> bool {
        std::fs::read(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == self.binary)
    }

    fn arm(&mut self, pid: Pid) -> Result<(), String> {
        let file = mem(pid).map_err(|e| format!("cannot open /proc/{pid}/mem: {e}"))?;
        for &addr in self.symbols.keys() {
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, addr)
                .map_err(|e| format!("cannot read init's byte at {addr:#x}: {e}"))?;
            self.original.insert(addr, byte[0]);
            file.write_all_at(&[INT3], addr)
                .map_err(|e| format!("cannot write init's byte at {addr:#x}: {e}"))?;
        }
        eprintln!(
            "entry-trace: {} breakpoints in kios-init (pid {pid})",
            self.original.len()
        );
        Ok(())
    }

    /// A SIGTRAP: ours when it follows one of our int3s.
    fn trap(&mut self, pid: Pid, role: Role) -> Result<bool, String> {
        if role == Role::Pre || self.original.is_empty() {
            return Ok(false);
        }
        let mut regs = ptrace::getregs(pid).map_err(|e| format!("getregs {pid}: {e}"))?;
        let addr = regs.rip.wrapping_sub(1);
        let Some(&byte) = self.original.get(&addr) else {
            return Ok(false);
        };
        let file = mem(pid).map_err(|e| format!("cannot open /proc/{pid}/mem: {e}"))?;
        let mut now = [0u8];
        file.read_exact_at(&mut now, addr)
            .map_err(|e| format!("cannot read {pid}'s byte at {addr:#x}: {e}"))?;
        if now[0] == INT3 {
            file.write_all_at(&[byte], addr)
                .map_err(|e| format!("cannot restore {pid}'s byte at {addr:#x}: {e}"))?;
        }
        regs.rip = addr;
        ptrace::setregs(pid, regs).map_err(|e| format!("setregs {pid}: {e}"))?;
        if self.seen.insert((addr, role)) {
            let tag = if role == Role::Init { "init" } else { "fork" };
            let mut lines = String::new();
            for name in self.symbols.get(&addr).into_iter().flatten() {
                lines.push_str(&format!("{tag} {name}\n"));
            }
            self.hits
                .write_all(lines.as_bytes())
                .map_err(|e| format!("cannot write the hits: {e}"))?;
        }
        Ok(true)
    }

    fn start(&mut self, pid: Pid, role: Role) {
        self.roles.insert(pid, role);
        let _ = ptrace::cont(pid, None);
    }
}

fn run() -> Result<ExitCode, String> {
    let args = parse_args()?;
    let symbols = function_symbols(&args.symbols_of)?;
    let binary = std::fs::read(&args.symbols_of)
        .map_err(|e| format!("cannot read {}: {e}", args.symbols_of.display()))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let hits_path = args.out.join(format!("entry-{}.txt", std::process::id()));
    let hits = File::create(&hits_path)
        .map_err(|e| format!("cannot create {}: {e}", hits_path.display()))?;

    // The command stops itself before its exec, so the attach misses nothing.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg("kill -STOP $$ && exec \"$0\" \"$@\"")
        .args(&args.command)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", args.command))?;
    let root = Pid::from_raw(child.id() as i32);
    match waitpid(root, Some(WaitPidFlag::WUNTRACED)) {
        Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
        other => return Err(format!("the command did not stop first: {other:?}")),
    }
    let options = Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXEC;
    ptrace::seize(root, options).map_err(|e| format!("PTRACE_SEIZE: {e}"))?;
    kill(root, Signal::SIGCONT).map_err(|e| format!("SIGCONT: {e}"))?;

    let mut tracer = Tracer {
        symbols,
        original: HashMap::new(),
        binary,
        roles: HashMap::from([(root, Role::Pre)]),
        unclaimed: Vec::new(),
        awaited: HashMap::new(),
        hits,
        seen: HashSet::new(),
    };
    let mut root_status = ExitCode::from(1);
    loop {
        let status = match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break,
            Err(e) => return Err(format!("waitpid: {e}")),
        };
        match status {
            WaitStatus::Exited(pid, code) => {
                tracer.roles.remove(&pid);
                if pid == root {
                    root_status = ExitCode::from(code as u8);
                }
            }
            WaitStatus::Signaled(pid, signal, _) => {
                tracer.roles.remove(&pid);
                if pid == root {
                    // Die the same way (default dispositions: SIGPIPE aside).
                    let _ = tracer.hits.flush();
                    let _ = kill(Pid::this(), signal);
                    root_status = ExitCode::from((128 + signal as i32) as u8);
                }
            }
            WaitStatus::PtraceEvent(pid, _, event) => {
                let role = tracer.roles.get(&pid).copied();
                let fork = event == Event::PTRACE_EVENT_FORK as i32;
                let shared = event == Event::PTRACE_EVENT_VFORK as i32
                    || event == Event::PTRACE_EVENT_CLONE as i32;
                if fork || shared {
                    let child_role = match role {
                        Some(Role::Init) if fork => Role::Fork,
                        Some(r) => r,
                        None => Role::Pre,
                    };
                    if let Ok(new) = ptrace::getevent(pid) {
                        let new = Pid::from_raw(new as i32);
                        if let Some(i) = tracer.unclaimed.iter().position(|&p| p == new) {
                            tracer.unclaimed.swap_remove(i);
                            tracer.start(new, child_role);
                        } else {
                            tracer.awaited.insert(new, child_role);
                        }
                    }
                    let _ = ptrace::cont(pid, None);
                } else if event == Event::PTRACE_EVENT_EXEC as i32 {
                    match role {
                        Some(Role::Pre) | None if tracer.original.is_empty() => {
                            if tracer.is_target(pid) {
                                tracer.roles.insert(pid, Role::Init);
                                tracer.arm(pid)?;
                            }
                            let _ = ptrace::cont(pid, None);
                        }
                        Some(Role::Pre) | None => {
                            let _ = ptrace::cont(pid, None);
                        }
                        // A child of init became another program.
                        Some(Role::Init | Role::Fork) => {
                            tracer.roles.remove(&pid);
                            let _ = ptrace::detach(pid, None);
                        }
                    }
                } else if event == Event::PTRACE_EVENT_STOP as i32 {
                    if tracer.roles.contains_key(&pid) {
                        let _ = ptrace::cont(pid, None);
                    } else if let Some(r) = tracer.awaited.remove(&pid) {
                        tracer.start(pid, r);
                    } else {
                        tracer.unclaimed.push(pid);
                    }
                } else {
                    let _ = ptrace::cont(pid, None);
                }
            }
            WaitStatus::Stopped(pid, signal) => {
                let role = tracer.roles.get(&pid).copied().unwrap_or(Role::Pre);
                let ours = signal == Signal::SIGTRAP && tracer.trap(pid, role)?;
                let _ = ptrace::cont(pid, if ours { None } else { Some(signal) });
            }
            _ => {}
        }
    }
    eprintln!(
        "entry-trace: {} functions entered (init and forks), written to {}",
        tracer.seen.len(),
        hits_path.display()
    );
    Ok(root_status)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("entry-trace: {e}");
            ExitCode::from(2)
        }
    }
}
