//! Network and identity basics of boot: the hostname from /etc/hostname
//! (trimmed and validated), `lo` up (cri-o listens on localhost), IPv4 and
//! IPv6 forwarding on, and Ctrl-Alt-Del turned into SIGINT to init
//! (reboot(RB_DISABLE_CAD)) so it runs the graceful reboot.

use crate::sys::Sys;
use std::path::Path;

pub const HOSTNAME_PATH: &str = "/etc/hostname";
pub const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
pub const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
/// Longest hostname the kernel accepts.
pub const HOSTNAME_MAX: usize = 64;

/// A hostname that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("empty hostname")]
    Empty,
    #[error("hostname longer than {HOSTNAME_MAX} bytes")]
    TooLong,
    #[error("hostname {0:?}: only A-Z a-z 0-9 '-' '.' allowed, labels non-empty and not starting or ending with '-'")]
    Invalid(String),
}

/// The hostname in an /etc/hostname text: the first line, trimmed, checked
/// against RFC 1123 rules.
pub fn parse_hostname(text: &str) -> Result<String, HostnameError> {
    let name = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if name.len() > HOSTNAME_MAX {
        return Err(HostnameError::TooLong);
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !ok {
        return Err(HostnameError::Invalid(name.to_string()));
    }
    Ok(name.to_string())
}

/// What the network step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetReport {
    /// The hostname in effect afterwards.
    pub hostname: String,
    pub warnings: Vec<String>,
}

fn note(warnings: &mut Vec<String>, msg: String) {
    crate::kerr!("{msg}");
    warnings.push(msg);
}

/// Set the hostname from /etc/hostname when present.
pub fn set_hostname(sys: &dyn Sys, warnings: &mut Vec<String>) -> String {
    match sys.read_file(Path::new(HOSTNAME_PATH), 4096) {
        Ok(bytes) => match parse_hostname(&String::from_utf8_lossy(&bytes)) {
            Ok(name) => match sys.sethostname(&name) {
                Ok(()) => {
                    crate::kinfo!("hostname {name}");
                    return name;
                }
                Err(e) => note(warnings, format!("set hostname {name}: {e}")),
            },
            Err(e) => note(warnings, format!("{HOSTNAME_PATH}: {e}")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => note(warnings, format!("read {HOSTNAME_PATH}: {e}")),
    }
    sys.hostname().unwrap_or_default()
}

/// Hostname, `lo` up, forwarding, Ctrl-Alt-Del. Never fails as a whole.
pub fn setup(sys: &dyn Sys) -> NetReport {
    let mut warnings = Vec::new();
    let hostname = set_hostname(sys, &mut warnings);
    if let Err(e) = sys.set_link_up("lo") {
        note(&mut warnings, format!("bring up lo: {e}"));
    }
    for path in [IPV4_FORWARD, IPV6_FORWARD] {
        if let Err(e) = sys.write_existing(Path::new(path), b"1") {
            note(&mut warnings, format!("enable forwarding {path}: {e}"));
        }
    }
    match sys.disable_ctrl_alt_del() {
        Ok(()) => {}
        // A child PID namespace (the test harness) refuses it; the kernel
        // then never reboots on Ctrl-Alt-Del on our behalf anyway.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            crate::kinfo!("ctrl-alt-del setting not available here (child pid namespace)");
        }
        Err(e) => note(&mut warnings, format!("disable ctrl-alt-del reboot: {e}")),
    }
    NetReport { hostname, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, FakeSys};

    #[test]
    fn hostname_table() {
        let ok = [
            ("node-1\n", "node-1"),
            ("  a.b.c  \n", "a.b.c"),
            ("\n\nx\ny\n", "x"),
            ("N0DE", "N0DE"),
        ];
        for (text, want) in ok {
            assert_eq!(parse_hostname(text).as_deref(), Ok(want), "{text:?}");
        }
        assert_eq!(parse_hostname(""), Err(HostnameError::Empty));
        assert_eq!(parse_hostname(" \n\t\n"), Err(HostnameError::Empty));
        assert_eq!(parse_hostname(&"a".repeat(65)), Err(HostnameError::TooLong));
        for bad in ["-a", "a-", "a..b", "a b", "a_b", "é", ".a", "a."] {
            assert!(
                matches!(parse_hostname(bad), Err(HostnameError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(parse_hostname(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn setup_sets_everything() {
        let sys = FakeSys::new();
        sys.add_file(HOSTNAME_PATH, "worker-7\n");
        sys.add_file(IPV4_FORWARD, "0");
        sys.add_file(IPV6_FORWARD, "0");
        let r = setup(&sys);
        assert_eq!(
            r,
            NetReport {
                hostname: "worker-7".into(),
                warnings: vec![]
            }
        );
        assert_eq!(
            sys.calls(),
            [
                Call::SetHostname("worker-7".into()),
                Call::LinkUp("lo".into()),
                Call::Write(IPV4_FORWARD.into(), "1".into()),
                Call::Write(IPV6_FORWARD.into(), "1".into()),
                Call::DisableCad,
            ]
        );
    }

    #[test]
    fn setup_without_hostname_file_keeps_the_kernel_hostname_and_reports_failures() {
        let sys = FakeSys::new();
        sys.add_file(IPV4_FORWARD, "0");
        // No IPv6 (ipv6.disable=1): the write fails and is reported.
        sys.fail("link_up", "lo", libc::ENODEV);
        sys.fail("cad", "", libc::EINVAL);
        let r = setup(&sys);
        assert_eq!(r.hostname, "localhost");
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("bring up lo"));
        assert!(r.warnings[1].contains(IPV6_FORWARD));
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::SetHostname(_))));
    }

    #[test]
    fn invalid_hostname_is_not_set() {
        let sys = FakeSys::new();
        sys.add_file(HOSTNAME_PATH, "bad name\n");
        let mut w = Vec::new();
        assert_eq!(set_hostname(&sys, &mut w), "localhost");
        assert_eq!(w.len(), 1);
        assert!(sys.calls().is_empty());
    }
}
