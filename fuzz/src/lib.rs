//! Shared by the fuzz targets: a fake node that runs kios-init's real
//! request path (connection framing, dialects, handlers, state,
//! supervisor) on bytes from the fuzzer, without sockets or processes,
//! and checks the invariants PID 1 must keep on any input.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Once, OnceLock};

use kios_init::boot::milestones::Milestones;
use kios_init::kmsg::{self, LogTarget};
use kios_init::runtime::logcapture::LogHub;
use kios_init::runtime::reaper::Exit;
use kios_init::runtime::server::clients::{Peer, Registration};
use kios_init::runtime::server::connection::{Connection, Incoming, ReadError};
use kios_init::runtime::server::handlers::{self, Outcome};
use kios_init::runtime::state::{NodeInfo, Paths, State};
use kios_init::runtime::supervisor::{BackoffPolicy, Now, Supervisor};
use kios_init::sys::fake::{Call, FakeSys};
use kios_protocol::{decode_response, encode_response, Request, ServiceName, ServiceState};
use nix::sys::signal::Signal;

/// Every target calls this first: kios-init's logger must never write to
/// the host's kernel log (the fuzzer may run as root).
pub fn quiet_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| kmsg::set_target(LogTarget::Stderr));
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime for the fuzzer")
    })
}

/// A directory with a small real inventory, so `files` reads and decodes
/// one (created once per fuzzing process).
fn fixture_paths() -> Paths {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        use kios_rootfs::{Component, Entry, Inventory, Kind};
        let dir = std::env::temp_dir().join(format!("kios-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut init = Entry::new("/init", Kind::File, 0o755);
        init.component = "kios-init".into();
        let inventory = Inventory::new(
            vec![
                Entry::new("/", Kind::Dir, 0o755),
                Entry::new("/etc", Kind::Dir, 0o755),
                init,
            ],
            vec![Component {
                name: "kios-init".into(),
                section: "Binaries".into(),
                about: "PID 1".into(),
            }],
        );
        if let Ok(bytes) = inventory.encode() {
            let _ = std::fs::write(dir.join("inventory"), bytes);
        }
        dir
    });
    Paths {
        socket: dir.join("system.sock"),
        bus_socket: dir.join("system_bus_socket"),
        crio_socket: dir.join("crio.sock"),
        etc_kubernetes: dir.join("kubernetes"),
        log_dir: dir.join("log"),
        inventory: dir.join("inventory"),
        root: dir.join("root"),
        proc_root: dir.join("proc"),
        etc_upper: None,
    }
}

/// One node: its state with cri-o and the kubelet running, a root and a
/// non-root client, and the fake machine that records the signals init
/// sends (the fake processes obey them at the next [`FakeNode::settle`]).
pub struct FakeNode {
    pub state: State,
    sys: Arc<FakeSys>,
    /// Calls of `sys` already acted on.
    seen_calls: usize,
    next_pid: u32,
    queues: Vec<Registration>,
    pub root: Peer,
    pub nobody: Peer,
}

impl Default for FakeNode {
    fn default() -> Self {
        FakeNode::new()
    }
}

impl FakeNode {
    pub fn new() -> FakeNode {
        quiet_logs();
        let sys = Arc::new(FakeSys::new());
        let now = Now::current();
        let mut state = State::new(
            NodeInfo {
                kernel: "6.1.0-fuzz".into(),
                datapart: None,
                boot_warnings: vec![],
                release: Default::default(),
            },
            Milestones::new(),
            Supervisor::new(BackoffPolicy::default(), now),
            LogHub::new(None),
            fixture_paths(),
            sys.clone(),
        );
        state
            .supervisor
            .started(ServiceName::Crio, 100, vec!["/bin/crio".into()], now);
        state.supervisor.crio_socket_ready(now);
        state
            .supervisor
            .started(ServiceName::Kubelet, 101, vec!["/bin/kubelet".into()], now);
        let mut queues = Vec::new();
        let mut peer = |state: &mut State, uid: u32, pid: i32| {
            let peer = Peer {
                id: state.clients.next_id(),
                pid: Some(pid),
                uid: Some(uid),
                command: Some("fuzz".into()),
            };
            queues.push(state.clients.register(peer.clone(), now.epoch_ms));
            peer
        };
        let root = peer(&mut state, 0, 4242);
        let nobody = peer(&mut state, 65534, 4243);
        FakeNode {
            state,
            sys,
            seen_calls: 0,
            next_pid: 200,
            queues,
            root,
            nobody,
        }
    }

    /// Runs one line request as `peer` and checks its response: it encodes
    /// to one line that decodes as the reply to this request.
    pub fn line(&mut self, peer: &Peer, request: Request) {
        let outcome = handlers::handle(&mut self.state, peer, request.clone(), Now::current());
        let line = match outcome {
            Outcome::Reply(response) => Some(encode_response(&response)),
            // Encoded by its handler (status), newline included.
            Outcome::Encoded(bytes) => {
                let line = String::from_utf8(bytes).expect("a response line is UTF-8");
                let line = line.strip_suffix('\n').expect("an encoded line ends with its newline");
                Some(line.to_string())
            }
            _ => None,
        };
        if let Some(line) = line {
            assert!(!line.contains('\n'), "a response is one line: {line:?}");
            if let Err(e) = decode_response(&request, &line) {
                panic!("the reply to {request:?} does not decode: {e}: {line}");
            }
        }
        self.settle();
    }

    /// Runs one legacy command byte as `peer`.
    pub fn legacy(&mut self, peer: &Peer, byte: u8) {
        if let Some(command) = kios_protocol::LegacyCommand::from_byte(byte) {
            handlers::handle_legacy(&mut self.state, peer, command, Now::current());
        }
        self.settle();
    }

    /// What the runtime would do next: processes sent TERM exit, services
    /// that are due start, queued events are taken. Checks that a service
    /// is never started while its previous process lives (one kubelet, one
    /// cri-o) and that `status` answers.
    pub fn settle(&mut self) {
        let now = Now::current();
        let calls = self.sys.calls();
        let sent: Vec<(u32, Signal)> = calls[self.seen_calls.min(calls.len())..]
            .iter()
            .filter_map(|c| match c {
                Call::Kill(pid, signal) => Some((*pid, *signal)),
                _ => None,
            })
            .collect();
        self.seen_calls = calls.len();
        for (pid, signal) in sent {
            if matches!(signal, Signal::SIGTERM | Signal::SIGKILL) {
                let _ = self
                    .state
                    .supervisor
                    .exited(pid, Exit::Signal(signal as i32), now);
            }
        }
        for name in self.state.supervisor.due(now) {
            let service = self.state.supervisor.service(name);
            assert!(
                service.pid.is_none(),
                "{name} is due while pid {:?} still runs",
                service.pid
            );
            self.next_pid += 1;
            self.state
                .supervisor
                .started(name, self.next_pid, vec![format!("/bin/{name}")], now);
        }
        for name in ServiceName::ALL {
            let service = self.state.supervisor.service(name);
            if service.state == ServiceState::Running {
                assert!(service.pid.is_some(), "{name} running without a pid");
            }
        }
        // The line the socket sends (client list encoded once per change)
        // is the typed reply's, whatever happened.
        let typed = self.state.status(now);
        let line = String::from_utf8(self.state.status_line(now)).expect("status is UTF-8");
        match decode_response(&Request::Status, line.trim_end()) {
            Ok(Ok(kios_protocol::Reply::Status(sent))) => {
                assert_eq!(sent.clients, typed.clients, "{line}");
                assert_eq!(sent.services, typed.services, "{line}");
            }
            other => panic!("status line {line:?} decodes to {other:?}"),
        }
        for queue in &mut self.queues {
            while queue.rx.try_recv().is_ok() {}
        }
    }

    /// Feeds `bytes` to a fresh connection of `peer`, exactly as the client
    /// task would read them (both dialects), and runs every request. Ends
    /// at the end of the bytes or the first framing error (the connection
    /// would be closed there).
    pub fn connection(&mut self, peer: &Peer, bytes: &[u8]) -> Option<ReadError> {
        let mut conn = Connection::new(Cursor::new(bytes.to_vec()));
        loop {
            let incoming = runtime().block_on(conn.read_request());
            match incoming {
                Ok(None) => return None,
                Ok(Some(Incoming::Legacy(None))) => {}
                Ok(Some(Incoming::Legacy(Some(command)))) => {
                    self.legacy(peer, command.to_byte());
                }
                Ok(Some(Incoming::Line(Err(error)))) => {
                    let line = kios_protocol::encode_error(&error.to_body());
                    assert!(!line.contains('\n'));
                }
                Ok(Some(Incoming::Line(Ok(request)))) => self.line(peer, request),
                Err(e) => return Some(e),
            }
        }
    }
}
