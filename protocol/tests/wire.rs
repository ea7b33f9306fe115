//! Wire tests of the protocol crate: golden request and response lines,
//! round trips of every variant, and one test per malformed-input rule.

use kios_protocol::*;

/// Parses `input` and compares with `expect` (Ok request or Err wire code).
fn check(input: &str, expect: Result<Request, ErrorCode>) {
    let got = Request::parse_line(input.as_bytes()).map_err(|e| e.code());
    assert_eq!(got, expect, "parsing {input:?}");
}

fn every_request() -> Vec<Request> {
    let mut all = vec![
        Request::Help,
        Request::Version,
        Request::Status,
        Request::ContinueShutdown,
        Request::Files { path: None },
        Request::Files {
            path: Some("/bin/crio".into()),
        },
        Request::Verify,
        Request::Watch,
        Request::Boot,
        Request::Ps { all: false },
        Request::Ps { all: true },
        Request::Audit { lines: 5 },
    ];
    for init_only in [false, true] {
        for follow in [false, true] {
            for since_ms in [None, Some(600_000)] {
                all.push(Request::KernelLog {
                    init_only,
                    lines: 3,
                    follow,
                    since_ms,
                });
            }
        }
    }
    for service in ServiceName::ALL {
        all.push(Request::Restart { service });
        for follow in [false, true] {
            all.push(Request::Logs {
                service,
                lines: 7,
                follow,
            });
        }
    }
    for mode in [PowerMode::Poweroff, PowerMode::Reboot] {
        for force in [false, true] {
            all.push(Request::Shutdown { mode, force });
        }
    }
    all
}

#[test]
fn every_request_round_trips_through_its_line() {
    for request in every_request() {
        let line = request.to_line();
        assert!(!line.contains('\n'));
        assert_eq!(Request::parse(&line), Ok(request.clone()), "line {line:?}");
    }
}

#[test]
fn every_verb_in_help_parses_by_its_name() {
    for verb in request::VERBS {
        let line = match verb.name {
            "restart" => "restart crio".to_string(),
            "logs" => "logs kubelet".to_string(),
            other => other.to_string(),
        };
        let parsed = Request::parse(&line).expect("verb parses");
        assert_eq!(parsed.verb(), verb.name);
    }
    assert_eq!(request::VERBS.len(), 13);
}

#[test]
fn golden_requests() {
    check("status", Ok(Request::Status));
    check("status\r", Ok(Request::Status));
    check("  status  ", Ok(Request::Status));
    check(
        "restart kubelet",
        Ok(Request::Restart {
            service: ServiceName::Kubelet,
        }),
    );
    check(
        "shutdown",
        Ok(Request::Shutdown {
            mode: PowerMode::Poweroff,
            force: false,
        }),
    );
    check(
        "shutdown reboot",
        Ok(Request::Shutdown {
            mode: PowerMode::Reboot,
            force: false,
        }),
    );
    check(
        "shutdown force",
        Ok(Request::Shutdown {
            mode: PowerMode::Poweroff,
            force: true,
        }),
    );
    check(
        "shutdown force reboot",
        Ok(Request::Shutdown {
            mode: PowerMode::Reboot,
            force: true,
        }),
    );
    check(
        "logs crio",
        Ok(Request::Logs {
            service: ServiceName::Crio,
            lines: 100,
            follow: false,
        }),
    );
    check(
        "logs crio 5 follow",
        Ok(Request::Logs {
            service: ServiceName::Crio,
            lines: 5,
            follow: true,
        }),
    );
    check(
        "logs crio follow",
        Ok(Request::Logs {
            service: ServiceName::Crio,
            lines: 100,
            follow: true,
        }),
    );
    check(
        "files /etc/hosts",
        Ok(Request::Files {
            path: Some("/etc/hosts".into()),
        }),
    );
}

#[test]
fn not_utf8_is_bad_request() {
    // A replacement character is valid UTF-8: it is just not a verb.
    check("stat\u{fffd}", Err(ErrorCode::UnknownVerb));
    let err = Request::parse_line(b"stat\xffus").unwrap_err();
    assert_eq!(err, ParseError::NotUtf8);
    assert_eq!(err.code(), ErrorCode::BadRequest);
}

#[test]
fn empty_line_is_bad_request() {
    check("", Err(ErrorCode::BadRequest));
    check("   ", Err(ErrorCode::BadRequest));
    check("\r", Err(ErrorCode::BadRequest));
}

#[test]
fn control_characters_are_bad_request() {
    check("status\u{1b}[2J", Err(ErrorCode::BadRequest));
    check("sta\0tus", Err(ErrorCode::BadRequest));
}

#[test]
fn unknown_verb() {
    check("frobnicate", Err(ErrorCode::UnknownVerb));
    check("STATUS", Err(ErrorCode::UnknownVerb));
    let err = Request::parse("frobnicate").unwrap_err();
    assert_eq!(err.to_string(), "unknown verb 'frobnicate'; try 'help'");
}

#[test]
fn unknown_verb_message_is_bounded() {
    let long = "x".repeat(3000);
    let err = Request::parse(&long).unwrap_err();
    assert!(err.to_string().len() < 120, "{}", err);
}

#[test]
fn unknown_service() {
    check("restart docker", Err(ErrorCode::UnknownService));
    check("logs sshd", Err(ErrorCode::UnknownService));
}

#[test]
fn missing_or_extra_arguments_are_bad_request() {
    check("restart", Err(ErrorCode::BadRequest));
    check("restart crio now", Err(ErrorCode::BadRequest));
    check("status please", Err(ErrorCode::BadRequest));
    check("logs", Err(ErrorCode::BadRequest));
    check("shutdown halt", Err(ErrorCode::BadRequest));
    check("shutdown reboot poweroff", Err(ErrorCode::BadRequest));
    check("shutdown force force", Err(ErrorCode::BadRequest));
    check("files /a /b", Err(ErrorCode::BadRequest));
    check("continue-shutdown now", Err(ErrorCode::BadRequest));
}

#[test]
fn files_path_must_be_absolute() {
    check("files etc/hosts", Err(ErrorCode::BadRequest));
}

#[test]
fn files_path_is_in_the_escaped_form() {
    let r = Request::parse(r"files /bin/\xff\xfekworker").unwrap();
    assert_eq!(
        r,
        Request::Files {
            path: Some(r"/bin/\xff\xfekworker".into())
        }
    );
    assert_eq!(r.to_line(), r"files /bin/\xff\xfekworker");
    check(r"files /bin/\q", Err(ErrorCode::BadRequest));
    check(r"files /bin/\xf", Err(ErrorCode::BadRequest));
}

#[test]
fn logs_line_count_is_bounded() {
    check("logs crio 0", Err(ErrorCode::BadRequest));
    check("logs crio 10001", Err(ErrorCode::BadRequest));
    check(
        "logs crio 99999999999999999999999",
        Err(ErrorCode::BadRequest),
    );
    check("logs crio -5", Err(ErrorCode::BadRequest));
    check("logs crio follow 5", Err(ErrorCode::BadRequest));
    check("logs crio 5 5", Err(ErrorCode::BadRequest));
    check(
        "logs crio 10000",
        Ok(Request::Logs {
            service: ServiceName::Crio,
            lines: 10000,
            follow: false,
        }),
    );
}

#[test]
fn state_changing_verbs() {
    let changing: Vec<&str> = every_request()
        .iter()
        .filter(|r| r.changes_state())
        .map(|r| r.verb())
        .collect();
    for verb in &changing {
        assert!(
            ["restart", "shutdown", "continue-shutdown"].contains(verb),
            "{verb}"
        );
    }
    assert!(changing.contains(&"continue-shutdown"));
}

#[test]
fn golden_responses() {
    let restart: Response = Ok(Reply::Restart(RestartReply {
        service: ServiceName::Kubelet,
        old_pid: Some(131),
    }));
    assert_eq!(
        encode_response(&restart),
        r#"{"ok":true,"service":"kubelet","old_pid":131}"#
    );

    let error: Response = Err(ErrorBody::new(
        ErrorCode::UnknownVerb,
        "unknown verb 'frobnicate'; try 'help'",
    ));
    assert_eq!(
        encode_response(&error),
        r#"{"ok":false,"error":{"code":"unknown-verb","message":"unknown verb 'frobnicate'; try 'help'"}}"#
    );

    let version: Response = Ok(Reply::Version(VersionReply {
        protocol: 1,
        init: "0.1.0".into(),
        image_version: None,
        inventory_sha256: Some("ab".repeat(32)),
        build_id: Some("0123456789abcdef".into()),
    }));
    let with_image: Response = Ok(Reply::Version(VersionReply {
        protocol: 1,
        init: "0.1.0".into(),
        image_version: Some("0.1.0".into()),
        inventory_sha256: None,
        build_id: Some("0123abcd".into()),
    }));
    assert_eq!(
        encode_response(&with_image),
        r#"{"ok":true,"protocol":1,"init":"0.1.0","image_version":"0.1.0","build_id":"0123abcd"}"#
    );
    assert_eq!(
        encode_response(&version),
        format!(
            r#"{{"ok":true,"protocol":1,"init":"0.1.0","inventory_sha256":"{}","build_id":"0123456789abcdef"}}"#,
            "ab".repeat(32)
        )
    );
    // An older server's reply (without the image's identity) still decodes.
    let old = decode_response(
        &Request::Version,
        r#"{"ok":true,"protocol":1,"init":"0.1.0"}"#,
    );
    assert!(
        matches!(
            old,
            Ok(Ok(Reply::Version(VersionReply {
                inventory_sha256: None,
                build_id: None,
                ..
            })))
        ),
        "{old:?}"
    );

    let shutdown: Response = Ok(Reply::Shutdown(ShutdownReply {
        mode: PowerMode::Reboot,
        phase: ShutdownPhase::Draining,
    }));
    assert_eq!(
        encode_response(&shutdown),
        r#"{"ok":true,"mode":"reboot","phase":"draining"}"#
    );
}

#[test]
fn every_error_code_has_its_wire_name() {
    for code in ErrorCode::ALL {
        let line = encode_error(&ErrorBody::new(code, "m"));
        assert!(
            line.contains(&format!(r#""code":"{}""#, code.as_str())),
            "{line}"
        );
        let back: Result<VersionReply, ErrorBody> = decode_reply(&line).expect("decodes");
        assert_eq!(back.unwrap_err().code, code);
    }
}

fn sample_service(name: ServiceName) -> ServiceStatus {
    ServiceStatus {
        name,
        state: ServiceState::Backoff,
        pid: None,
        since_ms: 1_700_000_000_000,
        restarts: 3,
        last_exit: Some(ExitStatus {
            code: None,
            signal: Some(9),
            at_ms: 1_700_000_000_001,
        }),
        next_start_ms: Some(1_700_000_002_000),
    }
}

fn sample_audit() -> AuditEntry {
    AuditEntry {
        at_ms: 1_699_999_000_000,
        boot_ms: 1_699_998_000_000,
        action: "shutdown reboot".into(),
        by: "socket pid 412 uid 0 (kiosctl)".into(),
        pid: Some(412),
        uid: Some(0),
        command: Some("kiosctl".into()),
        outcome: "started".into(),
        shutdown: true,
    }
}

fn sample_kmsg() -> KmsgRecord {
    KmsgRecord {
        seq: 42,
        level: 6,
        usec: 1_234_567,
        init: true,
        message: "kiOS: cri-o started (pid 97)".into(),
    }
}

fn sample_replies() -> Vec<(Request, Reply)> {
    let status = StatusReply {
        node: NodeStatus {
            hostname: "node-a".into(),
            kernel: "6.1.0".into(),
            boot_ms: 1_700_000_000_000,
            uptime_ms: 5000,
            now_ms: 1_700_000_005_000,
            datapart: Some(DatapartStatus {
                device: Some("/dev/vda1".into()),
                mounted: true,
                wanted: "auto".into(),
                problem: None,
                read_only: false,
            }),
            shutdown: Some(ShutdownStatus {
                phase: ShutdownPhase::Draining,
                mode: PowerMode::Poweroff,
                since_ms: 1,
                requested_by: "SIGTERM".into(),
                force: false,
                phase_since_ms: 1,
            }),
            graceful_shutdown_armed: true,
            previous_shutdown: Some(sample_audit()),
            inhibitors: vec![],
            log_lines_dropped: 3,
            clock_steps: 2,
            last_clock_step_ms: -259_200_000,
        },
        services: vec![
            sample_service(ServiceName::Crio),
            sample_service(ServiceName::Kubelet),
        ],
        clients: vec![ClientInfo {
            id: 1,
            pid: Some(131),
            uid: Some(0),
            command: Some("kubelet".into()),
            dialect: Dialect::Silent,
            kubelet: true,
            since_ms: 2,
        }],
    };
    vec![
        (Request::Help, Reply::Help(HelpReply::all_verbs())),
        (
            Request::Version,
            Reply::Version(VersionReply {
                protocol: 1,
                init: "0.1.0".into(),
                image_version: None,
                inventory_sha256: None,
                build_id: Some("b1".into()),
            }),
        ),
        (Request::Status, Reply::Status(status)),
        (
            Request::Restart {
                service: ServiceName::Crio,
            },
            Reply::Restart(RestartReply {
                service: ServiceName::Crio,
                old_pid: None,
            }),
        ),
        (
            Request::Shutdown {
                mode: PowerMode::Poweroff,
                force: true,
            },
            Reply::Shutdown(ShutdownReply {
                mode: PowerMode::Poweroff,
                phase: ShutdownPhase::Stopping,
            }),
        ),
        (
            Request::ContinueShutdown,
            Reply::ContinueShutdown(ContinueShutdownReply {
                phase: ShutdownPhase::Stopping,
            }),
        ),
        (
            Request::Files { path: None },
            Reply::Files(FilesReply {
                files: vec![FileInfo {
                    path: "/bin/crio".into(),
                    kind: "file".into(),
                    mode: "0500".into(),
                    owner: "0:0".into(),
                    component: "cri-o".into(),
                    why: "the container runtime".into(),
                    used_by: vec!["kubelet".into()],
                    notes: None,
                    target: None,
                    size: Some(10),
                    sha256: Some("ab".repeat(32)),
                }],
            }),
        ),
        (
            Request::Verify,
            Reply::Verify(VerifyReply {
                clean: false,
                checked: 40,
                findings: vec![Finding {
                    path: "/bin/evil".into(),
                    problem: "unexpected".into(),
                    detail: "not in the inventory".into(),
                }],
                out_of_scope: vec!["/var/lib/containers/storage".into()],
            }),
        ),
        (
            Request::Logs {
                service: ServiceName::Kubelet,
                lines: 2,
                follow: false,
            },
            Reply::Logs(LogsReply {
                service: ServiceName::Kubelet,
                lines: vec!["a".into(), "b \"q\"".into()],
            }),
        ),
        (
            Request::Watch,
            Reply::Watch(WatchReply {
                events: vec!["service".into(), "shutdown".into()],
            }),
        ),
        (
            Request::Boot,
            Reply::Boot(BootReply {
                milestones: vec![Milestone {
                    name: "mounts".into(),
                    at_ms: 5,
                    offset_ms: 1.25,
                }],
            }),
        ),
        (
            Request::Ps { all: false },
            Reply::Ps(PsReply {
                processes: vec![ProcessInfo {
                    pid: 1,
                    ppid: 0,
                    uid: 0,
                    age_ms: 5000,
                    cpu_ms: 20,
                    rss_kib: 1800,
                    role: "init".into(),
                    why: "kios-init, PID 1".into(),
                    pod: None,
                    container: None,
                    command: "/init".into(),
                    cgroup: "/".into(),
                    exe: Some("/init".into()),
                }],
                kernel_threads: 40,
                unexpected: 0,
                truncated: false,
            }),
        ),
        (
            Request::Audit { lines: 10 },
            Reply::Audit(AuditReply {
                boot_ms: 1_700_000_000_000,
                entries: vec![sample_audit()],
            }),
        ),
    ]
}

#[test]
fn kernel_log_reply_round_trips() {
    let request = Request::KernelLog {
        init_only: false,
        lines: 10,
        follow: false,
        since_ms: None,
    };
    let reply = Reply::KernelLog(KernelLogReply {
        boot_ms: 1_700_000_000_000,
        records: vec![sample_kmsg()],
    });
    let line = encode_response(&Ok(reply.clone()));
    assert_eq!(
        line,
        r#"{"ok":true,"boot_ms":1700000000000,"records":[{"seq":42,"level":6,"usec":1234567,"init":true,"message":"kiOS: cri-o started (pid 97)"}]}"#
    );
    assert_eq!(decode_response(&request, &line).unwrap(), Ok(reply));
    assert_eq!(sample_kmsg().level_name(), "info");
}

#[test]
fn golden_kernel_log_audit_and_ps_requests() {
    check("ps", Ok(Request::Ps { all: false }));
    check("ps all", Ok(Request::Ps { all: true }));
    check("ps everything", Err(ErrorCode::BadRequest));
    check("audit", Ok(Request::Audit { lines: 100 }));
    check("audit 5", Ok(Request::Audit { lines: 5 }));
    check("audit 0", Err(ErrorCode::BadRequest));
    check("audit 1001", Err(ErrorCode::BadRequest));
    check("audit 5 6", Err(ErrorCode::BadRequest));
    check(
        "logs kernel",
        Ok(Request::KernelLog {
            init_only: false,
            lines: 100,
            follow: false,
            since_ms: None,
        }),
    );
    check(
        "logs init 20 follow since 600000",
        Ok(Request::KernelLog {
            init_only: true,
            lines: 20,
            follow: true,
            since_ms: Some(600_000),
        }),
    );
    check(
        "logs kernel since 5 follow",
        Ok(Request::KernelLog {
            init_only: false,
            lines: 100,
            follow: true,
            since_ms: Some(5),
        }),
    );
    for bad in [
        "logs kernel 0",
        "logs kernel 10001",
        "logs kernel since",
        "logs kernel since soon",
        "logs kernel since 1 since 2",
        "logs kernel follow follow",
        "logs kernel follow 10",
        "logs init pid",
    ] {
        check(bad, Err(ErrorCode::BadRequest));
    }
    check("logs kernels", Err(ErrorCode::UnknownService));
    for read_only in ["ps", "ps all", "audit", "logs kernel", "logs init follow"] {
        assert!(
            !Request::parse(read_only).unwrap().changes_state(),
            "{read_only}"
        );
    }
    assert!(Request::parse("logs kernel follow").unwrap().is_streaming());
    assert!(!Request::parse("logs kernel").unwrap().is_streaming());
    assert_eq!(Request::parse("logs init").unwrap().verb(), "logs");
}

#[test]
fn every_reply_round_trips() {
    let replies = sample_replies();
    assert_eq!(replies.len(), request::VERBS.len(), "one sample per verb");
    for (request, reply) in replies {
        let line = encode_response(&Ok(reply.clone()));
        assert!(line.starts_with(r#"{"ok":true"#), "{line}");
        assert!(!line.contains('\n'));
        let back = decode_response(&request, &line).expect("decodes");
        assert_eq!(back, Ok(reply), "{line}");
    }
}

#[test]
fn a_status_without_log_lines_dropped_still_decodes() {
    let (request, reply) = sample_replies().remove(2);
    let mut value: serde_json::Value = serde_json::from_str(&encode_ok(&reply)).unwrap();
    assert_eq!(value["node"]["log_lines_dropped"], 3);
    value["node"]
        .as_object_mut()
        .unwrap()
        .remove("log_lines_dropped");
    let line = value.to_string();
    match decode_response(&request, &line) {
        Ok(Ok(Reply::Status(status))) => assert_eq!(status.node.log_lines_dropped, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_status_without_clock_steps_still_decodes() {
    let (request, reply) = sample_replies().remove(2);
    let mut value: serde_json::Value = serde_json::from_str(&encode_ok(&reply)).unwrap();
    assert_eq!(value["node"]["clock_steps"], 2);
    assert_eq!(value["node"]["last_clock_step_ms"], -259_200_000);
    let node = value["node"].as_object_mut().unwrap();
    node.remove("clock_steps");
    node.remove("last_clock_step_ms");
    let line = value.to_string();
    match decode_response(&request, &line) {
        Ok(Ok(Reply::Status(status))) => {
            assert_eq!(status.node.clock_steps, 0);
            assert_eq!(status.node.last_clock_step_ms, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn status_has_the_contract_fields() {
    let (_, reply) = sample_replies().remove(2);
    let value: serde_json::Value = serde_json::from_str(&encode_ok(&reply)).unwrap();
    for field in [
        "hostname",
        "kernel",
        "boot_ms",
        "uptime_ms",
        "now_ms",
        "datapart",
        "shutdown",
    ] {
        assert!(value["node"].get(field).is_some(), "node.{field}");
    }
    for field in ["device", "mounted"] {
        assert!(
            value["node"]["datapart"].get(field).is_some(),
            "datapart.{field}"
        );
    }
    for field in ["phase", "mode", "since_ms", "requested_by"] {
        assert!(
            value["node"]["shutdown"].get(field).is_some(),
            "shutdown.{field}"
        );
    }
    for field in [
        "name",
        "state",
        "pid",
        "since_ms",
        "restarts",
        "last_exit",
        "next_start_ms",
    ] {
        assert!(
            value["services"][0].get(field).is_some(),
            "services[].{field}"
        );
    }
    for field in ["code", "signal", "at_ms"] {
        assert!(
            value["services"][0]["last_exit"].get(field).is_some(),
            "last_exit.{field}"
        );
    }
    assert_eq!(value["services"][0]["pid"], serde_json::Value::Null);
}

#[test]
fn every_event_round_trips() {
    let events = vec![
        Event::Service(sample_service(ServiceName::Kubelet)),
        Event::Shutdown(ShutdownStatus {
            phase: ShutdownPhase::Unmounting,
            mode: PowerMode::Reboot,
            since_ms: 1,
            requested_by: "ctrl-alt-del".into(),
            force: true,
            phase_since_ms: 2,
        }),
        Event::Milestone(Milestone {
            name: "kubelet-started".into(),
            at_ms: 9,
            offset_ms: 12.5,
        }),
        Event::Log(LogLine {
            service: ServiceName::Crio,
            at_ms: 3,
            line: "level=info msg=\"x\"".into(),
        }),
        Event::Kmsg(sample_kmsg()),
        Event::KmsgMissed { count: 12 },
    ];
    for event in events {
        let line = event.encode();
        assert!(!line.contains('\n'));
        assert_eq!(Event::decode(&line).expect("decodes"), event, "{line}");
    }
}

#[test]
fn golden_events() {
    let log = Event::Log(LogLine {
        service: ServiceName::Crio,
        at_ms: 3,
        line: "hi".into(),
    });
    assert_eq!(
        log.encode(),
        r#"{"event":"log","service":"crio","at_ms":3,"line":"hi"}"#
    );
    let svc = Event::Service(ServiceStatus {
        name: ServiceName::Kubelet,
        state: ServiceState::Running,
        pid: Some(7),
        since_ms: 1,
        restarts: 0,
        last_exit: None,
        next_start_ms: None,
    });
    assert_eq!(
        svc.encode(),
        r#"{"event":"service","name":"kubelet","state":"running","pid":7,"since_ms":1,"restarts":0,"last_exit":null,"next_start_ms":null}"#
    );
}

#[test]
fn golden_kmsg_missed_event() {
    assert_eq!(
        Event::KmsgMissed { count: 12 }.encode(),
        r#"{"event":"kmsg-missed","count":12}"#
    );
}

#[test]
fn malformed_response_lines_are_decode_errors() {
    assert!(matches!(
        decode_reply::<VersionReply>("not json"),
        Err(DecodeError::NotJson(_))
    ));
    assert!(matches!(
        decode_reply::<VersionReply>(r#"{"protocol":1}"#),
        Err(DecodeError::NoOk)
    ));
    assert!(matches!(
        decode_reply::<VersionReply>(r#"{"ok":true,"protocol":"x"}"#),
        Err(DecodeError::Shape(_))
    ));
    assert!(matches!(
        decode_reply::<VersionReply>(r#"{"ok":false}"#),
        Err(DecodeError::Shape(_))
    ));
}

#[test]
fn legacy_bytes_and_dialects() {
    for byte in 0u8..=255 {
        match LegacyCommand::from_byte(byte) {
            Some(cmd) => {
                assert_eq!(cmd.to_byte(), byte);
                assert_eq!(Dialect::of_first_byte(byte), Dialect::Legacy);
            }
            None => assert!(!(1..=4).contains(&byte)),
        }
    }
    assert_eq!(Dialect::of_first_byte(b's'), Dialect::Line);
    assert_eq!(Dialect::of_first_byte(0x00), Dialect::Line);
    assert_eq!(Dialect::of_first_byte(0x05), Dialect::Line);
    assert_eq!(legacy::EVENT_SHUTDOWN, 0x01);
    assert!(Dialect::Silent.gets_legacy_events());
    assert!(Dialect::Legacy.gets_legacy_events());
    assert!(!Dialect::Line.gets_legacy_events());
}

#[test]
fn logind_events_golden_and_round_trip() {
    let released = Event::Logind(LogindEvent {
        change: LogindChange::LockReleased,
        at_ms: 5,
        pid: Some(8),
        who: Some("kubelet".into()),
        held_ms: Some(812),
        start: None,
        clients: None,
    });
    let line = released.encode();
    assert_eq!(
        line,
        r#"{"event":"logind","change":"lock-released","at_ms":5,"pid":8,"who":"kubelet","held_ms":812}"#
    );
    assert_eq!(Event::decode(&line).unwrap(), released);
    let sent = r#"{"event":"logind","change":"signal-sent","at_ms":1,"start":true,"clients":2}"#;
    let Event::Logind(event) = Event::decode(sent).unwrap() else {
        panic!("not a logind event");
    };
    assert_eq!(
        (event.change, event.start, event.clients),
        (LogindChange::SignalSent, Some(true), Some(2))
    );
}

/// init writes `status` with its client list encoded once; the line must
/// be the one the typed reply encodes to, whatever the list holds.
#[test]
fn status_with_pre_encoded_clients_is_the_same_line() {
    let (request, reply) = sample_replies().remove(2);
    let Reply::Status(status) = reply else {
        panic!("sample 2 is not status");
    };
    let many: Vec<ClientInfo> = (0..70)
        .map(|i| ClientInfo {
            id: i,
            pid: (i % 3 != 0).then_some(1000 + i as i32),
            uid: (i % 4 != 0).then_some(i as u32),
            command: (i % 5 != 0).then(|| format!("c\"l\\i\u{e9}nt {i}\n")),
            dialect: if i % 2 == 0 {
                Dialect::Line
            } else {
                Dialect::Legacy
            },
            kubelet: i == 7,
            since_ms: 1_700_000_000_000 + i,
        })
        .collect();
    for clients in [vec![], status.clients.clone(), many] {
        let typed = StatusReply {
            clients: clients.clone(),
            ..status.clone()
        };
        let expected = encode_response(&Ok(Reply::Status(typed.clone()))) + "\n";
        let line = encode_status_line(
            &typed.node,
            &typed.services,
            &EncodedClients::encode(&clients),
        );
        assert_eq!(String::from_utf8(line).unwrap(), expected);
        let back = decode_response(&request, expected.trim_end()).expect("decodes");
        assert_eq!(back, Ok(Reply::Status(typed)));
    }
}
