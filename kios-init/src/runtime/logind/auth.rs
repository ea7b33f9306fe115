//! The server side of D-Bus authentication (the SASL line protocol before
//! `BEGIN`): EXTERNAL only, for root peers only. The peer's uid comes from
//! SO_PEERCRED; a uid the client claims must be that one. Pure: bytes in,
//! lines out, no I/O.
//!
//! What clients send, and what they get:
//! - godbus (the kubelet): NUL, `AUTH` -> `REJECTED EXTERNAL`, then
//!   `AUTH EXTERNAL 30` -> `OK <guid>`, `NEGOTIATE_UNIX_FD` ->
//!   `AGREE_UNIX_FD`, `BEGIN`;
//! - libdbus and zbus: NUL, `AUTH EXTERNAL 30` at once;
//! - a client without an initial response: `AUTH EXTERNAL` -> `DATA`, then
//!   `DATA 30` or an empty `DATA` (use the socket's credentials).

/// Longest line accepted (hex of a uid is short).
pub const MAX_LINE: usize = 256;
/// Bytes a client may send before `BEGIN`.
pub const MAX_AUTH_BYTES: usize = 4096;
/// Rejections (and errors) before the connection is closed.
pub const MAX_FAILURES: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the NUL byte every client sends first.
    Nul,
    WaitingForAuth,
    WaitingForData,
    WaitingForBegin,
    Done,
}

/// The outcome of feeding bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes consumed from the input (everything after `BEGIN` is the
    /// message stream and is not consumed).
    pub consumed: usize,
    /// Lines to send, each with its CRLF.
    pub reply: Vec<u8>,
    /// `BEGIN` was received: messages follow.
    pub begun: bool,
}

/// Why the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the first byte is {0:#04x}, not NUL")]
    NoNul(u8),
    #[error("authentication line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("more than {MAX_AUTH_BYTES} bytes before BEGIN")]
    TooMuch,
    #[error("authentication failed {MAX_FAILURES} times")]
    TooManyFailures,
}

/// One connection's authentication.
#[derive(Debug)]
pub struct Authenticator {
    phase: Phase,
    peer_uid: Option<u32>,
    guid: String,
    failures: u32,
    seen: usize,
    unix_fds: bool,
}

/// Decodes the hex of EXTERNAL's response (ASCII decimal uid).
fn claimed_uid(hex: &str) -> Option<u32> {
    if hex.len() & 1 == 1 || hex.len() > 20 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Authenticator {
    /// `peer_uid` from SO_PEERCRED (None if unknown: never accepted);
    /// `guid` the server's 32 hex digits.
    pub fn new(peer_uid: Option<u32>, guid: &str) -> Authenticator {
        Authenticator {
            phase: Phase::Nul,
            peer_uid,
            guid: guid.to_string(),
            failures: 0,
            seen: 0,
            unix_fds: false,
        }
    }

    /// The client asked for descriptor passing and it was agreed.
    pub fn unix_fds(&self) -> bool {
        self.unix_fds
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Feeds received bytes; consumes whole lines only.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, AuthError> {
        let mut progress = Progress::default();
        let mut rest = input;
        if self.phase == Phase::Nul {
            match rest.first() {
                None => return Ok(progress),
                Some(0) => {
                    rest = &rest[1..];
                    progress.consumed = 1;
                    self.phase = Phase::WaitingForAuth;
                }
                Some(&b) => return Err(AuthError::NoNul(b)),
            }
        }
        while self.phase != Phase::Done {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE {
                    return Err(AuthError::LineTooLong);
                }
                break;
            };
            if end > MAX_LINE {
                return Err(AuthError::LineTooLong);
            }
            let line = &rest[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let text = String::from_utf8_lossy(line).into_owned();
            rest = &rest[end + 1..];
            progress.consumed += end + 1;
            self.seen += end + 1;
            if self.seen > MAX_AUTH_BYTES {
                return Err(AuthError::TooMuch);
            }
            let answer = self.line(&text)?;
            if let Some(answer) = answer {
                progress.reply.extend_from_slice(answer.as_bytes());
                progress.reply.extend_from_slice(b"\r\n");
            }
        }
        progress.begun = self.phase == Phase::Done;
        Ok(progress)
    }

    fn fail(&mut self, answer: &str) -> Result<Option<String>, AuthError> {
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return Err(AuthError::TooManyFailures);
        }
        Ok(Some(answer.to_string()))
    }

    fn reject(&mut self) -> Result<Option<String>, AuthError> {
        self.phase = Phase::WaitingForAuth;
        self.fail("REJECTED EXTERNAL")
    }

    /// EXTERNAL with `claimed` (None: use the socket's credentials).
    fn external(&mut self, claimed: Option<&str>) -> Result<Option<String>, AuthError> {
        let uid_ok = match (self.peer_uid, claimed) {
            (Some(peer), None) => peer == 0,
            (Some(peer), Some(hex)) => peer == 0 && claimed_uid(hex) == Some(peer),
            (None, _) => false,
        };
        if uid_ok {
            self.phase = Phase::WaitingForBegin;
            Ok(Some(format!("OK {}", self.guid)))
        } else {
            self.reject()
        }
    }

    fn line(&mut self, line: &str) -> Result<Option<String>, AuthError> {
        let mut words = line.split(' ');
        let command = words.next().unwrap_or("");
        let arg1 = words.next();
        let arg2 = words.next();
        match (self.phase, command) {
            (_, "CANCEL") | (_, "ERROR") => self.reject(),
            (Phase::WaitingForAuth, "AUTH") => match (arg1, arg2) {
                (Some("EXTERNAL"), Some(hex)) => self.external(Some(hex)),
                (Some("EXTERNAL"), None) => {
                    self.phase = Phase::WaitingForData;
                    Ok(Some("DATA".to_string()))
                }
                // A bare AUTH (godbus) or another mechanism.
                _ => self.reject(),
            },
            (Phase::WaitingForData, "DATA") => match arg1 {
                Some(hex) if !hex.is_empty() => self.external(Some(hex)),
                _ => self.external(None),
            },
            (Phase::WaitingForData, _) => self.reject(),
            (Phase::WaitingForBegin, "BEGIN") => {
                self.phase = Phase::Done;
                Ok(None)
            }
            (Phase::WaitingForBegin, "NEGOTIATE_UNIX_FD") => {
                self.unix_fds = true;
                Ok(Some("AGREE_UNIX_FD".to_string()))
            }
            _ => self.fail("ERROR unexpected command"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "0123456789abcdef0123456789abcdef";

    fn run(uid: Option<u32>, input: &[u8]) -> (Authenticator, Result<Progress, AuthError>) {
        let mut a = Authenticator::new(uid, GUID);
        let p = a.feed(input);
        (a, p)
    }

    #[test]
    fn godbus_sequence() {
        let input = b"\0AUTH\r\nAUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01";
        let (a, p) = run(Some(0), input);
        let p = p.expect("auth");
        assert_eq!(
            String::from_utf8_lossy(&p.reply),
            format!("REJECTED EXTERNAL\r\nOK {GUID}\r\nAGREE_UNIX_FD\r\n")
        );
        assert!(p.begun && a.unix_fds() && a.is_done());
        // The message bytes after BEGIN are left for the codec.
        assert_eq!(&input[p.consumed..], b"l\x01");
    }

    #[test]
    fn libdbus_sequence_in_pieces() {
        let mut a = Authenticator::new(Some(0), GUID);
        let mut reply = Vec::new();
        let input: &[u8] = b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n";
        let mut pending: Vec<u8> = Vec::new();
        for &b in input {
            pending.push(b);
            let p = a.feed(&pending).expect("auth");
            pending.drain(..p.consumed);
            reply.extend_from_slice(&p.reply);
        }
        assert!(a.is_done());
        assert_eq!(
            String::from_utf8_lossy(&reply),
            format!("OK {GUID}\r\nAGREE_UNIX_FD\r\n")
        );
    }

    #[test]
    fn data_variants() {
        for data in ["DATA 30", "DATA", "DATA "] {
            let input = format!("\0AUTH EXTERNAL\r\n{data}\r\nBEGIN\r\n");
            let (a, p) = run(Some(0), input.as_bytes());
            let p = p.expect("auth");
            assert_eq!(
                String::from_utf8_lossy(&p.reply),
                format!("DATA\r\nOK {GUID}\r\n"),
                "{data}"
            );
            assert!(a.is_done() && !a.unix_fds());
        }
    }

    #[test]
    fn non_root_and_false_claims_are_rejected() {
        // uid 1000 claiming 1000, uid 1000 claiming root, unknown peer.
        for (uid, line) in [
            (Some(1000), "AUTH EXTERNAL 31303030"),
            (Some(1000), "AUTH EXTERNAL 30"),
            (None, "AUTH EXTERNAL 30"),
            (Some(0), "AUTH EXTERNAL 31"),
            (Some(0), "AUTH EXTERNAL zz"),
            (Some(0), "AUTH DBUS_COOKIE_SHA1 726f6f74"),
        ] {
            let input = format!("\0{line}\r\nBEGIN\r\n");
            let (a, p) = run(uid, input.as_bytes());
            let p = p.expect("no close yet");
            assert!(
                String::from_utf8_lossy(&p.reply).starts_with("REJECTED EXTERNAL\r\n"),
                "{line}"
            );
            assert!(!a.is_done(), "{uid:?} {line}");
        }
    }

    #[test]
    fn limits_close_the_connection() {
        assert_eq!(run(Some(0), b"AUTH\r\n").1, Err(AuthError::NoNul(b'A')));
        let long = [b"\0".as_slice(), &[b'A'; MAX_LINE + 2]].concat();
        assert_eq!(run(Some(0), &long).1, Err(AuthError::LineTooLong));
        let many = [b"\0".as_slice(), &b"AUTH\r\n".repeat(10)].concat();
        assert_eq!(run(Some(1000), &many).1, Err(AuthError::TooManyFailures));
        let mut a = Authenticator::new(Some(0), GUID);
        assert!(a.feed(b"\0AUTH EXTERNAL 30\r\n").is_ok());
        let mut last = Ok(Progress::default());
        for _ in 0..(MAX_AUTH_BYTES / 19 + 2) {
            last = a.feed(b"NEGOTIATE_UNIX_FD\r\n");
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(AuthError::TooMuch));
    }

    #[test]
    fn begin_before_ok_is_an_error() {
        let (a, p) = run(Some(0), b"\0BEGIN\r\n");
        assert_eq!(p.expect("reply").reply, b"ERROR unexpected command\r\n");
        assert!(!a.is_done());
    }
}
