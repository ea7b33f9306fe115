//! The documented exit codes and the mapping from failures to them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also: stdout was closed early, e.g. `kiosctl logs kubelet \| head`) |
//! | 1 | the node refused the request or reported a problem (incl. `verify` findings) |
//! | 2 | usage error (bad arguments) |
//! | 3 | could not reach the socket, or the node went away before answering |

use std::process::ExitCode;

use kios_protocol::ErrorCode;

use crate::client::{ClientError, Refused};
use crate::discovery::Unreachable;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: the node refused or reported a problem.
    Problem,
    /// 2: the command line was wrong.
    Usage,
    /// 3: the socket could not be reached.
    Unreachable,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Problem => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// The exit code for an error code sent by the node. Every code is a
/// refusal or a reported problem; the match has no `_` arm so that a new
/// code forces a decision here.
pub fn exit_for_code(code: ErrorCode) -> Exit {
    match code {
        ErrorCode::BadRequest
        | ErrorCode::UnknownVerb
        | ErrorCode::UnknownService
        | ErrorCode::UnknownPath
        | ErrorCode::LineTooLong
        | ErrorCode::NotPermitted
        | ErrorCode::Busy
        | ErrorCode::ShuttingDown
        | ErrorCode::NoShutdown
        | ErrorCode::Unavailable
        | ErrorCode::Internal => Exit::Problem,
    }
}

/// True when the error is (caused by) a write to a closed pipe: the reader
/// of our stdout went away, which is a normal way for a run to end.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

impl ClientError {
    /// Losing the node before its answer is "could not reach"; an answer
    /// that makes no sense is a problem.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Send { .. }
            | ClientError::Timeout { .. }
            | ClientError::Receive { .. }
            | ClientError::Closed { .. } => Exit::Unreachable,
            ClientError::TooLong { .. } | ClientError::Decode { .. } => Exit::Problem,
        }
    }
}

/// The exit code for a failed run.
pub fn exit_for_error(error: &anyhow::Error) -> Exit {
    if is_broken_pipe(error) {
        return Exit::Ok;
    }
    if error.downcast_ref::<Unreachable>().is_some() {
        return Exit::Unreachable;
    }
    if let Some(refused) = error.downcast_ref::<Refused>() {
        return exit_for_code(refused.body.code);
    }
    if let Some(client) = error.downcast_ref::<ClientError>() {
        return client.exit();
    }
    Exit::Problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_error_is_a_problem() {
        for code in ErrorCode::ALL {
            assert_eq!(exit_for_code(code), Exit::Problem, "{code}");
        }
    }

    #[test]
    fn broken_pipe_anywhere_in_the_chain_is_success() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let error = anyhow::Error::new(io).context("writing the table");
        assert!(is_broken_pipe(&error));
        assert_eq!(exit_for_error(&error), Exit::Ok);
        let other = anyhow::anyhow!("something else");
        assert_eq!(exit_for_error(&other), Exit::Problem);
    }

    #[test]
    fn codes_are_the_documented_numbers() {
        assert_eq!(
            [Exit::Ok, Exit::Problem, Exit::Usage, Exit::Unreachable].map(Exit::code),
            [0, 1, 2, 3]
        );
    }
}
