//! The registry of connected clients: who they are (SO_PEERCRED), which
//! dialect they speak, what they subscribed to, and a bounded outgoing queue
//! per client through which events and the legacy shutdown byte reach them.
//!
//! Fan-out never waits: a client whose queue is full is dropped at once
//! (removed here and told to close), so one slow reader costs nothing.

use std::collections::BTreeMap;
use std::rc::Rc;

use kios_protocol::{ClientInfo, Dialect, EncodedClients, Event, ServiceName};
use tokio::sync::{mpsc, Notify};

/// Most simultaneous connections; the next one gets `busy`.
pub const MAX_CLIENTS: usize = 64;
/// Messages queued for one client before it is dropped.
pub const OUTBOX_CAPACITY: usize = 256;

/// Bytes to send to a client, shared between every recipient.
pub type Out = Rc<[u8]>;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == Some(0)
    }

    /// For the kernel log and `requested_by`: `pid 412 uid 0 (kiosctl)`.
    pub fn describe(&self) -> String {
        let pid = self.pid.map_or("?".to_string(), |p| p.to_string());
        let uid = self.uid.map_or("?".to_string(), |u| u.to_string());
        let command = self.command.as_deref().unwrap_or("?");
        format!("pid {pid} uid {uid} ({command})")
    }
}

struct Slot {
    peer: Peer,
    dialect: Dialect,
    since_ms: u64,
    tx: mpsc::Sender<Out>,
    close: Rc<Notify>,
    watch: bool,
    follow: Option<ServiceName>,
}

/// What a client task needs to run: its queue's receiving end and the
/// signal that tells it to close.
pub struct Registration {
    pub rx: mpsc::Receiver<Out>,
    pub close: Rc<Notify>,
}

#[derive(Default)]
pub struct Clients {
    slots: BTreeMap<u64, Slot>,
    next_id: u64,
    /// Clients dropped because their queue was full, for the kernel log.
    pub dropped_slow: u64,
    /// The `status` list as last encoded, and the kubelet pid it marks;
    /// `None` once a client came, went or changed.
    encoded: Option<(Option<u32>, EncodedClients)>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients::default()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A fresh connection number.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds a connected client.
    /// The wall clock was stepped by `delta_ms`: each client's `since_ms`
    /// follows (see `State::clock_set`).
    pub fn wall_clock_moved(&mut self, delta_ms: i64) {
        for slot in self.slots.values_mut() {
            slot.since_ms = crate::runtime::clock::moved(slot.since_ms, delta_ms);
        }
        self.encoded = None;
    }

    pub fn register(&mut self, peer: Peer, since_ms: u64) -> Registration {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let close = Rc::new(Notify::new());
        self.slots.insert(
            peer.id,
            Slot {
                peer,
                dialect: Dialect::Silent,
                since_ms,
                tx,
                close: close.clone(),
                watch: false,
                follow: None,
            },
        );
        self.encoded = None;
        Registration { rx, close }
    }

    pub fn remove(&mut self, id: u64) {
        if self.slots.remove(&id).is_some() {
            self.encoded = None;
        }
    }

    pub fn set_dialect(&mut self, id: u64, dialect: Dialect) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.dialect = dialect;
            self.encoded = None;
        }
    }

    pub fn subscribe_watch(&mut self, id: u64) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.watch = true;
        }
    }

    pub fn subscribe_logs(&mut self, id: u64, service: ServiceName) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.follow = Some(service);
        }
    }

    /// Queues `bytes` for every client `select` picks; drops the ones whose
    /// queue is full or gone. Returns how many got it.
    fn send_where(&mut self, bytes: Out, select: impl Fn(&Slot) -> bool) -> usize {
        let mut sent = 0;
        let mut dead = Vec::new();
        for (id, slot) in self.slots.iter().filter(|(_, s)| select(s)) {
            match slot.tx.try_send(bytes.clone()) {
                Ok(()) => sent += 1,
                Err(_) => {
                    // Once per client: it is gone from the registry now.
                    crate::kwarn!(
                        "socket client {} cut off: {OUTBOX_CAPACITY} messages wait for it \
                         unread",
                        slot.peer.describe()
                    );
                    slot.close.notify_one();
                    dead.push(*id);
                }
            }
        }
        self.dropped_slow += dead.len() as u64;
        for id in dead {
            self.remove(id);
        }
        sent
    }

    /// Sends an event line to every `watch` subscriber.
    pub fn emit(&mut self, event: &Event) -> usize {
        if !self.slots.values().any(|s| s.watch) {
            return 0;
        }
        let bytes = line_bytes(&event.encode());
        self.send_where(bytes, |s| s.watch)
    }

    /// Sends a log line event to the followers of `service`.
    pub fn emit_log(&mut self, service: ServiceName, at_ms: u64, line: &str) -> usize {
        if !self.slots.values().any(|s| s.follow == Some(service)) {
            return 0;
        }
        let event = Event::Log(kios_protocol::LogLine {
            service,
            at_ms,
            line: line.to_string(),
        });
        let bytes = line_bytes(&event.encode());
        self.send_where(bytes, |s| s.follow == Some(service))
    }

    /// The legacy shutdown event: the byte 0x01 to every legacy client and
    /// every client that has not said anything yet (the kubelet only listens).
    pub fn broadcast_legacy_shutdown(&mut self) -> usize {
        let bytes: Out = Rc::from(&[kios_protocol::legacy::EVENT_SHUTDOWN][..]);
        self.send_where(bytes, |s| s.dialect.gets_legacy_events())
    }

    /// The legacy shutdown byte to one client (a kubelet that connects
    /// while a shutdown is draining, e.g. after a restart).
    pub fn send_legacy_shutdown(&mut self, id: u64) -> bool {
        let bytes: Out = Rc::from(&[kios_protocol::legacy::EVENT_SHUTDOWN][..]);
        self.send_where(bytes, |s| s.peer.id == id) == 1
    }

    /// Tells every client task to close its connection (shutdown, before
    /// unmounting: each accepted socket pins the socket's filesystem).
    pub fn close_all(&mut self) {
        for slot in self.slots.values() {
            slot.close.notify_one();
        }
    }

    /// Connected clients that could be the kubelet (legacy or silent), or
    /// are it (their pid is the kubelet's).
    pub fn could_be_kubelet(&self, kubelet_pid: Option<u32>) -> usize {
        self.slots
            .values()
            .filter(|s| s.dialect.gets_legacy_events() || is_pid(&s.peer, kubelet_pid))
            .count()
    }

    /// Whether the supervised kubelet itself is connected.
    pub fn kubelet_connected(&self, kubelet_pid: Option<u32>) -> bool {
        self.slots.values().any(|s| is_pid(&s.peer, kubelet_pid))
    }

    /// The wire view for `status`.
    pub fn infos(&self, kubelet_pid: Option<u32>) -> Vec<ClientInfo> {
        infos_of(&self.slots, kubelet_pid)
    }

    /// [`Clients::infos`] encoded for `status`, encoded again only when a
    /// client came, went or changed, or the kubelet's pid did.
    pub fn encoded_infos(&mut self, kubelet_pid: Option<u32>) -> &EncodedClients {
        if matches!(&self.encoded, Some((pid, _)) if *pid != kubelet_pid) {
            self.encoded = None;
        }
        let slots = &self.slots;
        let (_, encoded) = self.encoded.get_or_insert_with(|| {
            (
                kubelet_pid,
                EncodedClients::encode(&infos_of(slots, kubelet_pid)),
            )
        });
        encoded
    }
}

fn infos_of(slots: &BTreeMap<u64, Slot>, kubelet_pid: Option<u32>) -> Vec<ClientInfo> {
    slots
        .values()
        .map(|s| ClientInfo {
            id: s.peer.id,
            pid: s.peer.pid,
            uid: s.peer.uid,
            command: s.peer.command.clone(),
            dialect: s.dialect,
            kubelet: is_pid(&s.peer, kubelet_pid),
            since_ms: s.since_ms,
        })
        .collect()
}

fn is_pid(peer: &Peer, pid: Option<u32>) -> bool {
    match (peer.pid, pid) {
        (Some(a), Some(b)) => a >= 0 && a as u32 == b,
        _ => false,
    }
}

fn line_bytes(line: &str) -> Out {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    Rc::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kios_protocol::{ShutdownPhase, ShutdownStatus};

    fn peer(clients: &mut Clients, pid: i32) -> Peer {
        Peer {
            id: clients.next_id(),
            pid: Some(pid),
            uid: Some(0),
            command: Some("test".into()),
        }
    }

    #[test]
    fn legacy_byte_goes_to_silent_and_legacy_clients_only() {
        let mut clients = Clients::new();
        let (a, b, c) = (
            peer(&mut clients, 10),
            peer(&mut clients, 11),
            peer(&mut clients, 12),
        );
        let (ia, ib, ic) = (a.id, b.id, c.id);
        let mut ra = clients.register(a, 0);
        let mut rb = clients.register(b, 0);
        let mut rc = clients.register(c, 0);
        clients.set_dialect(ib, Dialect::Legacy);
        clients.set_dialect(ic, Dialect::Line);
        assert_eq!(clients.could_be_kubelet(None), 2);
        assert_eq!(clients.could_be_kubelet(Some(12)), 3);
        assert_eq!(clients.broadcast_legacy_shutdown(), 2);
        assert_eq!(&*ra.rx.try_recv().unwrap(), &[0x01]);
        assert_eq!(&*rb.rx.try_recv().unwrap(), &[0x01]);
        assert!(rc.rx.try_recv().is_err());
        let infos = clients.infos(Some(11));
        assert_eq!(
            infos
                .iter()
                .filter(|i| i.kubelet)
                .map(|i| i.id)
                .collect::<Vec<_>>(),
            vec![ib]
        );
        assert!(clients.kubelet_connected(Some(11)));
        clients.remove(ia);
        assert_eq!(clients.len(), 2);
    }

    #[test]
    fn events_reach_subscribers_and_a_full_queue_drops_the_client() {
        let mut clients = Clients::new();
        let (w, f) = (peer(&mut clients, 1), peer(&mut clients, 2));
        let (iw, i_f) = (w.id, f.id);
        let mut rw = clients.register(w, 0);
        let mut rf = clients.register(f, 0);
        clients.subscribe_watch(iw);
        clients.subscribe_logs(i_f, ServiceName::Kubelet);
        let event = Event::Shutdown(ShutdownStatus {
            phase: ShutdownPhase::Draining,
            mode: kios_protocol::PowerMode::Poweroff,
            since_ms: 1,
            requested_by: "SIGTERM".into(),
            force: false,
            phase_since_ms: 1,
        });
        assert_eq!(clients.emit(&event), 1);
        let line = rw.rx.try_recv().unwrap();
        assert!(line.ends_with(b"\n"));
        assert_eq!(
            Event::decode(std::str::from_utf8(&line[..line.len() - 1]).unwrap()).unwrap(),
            event
        );
        assert_eq!(clients.emit_log(ServiceName::Crio, 5, "nope"), 0);
        assert_eq!(clients.emit_log(ServiceName::Kubelet, 5, "yes"), 1);
        assert!(std::str::from_utf8(&rf.rx.try_recv().unwrap())
            .unwrap()
            .contains(r#""line":"yes""#));

        // The follower stops reading: after OUTBOX_CAPACITY lines it is dropped.
        for i in 0..OUTBOX_CAPACITY {
            assert_eq!(
                clients.emit_log(ServiceName::Kubelet, 6, &format!("{i}")),
                1
            );
        }
        assert_eq!(clients.emit_log(ServiceName::Kubelet, 7, "one too many"), 0);
        assert_eq!(clients.len(), 1);
        assert_eq!(clients.dropped_slow, 1);
        // Its task is told to close.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let close = rf.close.clone();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), close.notified())
                .await
                .unwrap();
        });
    }

    #[test]
    fn describe_peer() {
        let p = Peer {
            id: 1,
            pid: Some(412),
            uid: Some(0),
            command: Some("kiosctl".into()),
        };
        assert_eq!(p.describe(), "pid 412 uid 0 (kiosctl)");
        assert!(p.is_root());
        let q = Peer {
            id: 2,
            pid: None,
            uid: None,
            command: None,
        };
        assert_eq!(q.describe(), "pid ? uid ? (?)");
        assert!(!q.is_root());
    }

    /// The encoded list `status` writes is always the list as it is now:
    /// after every kind of change, and for whichever kubelet pid.
    #[test]
    fn the_encoded_list_follows_every_change() {
        fn check(clients: &mut Clients, kubelet: Option<u32>) {
            let now = EncodedClients::encode(&clients.infos(kubelet));
            assert_eq!(clients.encoded_infos(kubelet), &now);
            // Asked again with nothing changed: the same bytes.
            assert_eq!(clients.encoded_infos(kubelet), &now);
        }
        let mut clients = Clients::new();
        check(&mut clients, None);
        let (a, b) = (peer(&mut clients, 10), peer(&mut clients, 11));
        let (ia, ib) = (a.id, b.id);
        let _ra = clients.register(a, 5);
        check(&mut clients, None);
        let mut rb = clients.register(b, 6);
        check(&mut clients, Some(11));
        check(&mut clients, Some(12));
        clients.set_dialect(ia, Dialect::Line);
        check(&mut clients, Some(12));
        clients.wall_clock_moved(-3_000);
        check(&mut clients, Some(12));
        clients.remove(ia);
        check(&mut clients, Some(11));
        // A client whose queue overflows is dropped from the list too.
        clients.subscribe_logs(ib, ServiceName::Crio);
        for i in 0..=OUTBOX_CAPACITY {
            clients.emit_log(ServiceName::Crio, 1, &format!("{i}"));
        }
        assert!(rb.rx.try_recv().is_ok());
        assert_eq!(clients.len(), 0);
        check(&mut clients, Some(11));
        assert_eq!(clients.encoded_infos(None).as_json(), "[]");
    }
}
