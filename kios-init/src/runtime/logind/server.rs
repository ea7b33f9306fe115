//! The system bus socket (`/var/run/dbus/system_bus_socket`) as a component
//! of init's event loop. One task owns the bus's state ([`Inner`]: the
//! [`Bus`], the connected peers, the locks) and is the only one to change
//! it: it accepts peers (at most [`MAX_BUS_CLIENTS`]) and takes init's
//! commands and what the other tasks report over one bounded channel. One
//! task per connection does the authentication, the framing and the
//! writes (bounded in time) and hands each decoded message to the owner,
//! waiting for its replies; one task per inhibitor lock watches its pipe's
//! read end for EOF and reports the release. No state is shared between
//! tasks: the same one-owner shape as init's runtime.
//!
//! Narrow interface: [`start`] returns a [`BusHandle`] that takes
//! [`BusCommand`]s (emit `PrepareForShutdown`, set the delay, stop) and a
//! bounded receiver of [`BusEvent`]s (clients, locks taken and released,
//! signals sent). Nothing here touches init's state.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

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
/// Reports of the connection and lock tasks queued for the owner; a full
/// queue makes the reporting task wait (its peer waits with it).
pub const PEER_QUEUE: usize = 64;
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

/// What a connection or lock task reports to the owner.
enum FromPeer {
    /// The peer finished the authentication.
    Begun { id: u64, unix_fds: bool },
    /// A decoded message; the owner answers with what to write back, or
    /// `None` when the connection must close.
    Message {
        id: u64,
        message: Message,
        replies: oneshot::Sender<Option<Vec<Outgoing>>>,
    },
    /// The connection ended.
    Gone { id: u64 },
    /// Every copy of the lock's write end is closed.
    LockReleased { lock: u64 },
}

/// A connected peer, as the owner knows it. Dropping the slot closes the
/// connection: its task's outbox ends.
struct Slot {
    client: Client,
    ready: bool,
    /// Signals to this peer (replies go back on the message's oneshot).
    outbox: mpsc::Sender<Outgoing>,
}

/// The bus's state, owned by the [`serve`] task alone.
struct Inner {
    bus: Bus,
    slots: BTreeMap<u64, Slot>,
    next_id: u64,
    events: mpsc::Sender<BusEvent>,
    dropped_events: u64,
    /// Cloned into every connection and lock task.
    peers: mpsc::Sender<FromPeer>,
    sys: std::sync::Arc<dyn Sys>,
    config: BusConfig,
    guid: String,
    /// Monotonic start of each lock, for `held_ms`.
    lock_started: BTreeMap<u64, Instant>,
}

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

    /// Forgets a peer (its connection closes), telling init if it had
    /// authenticated.
    fn drop_slot(&mut self, id: u64) {
        if let Some(slot) = self.slots.remove(&id) {
            if slot.ready {
                self.emit(BusEvent::ClientGone { id });
            }
        }
    }

    /// Queues `PrepareForShutdown(start)` for every authenticated peer; a
    /// peer whose outbox is full is dropped.
    fn broadcast_prepare(&mut self, start: bool) -> usize {
        self.bus.preparing = start;
        let signal = self.bus.prepare_for_shutdown(start);
        let Some(bytes) = Self::encode(&signal) else {
            return 0;
        };
        let mut sent = 0;
        let mut stuck = Vec::new();
        for (id, slot) in self.slots.iter().filter(|(_, s)| s.ready) {
            let out = Outgoing {
                bytes: bytes.clone(),
                fd: None,
            };
            if slot.outbox.try_send(out).is_ok() {
                sent += 1;
            } else {
                stuck.push(*id);
            }
        }
        for id in stuck {
            crate::kwarn!("system bus: peer {id} does not read its signals; closing it");
            self.drop_slot(id);
        }
        sent
    }

    fn accept(&mut self, stream: UnixStream) {
        if self.slots.len() >= MAX_BUS_CLIENTS {
            crate::kwarn!("system bus: {MAX_BUS_CLIENTS} connections open; closing a new one");
            return;
        }
        let cred = stream.peer_cred().ok();
        let pid = cred.as_ref().and_then(|c| c.pid());
        self.next_id += 1;
        let id = self.next_id;
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
        let (outbox, rx) = mpsc::channel(BUS_OUTBOX);
        let auth = Authenticator::new(client.uid, &self.guid);
        let peer = Peer {
            id,
            who: describe(&client),
            to_owner: self.peers.clone(),
        };
        self.slots.insert(
            id,
            Slot {
                client,
                ready: false,
                outbox,
            },
        );
        tokio::task::spawn_local(connection(peer, stream, auth, rx));
    }

    fn on_peer(&mut self, report: FromPeer) {
        match report {
            FromPeer::Begun { id, unix_fds } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                slot.ready = true;
                slot.client.unix_fds = unix_fds;
                let event = BusEvent::ClientConnected {
                    id,
                    pid: slot.client.pid,
                    command: slot.client.command.clone(),
                };
                self.emit(event);
            }
            FromPeer::Message {
                id,
                message,
                replies,
            } => {
                let out = self.handle(id, &message);
                // The connection may be gone meanwhile; nothing to do then.
                let _ = replies.send(out);
            }
            FromPeer::Gone { id } => self.drop_slot(id),
            FromPeer::LockReleased { lock } => {
                let started = self.lock_started.remove(&lock);
                if let Some(inhibitor) = self.bus.inhibitor_released(lock) {
                    let held_ms = started.map_or(0, |at| at.elapsed().as_millis() as u64);
                    crate::kinfo!(
                        "system bus: inhibitor lock of pid {} ({}) released after {held_ms} ms",
                        inhibitor.pid.map_or("?".into(), |p| p.to_string()),
                        inhibitor.who
                    );
                    self.emit(BusEvent::InhibitorReleased { inhibitor, held_ms });
                }
            }
        }
    }

    /// Runs one message through the bus: what to write back, or `None`
    /// when the connection must close.
    fn handle(&mut self, id: u64, message: &Message) -> Option<Vec<Outgoing>> {
        let slot = self.slots.get_mut(&id)?;
        let action = self.bus.handle(&mut slot.client, message);
        let client = slot.client.clone();
        let mut replies = Vec::new();
        let mut push = |m: &Message, fd: Option<OwnedFd>| {
            if let Some(bytes) = Self::encode(m) {
                replies.push(Outgoing { bytes, fd });
            }
        };
        match action {
            Action::Nothing => {}
            Action::Send(reply) => push(&reply, None),
            Action::SendThenSignal(reply) => {
                push(&reply, None);
                let signal = self.bus.prepare_for_shutdown(true);
                push(&signal, None);
            }
            Action::ReloadDelay => {
                let usec = delay_usec(&self.config.kubelet_config);
                self.bus.set_delay(usec);
                crate::kinfo!(
                    "system bus: {} reloaded logind: InhibitDelayMaxUSec is {usec}",
                    describe(&client)
                );
                self.emit(BusEvent::DelayChanged { usec });
                let reply = self.bus.reply(message, vec![]);
                if message.wants_reply() {
                    push(&reply, None);
                }
            }
            Action::Inhibit(request) => match self.sys.pipe() {
                Ok((read_end, write_end)) => {
                    let now = Now::current();
                    let (lock, reply) =
                        self.bus
                            .inhibitor_taken(&client, message, request, now.epoch_ms);
                    self.lock_started.insert(lock.id, now.mono);
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
                            tokio::task::spawn_local(watch_lock(
                                self.peers.clone(),
                                lock.id,
                                watched,
                            ));
                        }
                        Err(e) => crate::kwarn!(
                            "system bus: cannot watch lock {}: {e}; it is released only with its connection",
                            lock.id
                        ),
                    }
                    self.emit(BusEvent::InhibitorTaken(lock));
                    push(&reply, Some(write_end));
                }
                Err(e) => {
                    let reply = self.bus.error(
                        message,
                        errors::FAILED,
                        &format!("cannot create the lock's pipe: {e}"),
                    );
                    push(&reply, None);
                }
            },
        }
        Some(replies)
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

/// Binds the socket (its directory created, mode 0600 like the system
/// socket: only root peers are served, and init creates nothing
/// world-writable) and starts the
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
    let listener = crate::runtime::server::bind(&config.socket, &*sys)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let (peer_tx, peer_rx) = mpsc::channel(PEER_QUEUE);
    let delay = delay_usec(&config.kubelet_config);
    let inner = Inner {
        bus: Bus::new(delay),
        slots: BTreeMap::new(),
        next_id: 0,
        events: event_tx,
        dropped_events: 0,
        peers: peer_tx,
        sys,
        config,
        guid: server_guid(),
        lock_started: BTreeMap::new(),
    };
    tokio::task::spawn_local(serve(listener, inner, cmd_rx, peer_rx));
    Ok((BusHandle { tx: cmd_tx }, event_rx))
}

/// The owner: the only task that changes [`Inner`].
async fn serve(
    listener: UnixListener,
    mut inner: Inner,
    mut commands: mpsc::Receiver<BusCommand>,
    mut peers: mpsc::Receiver<FromPeer>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => inner.accept(stream),
                Err(e) => {
                    crate::kerr!("system bus: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // `inner.peers` keeps the channel open: never `None`.
            Some(report) = peers.recv() => inner.on_peer(report),
            command = commands.recv() => match command {
                Some(BusCommand::PrepareForShutdown(start)) => {
                    let clients = inner.broadcast_prepare(start);
                    inner.emit(BusEvent::SignalSent { start, clients });
                }
                Some(BusCommand::SetDelay(usec)) => inner.bus.set_delay(usec),
                // Dropping the slots (their outboxes) closes every
                // connection.
                Some(BusCommand::Stop) | None => return,
            },
        }
    }
}

/// What a connection task knows of itself.
struct Peer {
    id: u64,
    /// `pid N (command)`, for the kernel log.
    who: String,
    to_owner: mpsc::Sender<FromPeer>,
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
    peer: Peer,
    mut stream: UnixStream,
    mut auth: Authenticator,
    mut outbox: mpsc::Receiver<Outgoing>,
) {
    let mut pending: Vec<u8> = Vec::new();
    'conn: loop {
        tokio::select! {
            out = outbox.recv() => match out {
                Some(out) => if !write_out(&mut stream, out).await { break },
                // The owner dropped this peer (or stopped).
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
                if !auth.is_done() {
                    match authenticate(&peer, &mut auth, &mut pending).await {
                        Some(reply) if reply.is_empty() => {}
                        Some(reply) => {
                            let out = Outgoing { bytes: reply, fd: None };
                            if !write_out(&mut stream, out).await {
                                break;
                            }
                        }
                        None => break,
                    }
                    if !auth.is_done() {
                        continue;
                    }
                }
                loop {
                    let message = match wire::decode(&pending) {
                        Ok((message, used)) => {
                            pending.drain(..used);
                            message
                        }
                        Err(DecodeError::Incomplete { .. }) => break,
                        Err(DecodeError::Malformed(e)) => {
                            crate::kwarn!(
                                "system bus: {} sent a malformed message ({e}); closing its connection",
                                peer.who
                            );
                            break 'conn;
                        }
                    };
                    let (tx, rx) = oneshot::channel();
                    let report = FromPeer::Message { id: peer.id, message, replies: tx };
                    if peer.to_owner.send(report).await.is_err() {
                        break 'conn;
                    }
                    let Ok(Some(replies)) = rx.await else {
                        break 'conn;
                    };
                    for out in replies {
                        if !write_out(&mut stream, out).await {
                            break 'conn;
                        }
                    }
                }
            }
        }
    }
    let _ = peer.to_owner.send(FromPeer::Gone { id: peer.id }).await;
}

/// Feeds the authentication what `pending` holds: the bytes to answer, or
/// `None` when the connection must close. Tells the owner once it is done.
async fn authenticate(
    peer: &Peer,
    auth: &mut Authenticator,
    pending: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let progress = match auth.feed(pending) {
        Ok(p) => p,
        Err(e) => {
            crate::kwarn!("system bus: closing {}: {e}", peer.who);
            return None;
        }
    };
    pending.drain(..progress.consumed);
    if progress.begun {
        let begun = FromPeer::Begun {
            id: peer.id,
            unix_fds: auth.unix_fds(),
        };
        peer.to_owner.send(begun).await.ok()?;
    }
    Some(progress.reply)
}

fn describe(client: &Client) -> String {
    let pid = client.pid.map_or("?".into(), |p| p.to_string());
    format!("pid {pid} ({})", client.command.as_deref().unwrap_or("?"))
}

/// Waits until every copy of the lock's write end is closed, then reports
/// the release.
async fn watch_lock(owner: mpsc::Sender<FromPeer>, lock: u64, fd: tokio::io::unix::AsyncFd<File>) {
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
    let _ = owner.send(FromPeer::LockReleased { lock }).await;
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
