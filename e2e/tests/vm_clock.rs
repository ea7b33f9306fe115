//! The wall clock stepped on a real kernel (issue 11): the debug session
//! sets the node's clock back three days, then forward one day (busybox
//! `date -s` in init's mount namespace, as root, with CAP_SYS_TIME), on a
//! node with a data partition.
//!
//! After each step: init's kernel-log line names it (direction and size,
//! from its timerfd cancelled on set), `status` counts it
//! (`clock_steps`, `last_clock_step_ms`) and shows the node's clock moved
//! while `uptime_ms` did not jump (monotonic), and `restart kubelet`
//! gives a new kubelet that connects again. Then `kiosctl status` shows
//! the clock line, `kiosctl shutdown` powers the node off gracefully (the
//! kubelet's grace done) and `e2fsck -fn` finds the data partition clean.
//!
//! The steps are relative to the node's own clock (`date +%s` inside the
//! same shell), so their size is known to the second whatever the
//! guest's clock read at boot: `date -s @N` lands on a whole second, so a
//! step of -3 days is between -259,201 and -259,200 s, one of +1 day
//! between +86,399 and +86,400 s.

use std::time::Instant;

use kios_e2e::vm::{deadline, service, starts, Must, Node, NodeSpec, Script, Vm};

const DAY_S: i64 = 86_400;

/// Status polls after each kubelet restart, and the pause between them.
const POLLS: usize = 20;
const POLL_MS: u64 = 250;

/// A script line that sets the node's clock `by_s` seconds from what it
/// reads (the admin script splits on whitespace and does not quote: the
/// shell command has `${IFS}` for its spaces).
fn step_line(by_s: i64) -> String {
    let date = "/bin/busybox${IFS}date";
    format!(
        "/bin/busybox sh -c {date}${{IFS}}-u${{IFS}}-s${{IFS}}@$(($({date}${{IFS}}+%s){by_s:+}))"
    )
}

/// The admin commands of one step: set the clock, status, restart the
/// kubelet, then status polls until a new kubelet runs.
struct StepCommands {
    set: u32,
    status: u32,
    restart: u32,
    polls: Vec<u32>,
}

fn add_step(script: &mut Script, by_s: i64) -> StepCommands {
    let set = script.host(&step_line(by_s));
    let status = script.kiosctl("status -o json");
    let restart = script.kiosctl("restart kubelet");
    let mut polls = Vec::new();
    for _ in 0..POLLS {
        script.sleep_ms(POLL_MS);
        polls.push(script.kiosctl("status -o json"));
    }
    StepCommands {
        set,
        status,
        restart,
        polls,
    }
}

fn status_of(vm: &mut Vm, n: u32) -> serde_json::Value {
    let cmd = vm.wait_admin(n, deadline::COMMAND).must();
    assert_eq!(cmd.rc, Some(0), "{}", cmd.text());
    cmd.json()
        .unwrap_or_else(|| panic!("status JSON:\n{}", cmd.text()))
}

fn number(status: &serde_json::Value, field: &str) -> i64 {
    status["node"][field]
        .as_i64()
        .unwrap_or_else(|| panic!("no node.{field} in {status}"))
}

/// init's kernel-log lines about the clock, in order.
fn clock_lines(vm: &mut Vm) -> Vec<String> {
    vm.console()
        .texts()
        .iter()
        .filter(|l| l.contains("kiOS") && l.contains("wall clock "))
        .map(|l| l.to_string())
        .collect()
}

/// Polls the console until init has logged `count` clock lines (they come
/// on the kernel's console as the set happens; a status reply after the
/// set may be read first), or the command deadline passes.
fn wait_clock_lines(vm: &mut Vm, count: usize) -> Vec<String> {
    let end = Instant::now() + deadline::COMMAND;
    loop {
        vm.refresh().must();
        let lines = clock_lines(vm);
        if lines.len() >= count || Instant::now() >= end {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The size in milliseconds of the step a line reports, signed.
fn step_of(line: &str) -> (String, i64) {
    let rest = line
        .split_once("wall clock stepped ")
        .unwrap_or_else(|| panic!("not a step line: {line}"))
        .1;
    let (direction, rest) = rest.split_once(" by ").expect("direction");
    let seconds = rest.split_once(" s (now ").expect("amount").0;
    let (whole, frac) = seconds.split_once('.').unwrap_or((seconds, "0"));
    let frac = format!("{frac:0<3}");
    let ms: i64 = whole.parse::<i64>().expect("seconds") * 1000 + frac[..3].parse::<i64>().unwrap();
    let sign = if direction == "backward" { -1 } else { 1 };
    (direction.to_string(), sign * ms)
}

/// One step as the node reported it: the kernel-log line, `status`, the
/// kubelet restarted and connected again. Returns the status after it.
fn check_step(
    vm: &mut Vm,
    commands: &StepCommands,
    before: &serde_json::Value,
    want: (&str, i64, i64),
    steps: i64,
) -> serde_json::Value {
    let (direction, low_ms, high_ms) = want;
    let set = vm.wait_admin(commands.set, deadline::COMMAND).must();
    assert_eq!(set.rc, Some(0), "date -s:\n{}", set.text());
    let after = status_of(vm, commands.status);

    // init's line for this step.
    let lines = wait_clock_lines(vm, steps as usize);
    assert_eq!(
        lines.len() as i64,
        steps,
        "one kernel-log line per step: {lines:#?}"
    );
    let line = lines.last().expect("a line");
    let (said, step_ms) = step_of(line);
    assert_eq!(said, direction, "{line}");
    assert!(
        (low_ms..=high_ms).contains(&step_ms),
        "step {step_ms} ms not within {low_ms}..={high_ms}: {line}"
    );
    assert!(
        line.contains("uptime, back-off and shutdown bounds follow the monotonic clock"),
        "{line}"
    );

    // status: counted, signed, and the same figure as the line.
    assert_eq!(number(&after, "clock_steps"), steps, "{after}");
    assert_eq!(number(&after, "last_clock_step_ms"), step_ms, "{after}");
    // The node's clock moved by the step, uptime did not: between the two
    // replies both clocks advanced by the same few seconds, plus the step
    // on the wall clock only.
    let uptime = number(&after, "uptime_ms") - number(before, "uptime_ms");
    let wall = number(&after, "now_ms") - number(before, "now_ms");
    assert!(
        (0..120_000).contains(&uptime),
        "uptime_ms jumped by {uptime} ms across a step of {step_ms} ms (monotonic?)"
    );
    assert!(
        (wall - step_ms - uptime).abs() < 2_000,
        "now_ms moved {wall} ms, uptime {uptime} ms, step {step_ms} ms"
    );
    assert_eq!(
        after["node"]["boot_ms"], before["node"]["boot_ms"],
        "boot_ms is this boot's identity"
    );
    // Ages stay right: cri-o started after boot and has run since, so its
    // age (now_ms - since_ms, kiosctl's FOR) is between 0 and the uptime,
    // whichever way the clock went (its since_ms moved with the clock).
    let crio = service(&after, "crio");
    let age = number(&after, "now_ms") - crio["since_ms"].as_i64().expect("crio since_ms");
    assert!(
        (0..=number(&after, "uptime_ms")).contains(&age),
        "cri-o's age {age} ms after a step of {step_ms} ms: {after}"
    );

    // The node keeps doing everything else: restart kubelet gives a new
    // kubelet, which connects again.
    let old = service(&after, "kubelet")["pid"]
        .as_u64()
        .expect("kubelet pid");
    let restart = vm.wait_admin(commands.restart, deadline::COMMAND).must();
    assert_eq!(restart.rc, Some(0), "restart kubelet:\n{}", restart.text());
    let mut renewed = None;
    for &n in &commands.polls {
        let poll = vm.wait_admin(n, deadline::COMMAND).must();
        let Some(status) = poll.json() else { continue };
        let kubelet = service(&status, "kubelet");
        if kubelet["state"] == "running"
            && kubelet["pid"].as_u64().is_some_and(|p| p != old)
            && status["node"]["graceful_shutdown_armed"] == true
        {
            renewed = Some(status);
            break;
        }
    }
    renewed.unwrap_or_else(|| {
        panic!(
            "no status within {POLLS} polls showed a new, connected kubelet after the step; console {}",
            vm.config().console_path().display()
        )
    })
}

#[test]
fn wall_clock_steps_are_reported_and_change_nothing_else() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_clock");
    let mut script = Script::new();
    let before_n = script.kiosctl("status -o json");
    let back = add_step(&mut script, -3 * DAY_S);
    let forward = add_step(&mut script, DAY_S);
    let table_n = script.kiosctl("status");
    let shutdown_n = script.kiosctl("shutdown");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();

    let before = status_of(&mut vm, before_n);
    assert_eq!(number(&before, "clock_steps"), 0, "{before}");
    assert_eq!(number(&before, "last_clock_step_ms"), 0, "{before}");
    assert!(
        clock_lines(&mut vm).is_empty(),
        "no clock line before a step"
    );

    let day_ms = DAY_S * 1000;
    let after_back = check_step(
        &mut vm,
        &back,
        &before,
        ("backward", -3 * day_ms - 1_000, -3 * day_ms),
        1,
    );
    let after_forward = check_step(
        &mut vm,
        &forward,
        &after_back,
        ("forward", day_ms - 1_000, day_ms),
        2,
    );
    assert_eq!(number(&after_forward, "clock_steps"), 2);

    // kiosctl shows it.
    let table = vm.wait_admin(table_n, deadline::COMMAND).must();
    assert_eq!(table.rc, Some(0), "{}", table.text());
    let text = table.text();
    assert!(
        text.lines().any(|l| l.starts_with("clock")
            && l.contains("wall clock stepped 2 times since boot, last forward by ")
            && (l.contains(" by 23h 59m ") || l.contains(" by 1day "))),
        "kiosctl status shows the steps:\n{text}"
    );

    // Three kubelets: the first and one per restart.
    let kubelets = starts(vm.console().lines(), "kubelet");
    assert_eq!(kubelets.len(), 3, "{kubelets:?}");

    // Then a graceful shutdown, and the data partition is clean.
    vm.wait_for("KIOS-E2E kubelet shutdown-event", deadline::COMMAND)
        .must();
    vm.wait_for("KIOS-E2E kubelet grace-done", deadline::COMMAND)
        .must();
    let exit = vm.wait_exit(deadline::POWER_OFF).must();
    assert!(exit.success(), "qemu exit {exit}");
    let texts = vm.console().texts().join("\n");
    assert!(texts.contains("reboot: Power down"), "powered off");
    assert!(!texts.contains("Kernel panic"), "kernel panic");
    if let Ok(cmd) = vm.admin(shutdown_n) {
        if cmd.rc.is_some() {
            assert_eq!(cmd.rc, Some(0), "kiosctl shutdown:\n{}", cmd.text());
        }
    }
    let fsck = node
        .disk()
        .fsck()
        .unwrap_or_else(|e| panic!("after the clock steps and the shutdown: {e}"));
    assert_eq!(clock_lines(&mut vm).len(), 2, "no more clock lines");
    for line in clock_lines(&mut vm) {
        eprintln!("vm_clock: {line}");
    }
    let summary = fsck.lines().find(|l| l.contains(" files (")).unwrap_or("");
    eprintln!("vm_clock: e2fsck -fn: {summary}");
    eprintln!(
        "vm_clock: prepare {:?}, boot to power-off {:?}, whole test {:?}",
        node.prepare_time,
        vm.elapsed(),
        t0.elapsed()
    );
}
