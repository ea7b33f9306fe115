//! Finding the system socket, and what to tell the user when none answers.
//!
//! Order: `--socket PATH`; else `KIOS_SOCKET`; else `/run/system.sock` (on
//! the node, or inside PID 1's namespaces via nsenter); else
//! `/host/run/system.sock` (a `kubectl debug node` pod mounts the host's root
//! at /host). An explicit path (flag or variable) is the only one tried.
//!
//! The hidden variable `KIOSCTL_ROOT` puts a prefix in front of the two
//! default paths so tests can exercise the fallback without touching /run.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use kios_protocol::{DEBUG_POD_SOCKET_PATH, SOCKET_PATH};
use thiserror::Error;

/// The environment variable naming the socket.
pub const SOCKET_ENV: &str = "KIOS_SOCKET";

/// Hidden: a prefix for the default paths (tests only).
pub const ROOT_ENV: &str = "KIOSCTL_ROOT";

/// Where a candidate path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--socket PATH`.
    Flag,
    /// `KIOS_SOCKET`.
    Env,
    /// `/run/system.sock`.
    Node,
    /// `/host/run/system.sock`.
    DebugPod,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Flag => "from --socket",
            Source::Env => "from KIOS_SOCKET",
            Source::Node => "on the node",
            Source::DebugPod => "the node's, seen from a debug pod",
        }
    }
}

/// A path to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub source: Source,
}

/// The paths to try, in order.
///
/// `flag` is `--socket`, `env` the value of `KIOS_SOCKET` and `root` the
/// value of `KIOSCTL_ROOT`; empty values count as unset.
pub fn candidates(
    flag: Option<&Path>,
    env: Option<&OsString>,
    root: Option<&OsString>,
) -> Vec<Candidate> {
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return vec![Candidate {
            path: path.to_path_buf(),
            source: Source::Flag,
        }];
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return vec![Candidate {
            path: PathBuf::from(path),
            source: Source::Env,
        }];
    }
    let under_root = |path: &str| match root.filter(|r| !r.is_empty()) {
        Some(root) => Path::new(root).join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    };
    vec![
        Candidate {
            path: under_root(SOCKET_PATH),
            source: Source::Node,
        },
        Candidate {
            path: under_root(DEBUG_POD_SOCKET_PATH),
            source: Source::DebugPod,
        },
    ]
}

/// The candidates from this process's environment.
pub fn candidates_from_env(flag: Option<&Path>) -> Vec<Candidate> {
    let env = std::env::var_os(SOCKET_ENV);
    let root = std::env::var_os(ROOT_ENV);
    candidates(flag, env.as_ref(), root.as_ref())
}

/// No candidate answered.
#[derive(Debug, Error)]
pub struct Unreachable {
    /// Every path tried, with why it failed.
    pub tried: Vec<(Candidate, io::Error)>,
}

fn why(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (the socket belongs to root: run kiosctl as root)".to_string()
        }
        io::ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens: is kios-init running?)".to_string()
        }
        _ => error.to_string(),
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cannot reach the kiOS system socket; tried:")?;
        for (candidate, error) in &self.tried {
            writeln!(
                f,
                "  {} ({}): {}",
                candidate.path.display(),
                candidate.source.describe(),
                why(error)
            )?;
        }
        write!(
            f,
            "kiosctl talks to kios-init (PID 1 of the node) through that socket, as root. To reach it:\n\
             \x20 - from a workstation, open a debug pod on the node; it mounts the node's root at /host\n\
             \x20   and the node's own static kiosctl runs there:\n\
             \x20     kubectl debug node/NODE -it --profile=sysadmin --image=busybox -- /host/bin/kiosctl status\n\
             \x20 - from a root shell that sees the node's processes (such a debug pod, or a hostPID pod),\n\
             \x20   enter PID 1's namespaces:\n\
             \x20     nsenter -t 1 -m -p kiosctl status\n\
             \x20 - or name the socket: --socket PATH or {SOCKET_ENV}=PATH"
        )
    }
}

/// Connects to the first candidate that accepts a connection.
pub fn connect(candidates: &[Candidate]) -> Result<(UnixStream, Candidate), Unreachable> {
    let mut tried = Vec::new();
    for candidate in candidates {
        match UnixStream::connect(&candidate.path) {
            Ok(stream) => return Ok((stream, candidate.clone())),
            Err(error) => tried.push((candidate.clone(), error)),
        }
    }
    Err(Unreachable { tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(c: &[Candidate]) -> Vec<(String, Source)> {
        c.iter()
            .map(|c| (c.path.display().to_string(), c.source))
            .collect()
    }

    #[test]
    fn defaults_are_run_then_host() {
        assert_eq!(
            paths(&candidates(None, None, None)),
            [
                ("/run/system.sock".to_string(), Source::Node),
                ("/host/run/system.sock".to_string(), Source::DebugPod)
            ]
        );
    }

    #[test]
    fn flag_wins_over_env_and_is_the_only_candidate() {
        let env = OsString::from("/from/env.sock");
        assert_eq!(
            paths(&candidates(Some(Path::new("/flag.sock")), Some(&env), None)),
            [("/flag.sock".to_string(), Source::Flag)]
        );
    }

    #[test]
    fn env_is_used_when_there_is_no_flag() {
        let env = OsString::from("/from/env.sock");
        assert_eq!(
            paths(&candidates(None, Some(&env), None)),
            [("/from/env.sock".to_string(), Source::Env)]
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let empty = OsString::new();
        assert_eq!(
            candidates(Some(Path::new("")), Some(&empty), Some(&empty)),
            candidates(None, None, None)
        );
    }

    #[test]
    fn root_prefixes_the_defaults_only() {
        let root = OsString::from("/tmp/fake");
        assert_eq!(
            paths(&candidates(None, None, Some(&root))),
            [
                ("/tmp/fake/run/system.sock".to_string(), Source::Node),
                (
                    "/tmp/fake/host/run/system.sock".to_string(),
                    Source::DebugPod
                )
            ]
        );
        let env = OsString::from("/x.sock");
        assert_eq!(
            paths(&candidates(None, Some(&env), Some(&root))),
            [("/x.sock".to_string(), Source::Env)]
        );
    }

    #[test]
    fn the_message_lists_every_path_and_how_to_get_access() {
        let error = Unreachable {
            tried: vec![
                (
                    candidates(None, None, None)[0].clone(),
                    io::Error::from(io::ErrorKind::NotFound),
                ),
                (
                    candidates(None, None, None)[1].clone(),
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ),
            ],
        };
        let text = error.to_string();
        assert!(
            text.contains("/run/system.sock (on the node): no such file"),
            "{text}"
        );
        assert!(text.contains("/host/run/system.sock"), "{text}");
        assert!(text.contains("permission denied"), "{text}");
        assert!(text.contains("kubectl debug node/"), "{text}");
        assert!(text.contains("nsenter -t 1 -m -p"), "{text}");
    }
}
