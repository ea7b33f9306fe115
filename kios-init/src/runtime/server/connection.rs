//! One client connection: owns the stream and its read buffer, decides the
//! dialect from the first byte, and frames requests (one byte in the legacy
//! dialect, one line in the line dialect) and responses.
//!
//! `read_request` is cancel-safe (bytes read are kept in the buffer), so the
//! client task can `select!` it against its outgoing queue. A clean EOF is
//! `Ok(None)`; EOF in the middle of a line is an error, never a request.

use std::time::Duration;

use kios_protocol::{Dialect, LegacyCommand, ParseError, Request, MAX_LINE_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// A client that started a line and sent nothing more for this long is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A legacy byte: a command, or `None` for an unknown byte (ignored).
    Legacy(Option<LegacyCommand>),
    /// A line-dialect request, or why it could not be parsed.
    Line(Result<Request, ParseError>),
}

/// Why a connection ends without a clean EOF.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("connection closed in the middle of a request line")]
    EofMidLine,
    #[error("client stalled in the middle of a request line for {}s", STALL_TIMEOUT.as_secs())]
    Stalled,
    #[error("cannot read from the client: {0}")]
    Read(#[source] std::io::Error),
}

pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
    dialect: Dialect,
    /// When the unterminated line in `buf` began.
    partial_since: Option<Instant>,
    stall_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            buf: Vec::new(),
            dialect: Dialect::Silent,
            partial_since: None,
            stall_timeout: STALL_TIMEOUT,
        }
    }

    /// For tests: a shorter stall timeout.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Connection<S> {
        self.stall_timeout = timeout;
        self
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Takes the next complete request out of the buffer, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Incoming>, ReadError> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        if self.dialect == Dialect::Silent {
            self.dialect = Dialect::of_first_byte(first);
        }
        match self.dialect {
            Dialect::Legacy => {
                self.buf.remove(0);
                Ok(Some(Incoming::Legacy(LegacyCommand::from_byte(first))))
            }
            Dialect::Line | Dialect::Silent => match self.buf.iter().position(|b| *b == b'\n') {
                Some(nl) if nl < MAX_LINE_BYTES => {
                    let parsed = Request::parse_line(&self.buf[..nl]);
                    self.buf.drain(..=nl);
                    self.partial_since = if self.buf.is_empty() {
                        None
                    } else {
                        Some(Instant::now())
                    };
                    Ok(Some(Incoming::Line(parsed)))
                }
                Some(_) => Err(ReadError::LineTooLong),
                None if self.buf.len() >= MAX_LINE_BYTES => Err(ReadError::LineTooLong),
                None => Ok(None),
            },
        }
    }

    /// Reads the next request. `Ok(None)` is a clean end of stream.
    pub async fn read_request(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            if let Some(incoming) = self.parse_buffered()? {
                return Ok(Some(incoming));
            }
            if !self.buf.is_empty() && self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
            let mut chunk = [0u8; 1024];
            let read = match self.partial_since {
                Some(since) if !self.buf.is_empty() => {
                    match tokio::time::timeout_at(
                        since + self.stall_timeout,
                        self.stream.read(&mut chunk),
                    )
                    .await
                    {
                        Ok(read) => read,
                        Err(_) => return Err(ReadError::Stalled),
                    }
                }
                _ => self.stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(ReadError::EofMidLine),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Read(e)),
            }
        }
    }

    /// Writes raw bytes (a response line with its newline, an event line or
    /// the legacy event byte).
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Ends a connection init refuses to go on with (after `line-too-long`):
    /// no more output, then up to 64 KiB or 1 s of the client's input is
    /// read and discarded, so the client reads the error and a clean end of
    /// stream instead of a reset for unread data.
    pub async fn close_after_error(&mut self) {
        let _ = self.stream.shutdown().await;
        let drain = async {
            let mut chunk = [0u8; 1024];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }

    /// Writes one response line and its newline.
    pub async fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.write_all(&bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kios_protocol::ServiceName;
    use tokio::io::{duplex, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn line_requests_in_one_or_many_chunks() {
        rt().block_on(async {
            let (mut client, server) = duplex(64 * 1024);
            let mut conn = Connection::new(server);
            client.write_all(b"status\nrestart kub").await.unwrap();
            assert_eq!(
                conn.read_request().await.unwrap(),
                Some(Incoming::Line(Ok(Request::Status)))
            );
            assert_eq!(conn.dialect(), Dialect::Line);
            client.write_all(b"elet\r\nfrobnicate\n").await.unwrap();
            assert_eq!(
                conn.read_request().await.unwrap(),
                Some(Incoming::Line(Ok(Request::Restart {
                    service: ServiceName::Kubelet
                })))
            );
            match conn.read_request().await.unwrap() {
                Some(Incoming::Line(Err(ParseError::UnknownVerb(v)))) => {
                    assert_eq!(v, "frobnicate")
                }
                other => panic!("{other:?}"),
            }
            drop(client);
            assert!(conn.read_request().await.unwrap().is_none(), "clean EOF");
        });
    }

    #[test]
    fn legacy_bytes_one_at_a_time_unknown_ignored() {
        rt().block_on(async {
            let (mut client, server) = duplex(1024);
            let mut conn = Connection::new(server);
            client.write_all(&[0x02, 0x07, 0x03, b's']).await.unwrap();
            drop(client);
            let mut got = Vec::new();
            while let Some(incoming) = conn.read_request().await.unwrap() {
                got.push(incoming);
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Legacy(Some(LegacyCommand::ContinueShutdown)),
                    Incoming::Legacy(None),
                    Incoming::Legacy(Some(LegacyCommand::RestartKubelet)),
                    Incoming::Legacy(None),
                ]
            );
            assert_eq!(conn.dialect(), Dialect::Legacy);
        });
    }

    #[test]
    fn eof_mid_line_is_an_error_not_a_request() {
        rt().block_on(async {
            let (mut client, server) = duplex(1024);
            let mut conn = Connection::new(server);
            client.write_all(b"shutdown").await.unwrap();
            drop(client);
            assert!(matches!(
                conn.read_request().await,
                Err(ReadError::EofMidLine)
            ));
        });
    }

    #[test]
    fn too_long_lines_are_refused() {
        rt().block_on(async {
            let (mut client, server) = duplex(64 * 1024);
            let mut conn = Connection::new(server);
            client.write_all(&vec![b'a'; MAX_LINE_BYTES]).await.unwrap();
            assert!(matches!(
                conn.read_request().await,
                Err(ReadError::LineTooLong)
            ));

            // The longest acceptable line: 4095 bytes + newline.
            let (mut client, server) = duplex(64 * 1024);
            let mut conn = Connection::new(server);
            let mut line = b"help".to_vec();
            line.resize(MAX_LINE_BYTES - 1, b' ');
            line.push(b'\n');
            client.write_all(&line).await.unwrap();
            assert_eq!(
                conn.read_request().await.unwrap(),
                Some(Incoming::Line(Ok(Request::Help)))
            );
        });
    }

    #[test]
    fn stalled_mid_line_client_times_out_but_idle_one_does_not() {
        rt().block_on(async {
            let (mut client, server) = duplex(1024);
            let mut conn = Connection::new(server).with_stall_timeout(Duration::from_millis(50));
            client.write_all(b"stat").await.unwrap();
            assert!(matches!(conn.read_request().await, Err(ReadError::Stalled)));

            let (_client, server) = duplex(1024);
            let mut idle = Connection::new(server).with_stall_timeout(Duration::from_millis(50));
            let waited =
                tokio::time::timeout(Duration::from_millis(200), idle.read_request()).await;
            assert!(waited.is_err(), "a silent client is not a stalled one");
        });
    }

    #[test]
    fn not_utf8_is_a_bad_request() {
        rt().block_on(async {
            let (mut client, server) = duplex(1024);
            let mut conn = Connection::new(server);
            client.write_all(b"st\xffatus\n").await.unwrap();
            assert_eq!(
                conn.read_request().await.unwrap(),
                Some(Incoming::Line(Err(ParseError::NotUtf8)))
            );
        });
    }
}
