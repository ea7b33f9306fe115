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
//!
//! A command line (`ps`: its arguments joined by single spaces) is shown
//! with [`escape_words`]: each space-separated word in that form, the
//! spaces between them kept, so words stay readable and a word cannot
//! hide, reorder or fake its neighbours. [`unescape`] inverts it too.

use thiserror::Error;

/// A string that is not in the escaped form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnescapeError {
    #[error("'{text}': a backslash must be followed by '\\' or 'xNN' (at byte {at})")]
    BadEscape { text: String, at: usize },
}

/// Format characters that change how the text around them is shown:
/// zero-width (U+200B-U+200D, the word joiner U+2060 and the invisible
/// operators after it, the byte-order mark U+FEFF), and bidirectional
/// controls (the marks U+200E, U+200F and U+061C, the embeddings and
/// overrides U+202A-U+202E, the isolates U+2066-U+2069).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
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

/// The escaped form of text whose words are separated by single spaces (a
/// command line): every word in the form of [`escape`], the separating
/// spaces themselves. Still injective (the form of a word has no space),
/// and [`unescape`] gives the text back.
pub fn escape_words(text: &str) -> String {
    let words: Vec<String> = text.split(' ').map(escape_str).collect();
    words.join(" ")
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
    fn bidi_controls_are_escaped() {
        // Embeddings and overrides, isolates, and the implicit marks.
        let bidi = [
            ('\u{202a}', "\\xe2\\x80\\xaa"),
            ('\u{202b}', "\\xe2\\x80\\xab"),
            ('\u{202c}', "\\xe2\\x80\\xac"),
            ('\u{202d}', "\\xe2\\x80\\xad"),
            ('\u{202e}', "\\xe2\\x80\\xae"),
            ('\u{2066}', "\\xe2\\x81\\xa6"),
            ('\u{2067}', "\\xe2\\x81\\xa7"),
            ('\u{2068}', "\\xe2\\x81\\xa8"),
            ('\u{2069}', "\\xe2\\x81\\xa9"),
            ('\u{200e}', "\\xe2\\x80\\x8e"),
            ('\u{200f}', "\\xe2\\x80\\x8f"),
            ('\u{061c}', "\\xd8\\x9c"),
        ];
        for (c, form) in bidi {
            let text = format!("sleep{c}300");
            assert_eq!(escape_str(&text), format!("sleep{form}300"), "{c:?}");
            assert_eq!(escape_words(&text), format!("sleep{form}300"), "{c:?}");
            assert!(!is_plain(&text), "{c:?}");
            assert_eq!(unescape(&escape_words(&text)).unwrap(), text.as_bytes());
        }
    }

    #[test]
    fn zero_width_characters_are_escaped() {
        let zero_width = [
            ('\u{200b}', "\\xe2\\x80\\x8b"),
            ('\u{200c}', "\\xe2\\x80\\x8c"),
            ('\u{200d}', "\\xe2\\x80\\x8d"),
            ('\u{2060}', "\\xe2\\x81\\xa0"),
            ('\u{feff}', "\\xef\\xbb\\xbf"),
        ];
        for (c, form) in zero_width {
            let text = format!("kube{c}let");
            assert_eq!(escape_str(&text), format!("kube{form}let"), "{c:?}");
            assert_eq!(escape_words(&text), format!("kube{form}let"), "{c:?}");
            assert!(!is_plain(&text), "{c:?}");
            assert_eq!(unescape(&escape_words(&text)).unwrap(), text.as_bytes());
        }
    }

    #[test]
    fn command_lines_keep_their_spaces_and_escape_the_rest() {
        // Controls (a fake row), other white space (tab, no-break space)
        // and backslashes inside words; the separating spaces stay.
        let line = "sh -c 'a\nb'\u{1b}[2J\ttab\u{a0}nbsp C:\\x41";
        let shown = escape_words(line);
        assert_eq!(
            shown,
            "sh -c 'a\\x0ab'\\x1b[2J\\x09tab\\xc2\\xa0nbsp C:\\\\x41"
        );
        assert_eq!(unescape(&shown).unwrap(), line.as_bytes());
        // Empty words (doubled, leading, trailing spaces) survive too.
        for line in ["", " ", "a  b", " a", "a ", "/bin/kubelet --config /etc/x"] {
            let shown = escape_words(line);
            assert_eq!(unescape(&shown).unwrap(), line.as_bytes(), "{line:?}");
        }
        assert_eq!(
            escape_words("/bin/crio --log-level info"),
            "/bin/crio --log-level info"
        );
        // Injective: a space in the text and an escaped one differ.
        assert_ne!(escape_words("a b"), escape_words("a\\x20b"));
        // Upper-case digits are accepted back.
        assert_eq!(
            unescape("sleep\\xE2\\x80\\xAE300").unwrap(),
            "sleep\u{202e}300".as_bytes()
        );
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for bad in ["/a\\", "/a\\x", "/a\\x4", "/a\\xzz", "/a\\n", "/a\\x+f"] {
            assert!(unescape(bad).is_err(), "{bad}");
        }
        assert_eq!(unescape("/a\\x4A").unwrap(), b"/aJ");
    }
}
