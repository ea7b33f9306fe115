//! kiosctl's real binary against a fake node: exit status, stdout and stderr
//! asserted together, rendered tables pinned by snapshots.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::fixtures::{self as fx, NOW};
use common::{command, run, run_command, snapshot, Answer, FakeNode, Run, TempDir};
use kios_protocol::{ErrorCode, Event, LogLine, PowerMode, ServiceName};

/// A fake node at ROOT/run/system.sock answering `script`.
fn node(name: &str, script: Vec<(&str, Answer)>) -> (TempDir, FakeNode) {
    let dir = TempDir::new(name);
    let node = FakeNode::serve(&dir.path.join("run/system.sock"), script);
    (dir, node)
}

fn one(line: String) -> Answer {
    Answer::Lines(vec![line])
}

/// Runs `kiosctl ARGS` and compares the whole transcript with a snapshot.
fn check(name: &str, dir: &TempDir, args: &[&str]) -> Run {
    let result = run(&dir.path, args);
    let transcript = result
        .transcript(&format!("kiosctl {}", args.join(" ")))
        .replace(&dir.path.display().to_string(), "$ROOT");
    snapshot(name, &transcript);
    result
}

#[test]
fn status_table() {
    let (dir, node) = node(
        "status",
        vec![("status", one(fx::status_line(&fx::status_healthy())))],
    );
    let r = check("status", &dir, &["status"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(node.requests(), ["status"]);
}

#[test]
fn status_wide_shows_clients() {
    let (dir, _node) = node(
        "status-wide",
        vec![
            ("status", one(fx::status_line(&fx::status_healthy()))),
            ("version", one(fx::version_line())),
        ],
    );
    let r = check("status-wide", &dir, &["status", "-o", "wide"]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.contains("kubelet   silent    yes"), "{}", r.stdout);
    // The image's identity, for comparing nodes.
    assert!(
        r.stdout.contains("build      0123456789abcdef"),
        "{}",
        r.stdout
    );
}

#[test]
fn status_no_headers_is_the_service_rows() {
    let (dir, _node) = node(
        "status-nh",
        vec![("status", one(fx::status_line(&fx::status_healthy())))],
    );
    let r = check("status-no-headers", &dir, &["status", "--no-headers"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
}

#[test]
fn status_shows_a_read_only_data_partition() {
    let mut reply = fx::status_healthy();
    if let Some(d) = reply.node.datapart.as_mut() {
        d.read_only = true;
        d.problem = Some(
            "/dev/vda1 is write-protected (Permission denied (os error 13)); mounted read-only"
                .into(),
        );
    }
    let (dir, _node) = node("status-ro", vec![("status", one(fx::status_line(&reply)))]);
    let r = run(&dir.path, &["status"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.lines().any(|l| l
            == "datapart   /dev/vda1 (mounted READ-ONLY): /dev/vda1 is write-protected (Permission denied (os error 13)); mounted read-only"),
        "{}",
        r.stdout
    );
    let json = run(&dir.path, &["status", "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(value["node"]["datapart"]["read_only"], true);
}

#[test]
fn status_of_a_troubled_node() {
    let (dir, _node) = node(
        "status-t",
        vec![
            ("status", one(fx::status_line(&fx::status_troubled()))),
            ("version", one(fx::version_line())),
        ],
    );
    let r = check("status-troubled", &dir, &["status", "-o", "wide"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn json_is_the_reply_line_exactly() {
    let line = fx::status_line(&fx::status_healthy());
    let (dir, _node) = node("json", vec![("status", one(line.clone()))]);
    let r = run(&dir.path, &["status", "-o", "json"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (Some(0), format!("{line}\n").as_str(), "")
    );
    let value: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(value["services"][1]["pid"], 131);
}

#[test]
fn restart() {
    let (dir, node) = node(
        "restart",
        vec![
            (
                "restart kubelet",
                one(fx::restart_line(ServiceName::Kubelet, Some(131))),
            ),
            (
                "restart crio",
                one(fx::restart_line(ServiceName::Crio, None)),
            ),
        ],
    );
    let r = check("restart", &dir, &["restart", "kubelet"]);
    assert_eq!(r.code, Some(0));
    let r = check("restart-not-running", &dir, &["restart", "crio"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(node.requests(), ["restart kubelet", "restart crio"]);
}

#[test]
fn a_refusal_exits_1_with_the_nodes_message() {
    let refusal = fx::error(
        ErrorCode::NotPermitted,
        "restart changes the node's state and needs uid 0; you are uid 1000",
    );
    let (dir, _node) = node("refused", vec![("restart kubelet", one(refusal.clone()))]);
    let r = check("restart-refused", &dir, &["restart", "kubelet"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, "");
    // -o json: the error document on stdout for jq, the sentence on stderr.
    let r = run(&dir.path, &["restart", "kubelet", "-o", "json"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, format!("{refusal}\n"));
    assert!(r.stderr.contains("not-permitted"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2_and_send_nothing() {
    let (dir, node) = node("usage", vec![]);
    let r = check("usage-unknown-service", &dir, &["restart", "nosuch"]);
    assert_eq!(r.code, Some(2));
    assert_eq!(r.stdout, "");
    let r = run(&dir.path, &["logs", "kubelet", "-n", "0"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let r = run(&dir.path, &["files", "relative/path"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let r = run(&dir.path, &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(node.requests().is_empty(), "{:?}", node.requests());
}

#[test]
fn shutdown_and_reboot_send_the_right_request() {
    let (dir, node) = node(
        "shutdown",
        vec![
            (
                "shutdown poweroff",
                one(fx::shutdown_line(PowerMode::Poweroff)),
            ),
            (
                "shutdown reboot force",
                one(fx::shutdown_line(PowerMode::Reboot)),
            ),
            ("shutdown reboot", one(fx::shutdown_line(PowerMode::Reboot))),
        ],
    );
    let r = check("shutdown", &dir, &["shutdown"]);
    assert_eq!(r.code, Some(0));
    let r = check(
        "shutdown-reboot-force",
        &dir,
        &["shutdown", "--reboot", "--force"],
    );
    assert_eq!(r.code, Some(0));
    let r = run(&dir.path, &["reboot"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        node.requests(),
        [
            "shutdown poweroff",
            "shutdown reboot force",
            "shutdown reboot"
        ]
    );
}

#[test]
fn sigterm_during_the_shutdown_request_does_not_lose_the_reply() {
    // A forced shutdown TERMs every process, often before kiosctl has read
    // init's reply; kiosctl still prints it and exits 0.
    let dir = TempDir::new("term");
    let gate = dir.path.join("gate");
    let node = FakeNode::serve(
        &dir.path.join("run/system.sock"),
        vec![(
            "shutdown poweroff force",
            Answer::AfterFile(gate.clone(), vec![fx::shutdown_line(PowerMode::Poweroff)]),
        )],
    );
    let child = command(&dir.path, &["shutdown", "--force"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiosctl");
    common::wait_until("the shutdown request", || !node.requests().is_empty());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    std::fs::write(&gate, "").expect("open the gate");
    let output = child.wait_with_output().expect("kiosctl output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("graceful poweroff started (without waiting for the kubelet)"),
        "{stdout}"
    );
    assert_eq!(
        stderr,
        "kiosctl: the node is stopping every process now, this one included\n"
    );
}

#[test]
fn shutting_down_twice_is_reported() {
    let busy = fx::error(
        ErrorCode::ShuttingDown,
        "a shutdown is already in progress (phase draining)",
    );
    let (dir, _node) = node("shutdown-again", vec![("shutdown poweroff", one(busy))]);
    let r = run(&dir.path, &["shutdown"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "kiosctl: shutdown: a shutdown is already in progress (phase draining) (shutting-down)\n"
    );
}

#[test]
fn poweroff_and_reboot_personalities() {
    let (dir, node) = node(
        "alias",
        vec![
            (
                "shutdown poweroff",
                one(fx::shutdown_line(PowerMode::Poweroff)),
            ),
            (
                "shutdown reboot force",
                one(fx::shutdown_line(PowerMode::Reboot)),
            ),
        ],
    );
    let mut cmd = command(&dir.path, &[]);
    cmd.arg0("poweroff");
    let r = run_command(cmd);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    snapshot("alias-poweroff", &r.transcript("poweroff"));
    let mut cmd = command(&dir.path, &["-f", "-n"]);
    cmd.arg0("/sbin/reboot");
    let r = run_command(cmd);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // An unknown flag does nothing.
    let mut cmd = command(&dir.path, &["--wtmp-only"]);
    cmd.arg0("poweroff");
    let r = run_command(cmd);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("unexpected argument '--wtmp-only'"),
        "{}",
        r.stderr
    );
    let mut cmd = command(&dir.path, &["--help"]);
    cmd.arg0("reboot");
    let r = run_command(cmd);
    assert_eq!(r.code, Some(0));
    snapshot("alias-reboot-help", &r.transcript("reboot --help"));
    assert_eq!(
        node.requests(),
        ["shutdown poweroff", "shutdown reboot force"]
    );
}

#[test]
fn logs() {
    let (dir, node) = node(
        "logs",
        vec![(
            "logs kubelet 3",
            one(fx::logs_line(&[
                "I1129 11:12:50.101 kubelet.go:2410] SyncLoop (housekeeping)",
                "I1129 11:12:52.301 kubelet_node_status.go:73] Attempting to register node",
                "I1129 11:12:52.402 kubelet_node_status.go:76] Successfully registered node",
            ])),
        )],
    );
    let r = check("logs", &dir, &["logs", "kubelet", "-n", "3"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(node.requests(), ["logs kubelet 3"]);
}

#[test]
fn logs_follow_prints_new_lines_until_the_node_closes() {
    let log = |line: &str| {
        fx::event(&Event::Log(LogLine {
            service: ServiceName::Crio,
            at_ms: NOW,
            line: line.into(),
        }))
    };
    let (dir, _node) = node(
        "logs-f",
        vec![(
            "logs crio 100 follow",
            Answer::LinesThenClose(vec![
                fx::logs_line(&["old line"]),
                log("new line 1"),
                log("new line 2 with \u{1b}[31mcolour"),
            ]),
        )],
    );
    let r = check("logs-follow", &dir, &["logs", "crio", "-f"]);
    assert_eq!(r.code, Some(0));
    // To a pipe the service's bytes pass through unchanged.
    assert!(r.stdout.contains("\u{1b}[31mcolour"), "{:?}", r.stdout);
    let r = run(&dir.path, &["logs", "crio", "--follow", "-o", "json"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    for line in r.stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
    }
}

#[test]
fn watch_to_a_pipe_prints_one_line_per_event() {
    let status = fx::status_healthy();
    let mut kubelet = status.services[1].clone();
    kubelet.state = kios_protocol::ServiceState::Stopping;
    kubelet.since_ms = NOW + 1_000;
    let shutdown = fx::status_troubled().node.shutdown.expect("a shutdown");
    let (dir, _node) = node(
        "watch",
        vec![(
            "watch",
            Answer::LinesThenClose(vec![
                fx::watch_line(),
                fx::event(&Event::Shutdown(shutdown)),
                fx::event(&Event::Service(kubelet)),
                r#"{"event":"from-the-future","x":1}"#.to_string(),
            ]),
        )],
    );
    let r = check("watch", &dir, &["watch"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout.lines().count(), 3);
}

#[test]
fn boot_timeline() {
    let (dir, _node) = node("boot", vec![("boot", one(fx::boot_line()))]);
    assert_eq!(check("boot", &dir, &["boot"]).code, Some(0));
    assert_eq!(
        check("boot-wide", &dir, &["boot", "-o", "wide"]).code,
        Some(0)
    );
}

#[test]
fn files_list_and_detail() {
    let (dir, node) = node(
        "files",
        vec![
            ("files", one(fx::files_line())),
            ("files /bin/crio", one(fx::file_line("/bin/crio"))),
            (
                "files /nope",
                one(fx::error(
                    ErrorCode::UnknownPath,
                    "no inventory entry for '/nope'",
                )),
            ),
        ],
    );
    assert_eq!(check("files", &dir, &["files"]).code, Some(0));
    assert_eq!(
        check("files-wide", &dir, &["files", "-o", "wide"]).code,
        Some(0)
    );
    assert_eq!(
        check("files-one", &dir, &["files", "/bin/crio"]).code,
        Some(0)
    );
    let r = check("files-unknown", &dir, &["files", "/nope"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        node.requests(),
        ["files", "files", "files /bin/crio", "files /nope"]
    );
}

#[test]
fn verify_clean_exits_0_and_findings_exit_1() {
    let (clean_dir, _clean) = node(
        "verify-clean",
        vec![("verify", one(fx::verify_clean_line()))],
    );
    assert_eq!(check("verify-clean", &clean_dir, &["verify"]).code, Some(0));
    let (dir, _node) = node(
        "verify-dirty",
        vec![("verify", one(fx::verify_dirty_line()))],
    );
    let r = check("verify-findings", &dir, &["verify"]);
    assert_eq!(r.code, Some(1));
    let r = run(&dir.path, &["verify", "-o", "json"]);
    assert_eq!((r.code, r.stderr.as_str()), (Some(1), ""));
    assert_eq!(r.stdout, format!("{}\n", fx::verify_dirty_line()));
}

#[test]
fn files_takes_the_escaped_form_and_refuses_a_broken_one() {
    let (dir, node) = node(
        "files-escaped",
        vec![(
            r"files /bin/\xff\xfekworker",
            one(
                r#"{"ok":false,"error":{"code":"unknown-path","message":"not in the inventory"}}"#
                    .to_string(),
            ),
        )],
    );
    let r = run(&dir.path, &["files", r"/bin/\xff\xfekworker"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(node.requests(), [r"files /bin/\xff\xfekworker"]);
    let r = run(&dir.path, &["files", r"/bin/\q"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("escaped form"), "{}", r.stderr);
}

#[test]
fn version() {
    let (dir, _node) = node("version", vec![("version", one(fx::version_line()))]);
    let r = check("version", &dir, &["version"]);
    assert_eq!(r.code, Some(0));
    assert!(r
        .stdout
        .starts_with(&format!("kiosctl    {}\n", env!("CARGO_PKG_VERSION"))));
    assert!(!r.stdout.contains("image"), "{}", r.stdout);
}

#[test]
fn version_shows_the_image_release() {
    let (dir, _node) = node(
        "version-image",
        vec![("version", one(fx::version_line_with_image()))],
    );
    let r = run(&dir.path, &["version"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout
            .ends_with("protocol   1\nimage      kiOS 0.2.0\nbuild      0123abcd\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn unreachable_socket_exits_3_and_says_how_to_get_access() {
    let dir = TempDir::new("unreachable");
    let r = check("unreachable", &dir, &["status"]);
    assert_eq!(r.code, Some(3));
    assert_eq!(r.stdout, "");
    // An explicit path is the only one tried.
    let r = run(
        &dir.path,
        &["status", "--socket", "/nonexistent/kiosctl-test.sock"],
    );
    assert_eq!(r.code, Some(3));
    assert!(
        r.stderr
            .contains("/nonexistent/kiosctl-test.sock (from --socket): no such file"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("/run/system.sock ("), "{}", r.stderr);
}

#[test]
fn a_stale_socket_file_is_connection_refused() {
    let dir = TempDir::new("stale");
    let path = dir.path.join("run/system.sock");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let r = run(&dir.path, &["status"]);
    assert_eq!(r.code, Some(3));
    assert!(r.stderr.contains("connection refused"), "{}", r.stderr);
}

#[test]
fn discovery_falls_back_to_host_run() {
    let dir = TempDir::new("host");
    let host = FakeNode::serve(
        &dir.path.join("host/run/system.sock"),
        vec![("version", one(fx::version_line()))],
    );
    let r = run(&dir.path, &["version"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(host.requests(), ["version"]);
}

#[test]
fn discovery_prefers_run_over_host() {
    let dir = TempDir::new("both");
    let run_node = FakeNode::serve(
        &dir.path.join("run/system.sock"),
        vec![("version", one(fx::version_line()))],
    );
    let host = FakeNode::serve(
        &dir.path.join("host/run/system.sock"),
        vec![("version", one(fx::version_line()))],
    );
    assert_eq!(run(&dir.path, &["version"]).code, Some(0));
    assert_eq!(run_node.requests(), ["version"]);
    assert!(host.requests().is_empty());
}

#[test]
fn discovery_env_then_flag() {
    let dir = TempDir::new("env");
    let default = FakeNode::serve(
        &dir.path.join("run/system.sock"),
        vec![("version", one(fx::version_line()))],
    );
    let env = FakeNode::serve(
        &dir.path.join("env.sock"),
        vec![("version", one(fx::version_line()))],
    );
    let flag = FakeNode::serve(
        &dir.path.join("flag.sock"),
        vec![("version", one(fx::version_line()))],
    );
    let mut cmd = command(&dir.path, &["version"]);
    cmd.env("KIOS_SOCKET", &env.socket);
    assert_eq!(run_command(cmd).code, Some(0));
    let mut cmd = command(&dir.path, &["version", "--socket"]);
    cmd.arg(&flag.socket).env("KIOS_SOCKET", &env.socket);
    assert_eq!(run_command(cmd).code, Some(0));
    assert!(default.requests().is_empty());
    assert_eq!(env.requests(), ["version"]);
    assert_eq!(flag.requests(), ["version"]);
}

#[test]
fn no_reply_within_the_timeout_exits_3() {
    let (dir, _node) = node("timeout", vec![("status", Answer::Silence)]);
    let r = run(&dir.path, &["status", "--timeout", "200ms"]);
    assert_eq!(r.code, Some(3));
    assert!(
        r.stderr.contains("no reply from") && r.stderr.contains("200ms"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_connection_closed_before_the_reply_exits_3() {
    let (dir, _node) = node("closed", vec![("status", Answer::LinesThenClose(vec![]))]);
    let r = run(&dir.path, &["status"]);
    assert_eq!(r.code, Some(3));
    assert!(
        r.stderr.contains("closed the connection before replying"),
        "{}",
        r.stderr
    );
}

#[test]
fn busy_is_a_refusal() {
    let busy = fx::error(ErrorCode::Busy, "too many connections (64); try again");
    let (dir, _node) = node("busy", vec![("status", Answer::LinesThenClose(vec![busy]))]);
    let r = run(&dir.path, &["status"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "kiosctl: status: too many connections (64); try again (busy)\n"
    );
}

#[test]
fn a_reply_that_is_not_the_protocol_exits_1() {
    let (dir, _node) = node(
        "garbage",
        vec![
            (
                "status",
                Answer::RawThenClose(b"HTTP/1.1 400 Bad Request\r\n".to_vec()),
            ),
            ("boot", one(r#"{"ok":true,"milestones":"no"}"#.to_string())),
        ],
    );
    let r = run(&dir.path, &["status"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("cannot understand the reply"),
        "{}",
        r.stderr
    );
    let r = run(&dir.path, &["boot"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("does not match the expected reply"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_closed_stdout_is_a_normal_end() {
    let lines: Vec<String> = (0..10_000)
        .map(|i| format!("line {i:05} {}", "x".repeat(90)))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (dir, _node) = node(
        "pipe",
        vec![("logs kubelet 10000", one(fx::logs_line(&refs)))],
    );
    let mut child = command(&dir.path, &["logs", "kubelet", "-n", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiosctl");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).expect("the first bytes");
    assert_eq!(&first, b"line 00000 xxxxx");
    // Like `| head`: the reader goes away with ~1 MB still to write.
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!((status.code(), stderr.as_str()), (Some(0), ""));
}

#[test]
fn a_stdout_closed_before_the_first_write_is_a_normal_end() {
    let (dir, _node) = node(
        "closed",
        vec![("status", one(fx::status_line(&fx::status_healthy())))],
    );
    for args in [
        &["completion", "bash"][..],
        &["man"],
        &["status"],
        &["--help"],
    ] {
        // A socket whose peer is gone: writes fail with EPIPE like a pipe's.
        let (write, read) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        drop(read);
        let write = std::os::fd::OwnedFd::from(write);
        let output = command(&dir.path, args)
            .stdout(write)
            .stderr(Stdio::piped())
            .output()
            .expect("run kiosctl");
        assert_eq!(
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).as_ref()
            ),
            (Some(0), ""),
            "{args:?}"
        );
    }
}

#[test]
fn completion_and_man_pages() {
    let dir = TempDir::new("gen");
    let r = run(&dir.path, &["completion", "bash"]);
    assert_eq!((r.code, r.stderr.as_str()), (Some(0), ""));
    assert!(
        r.stdout.contains("kiosctl") && r.stdout.contains("verify"),
        "{}",
        r.stdout
    );
    let r = run(&dir.path, &["completion", "zsh"]);
    assert_eq!(r.code, Some(0));
    let r = run(&dir.path, &["man"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.starts_with(".ie"),
        "{}",
        &r.stdout[..r.stdout.len().min(200)]
    );
    assert!(
        r.stdout.contains(".TH kiosctl 1"),
        "{}",
        &r.stdout[..r.stdout.len().min(400)]
    );
    let out = dir.path.join("man");
    let r = run(
        &dir.path,
        &["man", "--dir", out.to_str().expect("utf-8 path")],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for page in [
        "kiosctl.1",
        "kiosctl-status.1",
        "kiosctl-verify.1",
        "kiosctl-logs.1",
    ] {
        assert!(
            out.join(page).is_file(),
            "{page} missing; wrote:\n{}",
            r.stdout
        );
    }
}

#[test]
fn help_lists_the_exit_codes() {
    let dir = TempDir::new("help");
    let r = run(&dir.path, &["--help"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("3  could not reach the system socket"),
        "{}",
        r.stdout
    );
    snapshot("help", &r.transcript("kiosctl --help"));
}

/// Runs kiosctl on a pseudo-terminal (util-linux `script`) and returns what
/// the terminal received.
fn on_a_terminal(dir: &TempDir, args: &str, no_color: Option<&str>) -> Run {
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &format!("{} {args}", common::BIN), "/dev/null"])
        .env_remove("KIOS_SOCKET")
        .env_remove("NO_COLOR")
        .env("KIOSCTL_ROOT", &dir.path)
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    run_command(cmd)
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    let (dir, _node) = node(
        "tty",
        vec![("status", one(fx::status_line(&fx::status_healthy())))],
    );
    let r = on_a_terminal(&dir, "status", None);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert!(
        r.stdout.contains("\u{1b}[32mrunning\u{1b}[0m"),
        "{:?}",
        r.stdout
    );
    let r = on_a_terminal(&dir, "status", Some("1"));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert!(r.stdout.contains("running"), "{:?}", r.stdout);
    assert!(!r.stdout.contains('\u{1b}'), "{:?}", r.stdout);
    // Into a pipe: never.
    let r = run(&dir.path, &["status"]);
    assert!(!r.stdout.contains('\u{1b}'), "{:?}", r.stdout);
}

#[test]
fn watch_on_a_terminal_redraws_in_place() {
    let status = fx::status_healthy();
    let mut kubelet = status.services[1].clone();
    kubelet.state = kios_protocol::ServiceState::Backoff;
    kubelet.pid = None;
    let (dir, node) = node(
        "tty-watch",
        vec![
            ("status", one(fx::status_line(&status))),
            (
                "watch",
                Answer::LinesThenClose(vec![fx::watch_line(), fx::event(&Event::Service(kubelet))]),
            ),
        ],
    );
    let r = on_a_terminal(&dir, "watch", Some("1"));
    assert_eq!(r.code, Some(0), "{:?}", r.stdout);
    assert_eq!(node.requests(), ["status", "watch"]);
    // Each frame starts at the top left and clears what the last one left.
    assert!(
        r.stdout.matches("\u{1b}[1;1H").count() >= 2,
        "{:?}",
        r.stdout
    );
    assert!(r.stdout.contains("\u{1b}[J"), "{:?}", r.stdout);
    assert!(r.stdout.contains("node-a   up "), "{:?}", r.stdout);
    let last = r.stdout.rsplit("\u{1b}[1;1H").next().unwrap_or_default();
    assert!(last.contains("the node closed the connection"), "{last:?}");
    assert!(last.contains("kubelet   backoff   -"), "{last:?}");
    assert!(
        last.contains("service    kubelet backoff restarts 1"),
        "{last:?}"
    );
}

#[test]
fn ps_tree_with_pods_and_unexpected() {
    let (dir, node) = node(
        "ps",
        vec![
            ("ps", one(fx::ps_line())),
            ("ps", one(fx::ps_line())),
            ("ps all", one(fx::ps_line())),
        ],
    );
    let r = check("ps", &dir, &["ps"]);
    assert_eq!(r.code, Some(0));
    // The command's escape sequence is shown, never sent to the terminal.
    assert!(!r.stdout.contains('\u{1b}'), "{:?}", r.stdout);
    check("ps-wide", &dir, &["ps", "-o", "wide"]);
    let r = run(&dir.path, &["ps", "-a", "-o", "json"]);
    assert_eq!(r.stdout.trim_end(), fx::ps_line());
    assert_eq!(node.requests(), ["ps", "ps", "ps all"]);
}

#[test]
fn logs_kernel_and_init() {
    let (dir, node) = node(
        "kmsg",
        vec![
            ("logs kernel 100", one(fx::kernel_log_line())),
            ("logs init 5 since 600000", one(fx::kernel_log_line())),
            ("logs kernel 100", one(fx::kernel_log_line())),
            ("logs kernel 100", one(fx::kernel_log_line())),
        ],
    );
    check("logs-kernel", &dir, &["logs", "kernel"]);
    let r = run(&dir.path, &["logs", "init", "-n", "5", "--since", "10m"]);
    assert_eq!(r.code, Some(0));
    check("logs-kernel-wide", &dir, &["logs", "kernel", "-o", "wide"]);
    let r = run(&dir.path, &["logs", "kernel", "-o", "json"]);
    assert_eq!(
        r.stdout.lines().count(),
        4,
        "one record per line: {}",
        r.stdout
    );
    for line in r.stdout.lines() {
        let record: kios_protocol::KmsgRecord = serde_json::from_str(line).unwrap();
        assert!(record.usec <= 2_200_000);
    }
    assert_eq!(
        node.requests(),
        [
            "logs kernel 100",
            "logs init 5 since 600000",
            "logs kernel 100",
            "logs kernel 100"
        ]
    );
    let r = run(&dir.path, &["logs", "crio", "--since", "10m"]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn logs_kernel_follow_says_how_many_lines_were_missed() {
    let (dir, _node) = node(
        "kmsg-f",
        vec![(
            "logs kernel 100 follow",
            Answer::LinesThenClose(vec![
                fx::kernel_log_line(),
                fx::event(&Event::Kmsg(fx::kmsg(
                    313,
                    6,
                    3_000_000,
                    "kiOS: restart kubelet",
                ))),
                fx::event(&Event::KmsgMissed { count: 120 }),
                fx::event(&Event::Kmsg(fx::kmsg(434, 6, 9_000_000, "after the wrap"))),
            ]),
        )],
    );
    let r = check("logs-kernel-follow", &dir, &["logs", "kernel", "-f"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn audit_lists_earlier_boots_first_and_status_names_the_last_shutdown() {
    let (dir, node) = node(
        "audit",
        vec![
            ("audit 100", one(fx::audit_line())),
            ("audit 100", one(fx::audit_line())),
        ],
    );
    let r = check("audit", &dir, &["audit"]);
    assert_eq!(r.code, Some(0));
    check("audit-wide", &dir, &["audit", "-o", "wide"]);
    assert_eq!(node.requests(), ["audit 100", "audit 100"]);
}
