//! The system socket `/run/system.sock` (protocol v1): binding it (mode
//! 0600, a stale file removed), accepting clients up to [`MAX_CLIENTS`], and
//! one task per client that reads requests, runs the handlers and writes
//! responses, events and the legacy shutdown byte.
//!
//! Nothing a client does can hold up init: reads and writes are per-client
//! tasks, writes are bounded in time, the per-client queue in size, a client
//! stalled mid-line is dropped, handlers run under `catch_unwind` (a bug is an
//! `internal` error, not a dead PID 1), and EOF or a hang-up never runs a
//! command. Every descriptor belongs to a task that owns it, so a closed
//! connection leaves nothing behind.

pub mod clients;
pub mod connection;
pub mod handlers;
pub mod inventory;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use kios_protocol::{encode_error, encode_response, Dialect, ErrorBody, ErrorCode, Response};
use nix::sys::stat::Mode;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use clients::Registration;
pub use clients::{Peer, MAX_CLIENTS};
use connection::{Connection, Incoming, ReadError};
use handlers::Outcome;

use crate::runtime::state::Shared;
use crate::runtime::supervisor::Now;

/// A response or event that cannot be written within this time drops the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: String, source: io::Error },
    #[error("{path} exists and is not a socket; not removing it")]
    NotASocket { path: String },
    #[error("cannot bind {path}: {source}")]
    Bind { path: String, source: io::Error },
    #[error("cannot set the mode of {path} to {mode:o}: {source}")]
    Chmod {
        path: String,
        mode: u32,
        source: io::Error,
    },
}

/// Binds the system socket at `path`, mode 0600 from the start (umask), and
/// removes a stale socket file left by an earlier run. Must be called inside
/// the tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    bind_with_mode(path, 0o600)
}

/// [`bind`] with another mode (the system bus socket is 0666: D-Bus
/// authentication, not the file mode, refuses non-root peers).
pub fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                path: shown.clone(),
                source,
            })?;
        }
        Ok(_) => return Err(BindError::NotASocket { path: shown }),
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|source| BindError::Bind {
        path: shown.clone(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BindError::Chmod {
            path: shown,
            mode,
            source,
        }
    })?;
    Ok(listener)
}

/// Accepts clients forever.
pub async fn serve(listener: UnixListener, shared: Shared) {
    let mut refused: u64 = 0;
    let stop = shared.borrow().stop_serving.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.notified() => {
                // Shutdown: the listener (and its path on /run) goes away.
                return;
            }
        };
        match accepted {
            Ok((stream, _)) => {
                // At the limit, let the tasks of clients that already hung up
                // run and leave before refusing anyone.
                for _ in 0..4 {
                    if shared.borrow().clients.len() < MAX_CLIENTS {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                accept(&shared, stream, &mut refused)
            }
            Err(e) => {
                crate::kerr!("system socket: accept failed: {e}");
                // Out of descriptors or memory: give the system a moment
                // instead of spinning on the same error.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A process's command name (/proc/PID/comm), at most 64 characters.
pub fn read_comm(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm: String = text.trim_end().chars().take(64).collect();
    Some(comm)
}

fn accept(shared: &Shared, stream: UnixStream, refused: &mut u64) {
    let full = shared.borrow().clients.len() >= MAX_CLIENTS;
    if full {
        *refused += 1;
        if refused.is_power_of_two() {
            crate::kwarn!(
                "system socket: {MAX_CLIENTS} clients connected; refused {refused} so far"
            );
        }
        let line = encode_error(&ErrorBody::new(
            ErrorCode::Busy,
            format!("too many connections (at most {MAX_CLIENTS}); try again later"),
        )) + "\n";
        // A fresh socket's buffer is empty: this never blocks. Then close.
        let _ = stream.try_write(line.as_bytes());
        return;
    }
    let cred = stream.peer_cred().ok();
    let pid = cred.as_ref().and_then(|c| c.pid());
    let peer = {
        let mut state = shared.borrow_mut();
        Peer {
            id: state.clients.next_id(),
            pid,
            uid: cred.as_ref().map(|c| c.uid()),
            command: pid.and_then(read_comm),
        }
    };
    let registration = {
        let mut state = shared.borrow_mut();
        let registration = state
            .clients
            .register(peer.clone(), Now::current().epoch_ms);
        // The kubelet (re)connecting while a shutdown drains has missed the
        // broadcast: it gets the shutdown byte at once.
        let is_kubelet =
            matches!((peer.pid, state.kubelet_pid()), (Some(a), Some(b)) if a > 0 && a as u32 == b);
        if is_kubelet && state.shutdown.phase() == Some(kios_protocol::ShutdownPhase::Draining) {
            state.clients.send_legacy_shutdown(peer.id);
        }
        registration
    };
    tokio::task::spawn_local(client_task(shared.clone(), stream, peer, registration));
}

/// Runs `f` (a handler) and turns a panic into an `internal` error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, ErrorBody> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        crate::kerr!("bug: the handler of '{what}' panicked; the connection and init carry on");
        ErrorBody::new(
            ErrorCode::Internal,
            format!("kios-init hit a bug while handling '{what}'"),
        )
    })
}

/// Writes `bytes`, giving up (false) after [`WRITE_TIMEOUT`] or when the
/// client is told to close (its queue overflowed, or the shutdown closes
/// the socket).
async fn write_bounded(conn: &mut Connection<UnixStream>, bytes: &[u8], close: &Notify) -> bool {
    tokio::select! {
        written = tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(bytes)) => {
            matches!(written, Ok(Ok(())))
        }
        _ = close.notified() => false,
    }
}

async fn respond(conn: &mut Connection<UnixStream>, response: &Response, close: &Notify) -> bool {
    let mut line = encode_response(response);
    line.push('\n');
    write_bounded(conn, line.as_bytes(), close).await
}

async fn client_task(shared: Shared, stream: UnixStream, peer: Peer, mut reg: Registration) {
    let mut conn = Connection::new(stream);
    let mut dialect = Dialect::Silent;
    loop {
        tokio::select! {
            biased;
            _ = reg.close.notified() => break,
            out = reg.rx.recv() => match out {
                Some(bytes) => {
                    if !write_bounded(&mut conn, &bytes, &reg.close).await {
                        break;
                    }
                }
                None => break,
            },
            incoming = conn.read_request() => {
                if conn.dialect() != dialect {
                    dialect = conn.dialect();
                    shared.borrow_mut().clients.set_dialect(peer.id, dialect);
                }
                match incoming {
                    Ok(None) => break,
                    Ok(Some(Incoming::Legacy(None))) => {}
                    Ok(Some(Incoming::Legacy(Some(command)))) => {
                        let result = guarded("legacy command", || {
                            let mut state = shared.borrow_mut();
                            handlers::handle_legacy(&mut state, &peer, command, Now::current());
                        });
                        // No response in the legacy dialect; the panic is logged.
                        let _ = result;
                    }
                    Ok(Some(Incoming::Line(Err(parse_error)))) => {
                        if !respond(&mut conn, &Err(parse_error.to_body()), &reg.close).await {
                            break;
                        }
                    }
                    Ok(Some(Incoming::Line(Ok(request)))) => {
                        let verb = request.verb();
                        let outcome = guarded(verb, || {
                            let mut state = shared.borrow_mut();
                            handlers::handle(&mut state, &peer, request, Now::current())
                        });
                        let response = match outcome {
                            Ok(Outcome::Reply(response)) => response,
                            Err(body) => Err(body),
                            Ok(Outcome::Verify) => run_verify(&shared, &peer).await,
                        };
                        if !respond(&mut conn, &response, &reg.close).await {
                            break;
                        }
                    }
                    Err(ReadError::LineTooLong) => {
                        let body = ErrorBody::new(
                            ErrorCode::LineTooLong,
                            format!("request longer than {} bytes; closing the connection", kios_protocol::MAX_LINE_BYTES),
                        );
                        if respond(&mut conn, &Err(body), &reg.close).await {
                            conn.close_after_error().await;
                        }
                        break;
                    }
                    Err(ReadError::EofMidLine | ReadError::Stalled | ReadError::Read(_)) => break,
                }
            }
        }
    }
    let mut state = shared.borrow_mut();
    state.clients.remove(peer.id);
    // A draining shutdown re-checks whether a kubelet is still connected.
    state.shutdown.progress.notify_one();
}

async fn run_verify(shared: &Shared, peer: &Peer) -> Response {
    let (paths, expected) = {
        let state = shared.borrow();
        let expected = inventory::ExpectedPids {
            init: std::process::id(),
            crio: state.supervisor.crio.pid,
            kubelet: state.supervisor.kubelet.pid,
            // 0: the peer is outside init's PID namespace.
            peer: peer.pid.filter(|p| *p > 0).map(|p| p as u32),
        };
        (state.paths.clone(), expected)
    };
    match tokio::task::spawn_blocking(move || inventory::verify(&paths, expected)).await {
        Ok(response) => response,
        Err(e) => {
            crate::kerr!("bug: verify failed to run: {e}");
            Err(ErrorBody::new(ErrorCode::Internal, "verify failed to run"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::state::testing::test_state;
    use std::cell::RefCell;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::rc::Rc;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kios-server-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `test` against a server on a fresh socket, on a LocalSet.
    fn with_server<F, Fut>(name: &str, test: F)
    where
        F: FnOnce(PathBuf, Shared) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let dir = temp_dir(name);
        let socket = dir.join("system.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let shared: Shared = Rc::new(RefCell::new(test_state().state));
            let listener = bind(&socket).unwrap();
            tokio::task::spawn_local(serve(listener, shared.clone()));
            tokio::time::timeout(Duration::from_secs(20), test(socket.clone(), shared))
                .await
                .expect("test timed out");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn ask(stream: &mut BufReader<UnixStream>, line: &str) -> serde_json::Value {
        stream
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_line(&mut reply).await.unwrap();
        serde_json::from_str(&reply).unwrap()
    }

    async fn wait_clients(shared: &Shared, n: usize) {
        while shared.borrow().clients.len() != n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn bind_is_0600_and_replaces_a_stale_socket_but_nothing_else() {
        let dir = temp_dir("bind");
        let socket = dir.join("system.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = bind(&socket).unwrap();
            drop(first); // leaves a stale socket file
            assert!(socket.exists());
            let _second = bind(&socket).unwrap();
            let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let file = dir.join("plain");
            std::fs::write(&file, "keep me").unwrap();
            assert!(matches!(bind(&file), Err(BindError::NotASocket { .. })));
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_get_replies_in_order_and_clients_are_listed() {
        with_server("order", |socket, shared| async move {
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            let version = ask(&mut client, "version").await;
            assert_eq!(version["protocol"], 1);
            let status = ask(&mut client, "status").await;
            assert_eq!(status["ok"], true);
            let clients = status["clients"].as_array().unwrap();
            assert_eq!(clients.len(), 1);
            assert_eq!(clients[0]["uid"], nix::unistd::getuid().as_raw());
            assert_eq!(clients[0]["pid"], std::process::id());
            assert_eq!(clients[0]["dialect"], "line");
            let bad = ask(&mut client, "frobnicate").await;
            assert_eq!(bad["error"]["code"], "unknown-verb");
            drop(client);
            wait_clients(&shared, 0).await;
        });
    }

    #[test]
    fn too_many_clients_get_busy_once() {
        with_server("busy", |socket, shared| async move {
            let mut held = Vec::new();
            for _ in 0..MAX_CLIENTS {
                held.push(UnixStream::connect(&socket).await.unwrap());
            }
            wait_clients(&shared, MAX_CLIENTS).await;
            let mut extra = UnixStream::connect(&socket).await.unwrap();
            let mut reply = String::new();
            extra.read_to_string(&mut reply).await.unwrap();
            let value: serde_json::Value = serde_json::from_str(reply.trim_end()).unwrap();
            assert_eq!(value["error"]["code"], "busy");
            drop(held);
            wait_clients(&shared, 0).await;
            // Room again.
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            assert_eq!(ask(&mut client, "help").await["ok"], true);
        });
    }

    #[test]
    fn silent_and_legacy_clients_get_the_shutdown_byte_line_clients_do_not() {
        with_server("legacy", |socket, shared| async move {
            let mut silent = UnixStream::connect(&socket).await.unwrap();
            let mut legacy = UnixStream::connect(&socket).await.unwrap();
            legacy.write_all(&[0x07]).await.unwrap(); // unknown byte: ignored, but legacy now
            let mut line = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            assert_eq!(ask(&mut line, "help").await["ok"], true);
            wait_clients(&shared, 3).await;
            while shared.borrow().clients.could_be_kubelet(None) != 2 {
                tokio::task::yield_now().await;
            }
            assert_eq!(shared.borrow_mut().clients.broadcast_legacy_shutdown(), 2);
            let mut byte = [0u8; 1];
            silent.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte, [0x01]);
            legacy.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte, [0x01]);
            // The line client's next reply is clean JSON (no stray byte).
            assert_eq!(ask(&mut line, "version").await["ok"], true);
        });
    }

    #[test]
    fn a_stream_that_ends_mid_line_runs_nothing() {
        with_server("eof", |socket, shared| async move {
            let mut client = UnixStream::connect(&socket).await.unwrap();
            client.write_all(b"shutdown poweroff").await.unwrap();
            drop(client);
            wait_clients(&shared, 0).await;
            assert!(!shared.borrow().shutdown.is_active());
        });
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_when_its_queue_fills() {
        with_server("slow", |socket, shared| async move {
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            let reply = ask(&mut client, "logs kubelet 1 follow").await;
            assert_eq!(reply["ok"], true);
            // Never read again; flood log lines (each ~4 KiB) until init drops it.
            let line = "x".repeat(4000);
            let mut sent = 0;
            while shared.borrow().clients.len() == 1 {
                shared
                    .borrow_mut()
                    .log_line(kios_protocol::ServiceName::Kubelet, line.clone(), 1);
                sent += 1;
                tokio::task::yield_now().await;
                assert!(sent < 100_000, "slow client never dropped");
            }
            assert_eq!(shared.borrow().clients.len(), 0);
        });
    }

    #[test]
    fn a_client_stuck_in_a_write_is_closed_at_once_when_told() {
        with_server("stuck", |socket, shared| async move {
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            let reply = ask(&mut client, "logs crio 1 follow").await;
            assert_eq!(reply["ok"], true);
            // ~800 KiB of events: more than the socket buffers, fewer than
            // the queue holds, so the task ends up blocked in a write.
            let line = "y".repeat(4000);
            for _ in 0..200 {
                shared
                    .borrow_mut()
                    .log_line(kios_protocol::ServiceName::Crio, line.clone(), 1);
                tokio::task::yield_now().await;
            }
            assert_eq!(
                shared.borrow().clients.len(),
                1,
                "not dropped for a full queue"
            );
            let started = std::time::Instant::now();
            shared.borrow_mut().clients.close_all();
            while !shared.borrow().clients.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(
                started.elapsed() < WRITE_TIMEOUT / 2,
                "{:?}",
                started.elapsed()
            );
        });
    }

    #[test]
    fn line_too_long_is_answered_then_closed_cleanly() {
        with_server("long", |socket, _shared| async move {
            let mut client = UnixStream::connect(&socket).await.unwrap();
            client.write_all(&vec![b'a'; 5000]).await.unwrap();
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            let value: serde_json::Value = serde_json::from_str(reply.trim_end()).unwrap();
            assert_eq!(value["error"]["code"], "line-too-long");
        });
    }

    #[test]
    fn a_panicking_handler_is_an_internal_error() {
        let result: Result<(), ErrorBody> = guarded("test", || panic!("boom"));
        assert_eq!(result.unwrap_err().code, ErrorCode::Internal);
        assert_eq!(guarded("test", || 5).unwrap(), 5);
    }
}
