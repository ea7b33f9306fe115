//! The boot plan of kios-init, run before any child exists: boot
//! parameters ([`BootConfig`]), then [`early_boot`]: base mounts, kernel
//! log flush, early kernel modules, the data partition and its layout, the
//! seccomp bind, hostname, `lo` up, forwarding, and Ctrl-Alt-Del to SIGINT.
//! Each step is a boot milestone. Nothing here panics or fails as a whole:
//! problems are kernel-logged and collected in [`BootReport::warnings`].

pub mod argv;
pub mod datapart;
pub mod gpt;
pub mod grace;
pub mod kernlog;
pub mod milestones;
pub mod modules;
pub mod mounts;
pub mod netsetup;
pub mod teardown;

use crate::boot::milestones::Milestones;
use crate::kmsg::{self, LogTarget};
use crate::sys::Sys;
use datapart::DatapartSpec;
pub use datapart::DatapartStatus;
use std::path::Path;
use std::time::Duration;

/// The boot parameter keys init reads.
pub const BOOT_KEYS: [&str; 4] = [
    "datapart",
    "kios.datapart_timeout",
    "kios.log",
    "kios.power_button",
];

/// Default wait for the data partition.
pub const DEFAULT_DATAPART_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted `kios.datapart_timeout`.
pub const MAX_DATAPART_TIMEOUT: Duration = Duration::from_secs(3600);

/// The boot parameters init understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub datapart: DatapartSpec,
    pub datapart_timeout: Duration,
    pub log: LogTarget,
    /// `kios.power_button=off` stops init from reading /dev/input (for
    /// sandboxes that share the host's /dev); `on` is the default.
    pub power_button: bool,
    /// Bad values met while parsing (each replaced by its default).
    pub warnings: Vec<String>,
    /// The boot parameters found in the environment (only the keys above),
    /// kept so [`BootConfig::with_cmdline`] can re-read the command line
    /// once /proc is mounted without losing the environment's priority.
    pub env: Vec<(String, String)>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            datapart: DatapartSpec::Auto,
            datapart_timeout: DEFAULT_DATAPART_TIMEOUT,
            log: LogTarget::Kmsg,
            power_button: true,
            warnings: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// Split a kernel command line into `key=value` words (double quotes
/// group words, as the kernel does). Words without `=` get an empty value.
pub fn cmdline_params(cmdline: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w, String::new()),
        })
        .collect()
}

fn parse_timeout(v: &str) -> Result<Duration, String> {
    let nanos = crate::decimal::scaled(v.trim(), 1_000_000_000)
        .ok_or_else(|| format!("kios.datapart_timeout={v:?}: not a number of seconds"))?;
    if nanos > MAX_DATAPART_TIMEOUT.as_nanos() {
        return Err(format!(
            "kios.datapart_timeout={v:?}: out of range 0..={}",
            MAX_DATAPART_TIMEOUT.as_secs()
        ));
    }
    // At most MAX_DATAPART_TIMEOUT: fits in u64 nanoseconds.
    Ok(Duration::from_nanos(nanos as u64))
}

fn parse_power_button(v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("kios.power_button={v:?}: expected on or off")),
    }
}

fn parse_log(v: &str) -> Result<LogTarget, String> {
    match v {
        "kmsg" => Ok(LogTarget::Kmsg),
        "stderr" => Ok(LogTarget::Stderr),
        _ => Err(format!("kios.log={v:?}: expected kmsg or stderr")),
    }
}

impl BootConfig {
    /// Read the boot parameters: each key from the environment first
    /// (the kernel passes unknown `key=value` parameters without a dot to
    /// init's environment), else from the kernel command line (the last
    /// occurrence wins, like the kernel). Never fails: a bad value keeps
    /// the default and adds a warning.
    pub fn from_env_and_cmdline(env: &[(String, String)], cmdline: &str) -> BootConfig {
        let params = cmdline_params(cmdline);
        let lookup = |key: &str| -> Option<String> {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    params
                        .iter()
                        .rev()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                })
        };
        let mut cfg = BootConfig {
            env: env
                .iter()
                .filter(|(k, _)| BOOT_KEYS.contains(&k.as_str()))
                .cloned()
                .collect(),
            ..BootConfig::default()
        };
        if let Some(v) = lookup("datapart") {
            match DatapartSpec::parse(&v) {
                Ok(spec) => cfg.datapart = spec,
                Err(e) => cfg.warnings.push(format!("{e}; using datapart=auto")),
            }
        }
        if let Some(v) = lookup("kios.datapart_timeout") {
            match parse_timeout(&v) {
                Ok(d) => cfg.datapart_timeout = d,
                Err(e) => cfg.warnings.push(format!(
                    "{e}; using {}s",
                    DEFAULT_DATAPART_TIMEOUT.as_secs()
                )),
            }
        }
        if let Some(v) = lookup("kios.log") {
            match parse_log(&v) {
                Ok(t) => cfg.log = t,
                Err(e) => cfg.warnings.push(format!("{e}; using kmsg")),
            }
        }
        if let Some(v) = lookup("kios.power_button") {
            match parse_power_button(&v) {
                Ok(on) => cfg.power_button = on,
                Err(e) => cfg.warnings.push(format!("{e}; using on")),
            }
        }
        cfg
    }

    /// The same environment with a (new) kernel command line: init starts
    /// before /proc is mounted, so parameters with a dot (which the kernel
    /// never puts in init's environment) are only seen after the base
    /// mounts. [`early_boot`] calls this.
    /// Keys that neither source sets keep their current value.
    pub fn with_cmdline(&self, cmdline: &str) -> BootConfig {
        let fresh = BootConfig::from_env_and_cmdline(&self.env, cmdline);
        let params = cmdline_params(cmdline);
        let set = |key: &str| self.env.iter().chain(params.iter()).any(|(k, _)| k == key);
        BootConfig {
            datapart: if set("datapart") {
                fresh.datapart
            } else {
                self.datapart.clone()
            },
            datapart_timeout: if set("kios.datapart_timeout") {
                fresh.datapart_timeout
            } else {
                self.datapart_timeout
            },
            log: if set("kios.log") { fresh.log } else { self.log },
            power_button: if set("kios.power_button") {
                fresh.power_button
            } else {
                self.power_button
            },
            warnings: fresh.warnings,
            env: self.env.clone(),
        }
    }

    /// [`BootConfig::from_env_and_cmdline`] with this process's environment
    /// and /proc/cmdline (read after /proc is mounted; before, pass "").
    pub fn from_process(cmdline: &str) -> BootConfig {
        let env: Vec<(String, String)> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        BootConfig::from_env_and_cmdline(&env, cmdline)
    }
}

/// What boot did, for `status` and the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    pub datapart: DatapartStatus,
    pub hostname: String,
    pub warnings: Vec<String>,
    /// The image's version fields, read before the /etc overlay hides them.
    pub release: kios_rootfs::ImageRelease,
    /// The boot parameters the boot path used (with the command line read
    /// once /proc was mounted): the runtime takes its settings from here.
    pub config: BootConfig,
}

/// Record a milestone and put it in the kernel log (debug level).
fn mark(ms: &mut Milestones, name: &str) {
    ms.record(name);
    if let Some(m) = ms.list().last() {
        crate::kmsg::log(
            kmsg::Level::Debug,
            format_args!(
                "milestone {} at {} ms",
                m.name,
                crate::decimal::Millis::new(m.offset_us, 2)
            ),
        );
    }
}

/// Largest /proc/cmdline read.
const CMDLINE_LIMIT: usize = 64 * 1024;

/// Read /proc/cmdline through `sys` ("" when unreadable).
pub fn read_cmdline(sys: &dyn Sys) -> String {
    sys.read_file(Path::new("/proc/cmdline"), CMDLINE_LIMIT)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Boot the node up to the point where services can start.
///
/// Order: base mounts -> kernel log flush -> early modules -> data
/// partition (bounded wait) and layout -> seccomp bind -> hostname -> `lo`
/// up -> forwarding -> Ctrl-Alt-Del to SIGINT. Each step is a milestone.
/// Blocking is fine here: no children exist yet. Never panics.
pub fn early_boot(sys: &dyn Sys, cfg: &BootConfig, ms: &mut Milestones) -> BootReport {
    kmsg::set_target(cfg.log);
    crate::kinfo!("kiOS Init");
    let mut warnings = Vec::new();

    let base = mounts::mount_base(sys);
    warnings.extend(base.failures);
    // /proc is there now: re-read the parameters with the command line.
    let cfg = &cfg.with_cmdline(&read_cmdline(sys));
    kmsg::set_target(cfg.log);
    kmsg::flush_pending();
    // The command line can only be renamed once /proc is there.
    sys.set_process_name("kiOS");
    if cfg.log == LogTarget::Kmsg {
        // The kernel rate-limits user writes to /dev/kmsg (10 lines per 5 s)
        // unless told otherwise; init's boot and shutdown lines matter.
        // Only on a real node: in the namespace harness (kios.log=stderr)
        // this sysctl would be the host's. The kernel wants the newline.
        if let Err(e) = sys.write_existing(Path::new("/proc/sys/kernel/printk_devkmsg"), b"on\n") {
            crate::kwarn!("write /proc/sys/kernel/printk_devkmsg: {e}");
        }
    }
    for w in &cfg.warnings {
        crate::kwarn!("boot parameter {w}");
    }
    warnings.extend(cfg.warnings.iter().cloned());
    mark(ms, "mounts");

    // The image's own os-release: before the data partition's /etc overlay.
    let release = sys
        .read_file(
            Path::new("/etc/os-release"),
            kios_rootfs::osrelease::OS_RELEASE_LIMIT,
        )
        .map(|b| kios_rootfs::ImageRelease::parse(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();

    let loaded = modules::load_early_modules(sys);
    warnings.extend(loaded.errors);
    mark(ms, "modules");

    let (datapart, dp_warnings) = datapart::setup(sys, &cfg.datapart, cfg.datapart_timeout);
    warnings.extend(dp_warnings);
    mark(ms, "datapart");

    let net = netsetup::setup(sys);
    warnings.extend(net.warnings);
    mark(ms, "network");

    crate::kinfo!(
        "boot done in {} ms: hostname {}, data partition {}",
        crate::decimal::Millis::new(ms.list().last().map_or(0, |m| m.offset_us), 1),
        net.hostname,
        match &datapart {
            DatapartStatus::Disabled => "disabled".to_string(),
            DatapartStatus::Mounted { device } => format!("mounted from {device}"),
            DatapartStatus::ReadOnly { device, .. } => format!("READ-ONLY from {device}"),
            DatapartStatus::Missing { wanted, .. } => format!("MISSING ({wanted})"),
        }
    );
    BootReport {
        datapart,
        hostname: net.hostname,
        warnings,
        release,
        config: cfg.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, FakeSys};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_parameters() {
        let c = BootConfig::from_env_and_cmdline(&[], "console=ttyS0 quiet");
        assert_eq!(c, BootConfig::default());
        assert_eq!(c.datapart, DatapartSpec::Auto);
        assert_eq!(c.datapart_timeout, Duration::from_secs(30));
        assert_eq!(c.log, LogTarget::Kmsg);
    }

    #[test]
    fn environment_wins_over_cmdline() {
        let c = BootConfig::from_env_and_cmdline(
            &env(&[("datapart", "none"), ("kios.log", "stderr")]),
            "datapart=/dev/vda1 kios.log=kmsg kios.datapart_timeout=5",
        );
        assert_eq!(c.datapart, DatapartSpec::None);
        assert_eq!(c.log, LogTarget::Stderr);
        assert_eq!(c.datapart_timeout, Duration::from_secs(5));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn cmdline_values_and_last_occurrence() {
        let c = BootConfig::from_env_and_cmdline(
            &[],
            "datapart=auto datapart=/dev/nvme0n1p3 kios.datapart_timeout=0.5\n",
        );
        assert_eq!(c.datapart, DatapartSpec::Device("/dev/nvme0n1p3".into()));
        assert_eq!(c.datapart_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_fall_back_with_warnings() {
        let c = BootConfig::from_env_and_cmdline(
            &env(&[("datapart", "sda1")]),
            "kios.datapart_timeout=soon kios.log=syslog",
        );
        assert_eq!(c.datapart, DatapartSpec::Auto);
        assert_eq!(c.datapart_timeout, DEFAULT_DATAPART_TIMEOUT);
        assert_eq!(c.log, LogTarget::Kmsg);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        let c = BootConfig::from_env_and_cmdline(&[], "kios.datapart_timeout=-1");
        assert_eq!(c.warnings.len(), 1);
        let c = BootConfig::from_env_and_cmdline(&[], "kios.datapart_timeout=99999");
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn the_power_button_is_read_once_with_the_rest() {
        assert!(BootConfig::default().power_button);
        let off = BootConfig::default().with_cmdline("quiet kios.power_button=off");
        assert!(!off.power_button);
        assert!(off.warnings.is_empty());
        // Not on this command line: the earlier value stays.
        assert!(!off.with_cmdline("quiet").power_button);
        let bad = BootConfig::from_env_and_cmdline(&[], "kios.power_button=maybe");
        assert!(bad.power_button);
        assert_eq!(bad.warnings.len(), 1, "{:?}", bad.warnings);
    }

    #[test]
    fn the_report_carries_the_configuration_boot_used() {
        let sys = FakeSys::new();
        sys.add_file("/proc/cmdline", "datapart=none kios.power_button=off\n");
        let mut ms = Milestones::new();
        let report = early_boot(&sys, &BootConfig::default(), &mut ms);
        assert_eq!(report.config.datapart, DatapartSpec::None);
        assert!(!report.config.power_button);
    }

    #[test]
    fn dotted_parameters_from_a_later_cmdline_keep_env_priority() {
        // Before /proc: only the environment (dotted keys never reach it).
        let early =
            BootConfig::from_env_and_cmdline(&env(&[("datapart", "/dev/vdb1"), ("HOME", "/")]), "");
        assert_eq!(early.env, env(&[("datapart", "/dev/vdb1")]));
        let later = early.with_cmdline("datapart=auto kios.datapart_timeout=7 kios.log=stderr");
        assert_eq!(later.datapart, DatapartSpec::Device("/dev/vdb1".into()));
        assert_eq!(later.datapart_timeout, Duration::from_secs(7));
        assert_eq!(later.log, LogTarget::Stderr);
    }

    #[test]
    fn early_boot_reads_the_cmdline_after_mounting_proc() {
        let sys = FakeSys::new();
        sys.add_file(
            "/proc/cmdline",
            "console=ttyS0 datapart=/dev/vdz1 kios.datapart_timeout=0 kios.log=stderr\n",
        );
        let cfg = BootConfig::from_env_and_cmdline(&[], "");
        let r = early_boot(&sys, &cfg, &mut Milestones::new());
        assert_eq!(
            r.datapart,
            DatapartStatus::Missing {
                wanted: "/dev/vdz1".into(),
                reason: "not found within 0s".into()
            }
        );
    }

    #[test]
    fn early_boot_reports_the_image_release() {
        let sys = FakeSys::new();
        sys.add_file(
            "/etc/os-release",
            "ID=kios\nVERSION_ID=\"1.2\"\nBUILD_ID=\"b7\"\n",
        );
        let cfg = BootConfig::from_env_and_cmdline(&env(&[("datapart", "none")]), "");
        let r = early_boot(&sys, &cfg, &mut Milestones::new());
        assert_eq!(r.release.version.as_deref(), Some("1.2"));
        assert_eq!(r.release.build_id.as_deref(), Some("b7"));
        // No os-release: no version, and boot goes on.
        let r = early_boot(&FakeSys::new(), &cfg, &mut Milestones::new());
        assert_eq!(r.release, kios_rootfs::ImageRelease::default());
    }

    #[test]
    fn a_real_node_lifts_the_kmsg_rate_limit() {
        let sys = FakeSys::new();
        sys.add_file("/proc/sys/kernel/printk_devkmsg", "ratelimit\n");
        let cfg = BootConfig::from_env_and_cmdline(&env(&[("datapart", "none")]), "");
        early_boot(&sys, &cfg, &mut Milestones::new());
        assert_eq!(
            sys.file("/proc/sys/kernel/printk_devkmsg").as_deref(),
            Some(&b"on\n"[..])
        );
    }

    #[test]
    fn cmdline_quotes_group_words() {
        let p = cmdline_params(r#"a=1 "b=two words" c single"#);
        assert_eq!(
            p,
            env(&[("a", "1"), ("b", "two words"), ("c", ""), ("single", "")])
        );
    }

    #[test]
    fn early_boot_runs_the_steps_in_order() {
        let sys = FakeSys::new();
        sys.add_file("/etc/hostname", "node-1\n");
        sys.add_file("/proc/sys/net/ipv4/ip_forward", "0");
        sys.add_file("/proc/sys/net/ipv6/conf/all/forwarding", "0");
        let cfg = BootConfig {
            datapart: DatapartSpec::None,
            log: LogTarget::Stderr,
            ..BootConfig::default()
        };
        let mut ms = Milestones::new();
        let r = early_boot(&sys, &cfg, &mut ms);
        assert_eq!(r.datapart, DatapartStatus::Disabled);
        assert_eq!(r.hostname, "node-1");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let names: Vec<&str> = ms.list().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["mounts", "modules", "datapart", "network"]);
        let calls = sys.calls();
        let pos = |c: &Call| calls.iter().position(|x| x == c).unwrap_or(usize::MAX);
        let proc_mount = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { target, .. } if target == "/proc"))
            .expect("proc");
        assert_eq!(
            proc_mount,
            calls
                .iter()
                .position(|c| matches!(c, Call::Mount { .. }))
                .expect("first mount")
        );
        assert!(pos(&Call::SetHostname("node-1".into())) > proc_mount);
        assert!(pos(&Call::LinkUp("lo".into())) < pos(&Call::DisableCad));
        assert!(pos(&Call::ProcessName("kiOS".into())) > proc_mount);
        assert_eq!(
            sys.file("/proc/sys/net/ipv4/ip_forward").as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            sys.file("/proc/sys/net/ipv6/conf/all/forwarding")
                .as_deref(),
            Some(&b"1"[..])
        );
        // The harness logs to stderr: the printk sysctl is untouched.
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Write(p, _) if p.contains("printk"))));
    }
}
