//! Test harness for kiosctl: an in-process fake node serving scripted JSON
//! lines on a Unix socket in a temporary directory, a runner for the real
//! binary, and exact snapshots under tests/snapshots/ (set
//! `KIOSCTL_UPDATE_SNAPSHOTS=1` to rewrite them after a deliberate change).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "kiosctl-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What the fake node does with one request line.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Send these lines; keep the connection for more requests.
    Lines(Vec<String>),
    /// Send these lines, then close (a stream that ends, or `busy`).
    LinesThenClose(Vec<String>),
    /// Send these bytes as they are (no newline added), then close.
    RawThenClose(Vec<u8>),
    /// Read on, never answer.
    Silence,
    /// Wait (at most 10 s) until this file exists, then send the lines.
    AfterFile(PathBuf, Vec<String>),
}

/// A fake kios-init socket: answers by exact request line; anything not
/// scripted gets `unknown-verb`. Every request line received is recorded.
pub struct FakeNode {
    pub socket: PathBuf,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeNode {
    /// Serves `script` at `socket` (parent directories are created).
    pub fn serve(socket: &Path, script: Vec<(&str, Answer)>) -> FakeNode {
        std::fs::create_dir_all(socket.parent().expect("socket parent")).expect("socket dir");
        let listener = UnixListener::bind(socket).expect("bind the fake socket");
        let script: Arc<HashMap<String, Answer>> = Arc::new(
            script
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let script = script.clone();
                let recorded = recorded.clone();
                std::thread::spawn(move || serve_connection(stream, &script, &recorded));
            }
        });
        FakeNode {
            socket: socket.to_path_buf(),
            requests,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }
}

fn serve_connection(
    stream: UnixStream,
    script: &HashMap<String, Answer>,
    recorded: &Mutex<Vec<String>>,
) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut writer = stream;
    let reader = BufReader::new(read_half);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        recorded.lock().expect("requests lock").push(line.clone());
        let answer = script.get(&line).cloned().unwrap_or_else(|| {
            Answer::Lines(vec![format!(
                r#"{{"ok":false,"error":{{"code":"unknown-verb","message":"not scripted: {line}"}}}}"#
            )])
        });
        let send = |writer: &mut UnixStream, lines: &[String]| {
            for l in lines {
                if writer.write_all(format!("{l}\n").as_bytes()).is_err() {
                    return false;
                }
            }
            true
        };
        match answer {
            Answer::Lines(lines) => {
                if !send(&mut writer, &lines) {
                    return;
                }
            }
            Answer::LinesThenClose(lines) => {
                send(&mut writer, &lines);
                return;
            }
            Answer::RawThenClose(bytes) => {
                let _ = writer.write_all(&bytes);
                return;
            }
            Answer::Silence => {}
            Answer::AfterFile(gate, lines) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !gate.exists() && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                if !send(&mut writer, &lines) {
                    return;
                }
            }
        }
    }
}

/// One run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Exit status, stdout and stderr as one text, for snapshots.
    pub fn transcript(&self, command: &str) -> String {
        format!(
            "$ {command}\nexit: {}\n--- stdout\n{}--- stderr\n{}",
            self.code.map_or("signal".to_string(), |c| c.to_string()),
            self.stdout,
            self.stderr
        )
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_kiosctl");

/// A command for the binary with a clean environment: no KIOS_SOCKET, no
/// NO_COLOR, and the default socket paths under `root` (so a test can never
/// reach the machine's real /run/system.sock).
pub fn command(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("KIOS_SOCKET")
        .env_remove("NO_COLOR")
        .env("KIOSCTL_ROOT", root)
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary with a deadline (a hung kiosctl fails the test).
pub fn run_command(mut cmd: Command) -> Run {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiosctl");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        // Only the child this test started, by its pid.
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("kiosctl (pid {pid}) did not finish within 30 s");
    }
    Run::from_output(waiter.join().expect("waiter").expect("kiosctl output"))
}

pub fn run(root: &Path, args: &[&str]) -> Run {
    run_command(command(root, args))
}

/// Compares `actual` with tests/snapshots/NAME.txt exactly, or rewrites
/// the file when KIOSCTL_UPDATE_SNAPSHOTS=1.
pub fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("KIOSCTL_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; create it with KIOSCTL_UPDATE_SNAPSHOTS=1 cargo test -p kiosctl\nactual:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "snapshot {} differs (KIOSCTL_UPDATE_SNAPSHOTS=1 rewrites it)\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        );
    }
}

/// Waits until `condition` holds, polling with a deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}
pub mod fixtures;
