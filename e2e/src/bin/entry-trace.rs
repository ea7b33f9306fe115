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
//!
//! `--mark NAME` (a part of one function's symbol name) splits init's run
//! in two: at that function's first entry every function gets its int3
//! again, and from then on init's first entries are tagged `run`, not
//! `init`. Functions entered before the mark whose frames are still on a
//! stack then (the event loop's, the writer threads' loops: their code
//! goes on running without a new entry) are tagged `run` at the mark: the
//! stacks of init's threads are scanned from their stack pointers for
//! words that point into a function. kios-init's mark is the function that
//! ends boot (`release_boot_pages`): the `run` names are what the running
//! node executes, the `init` ones not among them are boot's alone.

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
    mark: Option<String>,
    out: PathBuf,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut symbols_of, mut out, mut mark) = (None, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--symbols-of" => symbols_of = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--mark" => mark = args.next(),
            "--" => break,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let command: Vec<String> = args.collect();
    match (symbols_of, out, command.is_empty()) {
        (Some(symbols_of), Some(out), false) => Ok(Args {
            symbols_of,
            mark,
            out,
            command,
        }),
        _ => Err(
            "usage: entry-trace --symbols-of BINARY --out DIR [--mark NAME] -- COMMAND..."
                .to_string(),
        ),
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
    /// The function addresses, sorted (which function holds an address).
    starts: Vec<u64>,
    /// The original first byte of every function.
    original: HashMap<u64, u8>,
    binary: Vec<u8>,
    roles: HashMap<Pid, Role>,
    /// New tracees whose first stop came before their parent's event.
    unclaimed: Vec<Pid>,
    /// New tracees whose parent's event came before their first stop.
    awaited: HashMap<Pid, Role>,
    hits: File,
    /// (function, role, after the mark)
    seen: HashSet<(u64, Role, bool)>,
    /// The address of the `--mark` function.
    mark: Option<u64>,
    /// Whether init has entered it.
    marked: bool,
}

/// The one address whose symbol names contain `part`.
fn mark_address(symbols: &HashMap<u64, Vec<String>>, part: &str) -> Result<u64, String> {
    let found: Vec<u64> = symbols
        .iter()
        .filter(|(_, names)| names.iter().any(|n| n.contains(part)))
        .map(|(&addr, _)| addr)
        .collect();
    match found[..] {
        [addr] => Ok(addr),
        [] => Err(format!("--mark {part:?}: no function symbol has it")),
        _ => Err(format!(
            "--mark {part:?}: {} functions have it; give more of the name",
            found.len()
        )),
    }
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
        if role == Role::Init && !self.marked && self.mark == Some(addr) {
            self.rearm(pid, addr, regs.rsp)?;
        }
        if self.seen.insert((addr, role, self.marked)) {
            let tag = match (role, self.marked) {
                (Role::Init, false) => "init",
                (Role::Init, true) => "run",
                _ => "fork",
            };
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

    /// The function that holds `addr`, if it lies in the functions' range.
    fn function_at(&self, addr: u64) -> Option<u64> {
        let (&first, &last) = (self.starts.first()?, self.starts.last()?);
        if addr < first || addr > last + 0x10000 {
            return None;
        }
        let i = self.starts.partition_point(|&s| s <= addr);
        i.checked_sub(1).map(|i| self.starts[i])
    }

    /// The functions with a frame on one of the stacks of init's threads:
    /// every word from each thread's stack pointer to the end of its
    /// mapping that points into a function (`pid`, stopped here, by its
    /// registers; the others, blocked in a system call, by
    /// /proc/PID/task/TID/syscall).
    fn live_functions(&self, pid: Pid, sp: u64) -> Result<Vec<u64>, String> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| format!("cannot read /proc/{pid}/maps: {e}"))?;
        let mut sps = vec![sp];
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("cannot list /proc/{pid}/task: {e}"))?;
        for task in tasks.flatten() {
            if task.file_name().to_string_lossy() == pid.to_string() {
                continue;
            }
            let syscall = std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
            // "NR ARG1..ARG6 SP PC" while in a system call; "running" not.
            let fields: Vec<&str> = syscall.split_whitespace().collect();
            match fields.get(7).and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok()) {
                Some(sp) if fields.len() == 9 => sps.push(sp),
                _ => eprintln!(
                    "entry-trace: thread {:?} not in a system call at the mark: its stack is not scanned",
                    task.file_name()
                ),
            }
        }
        let file = mem(pid).map_err(|e| format!("cannot open /proc/{pid}/mem: {e}"))?;
        let mut live = Vec::new();
        for sp in sps {
            let end = maps.lines().find_map(|line| {
                let (lo, rest) = line.split_once('-')?;
                let hi = rest.split_whitespace().next()?;
                let (lo, hi) = (
                    u64::from_str_radix(lo, 16).ok()?,
                    u64::from_str_radix(hi, 16).ok()?,
                );
                (lo <= sp && sp < hi).then_some(hi)
            });
            let Some(end) = end else { continue };
            let len = (end - sp).min(512 * 1024) as usize & !7;
            let mut stack = vec![0u8; len];
            file.read_exact_at(&mut stack, sp)
                .map_err(|e| format!("cannot read the stack at {sp:#x}: {e}"))?;
            for word in stack.chunks_exact(8) {
                let value = u64::from_le_bytes(word.try_into().unwrap_or_default());
                if let Some(f) = self.function_at(value) {
                    live.push(f);
                }
            }
        }
        Ok(live)
    }

    /// At the mark: every function but the mark's own (where `pid` stands)
    /// gets its int3 back, so what runs from now on is seen again; those
    /// with a frame on a stack are seen at once.
    fn rearm(&mut self, pid: Pid, mark: u64, sp: u64) -> Result<(), String> {
        let file = mem(pid).map_err(|e| format!("cannot open /proc/{pid}/mem: {e}"))?;
        for &addr in self.original.keys() {
            if addr != mark {
                file.write_all_at(&[INT3], addr)
                    .map_err(|e| format!("cannot write init's byte at {addr:#x}: {e}"))?;
            }
        }
        self.marked = true;
        self.hits
            .write_all(b"mark\n")
            .map_err(|e| format!("cannot write the hits: {e}"))?;
        let live = self.live_functions(pid, sp)?;
        let mut lines = String::new();
        for addr in live {
            if self.seen.insert((addr, Role::Init, true)) {
                for name in self.symbols.get(&addr).into_iter().flatten() {
                    lines.push_str(&format!("run {name}\n"));
                }
            }
        }
        self.hits
            .write_all(lines.as_bytes())
            .map_err(|e| format!("cannot write the hits: {e}"))?;
        eprintln!("entry-trace: the mark (pid {pid}): every breakpoint armed again");
        Ok(())
    }

    fn start(&mut self, pid: Pid, role: Role) {
        self.roles.insert(pid, role);
        let _ = ptrace::cont(pid, None);
    }
}

fn run() -> Result<ExitCode, String> {
    let args = parse_args()?;
    let symbols = function_symbols(&args.symbols_of)?;
    let mark = match &args.mark {
        Some(part) => Some(mark_address(&symbols, part)?),
        None => None,
    };
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

    let mut starts: Vec<u64> = symbols.keys().copied().collect();
    starts.sort_unstable();
    let mut tracer = Tracer {
        starts,
        symbols,
        original: HashMap::new(),
        binary,
        roles: HashMap::from([(root, Role::Pre)]),
        unclaimed: Vec::new(),
        awaited: HashMap::new(),
        hits,
        seen: HashSet::new(),
        mark,
        marked: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_the_one_function_whose_name_has_the_part() {
        let symbols = HashMap::from([
            (
                0x1000,
                vec!["_RNvNtNtCs1_9kios_init3sys7process18release_boot_pages".to_string()],
            ),
            (
                0x2000,
                vec![
                    "_RNvXs_NtCs1_9kios_init3sysNtB4_8LinuxSysNtB4_3Sys18release_boot_pages"
                        .to_string(),
                ],
            ),
            (0x3000, vec!["main".to_string(), "alias".to_string()]),
        ]);
        assert_eq!(
            mark_address(&symbols, "process18release_boot_pages"),
            Ok(0x1000)
        );
        assert_eq!(mark_address(&symbols, "alias"), Ok(0x3000));
        let both = mark_address(&symbols, "release_boot_pages").unwrap_err();
        assert!(both.contains("2 functions"), "{both}");
        let none = mark_address(&symbols, "nothing").unwrap_err();
        assert!(none.contains("no function"), "{none}");
    }
}
