//! The system bus's authentication (`auth::Authenticator`) on the bytes a
//! client sends before and after `BEGIN`, for a root peer, a non-root peer
//! and one whose credentials are unknown, fed at once and in pieces as the
//! socket may deliver them. Only root gets `OK`; every reply is one of the
//! protocol's lines; the bytes after `BEGIN` are left untouched for the
//! message codec; the pieces give the same outcome as the whole.
#![no_main]

use kios_init::runtime::logind::auth::{AuthError, Authenticator, MAX_AUTH_BYTES};
use libfuzzer_sys::fuzz_target;

const GUID: &str = "0123456789abcdef0123456789abcdef";

/// What one run ended with: the error, or the replies, whether `BEGIN`
/// came, descriptor passing, and the bytes left for the codec.
#[derive(Debug, PartialEq)]
enum End {
    Closed(AuthError),
    Open {
        reply: Vec<u8>,
        begun: bool,
        unix_fds: bool,
        left: Vec<u8>,
    },
}

fn check_lines(uid: Option<u32>, reply: &[u8]) {
    let text = std::str::from_utf8(reply).expect("replies are ASCII");
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    for line in text.split_terminator("\r\n") {
        let known = line == "REJECTED EXTERNAL"
            || line == "AGREE_UNIX_FD"
            || line == "DATA"
            || line.starts_with("ERROR ")
            || (line == format!("OK {GUID}") && uid == Some(0));
        assert!(known, "{uid:?} got {line:?}");
    }
}

/// Feeds `data` in pieces of `piece` bytes (0: all at once), keeping what
/// was not consumed as the server does.
fn run(uid: Option<u32>, data: &[u8], piece: usize) -> End {
    let mut auth = Authenticator::new(uid, GUID);
    let mut pending: Vec<u8> = Vec::new();
    let mut reply = Vec::new();
    let chunk = if piece == 0 { data.len().max(1) } else { piece };
    let mut chunks = data.chunks(chunk);
    let mut begun = false;
    loop {
        let Some(next) = chunks.next() else { break };
        pending.extend_from_slice(next);
        let progress = match auth.feed(&pending) {
            Ok(p) => p,
            Err(e) => return End::Closed(e),
        };
        assert!(progress.consumed <= pending.len());
        check_lines(uid, &progress.reply);
        pending.drain(..progress.consumed);
        reply.extend_from_slice(&progress.reply);
        assert!(reply.len() <= 2 * MAX_AUTH_BYTES);
        if progress.begun {
            assert!(auth.is_done());
            assert_eq!(uid, Some(0), "BEGIN accepted from {uid:?}");
            begun = true;
            break;
        }
        assert!(!auth.is_done());
    }
    if begun {
        // Once done, nothing more is consumed or answered.
        let after = auth.feed(&pending);
        assert_eq!(
            after.as_ref().map(|p| (p.consumed, p.reply.len(), p.begun)),
            Ok((0, 0, true))
        );
    }
    let mut left = pending;
    for rest in chunks {
        left.extend_from_slice(rest);
    }
    End::Open {
        reply,
        begun,
        unix_fds: auth.unix_fds(),
        left,
    }
}

fuzz_target!(|data: &[u8]| {
    for uid in [Some(0), Some(1000), None] {
        let whole = run(uid, data, 0);
        if let End::Open {
            begun: true, left, ..
        } = &whole
        {
            // What follows BEGIN is the input's tail, byte for byte.
            assert!(data.ends_with(left));
        }
        // Byte by byte is the costly one: for root, whose path is longest.
        let pieces: &[usize] = if uid == Some(0) { &[1, 7] } else { &[5] };
        for &piece in pieces {
            let pieces = run(uid, data, piece);
            match (&whole, &pieces) {
                (End::Closed(a), End::Closed(b)) => assert_eq!(a, b),
                (End::Open { .. }, End::Open { .. }) => assert_eq!(whole, pieces, "piece {piece}"),
                _ => panic!("{uid:?}: whole {whole:?}, in pieces of {piece} {pieces:?}"),
            }
        }
    }
});
