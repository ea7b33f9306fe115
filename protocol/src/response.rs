//! Success payloads of every verb, and the encoding of response lines.
//!
//! A response is exactly one line of JSON: `{"ok":true, ...fields}` or
//! `{"ok":false,"error":{"code":...,"message":...}}`. Timestamps are Unix
//! epoch milliseconds (`*_ms`), durations milliseconds.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::ErrorBody;
use crate::legacy::Dialect;
use crate::request::{PowerMode, Request, ServiceName};

/// `help`: the verbs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelpReply {
    pub verbs: Vec<VerbHelp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerbHelp {
    pub name: String,
    pub usage: String,
    pub summary: String,
}

impl HelpReply {
    /// The reply listing every verb of [`crate::request::VERBS`].
    pub fn all_verbs() -> HelpReply {
        HelpReply {
            verbs: crate::request::VERBS
                .iter()
                .map(|v| VerbHelp {
                    name: v.name.to_string(),
                    usage: v.usage.to_string(),
                    summary: v.summary.to_string(),
                })
                .collect(),
        }
    }
}

/// `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionReply {
    pub protocol: u32,
    pub init: String,
    /// The image's VERSION_ID from its /etc/os-release (absent when the
    /// image has none, or from a kios-init before it was reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// sha256 (hex) of the file inventory init read at boot: the same image
    /// has the same digest on every node. Absent when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_sha256: Option<String>,
    /// The image's build id: the BUILD_ID of its os-release, which the
    /// builder also records in the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub node: NodeStatus,
    pub services: Vec<ServiceStatus>,
    /// Connected socket clients; the one whose pid is the kubelet's is marked.
    #[serde(default)]
    pub clients: Vec<ClientInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub hostname: String,
    pub kernel: String,
    /// When init started (the wall clock as it read then; with the audit
    /// entries' `boot_ms`, this boot's identity).
    pub boot_ms: u64,
    /// How long init has run, on the monotonic clock: wall-clock jumps
    /// (NTP stepping a clock that started at 1970) do not change it.
    pub uptime_ms: u64,
    /// The node's wall clock when the reply was made: what ages of other
    /// `*_ms` fields are measured against. 0 from an init older than this
    /// field (clients then use `boot_ms + uptime_ms`).
    #[serde(default)]
    pub now_ms: u64,
    /// `null` when the node runs without a data partition (`datapart=none`).
    pub datapart: Option<DatapartStatus>,
    /// `null` unless a shutdown is in progress.
    pub shutdown: Option<ShutdownStatus>,
    /// True when a client that is the kubelet (or could be: a legacy or
    /// silent client) is connected, so a shutdown will wait for its grace.
    #[serde(default)]
    pub graceful_shutdown_armed: bool,
    /// What ended the previous boot, from the audit log on the data
    /// partition; `null` when the log has nothing (first boot, no data
    /// partition, or a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_shutdown: Option<AuditEntry>,
    /// logind delay inhibitor locks held on the system bus (the upstream
    /// kubelet's); a shutdown waits until they are released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inhibitors: Vec<InhibitorInfo>,
    /// Lines of service output dropped since boot instead of reaching
    /// their file under /var/log (the disk full or unwritable, or the log
    /// writer behind a flood); 0 from servers older than the field.
    #[serde(default)]
    pub log_lines_dropped: u64,
    /// Steps of the node's wall clock since boot (settimeofday,
    /// clock_settime, `date -s`, an NTP step), each also said once in the
    /// kernel log; 0 from servers older than the field.
    #[serde(default)]
    pub clock_steps: u64,
    /// The last step, signed milliseconds (negative: backward); 0 when
    /// there was none, and from older servers.
    #[serde(default)]
    pub last_clock_step_ms: i64,
}

/// A logind inhibitor lock held through the system bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InhibitorInfo {
    /// The holder's pid (SO_PEERCRED), `null` when unknown.
    pub pid: Option<i32>,
    /// The holder's command name (`/proc/PID/comm`).
    pub command: Option<String>,
    /// What the holder called itself (`kubelet`) and why.
    pub who: String,
    pub why: String,
    /// `delay` (the only mode kiOS grants).
    pub mode: String,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapartStatus {
    /// The device mounted, or `null` when none was found.
    pub device: Option<String>,
    pub mounted: bool,
    /// What `datapart=` asked for: `auto` or a device path.
    #[serde(default)]
    pub wanted: String,
    /// Why it is not mounted, when it is not; why it is read-only, when
    /// it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Mounted read-only: the device refused writes, nothing the node
    /// writes persists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// Phases of a shutdown, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownPhase {
    Draining,
    Stopping,
    Unmounting,
    Syncing,
    Final,
}

impl ShutdownPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownPhase::Draining => "draining",
            ShutdownPhase::Stopping => "stopping",
            ShutdownPhase::Unmounting => "unmounting",
            ShutdownPhase::Syncing => "syncing",
            ShutdownPhase::Final => "final",
        }
    }
}

impl std::fmt::Display for ShutdownPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownStatus {
    pub phase: ShutdownPhase,
    pub mode: PowerMode,
    /// When the shutdown was requested.
    pub since_ms: u64,
    /// Who asked: e.g. `socket pid 412 uid 0 (kiosctl)`, `SIGTERM`,
    /// `power button`, `ctrl-alt-del`.
    pub requested_by: String,
    #[serde(default)]
    pub force: bool,
    /// When the current phase began.
    #[serde(default)]
    pub phase_since_ms: u64,
}

/// Service states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    Starting,
    Running,
    /// Waiting for a precondition, e.g. the cri-o socket.
    Waiting,
    /// Exited; a restart is scheduled at `next_start_ms`.
    Backoff,
    Stopping,
    Stopped,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Waiting => "waiting",
            ServiceState::Backoff => "backoff",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: ServiceName,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// When the service entered its current state.
    pub since_ms: u64,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub next_start_ms: Option<u64>,
}

/// How a process ended: exactly one of `code` and `signal` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Connection number, unique for the life of init.
    pub id: u64,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// The peer's command name (`/proc/PID/comm`).
    pub command: Option<String>,
    pub dialect: Dialect,
    /// The peer's pid is the supervised kubelet's.
    pub kubelet: bool,
    pub since_ms: u64,
}

/// `restart <service>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReply {
    pub service: ServiceName,
    /// `null` when the service was not running.
    pub old_pid: Option<u32>,
}

/// `shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReply {
    pub mode: PowerMode,
    pub phase: ShutdownPhase,
}

/// `continue-shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueShutdownReply {
    pub phase: ShutdownPhase,
}

/// `files [PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesReply {
    pub files: Vec<FileInfo>,
}

/// One inventory entry, as an administrator reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `device` or `mount`.
    pub kind: String,
    /// Octal, e.g. `0500`.
    pub mode: String,
    /// `uid:gid`.
    pub owner: String,
    pub component: String,
    pub why: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Link target of a symlink or hard link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReply {
    /// No finding other than `overridden`.
    pub clean: bool,
    /// How many inventory entries, runtime areas, mounts and processes
    /// were checked.
    pub checked: u64,
    pub findings: Vec<Finding>,
    /// Areas verify does not look into because they belong to cri-o and the
    /// kubelet (container storage, pod volumes).
    #[serde(default)]
    pub out_of_scope: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// In the escaped form of [`crate::path`].
    pub path: String,
    /// `missing`, `modified`, `mode`, `owner`, `kind`, `setuid`,
    /// `unexpected`, `overridden`, `process`, `executable`, `mount`,
    /// `inventory` (or `omitted`: findings beyond the bound).
    pub problem: String,
    pub detail: String,
}

/// `logs <service> [LINES] [follow]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    pub service: ServiceName,
    /// Oldest first.
    pub lines: Vec<String>,
}

/// `watch`: the success line before the events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReply {
    /// Event kinds this stream carries.
    pub events: Vec<String>,
}

/// `boot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootReply {
    pub milestones: Vec<Milestone>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Milestone {
    pub name: String,
    pub at_ms: u64,
    /// Milliseconds since init started, from the monotonic clock.
    pub offset_ms: f64,
}

/// `ps [all]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsReply {
    /// Every process read, oldest pid first; kernel threads only with `all`.
    pub processes: Vec<ProcessInfo>,
    /// Kernel threads seen (listed one by one only with `all`).
    pub kernel_threads: u64,
    /// Processes marked `unexpected` (the rule `verify` uses).
    pub unexpected: u64,
    /// The /proc listing had more processes than init reads at once.
    #[serde(default)]
    pub truncated: bool,
}

/// One process, as `ps` explains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Milliseconds since it started.
    pub age_ms: u64,
    /// User plus system CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// `init`, `crio`, `kubelet`, `conmon`, `container`, `helper`,
    /// `client`, `kernel-thread`, `zombie`, `other-namespace` or `unexpected`.
    pub role: String,
    /// Why it may run (or, for `unexpected`, why it may not).
    pub why: String,
    /// `namespace/name` of the pod, for conmon and container processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command line as read (arguments joined by spaces; may hold
    /// control characters: escape before printing).
    pub command: String,
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// `logs kernel|init`: kernel log records, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLogReply {
    /// Wall time of the kernel's boot (epoch ms), for wall-clock stamps.
    pub boot_ms: u64,
    pub records: Vec<KmsgRecord>,
}

/// One record of the kernel log (/dev/kmsg).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsgRecord {
    /// The kernel's sequence number.
    pub seq: u64,
    /// Syslog severity, 0 (emerg) to 7 (debug).
    pub level: u8,
    /// Microseconds since the kernel booted.
    pub usec: u64,
    /// Written by kios-init (a `kiOS:` line).
    pub init: bool,
    /// The text, with the kernel's escapes (`\xNN`) as it sent them.
    pub message: String,
}

impl KmsgRecord {
    /// The severity's name, as `logs kernel` shows it.
    pub fn level_name(&self) -> &'static str {
        match self.level {
            0 => "emerg",
            1 => "alert",
            2 => "crit",
            3 => "err",
            4 => "warning",
            5 => "notice",
            6 => "info",
            _ => "debug",
        }
    }
}

/// `audit [LINES]`: oldest first; earlier boots' entries (from the log on
/// the data partition) before this boot's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReply {
    /// This boot (its entries carry this `boot_ms`; earlier boots' others).
    pub boot_ms: u64,
    pub entries: Vec<AuditEntry>,
}

/// One state-changing request or shutdown trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Which boot: when that boot's init started (epoch ms).
    pub boot_ms: u64,
    /// What was asked, e.g. `restart kubelet`, `shutdown reboot`,
    /// `shutdown poweroff (SIGTERM)`.
    pub action: String,
    /// Who asked: `socket pid 412 uid 0 (kiosctl)`, `SIGTERM`, `power button`, ...
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `ok`, `started`, `forced`, `already-in-progress` or the error code.
    pub outcome: String,
    /// Whether the entry ends a boot (a shutdown that started or was forced).
    #[serde(default)]
    pub shutdown: bool,
}

/// The success payload of any verb.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // one per request, short-lived
pub enum Reply {
    Help(HelpReply),
    Version(VersionReply),
    Status(StatusReply),
    Restart(RestartReply),
    Shutdown(ShutdownReply),
    ContinueShutdown(ContinueShutdownReply),
    Files(FilesReply),
    Verify(VerifyReply),
    Logs(LogsReply),
    Watch(WatchReply),
    Boot(BootReply),
    Ps(PsReply),
    KernelLog(KernelLogReply),
    Audit(AuditReply),
}

/// A whole response: a reply or an error.
pub type Response = Result<Reply, ErrorBody>;

#[derive(Serialize)]
struct OkLine<'a, T: Serialize> {
    ok: bool,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize, Deserialize)]
struct ErrLine {
    ok: bool,
    error: ErrorBody,
}

/// Encodes a success payload as a response line, without the newline.
pub fn encode_ok<T: Serialize>(body: &T) -> String {
    serde_json::to_string(&OkLine { ok: true, body }).unwrap_or_else(|e| {
        encode_error(&ErrorBody::new(
            crate::error::ErrorCode::Internal,
            format!("cannot encode reply: {e}"),
        ))
    })
}

/// The `clients` list of a `status` reply, encoded once. init keeps one
/// while no client comes, goes or changes and writes it into every `status`
/// line: with 60 clients the list is nine tenths of the reply's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedClients(String);

impl EncodedClients {
    /// The JSON array of `clients`, as [`encode_response`] writes it.
    pub fn encode(clients: &[ClientInfo]) -> EncodedClients {
        // Numbers, strings and unit enums: always serializes.
        EncodedClients(serde_json::to_string(clients).unwrap_or_else(|_| "[]".to_string()))
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

#[derive(Serialize)]
struct StatusHead<'a> {
    ok: bool,
    node: &'a NodeStatus,
    services: &'a [ServiceStatus],
}

/// The `status` response line with its newline, byte for byte what
/// [`encode_response`] writes for `Ok(Reply::Status(StatusReply { node,
/// services, clients }))` when `clients` encodes to `encoded`, without
/// encoding the clients again.
pub fn encode_status_line(
    node: &NodeStatus,
    services: &[ServiceStatus],
    clients: &EncodedClients,
) -> Vec<u8> {
    let mut line = Vec::with_capacity(1024 + clients.0.len());
    let head = StatusHead {
        ok: true,
        node,
        services,
    };
    if serde_json::to_writer(&mut line, &head).is_err() || line.pop() != Some(b'}') {
        let mut error = encode_error(&ErrorBody::new(
            crate::error::ErrorCode::Internal,
            "cannot encode the status reply",
        ))
        .into_bytes();
        error.push(b'\n');
        return error;
    }
    line.extend_from_slice(b",\"clients\":");
    line.extend_from_slice(clients.0.as_bytes());
    line.extend_from_slice(b"}\n");
    line
}

/// Encodes an error as a response line, without the newline.
pub fn encode_error(error: &ErrorBody) -> String {
    let line = ErrLine {
        ok: false,
        error: error.clone(),
    };
    // An ErrLine is strings and a unit enum: it always serializes.
    serde_json::to_string(&line).unwrap_or_else(|_| {
        r#"{"ok":false,"error":{"code":"internal","message":"cannot encode error"}}"#.to_string()
    })
}

/// Encodes a response line, without the newline.
pub fn encode_response(response: &Response) -> String {
    match response {
        Ok(reply) => encode_ok(reply),
        Err(error) => encode_error(error),
    }
}

/// Why a response line could not be read.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("response is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("response has no boolean 'ok' field")]
    NoOk,
    #[error("response does not match the expected reply: {0}")]
    Shape(#[source] serde_json::Error),
}

/// Decodes a response line into the reply type the client expects.
pub fn decode_reply<T: DeserializeOwned>(line: &str) -> Result<Result<T, ErrorBody>, DecodeError> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(DecodeError::NotJson)?;
    match value.get("ok").and_then(serde_json::Value::as_bool) {
        Some(true) => serde_json::from_value(value)
            .map(Ok)
            .map_err(DecodeError::Shape),
        Some(false) => serde_json::from_value::<ErrLine>(value)
            .map(|l| Err(l.error))
            .map_err(DecodeError::Shape),
        None => Err(DecodeError::NoOk),
    }
}

/// Decodes the response line to `request` into a typed [`Response`].
pub fn decode_response(request: &Request, line: &str) -> Result<Response, DecodeError> {
    fn typed<T: DeserializeOwned>(
        line: &str,
        wrap: fn(T) -> Reply,
    ) -> Result<Response, DecodeError> {
        decode_reply::<T>(line).map(|r| r.map(wrap))
    }
    match request {
        Request::Help => typed(line, Reply::Help),
        Request::Version => typed(line, Reply::Version),
        Request::Status => typed(line, Reply::Status),
        Request::Restart { .. } => typed(line, Reply::Restart),
        Request::Shutdown { .. } => typed(line, Reply::Shutdown),
        Request::ContinueShutdown => typed(line, Reply::ContinueShutdown),
        Request::Files { .. } => typed(line, Reply::Files),
        Request::Verify => typed(line, Reply::Verify),
        Request::Logs { .. } => typed(line, Reply::Logs),
        Request::Watch => typed(line, Reply::Watch),
        Request::Boot => typed(line, Reply::Boot),
        Request::Ps { .. } => typed(line, Reply::Ps),
        Request::KernelLog { .. } => typed(line, Reply::KernelLog),
        Request::Audit { .. } => typed(line, Reply::Audit),
    }
}
