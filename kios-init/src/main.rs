//! The kios-init binary: refuses to run unless it is PID 1, reads the boot
//! parameters, runs the boot path, then hands over to the runtime (which
//! never returns: the node ends in reboot(2)).
//!
//! Exit codes: 2 = not PID 1. There is no other exit: PID 1 never ends.
//!
//! Boot parameters besides the boot side's (`datapart=`,
//! `kios.datapart_timeout=`, `kios.log=`): `kios.power_button=off` stops
//! init from reading /dev/input (for sandboxes that share the host's /dev).

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

    let mut milestones = Milestones::new();
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    // /proc is usually not mounted yet; then the environment is all there is.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = BootConfig::from_env_and_cmdline(&env, &cmdline);

    let report = boot::early_boot(&sys::LinuxSys, &config, &mut milestones);
    // /proc is mounted now: parameters with a dot never reach the
    // environment, so look at the kernel command line too.
    let cmdline = boot::read_cmdline(&sys::LinuxSys);
    // The configuration the boot path used (it re-reads the command line).
    let config = config.with_cmdline(&cmdline);

    let node = runtime::node_info(&report, &config.datapart);
    let mut paths = Paths::default();
    if node.datapart.as_ref().is_some_and(|d| d.mounted) {
        paths.etc_upper = Some(PathBuf::from("/var/meta/etc"));
    }
    let power_button = boot_flag(&env, &cmdline, "kios.power_button") != Some("off");
    runtime::run(
        RuntimeConfig {
            paths,
            node,
            delete_after_start: Some(PathBuf::from("/init")),
            power_button,
            policy: BackoffPolicy::default(),
        },
        milestones,
    )
}

/// A `key=value` boot parameter: the environment first, then /proc/cmdline.
fn boot_flag<'a>(env: &'a [(String, String)], cmdline: &'a str, key: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .or_else(|| {
            cmdline
                .split_whitespace()
                .filter_map(|word| word.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
}
