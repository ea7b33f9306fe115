//! `kios-demo`: the README's first command (run by `scripts/demo`). Builds
//! kiOS, boots a node in qemu on Debian's stock kernel with a data disk and
//! shows it working: the boot log, `kiosctl status`, `kiosctl boot` and
//! `kiosctl files` run from inside the node (the kubelet stand-in runs them
//! the way `kubectl debug node` would), then a graceful shutdown, after
//! which the data partition is checked with e2fsck.
//!
//! Usage: `kios-demo [--full-log]` (`--full-log` also prints every kernel
//! message). Exit codes: 0 the demo ran to the end, 1 something failed
//! (the message says what, and where the console log is), 2 usage.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kios_e2e::vm::{self, Node, NodeSpec, Script};

/// Longest the demo waits for the node to finish its script and power off.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

fn say(step: &str) {
    println!("\n==> {step}");
}

fn usage() -> ExitCode {
    eprintln!("usage: kios-demo [--full-log]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut full_log = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--full-log" => full_log = true,
            "-h" | "--help" => {
                println!(
                    "kios-demo: build kiOS and boot a node in qemu (see docs/vm.md)\n\n\
                     usage: kios-demo [--full-log]\n  \
                     --full-log  also print every kernel message of the boot"
                );
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    match run(full_log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nkios-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Which console lines the demo shows (the kernel's own chatter is hidden
/// unless `--full-log`).
fn interesting(line: &str, full_log: bool) -> bool {
    full_log
        || line.contains("kiOS")
        || line.contains("KIOS-E2E")
        || line.contains("Linux version")
        || line.contains("Run /init")
        || line.contains("EXT4-fs")
        || line.contains("reboot: Power down")
        || line.contains("Kernel panic")
}

fn run(full_log: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    say("building the static binaries of the image (kios-init, kiosctl, cri-o and kubelet stand-ins)");
    let artifacts = kios_e2e::artifacts::artifacts().context("building the binaries")?;
    println!("    inputs: {}", artifacts.inputs_dir.display());

    say("fetching Debian's stock kernel (cached under target/kernel after the first run)");
    let kernel = vm::kernel().context("getting the kernel")?;
    println!(
        "    kernel {} ({}), early modules: {}",
        kernel.version,
        kernel.boot_image.display(),
        vm::EARLY_MODULES.join(", ")
    );

    say("building the initramfs and a data disk (GPT, kiOS data partition, ext4)");
    let mut spec = NodeSpec::new("demo");
    spec.disk = spec
        .disk
        .etc_file("kubernetes/node-labels", "demo: \"true\"\nrole: worker\n")
        .etc_file("hostname", "kios-demo\n");
    let mut script = Script::new();
    script.kiosctl("status");
    script.kiosctl("boot");
    script.kiosctl("files");
    script.kiosctl("shutdown");
    spec.script = Some(script);
    let mut node = Node::prepare(&spec).context("preparing the node")?;
    println!(
        "    image {}/initramfs.cpio, disk {}",
        node.dir().display(),
        node.disk().image().display()
    );
    println!(
        "    the kubelet stand-in will run, like an admin in `kubectl debug node`:\n      kiosctl status; kiosctl boot; kiosctl files; kiosctl shutdown"
    );

    say("booting the node in qemu (software emulation; console log below)");
    let mut vm = node.boot().context("starting qemu")?;
    let console_path = vm.config().console_path();
    println!(
        "    qemu pid {}, console {}",
        vm.pid(),
        console_path.display()
    );
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut shown = 0;
    let mut in_block = false;
    let mut stdout = std::io::stdout();
    let exit = loop {
        let exit = vm.refresh().context("reading the console")?;
        let lines = vm.console().lines();
        for line in &lines[shown..] {
            let text = line.text.as_str();
            if let Some(i) = text.find("KIOS-E2E BEGIN ") {
                let command = text[i + "KIOS-E2E BEGIN ".len()..]
                    .split_once(' ')
                    .map(|(_, c)| c)
                    .unwrap_or_default();
                let _ = writeln!(stdout, "\n==> inside the node: {command}");
                in_block = true;
            } else if let Some(i) = text.find("KIOS-E2E END ") {
                let rc = text[i..].split("rc=").nth(1).unwrap_or("?");
                let _ = writeln!(stdout, "    (exit code {rc})\n");
                in_block = false;
            } else if in_block && !text.starts_with('[') {
                let _ = writeln!(stdout, "    {text}");
            } else if interesting(text, full_log) {
                let _ = writeln!(stdout, "  | {text}");
            }
        }
        shown = lines.len();
        let _ = stdout.flush();
        if let Some(status) = exit {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "the node did not power off within {RUN_DEADLINE:?}; console: {}",
                console_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let texts = vm.console().texts().join("\n");
    if texts.contains("Kernel panic") {
        bail!("the kernel panicked; console: {}", console_path.display());
    }
    if !exit.success() || !texts.contains("reboot: Power down") {
        bail!(
            "qemu ended ({exit}) without a clean power-off; console: {}",
            console_path.display()
        );
    }
    say("the node shut down gracefully and powered off; checking its data partition");
    node.disk().fsck().context("checking the data partition")?;
    println!("    e2fsck -fn: clean");
    if let Some(log) = node
        .disk()
        .read_file("/meta/log/kubelet.log")
        .context("reading the kubelet log back")?
    {
        println!(
            "    /var/log/kubelet.log on the data partition: {} bytes, last line: {}",
            log.len(),
            String::from_utf8_lossy(&log).lines().last().unwrap_or("")
        );
    }
    say(&format!(
        "done in {:.0?}; console log {}; see docs/vm.md",
        started.elapsed(),
        console_path.display()
    ));
    Ok(())
}
