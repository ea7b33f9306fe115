//! The system socket `/run/system.sock` (protocol v1): binding it (mode
//! 0600, a stale file removed), accepting clients up to [`MAX_CLIENTS`], and
//! one task per client that reads requests, hands them to the runtime's
//! owner (which runs the handlers) and writes responses, events and the
//! legacy shutdown byte.
//!
//! Nothing a client does can hold up init: reads and writes are per-client
//! tasks, writes are bounded in time, the per-client queue in size, a client
//! stalled mid-line is dropped, handlers run under `catch_unwind` in the
//! owner (a bug is an `internal` error, not a dead PID 1), and EOF or a
//! hang-up never runs a command. Every descriptor belongs to a task that owns it, so a closed
//! connection leaves nothing behind.

pub mod clients;
pub mod connection;
pub mod handlers;
pub mod inventory;
pub mod kernel;
pub mod ps;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use kios_protocol::{
    encode_error, encode_response, Dialect, ErrorBody, ErrorCode, Request, Response,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};

use clients::Registration;
pub use clients::{Peer, MAX_CLIENTS};
use connection::{Connection, Incoming, ReadError};

use crate::runtime::event::{Answer, ClientEvent, Event, Events};
use crate::runtime::state::Paths;
use crate::sys::Sys;

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
pub fn bind(path: &Path, sys: &dyn Sys) -> Result<UnixListener, BindError> {
    bind_with_mode(path, 0o600, sys)
}

/// [`bind`] with another mode.
fn bind_with_mode(path: &Path, mode: u32, sys: &dyn Sys) -> Result<UnixListener, BindError> {
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
    let old = sys.umask(!mode & 0o777);
    let bound = UnixListener::bind(path);
    sys.umask(old);
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

/// Accepts clients until `stop` is notified (shutdown: the listener, and
/// its path on /run, go away).
pub async fn serve(listener: UnixListener, events: Events, stop: Rc<Notify>) {
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.notified() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                if !accept(&events, stream, &mut refused).await {
                    return;
                }
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

/// Registers the client with the owner and starts its task, or answers
/// `busy`. `false` when the owner is gone.
async fn accept(events: &Events, stream: UnixStream, refused: &mut u64) -> bool {
    let cred = stream.peer_cred().ok();
    let pid = cred.as_ref().and_then(|c| c.pid());
    let uid = cred.as_ref().map(|c| c.uid());
    let command = pid.and_then(read_comm);
    // At the limit, let the tasks of clients that already hung up run and
    // leave before refusing anyone.
    for attempt in 0..5 {
        let (reply, answer) = oneshot::channel();
        let connect = ClientEvent::Connect {
            pid,
            uid,
            command: command.clone(),
            reply,
        };
        if !events.send(Event::Client(connect)).await {
            return false;
        }
        match answer.await {
            Ok(Some((peer, registration))) => {
                tokio::task::spawn_local(client_task(events.clone(), stream, peer, registration));
                return true;
            }
            Ok(None) if attempt < 4 => tokio::task::yield_now().await,
            Ok(None) => {}
            Err(_) => return false,
        }
    }
    *refused += 1;
    if refused.is_power_of_two() {
        crate::kwarn!("system socket: {MAX_CLIENTS} clients connected; refused {refused} so far");
    }
    let line = encode_error(&ErrorBody::new(
        ErrorCode::Busy,
        format!("too many connections (at most {MAX_CLIENTS}); try again later"),
    )) + "\n";
    // A fresh socket's buffer is empty: this never blocks. Then close.
    let _ = stream.try_write(line.as_bytes());
    true
}

/// Writes `bytes`, giving up (false) after [`WRITE_TIMEOUT`] or when the
/// client is told to close (its queue overflowed, or the shutdown closes
/// the socket).
async fn write_bounded(conn: &mut Connection<UnixStream>, bytes: &[u8], close: &Notify) -> bool {
    crate::runtime::sources::give_way_to_reaping().await;
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

/// Sends a request to the owner and waits for its answer (run off the
/// event loop where the owner says so); `None` when the owner is gone.
async fn ask(events: &Events, peer: &Peer, request: Request) -> Option<kernel::Started> {
    let (reply, answer) = oneshot::channel();
    let event = ClientEvent::Request {
        peer: peer.clone(),
        request,
        reply,
    };
    if !events.send(Event::Client(event)).await {
        return None;
    }
    let once = kernel::Started::Once;
    Some(match answer.await.ok()? {
        Answer::Response(response) => once(response),
        Answer::Encoded(line) => kernel::Started::Encoded(line),
        Answer::Verify { paths, expected } => once(run_verify(paths, expected).await),
        Answer::Ps {
            proc_root,
            expected,
            all,
        } => once(run_ps(proc_root, expected, all).await),
        Answer::KernelLog(request) => kernel::start(request).await,
    })
}

async fn client_task(events: Events, stream: UnixStream, peer: Peer, mut reg: Registration) {
    let mut conn = Connection::new(stream);
    let mut dialect = Dialect::Silent;
    loop {
        crate::runtime::sources::give_way_to_reaping().await;
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
                    let event = ClientEvent::Dialect { id: peer.id, dialect };
                    if !events.send(Event::Client(event)).await {
                        break;
                    }
                }
                match incoming {
                    Ok(None) => break,
                    Ok(Some(Incoming::Legacy(None))) => {}
                    Ok(Some(Incoming::Legacy(Some(command)))) => {
                        let event = ClientEvent::Legacy { peer: peer.clone(), command };
                        if !events.send(Event::Client(event)).await {
                            break;
                        }
                    }
                    Ok(Some(Incoming::Line(Err(parse_error)))) => {
                        if !respond(&mut conn, &Err(parse_error.to_body()), &reg.close).await {
                            break;
                        }
                    }
                    Ok(Some(Incoming::Line(Ok(request)))) => {
                        match ask(&events, &peer, request).await {
                            None => break,
                            Some(kernel::Started::Once(response)) => {
                                if !respond(&mut conn, &response, &reg.close).await {
                                    break;
                                }
                            }
                            Some(kernel::Started::Encoded(line)) => {
                                if !write_bounded(&mut conn, &line, &reg.close).await {
                                    break;
                                }
                            }
                            Some(kernel::Started::Follow(response, records)) => {
                                if respond(&mut conn, &response, &reg.close).await {
                                    kernel::stream(&mut conn, &reg.close, records).await;
                                }
                                break;
                            }
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
    // The socket closes here; a draining shutdown re-checks whether a
    // kubelet is still connected when the owner hears of it.
    drop(conn);
    events
        .send(Event::Client(ClientEvent::Gone { id: peer.id }))
        .await;
}

async fn run_ps(
    proc_root: std::path::PathBuf,
    expected: inventory::ExpectedPids,
    all: bool,
) -> Response {
    let units = ps::Units::of_this_machine();
    match crate::runtime::blocking::run("ps", move || ps::ps(&proc_root, expected, all, units))
        .await
    {
        Ok(response) => response,
        Err(e) => Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("ps cannot run now: {e}"),
        )),
    }
}

async fn run_verify(paths: Paths, expected: inventory::ExpectedPids) -> Response {
    match crate::runtime::blocking::run("verify", move || inventory::verify(&paths, expected)).await
    {
        Ok(response) => response,
        Err(e) => Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("verify cannot run now: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::owner::testing::INLINE_SPAWNER;
    use crate::runtime::owner::Owner;
    use crate::runtime::run_owner;
    use crate::runtime::state::testing::test_state;
    use crate::runtime::state::State;
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
        F: FnOnce(PathBuf, Node) -> Fut,
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
            let (events, rx) = Events::channel();
            let stop = Rc::new(Notify::new());
            let listener = bind(&socket, &crate::sys::LinuxSys).unwrap();
            tokio::task::spawn_local(serve(listener, events.clone(), stop.clone()));
            let mut owner = Owner::new(
                test_state().state,
                Box::new(INLINE_SPAWNER),
                None,
                false,
                stop,
            );
            tokio::task::spawn_local(async move { run_owner(&mut owner, rx, None).await });
            tokio::time::timeout(Duration::from_secs(20), test(socket.clone(), Node(events)))
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

    /// The test's handle on the owner's state.
    struct Node(Events);

    impl Node {
        /// Runs `f` on the state in the owner and returns what it returned.
        async fn with<T: 'static>(&self, f: impl FnOnce(&mut State) -> T + 'static) -> T {
            let (tx, rx) = oneshot::channel();
            let inspect = Event::Inspect(Box::new(move |state| {
                let _ = tx.send(f(state));
            }));
            assert!(self.0.send(inspect).await, "the owner is gone");
            rx.await.expect("the owner dropped the inspection")
        }
    }

    async fn wait_clients(node: &Node, n: usize) {
        while node.with(|s| s.clients.len()).await != n {
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
            let first = bind(&socket, &crate::sys::LinuxSys).unwrap();
            drop(first); // leaves a stale socket file
            assert!(socket.exists());
            let _second = bind(&socket, &crate::sys::LinuxSys).unwrap();
            let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let file = dir.join("plain");
            std::fs::write(&file, "keep me").unwrap();
            assert!(matches!(
                bind(&file, &crate::sys::LinuxSys),
                Err(BindError::NotASocket { .. })
            ));
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_get_replies_in_order_and_clients_are_listed() {
        with_server("order", |socket, node| async move {
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
            wait_clients(&node, 0).await;
        });
    }

    #[test]
    fn too_many_clients_get_busy_once() {
        with_server("busy", |socket, node| async move {
            let mut held = Vec::new();
            for _ in 0..MAX_CLIENTS {
                held.push(UnixStream::connect(&socket).await.unwrap());
            }
            wait_clients(&node, MAX_CLIENTS).await;
            let mut extra = UnixStream::connect(&socket).await.unwrap();
            let mut reply = String::new();
            extra.read_to_string(&mut reply).await.unwrap();
            let value: serde_json::Value = serde_json::from_str(reply.trim_end()).unwrap();
            assert_eq!(value["error"]["code"], "busy");
            drop(held);
            wait_clients(&node, 0).await;
            // Room again.
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            assert_eq!(ask(&mut client, "help").await["ok"], true);
        });
    }

    #[test]
    fn silent_and_legacy_clients_get_the_shutdown_byte_line_clients_do_not() {
        with_server("legacy", |socket, node| async move {
            let mut silent = UnixStream::connect(&socket).await.unwrap();
            let mut legacy = UnixStream::connect(&socket).await.unwrap();
            legacy.write_all(&[0x07]).await.unwrap(); // unknown byte: ignored, but legacy now
            let mut line = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            assert_eq!(ask(&mut line, "help").await["ok"], true);
            wait_clients(&node, 3).await;
            while node.with(|s| s.clients.could_be_kubelet(None)).await != 2 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                node.with(|s| s.clients.broadcast_legacy_shutdown()).await,
                2
            );
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
        with_server("eof", |socket, node| async move {
            let mut client = UnixStream::connect(&socket).await.unwrap();
            client.write_all(b"shutdown poweroff").await.unwrap();
            drop(client);
            wait_clients(&node, 0).await;
            assert!(!node.with(|s| s.shutdown.is_active()).await);
        });
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_when_its_queue_fills() {
        with_server("slow", |socket, node| async move {
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            let reply = ask(&mut client, "logs kubelet 1 follow").await;
            assert_eq!(reply["ok"], true);
            // Never read again; flood log lines (each ~4 KiB) until init drops it.
            let line = "x".repeat(4000);
            let mut sent = 0;
            while node.with(|s| s.clients.len()).await == 1 {
                let line = line.clone();
                node.with(move |s| s.log_line(kios_protocol::ServiceName::Kubelet, line, 1))
                    .await;
                sent += 1;
                tokio::task::yield_now().await;
                assert!(sent < 100_000, "slow client never dropped");
            }
            assert_eq!(node.with(|s| s.clients.len()).await, 0);
        });
    }

    #[test]
    fn a_client_stuck_in_a_write_is_closed_at_once_when_told() {
        with_server("stuck", |socket, node| async move {
            let mut client = BufReader::new(UnixStream::connect(&socket).await.unwrap());
            let reply = ask(&mut client, "logs crio 1 follow").await;
            assert_eq!(reply["ok"], true);
            // ~800 KiB of events: more than the socket buffers, fewer than
            // the queue holds, so the task ends up blocked in a write.
            let line = "y".repeat(4000);
            for _ in 0..200 {
                let line = line.clone();
                node.with(move |s| s.log_line(kios_protocol::ServiceName::Crio, line, 1))
                    .await;
                tokio::task::yield_now().await;
            }
            assert_eq!(
                node.with(|s| s.clients.len()).await,
                1,
                "not dropped for a full queue"
            );
            let started = std::time::Instant::now();
            node.with(|s| s.clients.close_all()).await;
            while !node.with(|s| s.clients.is_empty()).await {
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
        with_server("long", |socket, _node| async move {
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
        use handlers::guarded;
        let result: Result<(), ErrorBody> = guarded("test", || panic!("boom"));
        assert_eq!(result.unwrap_err().code, ErrorCode::Internal);
        assert_eq!(guarded("test", || 5).unwrap(), 5);
    }
}
