//! The kiOS system socket protocol, version 1: pure data shared by kios-init
//! (the server) and kiosctl (a client).
//!
//! Nothing here does I/O. The crate owns:
//! - [`legacy`]: the original one-byte dialect the patched kubelet speaks;
//! - [`request`]: parsing and encoding of line-dialect requests;
//! - [`response`]: the typed success payloads of every verb and the encoding
//!   of `{"ok":true,...}` / `{"ok":false,"error":{...}}` lines;
//! - [`event`]: the events streamed by `watch` and `logs ... follow`;
//! - [`error`]: the wire error codes;
//! - [`path`]: the escaped form of paths (any bytes, one printable word).
//!
//! The contract itself is `docs/protocol.md` (and protocol-v1 it follows).

pub mod error;
pub mod event;
pub mod legacy;
pub mod path;
pub mod request;
pub mod response;

pub use error::{ErrorBody, ErrorCode};
pub use event::{Event, LogLine, LogindChange, LogindEvent};
pub use legacy::{Dialect, LegacyCommand};
pub use request::{ParseError, PowerMode, Request, ServiceName};
pub use response::*;

/// Where kios-init listens.
pub const SOCKET_PATH: &str = "/run/system.sock";

/// Where the socket is seen from a `kubectl debug node` pod (host root at /host).
pub const DEBUG_POD_SOCKET_PATH: &str = "/host/run/system.sock";

/// The protocol version reported by `version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line, newline included.
pub const MAX_LINE_BYTES: usize = 4096;
