//! Request handlers: each takes the state, the peer and a request and
//! RETURNS the response. Handlers never see the socket; subscriptions
//! (`watch`, `logs ... follow`) are recorded in the client registry and the
//! connection task streams what arrives in the client's queue.
//!
//! Permission: verbs that change state need uid 0 (SO_PEERCRED); each such
//! request is written to the kernel log with the peer's pid, uid and command.

use kios_protocol::{
    AuditReply, ContinueShutdownReply, ErrorBody, ErrorCode, Event, HelpReply, LegacyCommand,
    LogsReply, PowerMode, Reply, Request, Response, ServiceName, ShutdownReply, VersionReply,
    WatchReply, PROTOCOL_VERSION,
};

use crate::runtime::server::clients::Peer;
use crate::runtime::shutdown::Requested;
use crate::runtime::state::State;
use crate::runtime::supervisor::{Now, StopReason};

/// What the connection does with a handled request.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per request
pub enum Outcome {
    /// Send this response.
    Reply(Response),
    /// Send this line (with its newline): a response encoded by its
    /// handler (`status`, whose client list is encoded once per change).
    Encoded(Vec<u8>),
    /// Run `verify` off the event loop, then send its response.
    Verify,
    /// Read /proc off the event loop for `ps`, then send the response.
    Ps { all: bool },
    /// Read (and maybe follow) the kernel log off the event loop.
    KernelLog(crate::runtime::server::kernel::KernelLogRequest),
}

fn not_permitted(verb: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotPermitted,
        format!("'{verb}' changes the node's state and needs uid 0"),
    )
}

/// Runs `f` (a handler) and turns a panic into an `internal` error.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, ErrorBody> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        crate::kerr!("bug: the handler of '{what}' panicked; the connection and init carry on");
        ErrorBody::new(
            ErrorCode::Internal,
            format!("kios-init hit a bug while handling '{what}'"),
        )
    })
}

/// Handles one line-dialect request.
pub fn handle(state: &mut State, peer: &Peer, request: Request, now: Now) -> Outcome {
    if request.changes_state() {
        if !peer.is_root() {
            crate::kwarn!(
                "refused '{}' from {}: not uid 0",
                request.to_line(),
                peer.describe()
            );
            let error = not_permitted(request.verb());
            audit_request(
                state,
                peer,
                request.to_line(),
                error.code.as_str(),
                false,
                now,
            );
            return Outcome::Reply(Err(error));
        }
        crate::kinfo!("request '{}' from {}", request.to_line(), peer.describe());
    }
    let audited = request.changes_state().then(|| request.to_line());
    let mut requested = None;
    let response = match request {
        Request::Help => Ok(Reply::Help(HelpReply::all_verbs())),
        Request::Version => {
            // The build id the sealed boot inventory carries; os-release's
            // (the same string on an image of ours) when there is none.
            let (inventory_sha256, build_id) = crate::runtime::server::inventory::identity();
            Ok(Reply::Version(VersionReply {
                protocol: PROTOCOL_VERSION,
                init: env!("CARGO_PKG_VERSION").to_string(),
                image_version: state.node.release.version.clone(),
                inventory_sha256,
                build_id: build_id
                    .filter(|b| !b.is_empty())
                    .or_else(|| state.node.release.build_id.clone()),
            }))
        }
        Request::Status => return Outcome::Encoded(state.status_line(now)),
        Request::Boot => Ok(Reply::Boot(state.boot_reply())),
        Request::Restart { service } => state
            .restart(service, StopReason::AdminRestart, now)
            .map(Reply::Restart),
        Request::Shutdown { mode, force } => {
            let by = format!("socket {}", peer.describe());
            requested = Some(state.request_shutdown(mode, force, &by, now));
            match (state.shutdown.mode(), state.shutdown.phase()) {
                (Some(mode), Some(phase)) => Ok(Reply::Shutdown(ShutdownReply { mode, phase })),
                _ => Err(ErrorBody::new(
                    ErrorCode::Internal,
                    "shutdown state missing after a request",
                )),
            }
        }
        Request::ContinueShutdown => match state.shutdown.continue_shutdown() {
            Some(phase) => Ok(Reply::ContinueShutdown(ContinueShutdownReply { phase })),
            None => Err(ErrorBody::new(
                ErrorCode::NoShutdown,
                "no shutdown is in progress; nothing changed",
            )),
        },
        Request::Logs {
            service,
            lines,
            follow,
        } => {
            let reply = LogsReply {
                service,
                lines: state.logs.tail(service).last(lines),
            };
            if follow {
                state.clients.subscribe_logs(peer.id, service);
            }
            Ok(Reply::Logs(reply))
        }
        Request::Watch => {
            state.clients.subscribe_watch(peer.id);
            // The current picture first, then changes as they happen: queued
            // now, written after the success line.
            for name in ServiceName::ALL {
                state.service_changed(name);
            }
            state.shutdown_changed();
            Ok(Reply::Watch(WatchReply {
                events: vec!["service".into(), "shutdown".into(), "milestone".into()],
            }))
        }
        Request::Files { path } => {
            crate::runtime::server::inventory::files(&state.paths, path.as_deref())
        }
        Request::Verify => return Outcome::Verify,
        Request::Ps { all } => return Outcome::Ps { all },
        Request::KernelLog {
            init_only,
            lines,
            follow,
            since_ms,
        } => {
            return Outcome::KernelLog(crate::runtime::server::kernel::KernelLogRequest {
                init_only,
                lines,
                follow,
                since_ms,
            })
        }
        Request::Audit { lines } => Ok(Reply::Audit(AuditReply {
            boot_ms: state.audit.boot_ms(),
            entries: state.audit.entries(lines),
        })),
    };
    if let Some(action) = audited {
        let outcome = match (&response, requested) {
            (Err(e), _) => e.code.as_str(),
            (Ok(_), Some(r)) => crate::runtime::audit::requested_outcome(r),
            (Ok(_), None) => "ok",
        };
        let ends_boot = requested == Some(Requested::Started);
        audit_request(state, peer, action, outcome, ends_boot, now);
    }
    Outcome::Reply(response)
}

fn audit_request(
    state: &mut State,
    peer: &Peer,
    action: String,
    outcome: &str,
    ends_boot: bool,
    now: Now,
) {
    let by = format!("socket {}", peer.describe());
    let entry =
        crate::runtime::audit::from_peer(peer, action, by, outcome, ends_boot, now.epoch_ms);
    state.audit.record(entry);
}

/// Handles one legacy byte. The legacy dialect has no responses; refused
/// commands are logged and audited like line requests (a non-root 0x02
/// too); a root 0x02 outside a shutdown is silently ignored (the kubelet
/// sends it when refreshing its lock).
pub fn handle_legacy(state: &mut State, peer: &Peer, command: LegacyCommand, now: Now) {
    if !peer.is_root() {
        crate::kwarn!(
            "refused legacy command 0x{:02x} from {}: not uid 0",
            command.to_byte(),
            peer.describe()
        );
        audit_legacy(state, peer, command, "not-permitted", false, now);
        return;
    }
    if command == LegacyCommand::ContinueShutdown && !state.shutdown.is_active() {
        return;
    }
    crate::kinfo!(
        "legacy command 0x{:02x} from {}",
        command.to_byte(),
        peer.describe()
    );
    match command {
        LegacyCommand::SoftShutdown => {
            let by = format!("socket {} (legacy 0x01)", peer.describe());
            let requested = state.request_shutdown(PowerMode::Poweroff, false, &by, now);
            let outcome = crate::runtime::audit::requested_outcome(requested);
            audit_legacy(
                state,
                peer,
                command,
                outcome,
                requested == Requested::Started,
                now,
            );
        }
        LegacyCommand::ContinueShutdown => {
            state.shutdown.continue_shutdown();
            audit_legacy(state, peer, command, "ok", false, now);
        }
        LegacyCommand::RestartKubelet | LegacyCommand::RestartCrio => {
            let service = if command == LegacyCommand::RestartKubelet {
                ServiceName::Kubelet
            } else {
                ServiceName::Crio
            };
            let outcome = match state.restart(service, StopReason::AdminRestart, now) {
                Ok(_) => "ok",
                Err(e) => {
                    crate::kwarn!("legacy restart {service}: {}", e.message);
                    e.code.as_str()
                }
            };
            audit_legacy(state, peer, command, outcome, false, now);
        }
    }
}

fn audit_legacy(
    state: &mut State,
    peer: &Peer,
    command: LegacyCommand,
    outcome: &str,
    ends_boot: bool,
    now: Now,
) {
    let action = match command {
        LegacyCommand::SoftShutdown => "shutdown poweroff".to_string(),
        LegacyCommand::ContinueShutdown => "continue-shutdown".to_string(),
        LegacyCommand::RestartKubelet => "restart kubelet".to_string(),
        LegacyCommand::RestartCrio => "restart crio".to_string(),
    };
    let by = format!(
        "socket {} (legacy 0x{:02x})",
        peer.describe(),
        command.to_byte()
    );
    let entry =
        crate::runtime::audit::from_peer(peer, action, by, outcome, ends_boot, now.epoch_ms);
    state.audit.record(entry);
}

/// The watch events a subscriber would get for the current state (used in
/// tests to check what `watch` queues).
pub fn snapshot_events(state: &State) -> Vec<Event> {
    let mut events: Vec<Event> = state
        .supervisor
        .statuses()
        .into_iter()
        .map(Event::Service)
        .collect();
    if let Some(status) = state.shutdown.status() {
        events.push(Event::Shutdown(status.clone()));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::state::testing::test_state;
    use kios_protocol::{ServiceState, ShutdownPhase};
    use nix::sys::signal::Signal;

    fn root(state: &mut State) -> Peer {
        Peer {
            id: state.clients.next_id(),
            pid: Some(4242),
            uid: Some(0),
            command: Some("kiosctl".into()),
        }
    }

    fn nobody(state: &mut State) -> Peer {
        Peer {
            id: state.clients.next_id(),
            pid: Some(4243),
            uid: Some(65534),
            command: Some("sh".into()),
        }
    }

    fn reply(outcome: Outcome) -> Response {
        match outcome {
            Outcome::Reply(r) => r,
            Outcome::Encoded(line) => {
                let line = std::str::from_utf8(&line).expect("a line of UTF-8");
                assert!(line.ends_with('\n'), "{line:?}");
                kios_protocol::decode_response(&Request::Status, line.trim_end())
                    .expect("an encoded status line decodes")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn code(outcome: Outcome) -> ErrorCode {
        match reply(outcome) {
            Err(e) => e.code,
            Ok(r) => panic!("expected an error, got {r:?}"),
        }
    }

    #[test]
    fn state_changes_and_refusals_are_audited_with_the_peer() {
        let mut t = test_state();
        let now = Now::current();
        let admin = root(&mut t.state);
        let stranger = nobody(&mut t.state);
        let restart = Request::Restart {
            service: ServiceName::Crio,
        };
        let _ = handle(&mut t.state, &stranger, restart.clone(), now);
        let _ = handle(&mut t.state, &admin, restart, now);
        let _ = handle(&mut t.state, &admin, Request::Status, now);
        let shutdown = Request::Shutdown {
            mode: PowerMode::Reboot,
            force: false,
        };
        let _ = handle(&mut t.state, &admin, shutdown, now);
        let entries = match reply(handle(
            &mut t.state,
            &admin,
            Request::Audit { lines: 10 },
            now,
        )) {
            Ok(Reply::Audit(a)) => a.entries,
            other => panic!("{other:?}"),
        };
        let seen: Vec<(&str, Option<i32>, &str, bool)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.pid, e.outcome.as_str(), e.shutdown))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("restart crio", Some(4243), "not-permitted", false),
                ("restart crio", Some(4242), "ok", false),
                ("shutdown reboot", Some(4242), "started", true),
            ]
        );
        assert_eq!(entries[2].by, "socket pid 4242 uid 0 (kiosctl)");
        assert_eq!(entries[2].command.as_deref(), Some("kiosctl"));
    }

    /// (action, by, outcome, pid, uid, command) of one entry.
    type Seen = (
        String,
        String,
        String,
        Option<i32>,
        Option<u32>,
        Option<String>,
    );

    /// Every entry, as [`Seen`].
    fn audited(state: &State) -> Vec<Seen> {
        state
            .audit
            .entries(usize::MAX)
            .into_iter()
            .map(|e| (e.action, e.by, e.outcome, e.pid, e.uid, e.command))
            .collect()
    }

    #[test]
    fn every_refused_verb_and_legacy_byte_is_audited_and_logged_with_the_peer() {
        let mut t = test_state();
        let now = Now::current();
        // A pid no other test uses, to find this test's kernel log lines.
        let stranger = Peer {
            id: t.state.clients.next_id(),
            pid: Some(51_723),
            uid: Some(1000),
            command: Some("intruder".into()),
        };
        let requests = [
            Request::Restart {
                service: ServiceName::Kubelet,
            },
            Request::Restart {
                service: ServiceName::Crio,
            },
            Request::Shutdown {
                mode: PowerMode::Poweroff,
                force: false,
            },
            Request::Shutdown {
                mode: PowerMode::Reboot,
                force: true,
            },
            Request::ContinueShutdown,
        ];
        let lines: Vec<String> = requests.iter().map(Request::to_line).collect();
        for request in requests {
            assert_eq!(
                code(handle(&mut t.state, &stranger, request, now)),
                ErrorCode::NotPermitted
            );
        }
        // Every byte, 0x02 outside a shutdown included.
        for command in [
            LegacyCommand::SoftShutdown,
            LegacyCommand::ContinueShutdown,
            LegacyCommand::RestartKubelet,
            LegacyCommand::RestartCrio,
        ] {
            handle_legacy(&mut t.state, &stranger, command, now);
        }
        assert!(!t.state.shutdown.is_active());
        assert!(t.signals().is_empty());
        let who = "pid 51723 uid 1000 (intruder)";
        let mut expected: Vec<_> = lines
            .iter()
            .map(|line| {
                (
                    line.clone(),
                    format!("socket {who}"),
                    "not-permitted".to_string(),
                    Some(51_723),
                    Some(1000),
                    Some("intruder".to_string()),
                )
            })
            .collect();
        for (action, byte) in [
            ("shutdown poweroff", 1),
            ("continue-shutdown", 2),
            ("restart kubelet", 3),
            ("restart crio", 4),
        ] {
            expected.push((
                action.to_string(),
                format!("socket {who} (legacy 0x0{byte})"),
                "not-permitted".to_string(),
                Some(51_723),
                Some(1000),
                Some("intruder".to_string()),
            ));
        }
        assert_eq!(audited(&t.state), expected);
        assert!(t
            .state
            .audit
            .entries(usize::MAX)
            .iter()
            .all(|e| !e.shutdown));
        // The kernel log has each refusal with the peer.
        let logged = crate::kmsgread::MEMORY.messages();
        for line in &lines {
            let wanted = format!("refused '{line}' from {who}: not uid 0");
            assert!(logged.iter().any(|l| l.ends_with(&wanted)), "no '{wanted}'");
        }
        for byte in 1..=4 {
            let wanted = format!("refused legacy command 0x0{byte} from {who}: not uid 0");
            assert!(logged.iter().any(|l| l.ends_with(&wanted)), "no '{wanted}'");
        }
    }

    #[test]
    fn legacy_bytes_from_root_are_audited_and_logged_with_the_peer() {
        let mut t = test_state();
        let now = Now::current();
        let kubelet = Peer {
            id: t.state.clients.next_id(),
            pid: Some(51_724),
            uid: Some(0),
            command: Some("kubelet".into()),
        };
        // Outside a shutdown a root 0x02 is the kubelet refreshing: nothing.
        handle_legacy(&mut t.state, &kubelet, LegacyCommand::ContinueShutdown, now);
        assert!(audited(&t.state).is_empty());
        for command in [
            LegacyCommand::RestartKubelet,
            LegacyCommand::RestartCrio,
            LegacyCommand::SoftShutdown,
            LegacyCommand::SoftShutdown,
            LegacyCommand::ContinueShutdown,
        ] {
            handle_legacy(&mut t.state, &kubelet, command, now);
        }
        let who = "pid 51724 uid 0 (kubelet)";
        let seen: Vec<(String, String, String, bool)> = t
            .state
            .audit
            .entries(usize::MAX)
            .into_iter()
            .map(|e| {
                assert_eq!(
                    (e.pid, e.uid, e.command.as_deref()),
                    (Some(51_724), Some(0), Some("kubelet"))
                );
                (e.action, e.by, e.outcome, e.shutdown)
            })
            .collect();
        let by = |byte: u8| format!("socket {who} (legacy 0x0{byte})");
        assert_eq!(
            seen,
            vec![
                ("restart kubelet".into(), by(3), "ok".into(), false),
                ("restart crio".into(), by(4), "ok".into(), false),
                ("shutdown poweroff".into(), by(1), "started".into(), true),
                (
                    "shutdown poweroff".into(),
                    by(1),
                    "already-in-progress".into(),
                    false
                ),
                ("continue-shutdown".into(), by(2), "ok".into(), false),
            ]
        );
        assert!(t.state.shutdown.continued());
        let logged = crate::kmsgread::MEMORY.messages();
        for wanted in [
            format!("legacy command 0x03 from {who}"),
            format!("legacy command 0x04 from {who}"),
            format!("legacy command 0x01 from {who}"),
            format!("legacy command 0x02 from {who}"),
            format!("shutdown (poweroff) requested by {}", by(1)),
            format!(
                "shutdown (poweroff) requested by {}: one is already in progress",
                by(1)
            ),
        ] {
            assert!(logged.iter().any(|l| l.ends_with(&wanted)), "no '{wanted}'");
        }
    }

    #[test]
    fn non_root_cannot_change_state_and_nothing_changes() {
        let mut t = test_state();
        let now = Now::current();
        let p = nobody(&mut t.state);
        for request in [
            Request::Restart {
                service: ServiceName::Kubelet,
            },
            Request::Shutdown {
                mode: PowerMode::Poweroff,
                force: false,
            },
            Request::ContinueShutdown,
        ] {
            assert_eq!(
                code(handle(&mut t.state, &p, request, now)),
                ErrorCode::NotPermitted
            );
        }
        assert!(!t.state.shutdown.is_active());
        assert!(t.signals().is_empty());
        // Reading is fine.
        assert!(reply(handle(&mut t.state, &p, Request::Status, now)).is_ok());
        // Legacy commands from non-root are ignored too.
        handle_legacy(&mut t.state, &p, LegacyCommand::SoftShutdown, now);
        assert!(!t.state.shutdown.is_active());
    }

    #[test]
    fn restart_terms_the_running_service() {
        let mut t = test_state();
        let now = Now::current();
        t.state.supervisor.due(now);
        t.state
            .supervisor
            .started(ServiceName::Crio, 777, vec![], now);
        let p = root(&mut t.state);
        let r = reply(handle(
            &mut t.state,
            &p,
            Request::Restart {
                service: ServiceName::Crio,
            },
            now,
        ))
        .unwrap();
        assert_eq!(
            r,
            Reply::Restart(kios_protocol::RestartReply {
                service: ServiceName::Crio,
                old_pid: Some(777)
            })
        );
        assert_eq!(t.signals(), vec![(777, Signal::SIGTERM)]);
        assert_eq!(t.state.supervisor.crio.state, ServiceState::Stopping);
        // Not running: old_pid null, no signal.
        let r = reply(handle(
            &mut t.state,
            &p,
            Request::Restart {
                service: ServiceName::Kubelet,
            },
            now,
        ))
        .unwrap();
        assert_eq!(
            r,
            Reply::Restart(kios_protocol::RestartReply {
                service: ServiceName::Kubelet,
                old_pid: None
            })
        );
        assert_eq!(t.signals().len(), 1);
    }

    #[test]
    fn continue_without_shutdown_is_no_shutdown_and_changes_nothing() {
        let mut t = test_state();
        let now = Now::current();
        let p = root(&mut t.state);
        assert_eq!(
            code(handle(&mut t.state, &p, Request::ContinueShutdown, now)),
            ErrorCode::NoShutdown
        );
        handle_legacy(&mut t.state, &p, LegacyCommand::ContinueShutdown, now);
        assert!(!t.state.shutdown.is_active());
        assert!(!t.state.shutdown.continued());
    }

    #[test]
    fn shutdown_then_force_then_restart_is_refused() {
        let mut t = test_state();
        let now = Now::current();
        let p = root(&mut t.state);
        let r = reply(handle(
            &mut t.state,
            &p,
            Request::Shutdown {
                mode: PowerMode::Reboot,
                force: false,
            },
            now,
        ));
        assert_eq!(
            r.unwrap(),
            Reply::Shutdown(ShutdownReply {
                mode: PowerMode::Reboot,
                phase: ShutdownPhase::Draining
            })
        );
        assert!(t
            .state
            .shutdown
            .status()
            .unwrap()
            .requested_by
            .contains("pid 4242 uid 0 (kiosctl)"));
        let r = reply(handle(
            &mut t.state,
            &p,
            Request::Shutdown {
                mode: PowerMode::Poweroff,
                force: true,
            },
            now,
        ));
        assert_eq!(
            r.unwrap(),
            Reply::Shutdown(ShutdownReply {
                mode: PowerMode::Reboot,
                phase: ShutdownPhase::Draining
            })
        );
        assert!(t.state.shutdown.force());
        assert_eq!(
            code(handle(
                &mut t.state,
                &p,
                Request::Restart {
                    service: ServiceName::Crio
                },
                now
            )),
            ErrorCode::ShuttingDown
        );
        let r = reply(handle(&mut t.state, &p, Request::ContinueShutdown, now)).unwrap();
        assert_eq!(
            r,
            Reply::ContinueShutdown(ContinueShutdownReply {
                phase: ShutdownPhase::Draining
            })
        );
        assert!(t.state.shutdown.continued());
    }

    #[test]
    fn legacy_soft_shutdown_and_continue() {
        let mut t = test_state();
        let now = Now::current();
        let p = root(&mut t.state);
        handle_legacy(&mut t.state, &p, LegacyCommand::SoftShutdown, now);
        assert_eq!(t.state.shutdown.mode(), Some(PowerMode::Poweroff));
        handle_legacy(&mut t.state, &p, LegacyCommand::ContinueShutdown, now);
        assert!(t.state.shutdown.continued());
    }

    #[test]
    fn logs_returns_the_tail_and_follow_subscribes() {
        let mut t = test_state();
        let now = Now::current();
        for i in 0..5 {
            t.state
                .log_line(ServiceName::Kubelet, format!("line {i}"), 1);
        }
        let p = root(&mut t.state);
        let mut reg = t.state.clients.register(p.clone(), 0);
        let r = reply(handle(
            &mut t.state,
            &p,
            Request::Logs {
                service: ServiceName::Kubelet,
                lines: 2,
                follow: true,
            },
            now,
        ))
        .unwrap();
        assert_eq!(
            r,
            Reply::Logs(LogsReply {
                service: ServiceName::Kubelet,
                lines: vec!["line 3".into(), "line 4".into()]
            })
        );
        t.state.log_line(ServiceName::Kubelet, "new".into(), 2);
        t.state.log_line(ServiceName::Crio, "other".into(), 2);
        let got = reg.rx.try_recv().unwrap();
        assert!(std::str::from_utf8(&got)
            .unwrap()
            .contains(r#""line":"new""#));
        assert!(reg.rx.try_recv().is_err());
    }

    /// Log lines carry the wall clock as it read when init got them; a
    /// step back or forth shows in `at_ms` and changes nothing else: the
    /// tail and the followers keep the order lines came in.
    #[test]
    fn log_timestamps_follow_the_wall_clock_and_the_order_follows_arrival() {
        let mut t = test_state();
        let now = Now::current();
        let p = root(&mut t.state);
        let mut reg = t.state.clients.register(p.clone(), 0);
        let follow = Request::Logs {
            service: ServiceName::Kubelet,
            lines: 0,
            follow: true,
        };
        assert!(reply(handle(&mut t.state, &p, follow, now)).is_ok());
        let stamps = [1_795_939_250_000, 5, u64::MAX, 1_795_939_250_001];
        for (i, at_ms) in stamps.iter().enumerate() {
            t.state
                .log_line(ServiceName::Kubelet, format!("line {i}"), *at_ms);
        }
        let mut got = Vec::new();
        while let Ok(bytes) = reg.rx.try_recv() {
            let text = std::str::from_utf8(&bytes).unwrap().trim_end().to_string();
            if let Ok(Event::Log(l)) = Event::decode(&text) {
                got.push((l.line, l.at_ms));
            }
        }
        let want: Vec<(String, u64)> = stamps
            .iter()
            .enumerate()
            .map(|(i, at)| (format!("line {i}"), *at))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            t.state.logs.tail(ServiceName::Kubelet).last(10),
            ["line 0", "line 1", "line 2", "line 3"]
        );
    }

    #[test]
    fn watch_queues_the_current_picture() {
        let mut t = test_state();
        let now = Now::current();
        let p = root(&mut t.state);
        let mut reg = t.state.clients.register(p.clone(), 0);
        let r = reply(handle(&mut t.state, &p, Request::Watch, now)).unwrap();
        assert!(matches!(r, Reply::Watch(_)));
        let want = snapshot_events(&t.state);
        for event in want {
            let got = reg.rx.try_recv().unwrap();
            let text = std::str::from_utf8(&got).unwrap().trim_end().to_string();
            assert_eq!(Event::decode(&text).unwrap(), event);
        }
        t.state.milestone("test-milestone");
        let got = reg.rx.try_recv().unwrap();
        assert!(std::str::from_utf8(&got)
            .unwrap()
            .contains("test-milestone"));
    }

    #[test]
    fn help_version_status_boot() {
        let mut t = test_state();
        let now = Now::current();
        let p = nobody(&mut t.state);
        match reply(handle(&mut t.state, &p, Request::Help, now)).unwrap() {
            Reply::Help(h) => assert!(h.verbs.iter().any(|v| v.name == "continue-shutdown")),
            other => panic!("{other:?}"),
        }
        match reply(handle(&mut t.state, &p, Request::Version, now)).unwrap() {
            Reply::Version(v) => assert_eq!((v.protocol, v.image_version), (1, None)),
            other => panic!("{other:?}"),
        }
        t.state.node.release.version = Some("1.2".into());
        t.state.node.release.build_id = Some("b7".into());
        match reply(handle(&mut t.state, &p, Request::Version, now)).unwrap() {
            Reply::Version(v) => {
                assert_eq!(v.image_version.as_deref(), Some("1.2"));
                assert_eq!(v.build_id.as_deref(), Some("b7"));
            }
            other => panic!("{other:?}"),
        }
        match reply(handle(&mut t.state, &p, Request::Status, now)).unwrap() {
            Reply::Status(s) => {
                assert_eq!(s.services.len(), 2);
                assert_eq!(s.node.kernel, "6.1.0-test");
                assert!(s.node.shutdown.is_none());
            }
            other => panic!("{other:?}"),
        }
        t.state.milestone("socket");
        match reply(handle(&mut t.state, &p, Request::Boot, now)).unwrap() {
            Reply::Boot(b) => assert!(b.milestones.iter().any(|m| m.name == "socket")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            handle(&mut t.state, &p, Request::Verify, now),
            Outcome::Verify
        );
    }
}
