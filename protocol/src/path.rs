//! The escaped form of a path on the wire: a file name on Linux is any
//! string of bytes, a reply is UTF-8 JSON and a request is one line of
//! space-separated words, so every path in a reply (and `files PATH` in a
//! request) is written in one printable, reversible form:
//!
//! - `\` is written `\\`;
//! - a byte that is not part of a valid UTF-8 character, and every byte of
//!   a control character, of white space (the space included) or of an
//!   invisible or direction-changing format character, is written `\xNN`
//!   (two lower-case hex digits);
//! - every other character stands for itself.
//!
//! [`escape`] is injective and [`unescape`] is its inverse: the same form
//! goes in tables, in JSON and back into `files PATH`.

use thiserror::Error;

/// A string that is not in the escaped form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnescapeError {
    #[error("'{text}': a backslash must be followed by '\\' or 'xNN' (at byte {at})")]
    BadEscape { text: String, at: usize },
}

/// Format characters that change how the text around them is shown
/// (zero-width, bidirectional overrides and isolates, byte-order mark).
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn keeps_itself(c: char) -> bool {
    c != '\\' && !c.is_control() && !c.is_whitespace() && !is_invisible_format(c)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push('\\');
        out.push('x');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// The escaped form of the bytes of a path.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if keeps_itself(c) {
                out.push(c);
            } else {
                let mut buf = [0u8; 4];
                push_hex(&mut out, c.encode_utf8(&mut buf).as_bytes());
            }
        }
        push_hex(&mut out, chunk.invalid());
    }
    out
}

/// The escaped form of a path that is already text.
pub fn escape_str(text: &str) -> String {
    escape(text.as_bytes())
}

/// True when `text` needs no escape: its escaped form is itself.
pub fn is_plain(text: &str) -> bool {
    text.chars().all(keeps_itself)
}

/// The bytes an escaped path stands for.
pub fn unescape(text: &str) -> Result<Vec<u8>, UnescapeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let bad = || UnescapeError::BadEscape {
            text: text.to_string(),
            at: i,
        };
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = bytes.get(i + 2..i + 4).ok_or_else(bad)?;
                let digits = std::str::from_utf8(hex).map_err(|_| bad())?;
                let byte = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad());
                }
                out.push(byte);
                i += 4;
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_themselves() {
        for p in [
            "/bin/kubelet",
            "/etc/kubernetes/node-labels",
            "/opt/ünïcode",
        ] {
            assert_eq!(escape_str(p), p);
            assert!(is_plain(p));
        }
    }

    #[test]
    fn invalid_utf8_controls_spaces_and_backslashes_are_escaped() {
        assert_eq!(escape(b"/bin/\xff\xfekworker"), "/bin/\\xff\\xfekworker");
        assert_eq!(escape(b"/tmp/a b"), "/tmp/a\\x20b");
        assert_eq!(escape(b"/tmp/a\nb\x1b[31m"), "/tmp/a\\x0ab\\x1b[31m");
        assert_eq!(escape(b"/tmp/a\\x41"), "/tmp/a\\\\x41");
        // A right-to-left override, as UTF-8 bytes.
        assert_eq!(escape_str("/bin/\u{202e}gpj"), "/bin/\\xe2\\x80\\xaegpj");
        assert!(!is_plain("/tmp/a b"));
    }

    #[test]
    fn unescape_inverts_escape() {
        let samples: [&[u8]; 7] = [
            b"/bin/\xff\xfekworker",
            b"/tmp/a\\x41",
            b"/tmp/\\",
            b"/a\nb\tc d\x7f",
            "/ü/\u{feff}".as_bytes(),
            b"\xc3",
            b"",
        ];
        for s in samples {
            let e = escape(s);
            assert!(e.is_ascii() || std::str::from_utf8(e.as_bytes()).is_ok());
            assert!(!e.contains(' ') && !e.contains('\n'), "{e}");
            assert_eq!(unescape(&e).unwrap(), s, "{e}");
        }
        // Every byte value round-trips.
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(unescape(&escape(&all)).unwrap(), all);
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for bad in ["/a\\", "/a\\x", "/a\\x4", "/a\\xzz", "/a\\n", "/a\\x+f"] {
            assert!(unescape(bad).is_err(), "{bad}");
        }
        assert_eq!(unescape("/a\\x4A").unwrap(), b"/aJ");
    }
}
