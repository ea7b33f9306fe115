//! One connection to the system socket: a request line out, exactly one
//! reply line back, then (for `watch` and `logs ... follow`) event lines
//! until the node closes the connection.
//!
//! Blocking std I/O: kiosctl does one thing at a time. Replies are bounded
//! in size and in time (the `--timeout`); event streams have no timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kios_protocol::response::{decode_reply, DecodeError};
use kios_protocol::{ErrorBody, Request};
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Longest reply or event line kiosctl accepts (a `files` reply of a large
/// image is a few hundred KiB).
pub const MAX_REPLY_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot send '{request}' to {path}: {source}")]
    Send {
        path: PathBuf,
        request: String,
        #[source]
        source: io::Error,
    },
    #[error("no reply from {path} within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("cannot read the reply from {path}: {source}")]
    Receive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} closed the connection before replying")]
    Closed { path: PathBuf },
    #[error("a line from {path} is longer than {max} bytes")]
    TooLong { path: PathBuf, max: u64 },
    #[error("cannot understand the reply from {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
}

/// The node answered a request with `{"ok":false,...}`.
#[derive(Debug, Error)]
#[error("{verb}: {body}")]
pub struct Refused {
    pub verb: &'static str,
    pub body: ErrorBody,
}

/// A reply line as received, and its decoded form.
#[derive(Debug)]
pub struct Reply<T> {
    /// The line exactly as the node sent it (without the newline): what
    /// `-o json` prints.
    pub raw: String,
    /// The success payload, or the node's error.
    pub body: Result<T, Refused>,
}

pub struct Connection {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    timeout: Duration,
    /// Longest line accepted.
    max_line: u64,
    /// Bytes of an unfinished line kept across read timeouts.
    pending: Vec<u8>,
}

impl Connection {
    /// Wraps a connected stream; `timeout` bounds the wait for each reply.
    pub fn new(stream: UnixStream, path: &Path, timeout: Duration) -> io::Result<Connection> {
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Connection {
            path: path.to_path_buf(),
            writer: stream,
            reader,
            timeout,
            max_line: MAX_REPLY_BYTES,
            pending: Vec::new(),
        })
    }

    /// Lowers the line limit (tests).
    pub fn with_max_line(mut self, max_line: u64) -> Connection {
        self.max_line = max_line;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request line.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let line = request.to_line();
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|source| ClientError::Send {
                path: self.path.clone(),
                request: line,
                source,
            })
    }

    /// Reads the reply to an earlier [`Connection::send`] (bounded by the
    /// timeout) and decodes it as `T`.
    pub fn reply<T: DeserializeOwned>(
        &mut self,
        request: &Request,
    ) -> Result<Reply<T>, ClientError> {
        let timeout = self.timeout;
        let raw = match self.line(Some(timeout))? {
            Line::Text(raw) => raw,
            Line::Closed => {
                return Err(ClientError::Closed {
                    path: self.path.clone(),
                })
            }
            Line::Tick => {
                return Err(ClientError::Timeout {
                    path: self.path.clone(),
                    timeout,
                })
            }
        };
        let decoded = decode_reply::<T>(&raw).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            source,
        })?;
        let body = decoded.map_err(|body| Refused {
            verb: request.verb(),
            body,
        });
        Ok(Reply { raw, body })
    }

    /// Sends a request and reads its reply.
    pub fn call<T: DeserializeOwned>(
        &mut self,
        request: &Request,
    ) -> Result<Reply<T>, ClientError> {
        self.send(request)?;
        self.reply(request)
    }

    /// The next event line of a stream; `None` when the node closed the
    /// connection. Waits as long as it takes.
    pub fn next_event(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.line(None)? {
                Line::Text(text) => return Ok(Some(text)),
                Line::Closed => return Ok(None),
                Line::Tick => continue,
            }
        }
    }

    /// The next event line, or [`Line::Tick`] when `tick` passes first (the
    /// live view redraws then). A partial line is kept for the next call.
    pub fn next_event_or_tick(&mut self, tick: Duration) -> Result<Line, ClientError> {
        self.line(Some(tick))
    }

    fn line(&mut self, wait: Option<Duration>) -> Result<Line, ClientError> {
        let receive = |source| ClientError::Receive {
            path: self.path.clone(),
            source,
        };
        self.reader
            .get_ref()
            .set_read_timeout(wait)
            .map_err(receive)?;
        let limit = (self.max_line + 1).saturating_sub(self.pending.len() as u64);
        let result = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.pending);
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Line::Tick)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Line::Tick),
            Err(source) => {
                return Err(ClientError::Receive {
                    path: self.path.clone(),
                    source,
                })
            }
        }
        if self.pending.last() != Some(&b'\n') {
            if self.pending.len() as u64 > self.max_line {
                self.pending.clear();
                return Err(ClientError::TooLong {
                    path: self.path.clone(),
                    max: self.max_line,
                });
            }
            // End of stream (a partial last line is dropped: the contract
            // says every line ends in a newline).
            self.pending.clear();
            return Ok(Line::Closed);
        }
        let mut bytes = std::mem::take(&mut self.pending);
        // A connection counts as a silent (kubelet-like) client until its
        // first request arrives, so a shutdown that begins in that moment
        // sends it the legacy byte 0x01 ahead of the first reply. JSON lines
        // never start with it: skip it.
        let legacy_events = bytes
            .iter()
            .take_while(|&&b| b == kios_protocol::legacy::EVENT_SHUTDOWN)
            .count();
        bytes.drain(..legacy_events);
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        Ok(Line::Text(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// What [`Connection::next_event_or_tick`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    Closed,
    Tick,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use kios_protocol::VersionReply;

    fn pair(timeout: Duration) -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let conn = Connection::new(ours, Path::new("/test.sock"), timeout).expect("connection");
        (conn, theirs)
    }

    #[test]
    fn legacy_shutdown_bytes_before_a_reply_are_skipped() {
        let (mut conn, mut node) = pair(Duration::from_secs(5));
        node.write_all(b"\x01{\"ok\":true,\"protocol\":1,\"init\":\"0.1.0\"}\n")
            .expect("write");
        let reply = conn
            .reply::<VersionReply>(&Request::Version)
            .expect("reply");
        assert_eq!(reply.body.expect("ok").protocol, 1);
    }

    #[test]
    fn a_partial_line_survives_a_tick() {
        let (mut conn, mut node) = pair(Duration::from_secs(5));
        node.write_all(b"{\"event\":").expect("write");
        assert_eq!(
            conn.next_event_or_tick(Duration::from_millis(20))
                .expect("tick"),
            Line::Tick
        );
        node.write_all(b"\"x\"}\r\n").expect("write");
        assert_eq!(
            conn.next_event_or_tick(Duration::from_secs(5))
                .expect("line"),
            Line::Text("{\"event\":\"x\"}".to_string())
        );
        drop(node);
        assert_eq!(conn.next_event().expect("eof"), None);
    }

    #[test]
    fn an_overlong_line_is_an_error_not_unbounded_memory() {
        let (conn, mut node) = pair(Duration::from_secs(5));
        let mut conn = conn.with_max_line(16);
        node.write_all(&[b'x'; 64]).expect("write");
        let error = conn.next_event().expect_err("too long");
        assert!(
            matches!(error, ClientError::TooLong { max: 16, .. }),
            "{error}"
        );
        assert_eq!(error.exit(), Exit::Problem);
    }

    #[test]
    fn replies_decode_and_refusals_carry_the_verb() {
        let (mut conn, mut node) = pair(Duration::from_secs(5));
        node.write_all(b"{\"ok\":true,\"protocol\":1,\"init\":\"0.1.0\"}\n")
            .expect("write");
        let reply = conn
            .reply::<VersionReply>(&Request::Version)
            .expect("reply");
        assert_eq!(reply.body.expect("ok").init, "0.1.0");
        node.write_all(b"{\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"full\"}}\n")
            .expect("write");
        let reply = conn.reply::<VersionReply>(&Request::Status).expect("reply");
        let refused = reply.body.expect_err("refused");
        assert_eq!(refused.to_string(), "status: full (busy)");
    }

    #[test]
    fn silence_is_a_timeout_and_eof_is_closed() {
        let (mut conn, node) = pair(Duration::from_millis(20));
        let error = conn
            .reply::<VersionReply>(&Request::Version)
            .expect_err("timeout");
        assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
        assert_eq!(error.exit(), Exit::Unreachable);
        drop(node);
        let error = conn
            .reply::<VersionReply>(&Request::Version)
            .expect_err("closed");
        assert!(matches!(error, ClientError::Closed { .. }), "{error}");
    }
}
