//! `kios-demo`: the README's first command (run by `scripts/demo`). Builds
//! kiOS as the disk image a machine boots (a GPT disk with the unified
//! kernel image on its EFI system partition and a data partition), boots it
//! in qemu through UEFI firmware (OVMF) and shows it working: the boot log, `kiosctl status`, `kiosctl boot` and
//! `kiosctl files` run from inside the node (the kubelet stand-in runs them
//! the way `kubectl debug node` would), then a graceful shutdown, after
//! which the data partition is checked with e2fsck.
//!
//! Usage: `kios-demo [--full-log] [--power-button-after SECONDS]`
//! (`--full-log` also prints every kernel message; `--power-button-after`
//! presses the VM's ACPI power button after that long instead of letting
//! the admin script shut the node down: the way to end a demo with a real
//! kubelet from `KIOS_VM_INPUTS`, which runs no script; 90 s by default
//! then). Exit codes: 0 the demo ran to the end, 1 something failed (the
//! message says what, and where the console log is), 2 usage.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kios_e2e::vm::{self, Node, NodeSpec, Script};

/// Longest the demo waits for the node to finish its script and power off.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// Output lines shown per command (`kiosctl files` lists every path).
const MAX_OUTPUT_LINES: usize = 40;

fn say(step: &str) {
    println!("\n==> {step}");
}

const USAGE: &str = "usage: kios-demo [--full-log] [--power-button-after SECONDS]";

fn usage(problem: &str) -> ExitCode {
    eprintln!("kios-demo: {problem}\n{USAGE}");
    ExitCode::from(2)
}

/// Command line options.
struct Options {
    full_log: bool,
    /// Press the power button this long after qemu started.
    power_button_after: Option<Duration>,
}

/// True when `KIOS_VM_INPUTS` brings a real kubelet (which runs no admin
/// script).
fn real_kubelet() -> bool {
    std::env::var_os(vm::image::INPUTS_ENV)
        .is_some_and(|dir| std::path::Path::new(&dir).join("kubelet").is_file())
}

fn main() -> ExitCode {
    let mut options = Options {
        full_log: false,
        power_button_after: real_kubelet().then_some(Duration::from_secs(90)),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--full-log" => options.full_log = true,
            "--power-button-after" => {
                let Some(seconds) = args.next().and_then(|s| s.parse::<u64>().ok()) else {
                    return usage("--power-button-after needs a number of seconds");
                };
                options.power_button_after = Some(Duration::from_secs(seconds));
            }
            "-h" | "--help" => {
                println!(
                    "kios-demo: build kiOS and boot a node in qemu (see docs/vm.md)\n\n{USAGE}\n  \
                     --full-log                      also print every kernel message of the boot\n  \
                     --power-button-after SECONDS    press the ACPI power button then (default with\n  \
                     \x20                               a real kubelet in KIOS_VM_INPUTS: 90)"
                );
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    match run(&options) {
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
        || line.contains("BdsDxe: starting")
        || line.contains("EFI stub:")
        || line.contains("Run /init")
        || line.contains("EXT4-fs")
        || line.contains("reboot: Power down")
        || line.contains("Kernel panic")
}

fn run(options: &Options) -> anyhow::Result<()> {
    let full_log = options.full_log;
    let started = Instant::now();
    say("building the static binaries of the image (kios-init, kiosctl, cri-o and kubelet stand-ins)");
    let artifacts = kios_e2e::artifacts::artifacts().context("building the binaries")?;
    println!("    inputs: {}", artifacts.inputs_dir.display());

    say("fetching Debian's stock kernel (cached under target/kernel after the first run)");
    let kernel = vm::kernel().context("getting the kernel")?;
    println!(
        "    kernel {} ({}), early modules: {}",
        kernel.version,
        kernel.vmlinuz.display(),
        vm::EARLY_MODULES.join(", ")
    );

    say("building the disk image: the unified kernel image (EFI stub, kernel, initramfs, command line, os-release) on an EFI system partition, and the data partition (GPT, ext4)");
    let mut spec = NodeSpec::new("demo");
    spec.uefi = true;
    spec.disk = spec
        .disk
        .etc_file("kubernetes/node-labels", "demo: yes\nrole: worker\n")
        .etc_file("hostname", "kios-demo\n");
    let mut script = Script::new();
    script.kiosctl("status");
    script.kiosctl("version");
    script.kiosctl("boot");
    script.kiosctl("files");
    script.kiosctl("files /bin/kubelet");
    script.kiosctl("shutdown");
    spec.script = Some(script);
    let mut node = Node::prepare(&spec).context("preparing the node")?;
    if let Some(image) = node.disk_image() {
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() >> 20).unwrap_or(0);
        println!(
            "    {} ({} MiB; EFI/BOOT/BOOTX64.EFI on the ESP), disk {} ({} MiB raw)\n    kiOS {} build {}, kernel command line: {}",
            image.efi.display(),
            size(&image.efi),
            image.disk.display(),
            size(&image.disk),
            image.release.version.as_deref().unwrap_or("?"),
            image.release.build_id.as_deref().unwrap_or("?"),
            image.cmdline
        );
    }
    if real_kubelet() {
        println!(
            "    a real kubelet from {} runs no admin script: the demo shows the boot and\n    powers the node off with the ACPI power button",
            vm::image::INPUTS_ENV
        );
    } else {
        println!(
            "    the kubelet stand-in will run, like an admin in `kubectl debug node`:\n      kiosctl status; kiosctl version; kiosctl boot; kiosctl files; kiosctl files /bin/kubelet; kiosctl shutdown"
        );
    }

    say("booting the disk in qemu: UEFI firmware (OVMF) -> BOOTX64.EFI -> kernel -> kios-init (software emulation; console log below)");
    let mut vm = node.boot().context("starting qemu")?;
    let console_path = vm.config().console_path();
    println!(
        "    qemu pid {}, console {}",
        vm.pid(),
        console_path.display()
    );
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut power_button_at = options.power_button_after.map(|d| Instant::now() + d);
    let mut shown = 0;
    // Output lines of the admin command being printed: (printed, left out).
    let mut block: Option<(usize, usize)> = None;
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
                block = Some((0, 0));
            } else if let Some(i) = text.find("KIOS-E2E END ") {
                let rc = text[i..].split("rc=").nth(1).unwrap_or("?");
                if let Some((_, left_out)) = block.take().filter(|(_, l)| *l > 0) {
                    let _ = writeln!(stdout, "    ... and {left_out} more lines");
                }
                let _ = writeln!(stdout, "    (exit code {rc})\n");
            } else if let Some((printed, left_out)) = block
                .as_mut()
                .filter(|_| !text.starts_with('[') && !text.contains("KIOS-E2E "))
            {
                if *printed < MAX_OUTPUT_LINES {
                    let _ = writeln!(stdout, "    {text}");
                    *printed += 1;
                } else {
                    *left_out += 1;
                }
            } else if interesting(text, full_log) {
                let _ = writeln!(stdout, "  | {text}");
            }
        }
        shown = lines.len();
        let _ = stdout.flush();
        if let Some(status) = exit {
            break status;
        }
        if power_button_at.is_some_and(|at| Instant::now() >= at) {
            power_button_at = None;
            say("pressing the VM's ACPI power button (qemu monitor: system_powerdown)");
            vm.power_button().context("pressing the power button")?;
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
