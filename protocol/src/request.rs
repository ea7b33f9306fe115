//! Line-dialect requests: parsing what clients send and encoding what
//! kiosctl sends.
//!
//! A request is one line of UTF-8; the connection layer strips the `\n` (and
//! a `\r` before it) and enforces [`crate::MAX_LINE_BYTES`]. Words are
//! separated by spaces; the first word is the verb.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::{ErrorBody, ErrorCode};

/// Most lines `logs` returns in one reply.
pub const MAX_LOG_LINES: usize = 10_000;

/// Lines `logs` returns when the request does not say.
pub const DEFAULT_LOG_LINES: usize = 100;

/// The two services kios-init supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceName {
    Crio,
    Kubelet,
}

impl ServiceName {
    pub const ALL: [ServiceName; 2] = [ServiceName::Crio, ServiceName::Kubelet];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Crio => "crio",
            ServiceName::Kubelet => "kubelet",
        }
    }

    pub fn parse(word: &str) -> Option<ServiceName> {
        match word {
            "crio" => Some(ServiceName::Crio),
            "kubelet" => Some(ServiceName::Kubelet),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the machine does at the end of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerMode {
    Poweroff,
    Reboot,
}

impl PowerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerMode::Poweroff => "poweroff",
            PowerMode::Reboot => "reboot",
        }
    }
}

impl std::fmt::Display for PowerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed line-dialect request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Help,
    Version,
    Status,
    Restart {
        service: ServiceName,
    },
    Shutdown {
        mode: PowerMode,
        force: bool,
    },
    ContinueShutdown,
    Files {
        path: Option<String>,
    },
    Verify,
    Logs {
        service: ServiceName,
        lines: usize,
        follow: bool,
    },
    Watch,
    Boot,
    /// `ps [all]`: every process of the host, explained; `all` lists
    /// kernel threads one by one instead of folding them.
    Ps {
        all: bool,
    },
    /// `logs kernel|init [LINES] [follow] [since MS]`: the kernel log
    /// (/dev/kmsg), or with `init_only` just init's `kiOS:` lines.
    KernelLog {
        init_only: bool,
        lines: usize,
        follow: bool,
        /// Only records at most this many milliseconds old.
        since_ms: Option<u64>,
    },
    /// `audit [LINES]`: state-changing requests and shutdown triggers.
    Audit {
        lines: usize,
    },
}

/// Most entries `audit` returns in one reply.
pub const MAX_AUDIT_LINES: usize = 1_000;

/// One verb of the protocol, as `help` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerbSpec {
    pub name: &'static str,
    pub usage: &'static str,
    pub summary: &'static str,
}

/// Every verb, in the order `help` lists them.
pub const VERBS: &[VerbSpec] = &[
    VerbSpec {
        name: "help",
        usage: "help",
        summary: "list the verbs",
    },
    VerbSpec {
        name: "version",
        usage: "version",
        summary: "protocol and init versions",
    },
    VerbSpec {
        name: "status",
        usage: "status",
        summary: "node, services and connected clients",
    },
    VerbSpec {
        name: "restart",
        usage: "restart <crio|kubelet>",
        summary: "stop a service; the supervisor starts it again at once",
    },
    VerbSpec {
        name: "shutdown",
        usage: "shutdown [poweroff|reboot] [force]",
        summary: "start the graceful node shutdown (force skips the kubelet's grace)",
    },
    VerbSpec {
        name: "continue-shutdown",
        usage: "continue-shutdown",
        summary: "the kubelet finished draining: go on with the shutdown",
    },
    VerbSpec {
        name: "files",
        usage: "files [PATH]",
        summary: "the file inventory: every entry, or the one at PATH, with why it is there",
    },
    VerbSpec {
        name: "verify",
        usage: "verify",
        summary: "compare the live root filesystem and processes with the inventory",
    },
    VerbSpec {
        name: "logs",
        usage: "logs <crio|kubelet|kernel|init> [LINES] [follow] [since MS]",
        summary: "a service's recent output, or the kernel log (init: only init's lines); follow streams new lines",
    },
    VerbSpec {
        name: "watch",
        usage: "watch",
        summary: "stream service, shutdown and boot events",
    },
    VerbSpec {
        name: "boot",
        usage: "boot",
        summary: "the boot timeline",
    },
    VerbSpec {
        name: "ps",
        usage: "ps [all]",
        summary: "every process of the host with its role and why it runs (all: kernel threads too)",
    },
    VerbSpec {
        name: "audit",
        usage: "audit [LINES]",
        summary: "state-changing requests and shutdown triggers, this boot and earlier ones",
    },
];

/// Why a line is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("request is not valid UTF-8")]
    NotUtf8,
    #[error("empty request; try 'help'")]
    Empty,
    #[error("request contains a control character")]
    ControlCharacter,
    #[error("unknown verb '{0}'; try 'help'")]
    UnknownVerb(String),
    #[error("unknown service '{0}'; services are 'crio' and 'kubelet'")]
    UnknownService(String),
    #[error("{verb}: {problem}; usage: {usage}")]
    BadArguments {
        verb: &'static str,
        usage: &'static str,
        problem: String,
    },
}

impl ParseError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::NotUtf8
            | ParseError::Empty
            | ParseError::ControlCharacter
            | ParseError::BadArguments { .. } => ErrorCode::BadRequest,
            ParseError::UnknownVerb(_) => ErrorCode::UnknownVerb,
            ParseError::UnknownService(_) => ErrorCode::UnknownService,
        }
    }

    /// The error as it goes on the wire.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

fn spec(verb: &str) -> &'static VerbSpec {
    VERBS.iter().find(|v| v.name == verb).unwrap_or(&VERBS[0])
}

fn bad(verb: &'static str, problem: impl Into<String>) -> ParseError {
    ParseError::BadArguments {
        verb,
        usage: spec(verb).usage,
        problem: problem.into(),
    }
}

fn no_arguments(
    verb: &'static str,
    args: &[&str],
    request: Request,
) -> Result<Request, ParseError> {
    match args.first() {
        None => Ok(request),
        Some(extra) => Err(bad(verb, format!("unexpected argument '{extra}'"))),
    }
}

fn service_arg(verb: &'static str, word: Option<&&str>) -> Result<ServiceName, ParseError> {
    let word = word.ok_or_else(|| bad(verb, "missing service"))?;
    ServiceName::parse(word).ok_or_else(|| ParseError::UnknownService(truncate(word)))
}

/// Keeps error messages one short sentence even for absurd input.
fn truncate(word: &str) -> String {
    const MAX: usize = 64;
    if word.len() <= MAX {
        return word.to_string();
    }
    let mut end = MAX;
    while !word.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &word[..end])
}

impl Request {
    /// Parses one request line (without its `\n`; a trailing `\r` is dropped).
    pub fn parse_line(line: &[u8]) -> Result<Request, ParseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
        Request::parse(text)
    }

    /// Parses one request from text (no line terminator).
    pub fn parse(text: &str) -> Result<Request, ParseError> {
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ParseError::ControlCharacter);
        }
        let words: Vec<&str> = text.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
        let Some((verb, args)) = words.split_first() else {
            return Err(ParseError::Empty);
        };
        match *verb {
            "help" => no_arguments("help", args, Request::Help),
            "version" => no_arguments("version", args, Request::Version),
            "status" => no_arguments("status", args, Request::Status),
            "continue-shutdown" => {
                no_arguments("continue-shutdown", args, Request::ContinueShutdown)
            }
            "verify" => no_arguments("verify", args, Request::Verify),
            "watch" => no_arguments("watch", args, Request::Watch),
            "boot" => no_arguments("boot", args, Request::Boot),
            "restart" => {
                let service = service_arg("restart", args.first())?;
                no_arguments("restart", &args[1..], Request::Restart { service })
            }
            "shutdown" => parse_shutdown(args),
            "files" => parse_files(args),
            "logs" => parse_logs(args),
            "ps" => match args {
                [] => Ok(Request::Ps { all: false }),
                ["all"] => Ok(Request::Ps { all: true }),
                [extra, ..] => Err(bad(
                    "ps",
                    format!("unexpected argument '{}'", truncate(extra)),
                )),
            },
            "audit" => parse_audit(args),
            other => Err(ParseError::UnknownVerb(truncate(other))),
        }
    }

    /// The verb word of this request.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Help => "help",
            Request::Version => "version",
            Request::Status => "status",
            Request::Restart { .. } => "restart",
            Request::Shutdown { .. } => "shutdown",
            Request::ContinueShutdown => "continue-shutdown",
            Request::Files { .. } => "files",
            Request::Verify => "verify",
            Request::Logs { .. } => "logs",
            Request::Watch => "watch",
            Request::Boot => "boot",
            Request::Ps { .. } => "ps",
            Request::KernelLog { .. } => "logs",
            Request::Audit { .. } => "audit",
        }
    }

    /// Whether the request changes the node's state (and so needs uid 0 and
    /// is written to the kernel log).
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Restart { .. } | Request::Shutdown { .. } | Request::ContinueShutdown => true,
            Request::Help
            | Request::Version
            | Request::Status
            | Request::Files { .. }
            | Request::Verify
            | Request::Logs { .. }
            | Request::Watch
            | Request::Boot
            | Request::Ps { .. }
            | Request::KernelLog { .. }
            | Request::Audit { .. } => false,
        }
    }

    /// Whether the success line is followed by a stream of events.
    pub fn is_streaming(&self) -> bool {
        matches!(
            self,
            Request::Watch
                | Request::Logs { follow: true, .. }
                | Request::KernelLog { follow: true, .. }
        )
    }

    /// The request as a line, without the trailing newline. Parsing the
    /// result gives back `self`.
    pub fn to_line(&self) -> String {
        match self {
            Request::Restart { service } => format!("restart {service}"),
            Request::Shutdown { mode, force } => {
                let mut line = format!("shutdown {mode}");
                if *force {
                    line.push_str(" force");
                }
                line
            }
            Request::Files { path: Some(path) } => format!("files {path}"),
            Request::Logs {
                service,
                lines,
                follow,
            } => {
                let mut line = format!("logs {service} {lines}");
                if *follow {
                    line.push_str(" follow");
                }
                line
            }
            Request::Ps { all: true } => "ps all".to_string(),
            Request::KernelLog {
                init_only,
                lines,
                follow,
                since_ms,
            } => {
                let source = if *init_only { "init" } else { "kernel" };
                let mut line = format!("logs {source} {lines}");
                if *follow {
                    line.push_str(" follow");
                }
                if let Some(ms) = since_ms {
                    line.push_str(&format!(" since {ms}"));
                }
                line
            }
            Request::Audit { lines } => format!("audit {lines}"),
            Request::Ps { all: false }
            | Request::Help
            | Request::Version
            | Request::Status
            | Request::ContinueShutdown
            | Request::Files { path: None }
            | Request::Verify
            | Request::Watch
            | Request::Boot => self.verb().to_string(),
        }
    }
}

fn parse_shutdown(args: &[&str]) -> Result<Request, ParseError> {
    let mut mode = None;
    let mut force = false;
    for arg in args {
        match *arg {
            "poweroff" | "reboot" if mode.is_some() => {
                return Err(bad("shutdown", "mode given twice"));
            }
            "poweroff" => mode = Some(PowerMode::Poweroff),
            "reboot" => mode = Some(PowerMode::Reboot),
            "force" if force => return Err(bad("shutdown", "'force' given twice")),
            "force" => force = true,
            other => {
                return Err(bad(
                    "shutdown",
                    format!("unexpected argument '{}'", truncate(other)),
                ))
            }
        }
    }
    Ok(Request::Shutdown {
        mode: mode.unwrap_or(PowerMode::Poweroff),
        force,
    })
}

fn parse_files(args: &[&str]) -> Result<Request, ParseError> {
    match args {
        [] => Ok(Request::Files { path: None }),
        // The escaped form (crate::path): checked here, decoded by the server.
        [path] if path.starts_with('/') => match crate::path::unescape(path) {
            Ok(_) => Ok(Request::Files {
                path: Some((*path).to_string()),
            }),
            Err(_) => Err(bad(
                "files",
                format!(
                    "path '{}' is not in the escaped form (a backslash starts \\\\ or \\xNN)",
                    truncate(path)
                ),
            )),
        },
        [path] => Err(bad(
            "files",
            format!("path '{}' is not absolute", truncate(path)),
        )),
        [_, extra, ..] => Err(bad(
            "files",
            format!("unexpected argument '{}'", truncate(extra)),
        )),
    }
}

fn parse_logs(args: &[&str]) -> Result<Request, ParseError> {
    match args.first() {
        Some(&"kernel") => return parse_kernel_logs(false, &args[1..]),
        Some(&"init") => return parse_kernel_logs(true, &args[1..]),
        _ => {}
    }
    let service = service_arg("logs", args.first())?;
    let mut lines = None;
    let mut follow = false;
    for arg in args.iter().skip(1) {
        if *arg == "follow" {
            if follow {
                return Err(bad("logs", "'follow' given twice"));
            }
            follow = true;
        } else if !follow
            && lines.is_none()
            && !arg.is_empty()
            && arg.bytes().all(|b| b.is_ascii_digit())
        {
            let n: usize = arg
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LOG_LINES).contains(n))
                .ok_or_else(|| {
                    bad(
                        "logs",
                        format!("LINES must be 1 to {MAX_LOG_LINES}, not {}", truncate(arg)),
                    )
                })?;
            lines = Some(n);
        } else {
            return Err(bad(
                "logs",
                format!("unexpected argument '{}'", truncate(arg)),
            ));
        }
    }
    Ok(Request::Logs {
        service,
        lines: lines.unwrap_or(DEFAULT_LOG_LINES),
        follow,
    })
}

/// A count word in `1..=max`, for `verb`.
fn count_arg(verb: &'static str, what: &str, word: &str, max: usize) -> Result<usize, ParseError> {
    word.parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            bad(
                verb,
                format!("{what} must be 1 to {max}, not {}", truncate(word)),
            )
        })
}

fn is_number(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
}

/// `logs kernel|init [LINES] [follow] [since MS]`, in that order.
fn parse_kernel_logs(init_only: bool, args: &[&str]) -> Result<Request, ParseError> {
    let mut lines = None;
    let mut follow = false;
    let mut since_ms = None;
    let mut words = args.iter();
    while let Some(arg) = words.next() {
        match *arg {
            "follow" if follow => return Err(bad("logs", "'follow' given twice")),
            "follow" => follow = true,
            "since" if since_ms.is_some() => return Err(bad("logs", "'since' given twice")),
            "since" => {
                let ms = words
                    .next()
                    .filter(|w| is_number(w))
                    .and_then(|w| w.parse::<u64>().ok())
                    .ok_or_else(|| bad("logs", "'since' needs milliseconds"))?;
                since_ms = Some(ms);
            }
            word if is_number(word) && lines.is_none() && !follow && since_ms.is_none() => {
                lines = Some(count_arg("logs", "LINES", word, MAX_LOG_LINES)?);
            }
            other => {
                return Err(bad(
                    "logs",
                    format!("unexpected argument '{}'", truncate(other)),
                ))
            }
        }
    }
    Ok(Request::KernelLog {
        init_only,
        lines: lines.unwrap_or(DEFAULT_LOG_LINES),
        follow,
        since_ms,
    })
}

fn parse_audit(args: &[&str]) -> Result<Request, ParseError> {
    match args {
        [] => Ok(Request::Audit {
            lines: DEFAULT_LOG_LINES,
        }),
        [word] if is_number(word) => Ok(Request::Audit {
            lines: count_arg("audit", "LINES", word, MAX_AUDIT_LINES)?,
        }),
        [extra, ..] => Err(bad(
            "audit",
            format!("unexpected argument '{}'", truncate(extra)),
        )),
    }
}
