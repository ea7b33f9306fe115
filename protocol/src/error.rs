//! Wire error codes and the error body of a failed request.

use serde::{Deserialize, Serialize};

/// Why a request failed. The kebab-case names are the wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Malformed line, not UTF-8, or wrong arguments.
    BadRequest,
    /// The first word is not a verb.
    UnknownVerb,
    /// The service named is not `crio` or `kubelet`.
    UnknownService,
    /// `files PATH` names a path the inventory does not have.
    UnknownPath,
    /// More than [`crate::MAX_LINE_BYTES`] without a newline; the server then
    /// closes the connection.
    LineTooLong,
    /// The peer is not uid 0 and the verb changes state.
    NotPermitted,
    /// Too many connections; sent once, then the connection is closed.
    Busy,
    /// The verb makes no sense while the node shuts down.
    ShuttingDown,
    /// `continue-shutdown` while no shutdown is in progress (nothing changes).
    NoShutdown,
    /// The node cannot answer this now, e.g. the image carries no inventory.
    Unavailable,
    /// A bug in kios-init; the connection and init carry on.
    Internal,
}

impl ErrorCode {
    /// The wire name, e.g. `unknown-verb`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnknownVerb => "unknown-verb",
            ErrorCode::UnknownService => "unknown-service",
            ErrorCode::UnknownPath => "unknown-path",
            ErrorCode::LineTooLong => "line-too-long",
            ErrorCode::NotPermitted => "not-permitted",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::NoShutdown => "no-shutdown",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownVerb,
        ErrorCode::UnknownService,
        ErrorCode::UnknownPath,
        ErrorCode::LineTooLong,
        ErrorCode::NotPermitted,
        ErrorCode::Busy,
        ErrorCode::ShuttingDown,
        ErrorCode::NoShutdown,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of a failed response: a code for scripts and one
/// human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ErrorBody {}
