//! A conmon stand-in for the `ps` namespace tests (copied over /bin/conmon
//! of a sandbox): it takes the command line cri-o gives conmon (`-c/--cid`,
//! `-n/--name`, `-u/--cuuid`, `-r/--runtime`, `-b/--bundle`, `-p/--container-pidfile`,
//! `--exit-dir`, `-l/--log-path`, ...), refuses one without the id, the runtime
//! or the log path as conmon does, detaches like conmon (so init adopts
//! it), and runs a "container": `/bin/busybox sleep` as PID 1 of a PID
//! namespace of its own, as crun would start it. It writes the container's
//! pid to the pidfile and, when the container ends, its exit code to
//! `<exit-dir>/<cid>`.

use std::process::{Command, Stdio};

/// Set in the detached copy.
const DETACHED: &str = "KIOS_E2E_CONMON_DETACHED";

fn value<'a>(args: &'a [String], short: &str, long: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == short || arg == long {
            return it.next().map(String::as_str);
        }
        if let Some(v) = arg.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cid) = value(&args, "-c", "--cid").map(str::to_string) else {
        eprintln!("[conmon:e]: Container ID not provided. Use --cid");
        std::process::exit(1);
    };
    for (short, long, what) in [
        ("-r", "--runtime", "runtime path"),
        ("-l", "--log-path", "log path"),
    ] {
        if value(&args, short, long).is_none() {
            eprintln!("[conmon:e]: {what} not provided. Use {long}");
            std::process::exit(1);
        }
    }
    if std::env::var_os(DETACHED).is_none() {
        // Like conmon: fork, the parent returns to cri-o at once.
        let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/conmon".into());
        let spawned = Command::new(exe)
            .args(&args)
            .env(DETACHED, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        std::process::exit(if spawned.is_ok() { 0 } else { 1 });
    }
    // The container: PID 1 of a new PID namespace (what crun does).
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!("[conmon:e]: cannot create the container's PID namespace: {e}");
        std::process::exit(1);
    }
    let mut container = match Command::new("/bin/busybox")
        .args(["sleep", "3600"])
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("[conmon:e]: cannot start the container: {e}");
            std::process::exit(1);
        }
    };
    if let Some(pidfile) = value(&args, "-p", "--container-pidfile") {
        let _ = std::fs::write(pidfile, container.id().to_string());
    }
    let code = container.wait().ok().and_then(|s| s.code()).unwrap_or(137);
    if let Some(dir) = value(&args, "--exit-dir", "--exit-dir") {
        let _ = std::fs::write(std::path::Path::new(dir).join(&cid), code.to_string());
    }
}
