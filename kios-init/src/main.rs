//! The kios-init binary: refuses to run unless it is PID 1, reads the boot
//! parameters, runs the boot path, then hands over to the runtime (which
//! never returns: the node ends in reboot(2)).
//!
//! Exit codes: 2 = not PID 1. There is no other exit: PID 1 never ends.
//!
//! Boot parameters (`datapart=`, `kios.datapart_timeout=`, `kios.log=`,
//! `kios.power_button=`) are read by `boot::BootConfig`, once.

use std::path::PathBuf;

use kios_init::boot::milestones::Milestones;
use kios_init::boot::{self, BootConfig};
use kios_init::runtime::state::Paths;
use kios_init::runtime::supervisor::BackoffPolicy;
use kios_init::runtime::{self, RuntimeConfig};
use kios_init::sys;

fn main() {
    // Safety guard, deliberately first: kios-init mounts over /proc, /dev and
    // /sys and at shutdown signals every process. Outside PID 1 of its own
    // namespace it would wreck the machine it runs on.
    if std::process::id() != 1 {
        eprintln!(
            "kios-init: refusing to run: this program must be PID 1 (it is pid {}); \
             run it as a kernel's init or as PID 1 of a fresh PID namespace",
            std::process::id()
        );
        std::process::exit(2);
    }
    // A panic (a bug) is logged and ends the node synced (panic.rs).
    kios_init::panic::install();

    let mut milestones = Milestones::new();
    // /proc is usually not mounted yet; then the environment is all there
    // is. The boot path reads the command line again once /proc is there
    // and reports the configuration it used.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = BootConfig::from_process(&cmdline);
    let report = boot::early_boot(&sys::LinuxSys, &config, &mut milestones);

    let node = runtime::node_info(&report);
    let mut paths = Paths::default();
    if node.datapart.as_ref().is_some_and(|d| d.mounted) {
        paths.etc_upper = Some(PathBuf::from("/var/meta/etc"));
    }
    // The reference of `files` and `verify`, read before any other
    // process exists (nothing else has run since the kernel started us).
    runtime::server::inventory::capture_at_boot(&paths);
    runtime::run(
        RuntimeConfig {
            paths,
            node,
            delete_after_start: Some(PathBuf::from("/init")),
            power_button: report.config.power_button,
            policy: BackoffPolicy::default(),
        },
        milestones,
        std::sync::Arc::new(sys::LinuxSys),
    )
}
