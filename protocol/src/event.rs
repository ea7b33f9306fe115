//! Events streamed after the success line of `watch` and `logs ... follow`
//! (service output and the kernel log):
//! one JSON object per line, tagged by its `event` field.

use serde::{Deserialize, Serialize};

use crate::request::ServiceName;
use crate::response::{KmsgRecord, Milestone, ServiceStatus, ShutdownStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A service changed state: `{"event":"service","name":"kubelet",...}`.
    Service(ServiceStatus),
    /// A shutdown began or entered a new phase.
    Shutdown(ShutdownStatus),
    /// A boot milestone was reached.
    Milestone(Milestone),
    /// A line of a service's output (`logs ... follow`).
    Log(LogLine),
    /// A kernel log record (`logs kernel|init ... follow`).
    Kmsg(KmsgRecord),
    /// Kernel log records this follower did not get: overwritten in the
    /// kernel's ring buffer before they were read, or dropped because the
    /// client read too slowly. `{"event":"kmsg-missed","count":12}`.
    KmsgMissed { count: u64 },
    /// Something happened on the system bus: a logind inhibitor lock was
    /// taken or released, or PrepareForShutdown was sent.
    Logind(LogindEvent),
}

/// What happened on the system bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogindChange {
    LockTaken,
    LockReleased,
    SignalSent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogindEvent {
    pub change: LogindChange,
    pub at_ms: u64,
    /// The lock holder (lock-taken, lock-released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// How long the lock was held (lock-released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
    /// PrepareForShutdown's argument and how many peers got it
    /// (signal-sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub service: ServiceName,
    pub at_ms: u64,
    pub line: String,
}

impl Event {
    /// The event as a line, without the newline.
    pub fn encode(&self) -> String {
        // Events are strings, integers, floats and unit enums; the only
        // failure serde_json has for those is a non-finite float, which
        // the server never produces. Fall back to a valid line anyway.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"event":"error","message":"cannot encode event"}"#.to_string())
    }

    /// Parses an event line.
    pub fn decode(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }
}
