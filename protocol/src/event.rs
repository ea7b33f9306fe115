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
