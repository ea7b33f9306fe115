//! The system bus socket (`/var/run/dbus/system_bus_socket`) as a component
//! of init's event loop: accepting peers (at most [`MAX_BUS_CLIENTS`]), one
//! task per connection (authentication, framing, [`Bus::handle`], writes
//! bounded in time), one task per inhibitor lock watching its pipe's read
//! end for EOF.
//!
//! Narrow interface: [`start`] returns a [`BusHandle`] that takes
//! [`BusCommand`]s (emit `PrepareForShutdown`, set the delay, stop) and a
//! bounded receiver of [`BusEvent`]s (clients, locks taken and released,
//! signals sent). Nothing here touches init's state; no borrow of the
//! component's own state lives across an await.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};

use super::auth::Authenticator;
use super::bus::{errors, Action, Bus, Client, Inhibitor};
use super::wire::{self, DecodeError, Message};
use crate::runtime::server::BindError;
use crate::runtime::supervisor::Now;
use crate::sys::Sys;

/// Where `$DBUS_SYSTEM_BUS_ADDRESS` points by default
/// (`unix:path=/var/run/dbus/system_bus_socket`). On kiOS /var/run is a
/// tmpfs of its own, not a link to /run.
pub const SYSTEM_BUS_SOCKET: &str = "/var/run/dbus/system_bus_socket";
/// Most simultaneous bus connections; the next one is closed at once.
pub const MAX_BUS_CLIENTS: usize = 16;
/// Messages queued for one connection before it is dropped.
pub const BUS_OUTBOX: usize = 32;
/// Events queued for init before new ones are dropped (and logged).
pub const EVENT_QUEUE: usize = 64;
/// Bytes read but not yet a message, per connection.
pub const MAX_PENDING: usize = wire::MAX_MESSAGE + 4096;
/// A write that does not finish within this drops the connection.
pub const BUS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the component needs.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub socket: PathBuf,
    /// The kubelet's configuration, for its shutdownGracePeriod.
    pub kubelet_config: PathBuf,
}

/// Orders from init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusCommand {
    /// Emit `PrepareForShutdown(start)` to every connected peer.
    PrepareForShutdown(bool),
    /// A new InhibitDelayMaxUSec.
    SetDelay(u64),
    /// Close the listener and every connection (shutdown's unmounting).
    Stop,
}

/// What happened on the bus, for init's state, `status` and `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    ClientConnected {
        id: u64,
        pid: Option<i32>,
        command: Option<String>,
    },
    ClientGone {
        id: u64,
    },
    InhibitorTaken(Inhibitor),
    InhibitorReleased {
        inhibitor: Inhibitor,
        held_ms: u64,
    },
    SignalSent {
        start: bool,
        clients: usize,
    },
    DelayChanged {
        usec: u64,
    },
}

/// The sending side of the command channel.
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<BusCommand>,
}

impl BusHandle {
    /// Queues a command; false if the component is gone or its queue full.
    pub fn send(&self, command: BusCommand) -> bool {
        self.tx.try_send(command).is_ok()
    }
}

/// InhibitDelayMaxUSec: the kubelet's grace (capped) plus init's margin,
/// the same bound the drain waits.
pub fn delay_usec(kubelet_config: &Path) -> u64 {
    let grace = crate::boot::grace::kubelet_shutdown_grace(kubelet_config);
    let bound =
        grace.min(crate::runtime::shutdown::MAX_DRAIN) + crate::runtime::shutdown::DRAIN_MARGIN;
    u64::try_from(bound.as_micros()).unwrap_or(u64::MAX)
}

/// Bytes to send, with at most one descriptor.
struct Outgoing {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
}

struct Slot {
    client: Client,
    ready: bool,
    tx: mpsc::Sender<Outgoing>,
    close: Rc<Notify>,
}

struct Inner {
    bus: Bus,
    slots: BTreeMap<u64, Slot>,
    next_id: u64,
    events: mpsc::Sender<BusEvent>,
    dropped_events: u64,
    sys: std::sync::Arc<dyn Sys>,
    config: BusConfig,
    guid: String,
    /// Monotonic start of each lock, for `held_ms`.
    lock_started: BTreeMap<u64, Instant>,
}

type Shared = Rc<RefCell<Inner>>;

impl Inner {
    fn emit(&mut self, event: BusEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                crate::kwarn!(
                    "system bus: init's event queue is full; {} event(s) dropped",
                    self.dropped_events
                );
            }
        }
    }

    fn encode(message: &Message) -> Option<Vec<u8>> {
        match wire::encode(message) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                crate::kerr!("bug: system bus: cannot encode a reply: {e}");
                None
            }
        }
    }

    /// Queues `PrepareForShutdown(start)` for every authenticated peer.
    fn broadcast_prepare(&mut self, start: bool) -> usize {
        self.bus.preparing = start;
        let signal = self.bus.prepare_for_shutdown(start);
        let Some(bytes) = Self::encode(&signal) else {
            return 0;
        };
        let mut sent = 0;
        for slot in self.slots.values().filter(|s| s.ready) {
            let out = Outgoing {
                bytes: bytes.clone(),
                fd: None,
            };
            if slot.tx.try_send(out).is_ok() {
                sent += 1;
            } else {
                slot.close.notify_one();
            }
        }
        sent
    }
}

/// A GUID for the authentication's `OK` line: 32 hex digits, from the
/// boot's clock and pid (unique enough: one server per boot).
fn server_guid() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 96))
}

/// Binds the socket (its directory created, mode 0666) and starts the
/// component on the current LocalSet.
pub fn start(
    config: BusConfig,
    sys: std::sync::Arc<dyn Sys>,
) -> Result<(BusHandle, mpsc::Receiver<BusEvent>), BindError> {
    if let Some(dir) = config.socket.parent() {
        if let Err(e) = sys.create_dir_all(dir, 0o755) {
            crate::kwarn!("system bus: cannot create {}: {e}", dir.display());
        }
    }
    let listener = crate::runtime::server::bind_with_mode(&config.socket, 0o666, &*sys)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let delay = delay_usec(&config.kubelet_config);
    let inner = Rc::new(RefCell::new(Inner {
        bus: Bus::new(delay),
        slots: BTreeMap::new(),
        next_id: 0,
        events: event_tx,
        dropped_events: 0,
        sys,
        config,
        guid: server_guid(),
        lock_started: BTreeMap::new(),
    }));
    tokio::task::spawn_local(serve(listener, inner, cmd_rx));
    Ok((BusHandle { tx: cmd_tx }, event_rx))
}

async fn serve(listener: UnixListener, inner: Shared, mut commands: mpsc::Receiver<BusCommand>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => accept(&inner, stream),
                Err(e) => {
                    crate::kerr!("system bus: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            command = commands.recv() => match command {
                Some(BusCommand::PrepareForShutdown(start)) => {
                    let mut state = inner.borrow_mut();
                    let clients = state.broadcast_prepare(start);
                    state.emit(BusEvent::SignalSent { start, clients });
                }
                Some(BusCommand::SetDelay(usec)) => inner.borrow_mut().bus.set_delay(usec),
                Some(BusCommand::Stop) | None => {
                    for slot in inner.borrow().slots.values() {
                        slot.close.notify_one();
                    }
                    return;
                }
            },
        }
    }
}

fn accept(inner: &Shared, stream: UnixStream) {
    let mut state = inner.borrow_mut();
    if state.slots.len() >= MAX_BUS_CLIENTS {
        crate::kwarn!("system bus: {MAX_BUS_CLIENTS} connections open; closing a new one");
        return;
    }
    let cred = stream.peer_cred().ok();
    let pid = cred.as_ref().and_then(|c| c.pid());
    state.next_id += 1;
    let id = state.next_id;
    let client = Client {
        id,
        pid,
        uid: cred.as_ref().map(|c| c.uid()),
        command: pid
            .filter(|&p| p > 0)
            .and_then(crate::runtime::server::read_comm),
        unix_fds: false,
        unique: None,
        matches: Vec::new(),
    };
    let (tx, rx) = mpsc::channel(BUS_OUTBOX);
    let close = Rc::new(Notify::new());
    let auth = Authenticator::new(client.uid, &state.guid);
    state.slots.insert(
        id,
        Slot {
            client,
            ready: false,
            tx,
            close: close.clone(),
        },
    );
    drop(state);
    tokio::task::spawn_local(connection(inner.clone(), id, stream, auth, rx, close));
}

/// Writes one message (its descriptor with the first bytes), bounded.
async fn write_out(stream: &mut UnixStream, out: Outgoing) -> bool {
    let write = async {
        let mut sent = 0;
        if let Some(fd) = &out.fd {
            loop {
                stream.writable().await?;
                match stream.try_io(Interest::WRITABLE, || {
                    crate::sys::process::send_with_fd(stream.as_fd(), &out.bytes, fd.as_fd())
                }) {
                    Ok(n) => {
                        sent = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        stream.write_all(&out.bytes[sent..]).await
    };
    // Init's copy of the lock's write end closes here, sent or not.
    matches!(
        tokio::time::timeout(BUS_WRITE_TIMEOUT, write).await,
        Ok(Ok(()))
    )
}

async fn connection(
    inner: Shared,
    id: u64,
    mut stream: UnixStream,
    mut auth: Authenticator,
    mut rx: mpsc::Receiver<Outgoing>,
    close: Rc<Notify>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut replies: Vec<Outgoing> = Vec::new();
    'conn: loop {
        tokio::select! {
            _ = close.notified() => break,
            out = rx.recv() => match out {
                Some(out) => if !write_out(&mut stream, out).await { break },
                None => break,
            },
            ready = stream.readable() => {
                if ready.is_err() {
                    break;
                }
                let mut buf = [0u8; 2048];
                match stream.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if pending.len() > MAX_PENDING {
                    break;
                }
                let keep = process(&inner, id, &mut auth, &mut pending, &mut replies);
                for out in replies.drain(..) {
                    if !write_out(&mut stream, out).await {
                        break 'conn;
                    }
                }
                if !keep {
                    break;
                }
            }
        }
    }
    let mut state = inner.borrow_mut();
    if let Some(slot) = state.slots.remove(&id) {
        if slot.ready {
            state.emit(BusEvent::ClientGone { id });
        }
    }
}

/// Handles what `pending` holds; false when the connection must close.
fn process(
    inner: &Shared,
    id: u64,
    auth: &mut Authenticator,
    pending: &mut Vec<u8>,
    replies: &mut Vec<Outgoing>,
) -> bool {
    if !auth.is_done() {
        let progress = match auth.feed(pending) {
            Ok(p) => p,
            Err(e) => {
                let state = inner.borrow();
                let who = state.slots.get(&id).map(|s| describe(&s.client));
                crate::kwarn!(
                    "system bus: closing {}: {e}",
                    who.unwrap_or_else(|| "a connection".into())
                );
                return false;
            }
        };
        pending.drain(..progress.consumed);
        if !progress.reply.is_empty() {
            replies.push(Outgoing {
                bytes: progress.reply,
                fd: None,
            });
        }
        if !progress.begun {
            return true;
        }
        let mut state = inner.borrow_mut();
        let Some(slot) = state.slots.get_mut(&id) else {
            return false;
        };
        slot.ready = true;
        slot.client.unix_fds = auth.unix_fds();
        let event = BusEvent::ClientConnected {
            id,
            pid: slot.client.pid,
            command: slot.client.command.clone(),
        };
        state.emit(event);
    }
    loop {
        match wire::decode(pending) {
            Ok((message, used)) => {
                pending.drain(..used);
                if !handle(inner, id, &message, replies) {
                    return false;
                }
            }
            Err(DecodeError::Incomplete { .. }) => return true,
            Err(DecodeError::Malformed(e)) => {
                let state = inner.borrow();
                let who = state.slots.get(&id).map(|s| describe(&s.client));
                crate::kwarn!(
                    "system bus: {} sent a malformed message ({e}); closing its connection",
                    who.unwrap_or_else(|| "a peer".into())
                );
                return false;
            }
        }
    }
}

fn describe(client: &Client) -> String {
    let pid = client.pid.map_or("?".into(), |p| p.to_string());
    format!("pid {pid} ({})", client.command.as_deref().unwrap_or("?"))
}

/// Runs one message through the bus; queues what must be written.
fn handle(inner: &Shared, id: u64, message: &Message, replies: &mut Vec<Outgoing>) -> bool {
    let mut state = inner.borrow_mut();
    let state = &mut *state;
    let Some(slot) = state.slots.get_mut(&id) else {
        return false;
    };
    let mut client = slot.client.clone();
    let action = state.bus.handle(&mut client, message);
    slot.client = client.clone();
    let mut push = |m: &Message, fd: Option<OwnedFd>| {
        if let Some(bytes) = Inner::encode(m) {
            replies.push(Outgoing { bytes, fd });
        }
    };
    match action {
        Action::Nothing => {}
        Action::Send(reply) => push(&reply, None),
        Action::SendThenSignal(reply) => {
            push(&reply, None);
            let signal = state.bus.prepare_for_shutdown(true);
            push(&signal, None);
        }
        Action::ReloadDelay => {
            let usec = delay_usec(&state.config.kubelet_config);
            state.bus.set_delay(usec);
            crate::kinfo!(
                "system bus: {} reloaded logind: InhibitDelayMaxUSec is {usec}",
                describe(&client)
            );
            state.emit(BusEvent::DelayChanged { usec });
            let reply = state.bus.reply(message, vec![]);
            if message.wants_reply() {
                push(&reply, None);
            }
        }
        Action::Inhibit(request) => match state.sys.pipe() {
            Ok((read_end, write_end)) => {
                let now = Now::current();
                let (lock, reply) =
                    state
                        .bus
                        .inhibitor_taken(&client, message, request, now.epoch_ms);
                state.lock_started.insert(lock.id, now.mono);
                crate::kinfo!(
                    "system bus: {} took a {} inhibitor lock on {} ({:?}: {:?})",
                    describe(&client),
                    lock.mode,
                    lock.what,
                    lock.who,
                    lock.why
                );
                match crate::sys::process::async_file(File::from(read_end)) {
                    Ok(watched) => {
                        tokio::task::spawn_local(watch_lock(inner.clone(), lock.id, watched));
                    }
                    Err(e) => crate::kwarn!(
                        "system bus: cannot watch lock {}: {e}; it is released only with its connection",
                        lock.id
                    ),
                }
                state.emit(BusEvent::InhibitorTaken(lock));
                push(&reply, Some(write_end));
            }
            Err(e) => {
                let reply = state.bus.error(
                    message,
                    errors::FAILED,
                    &format!("cannot create the lock's pipe: {e}"),
                );
                push(&reply, None);
            }
        },
    }
    true
}

/// Waits until every copy of the lock's write end is closed, then
/// releases it.
async fn watch_lock(inner: Shared, lock: u64, fd: tokio::io::unix::AsyncFd<File>) {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        let mut buf = [0u8; 64];
        let read = guard.try_io(|f| {
            let mut file: &File = f.get_ref();
            file.read(&mut buf)
        });
        match read {
            Ok(Ok(0)) => break,
            // Bytes written into a lock mean nothing; keep waiting.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
    }
    let mut state = inner.borrow_mut();
    let started = state.lock_started.remove(&lock);
    if let Some(inhibitor) = state.bus.inhibitor_released(lock) {
        let held_ms = started.map_or(0, |at| at.elapsed().as_millis() as u64);
        crate::kinfo!(
            "system bus: inhibitor lock of pid {} ({}) released after {held_ms} ms",
            inhibitor.pid.map_or("?".into(), |p| p.to_string()),
            inhibitor.who
        );
        state.emit(BusEvent::InhibitorReleased { inhibitor, held_ms });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logind::bus::{LOGIND_NAME, LOGIND_PATH, MANAGER, PROPERTIES};
    use crate::runtime::logind::wire::Value;
    use std::io::Write as _;
    use std::os::fd::AsFd;

    /// Reads one message (and any descriptors) from a blocking socket.
    fn read_message(stream: &std::os::unix::net::UnixStream) -> (Message, Vec<OwnedFd>) {
        let mut pending = Vec::new();
        let mut fds = Vec::new();
        loop {
            if let Ok((m, used)) = wire::decode(&pending) {
                assert_eq!(used, pending.len(), "one message at a time");
                return (m, fds);
            }
            let mut buf = [0u8; 512];
            let (n, received) =
                crate::sys::process::recv_with_fds(stream.as_fd(), &mut buf).expect("recvmsg");
            fds.extend(received);
            assert!(n > 0, "server closed the connection");
            pending.extend_from_slice(&buf[..n]);
        }
    }

    fn call(stream: &mut std::os::unix::net::UnixStream, m: &Message) -> (Message, Vec<OwnedFd>) {
        stream
            .write_all(&wire::encode(m).expect("encode"))
            .expect("write");
        read_message(stream)
    }

    #[test]
    fn a_client_takes_and_releases_a_lock_over_a_real_socket() {
        let dir = std::env::temp_dir().join(format!("kios-bus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("dbus/system_bus_socket");
        std::fs::write(dir.join("config.yaml"), "shutdownGracePeriod: 10s\n").expect("config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let events = local.block_on(&rt, async {
            let config = BusConfig {
                socket: socket.clone(),
                kubelet_config: dir.join("config.yaml"),
            };
            let (handle, mut events) =
                start(config, std::sync::Arc::new(crate::sys::LinuxSys)).expect("start");
            let path = socket.clone();
            let client = std::thread::spawn(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
                s.write_all(b"\0AUTH\r\nAUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
                    .expect("auth");
                let mut lines = Vec::new();
                while !lines.ends_with(b"AGREE_UNIX_FD\r\n") {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).expect("auth reply");
                    lines.push(b[0]);
                }
                assert!(String::from_utf8_lossy(&lines).starts_with("REJECTED EXTERNAL\r\nOK "));
                let mut hello = Message::method_call(
                    1,
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "Hello",
                );
                hello.destination = Some("org.freedesktop.DBus".into());
                assert_eq!(call(&mut s, &hello).0.body, vec![Value::Str(":1.1".into())]);
                let mut get = Message::method_call(2, LOGIND_PATH, PROPERTIES, "Get");
                get.destination = Some(LOGIND_NAME.into());
                get.body = vec![
                    Value::Str(MANAGER.into()),
                    Value::Str("InhibitDelayMaxUSec".into()),
                ];
                assert_eq!(
                    call(&mut s, &get).0.body,
                    vec![Value::Variant(Box::new(Value::Uint64(15_000_000)))]
                );
                let mut inhibit = Message::method_call(3, LOGIND_PATH, MANAGER, "Inhibit");
                inhibit.destination = Some(LOGIND_NAME.into());
                inhibit.body = ["shutdown", "kubelet", "test", "delay"]
                    .iter()
                    .map(|v| Value::Str((*v).into()))
                    .collect();
                let (reply, fds) = call(&mut s, &inhibit);
                assert_eq!((reply.unix_fds, fds.len()), (1, 1), "{reply:?}");
                // Garbage after that closes only this connection.
                drop(fds);
                s.write_all(b"garbage garbage garbage!").expect("garbage");
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
            let mut seen = Vec::new();
            while let Some(event) = events.recv().await {
                seen.push(event);
                let gone = seen
                    .iter()
                    .any(|e| matches!(e, BusEvent::ClientGone { .. }));
                if gone
                    && seen
                        .iter()
                        .any(|e| matches!(e, BusEvent::InhibitorReleased { .. }))
                {
                    break;
                }
            }
            client.join().expect("client");
            handle.send(BusCommand::Stop);
            seen
        });
        assert!(
            matches!(events[0], BusEvent::ClientConnected { .. }),
            "{events:?}"
        );
        let BusEvent::InhibitorTaken(lock) = &events[1] else {
            panic!("{events:?}");
        };
        assert_eq!(
            (lock.who.as_str(), lock.mode.as_str()),
            ("kubelet", "delay")
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, BusEvent::InhibitorReleased { inhibitor, .. } if inhibitor.id == lock.id)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
