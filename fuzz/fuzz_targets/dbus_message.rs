//! The system bus's message stream after `BEGIN`: any bytes, decoded as
//! the server does (`wire::decode` until incomplete or malformed), every
//! message answered by the pure bus (`Bus::handle`) for a root client.
//! What decodes is framed exactly (its length is the header's, every
//! shorter prefix is "incomplete"), re-encodes and decodes to the same
//! message; every call that wants a reply gets one that encodes, is no
//! larger than the limit and names the call's serial; the bus keeps its
//! limits on inhibitors and match rules.
#![no_main]

use kios_init::runtime::logind::bus::{
    Action, Bus, Client, MAX_INHIBITORS, MAX_INHIBITORS_PER_CLIENT, MAX_MATCHES,
};
use kios_init::runtime::logind::wire::{self, DecodeError, Kind, Message};
use libfuzzer_sys::fuzz_target;

fn check_round_trip(msg: &Message) {
    let bytes = match wire::encode(msg) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a decoded message does not encode: {e}: {msg:?}"),
    };
    let (back, used) = match wire::decode(&bytes) {
        Ok(decoded) => decoded,
        Err(e) => panic!("an encoded message does not decode: {e}: {msg:?}"),
    };
    assert_eq!(used, bytes.len());
    // Compared as bytes: a double may be NaN, which is not equal to itself.
    assert_eq!(
        wire::encode(&back).ok().as_deref(),
        Some(bytes.as_slice()),
        "{msg:?}"
    );
    assert_eq!(
        (back.kind, back.flags, back.serial, back.unix_fds),
        (msg.kind, msg.flags, msg.serial, msg.unix_fds)
    );
    assert_eq!(
        (&back.path, &back.interface, &back.member, &back.error_name),
        (&msg.path, &msg.interface, &msg.member, &msg.error_name)
    );
    assert_eq!(
        (&back.reply_serial, &back.destination, &back.sender),
        (&msg.reply_serial, &msg.destination, &msg.sender)
    );
}

/// A reply the server would write: it must encode (the server drops what
/// does not, and the caller would wait for ever) and answer `call`.
fn check_reply(call: &Message, reply: &Message) {
    assert!(matches!(reply.kind, Kind::MethodReturn | Kind::Error));
    assert_eq!(reply.reply_serial, Some(call.serial));
    let bytes = match wire::encode(reply) {
        Ok(bytes) => bytes,
        Err(e) => panic!("the reply to {call:?} does not encode: {e}"),
    };
    assert!(bytes.len() <= wire::MAX_MESSAGE);
    assert!(wire::decode(&bytes).is_ok(), "{reply:?}");
}

fuzz_target!(|data: &[u8]| {
    kios_fuzz::quiet_logs();
    let mut bus = Bus::new(35_000_000);
    let mut client = Client {
        id: 1,
        pid: Some(4242),
        uid: Some(0),
        command: Some("kubelet".into()),
        unix_fds: true,
        unique: None,
        matches: Vec::new(),
    };
    let mut rest = data;
    loop {
        let (msg, used) = match wire::decode(rest) {
            Ok(decoded) => decoded,
            Err(DecodeError::Incomplete { needed }) => {
                assert!(
                    needed > rest.len(),
                    "incomplete with {needed} of {}",
                    rest.len()
                );
                return;
            }
            // The server closes the connection here.
            Err(DecodeError::Malformed(_)) => return,
        };
        assert!(used >= 16 && used <= rest.len() && used <= wire::MAX_MESSAGE);
        assert_eq!(wire::frame_len(rest).ok(), Some(used));
        for short in [used - 1, 16, 15] {
            assert!(
                matches!(
                    wire::decode(&rest[..short]),
                    Err(DecodeError::Incomplete { .. })
                ),
                "a prefix of {short} of a {used}-byte message"
            );
        }
        check_round_trip(&msg);

        let wants_reply = msg.wants_reply();
        match bus.handle(&mut client, &msg) {
            Action::Nothing => assert!(!wants_reply, "no answer to {msg:?}"),
            Action::Send(reply) | Action::SendThenSignal(reply) => check_reply(&msg, &reply),
            Action::ReloadDelay => {
                bus.set_delay(5_000_000);
                let reply = bus.reply(&msg, vec![]);
                check_reply(&msg, &reply);
            }
            Action::Inhibit(request) => {
                let (lock, reply) = bus.inhibitor_taken(&client, &msg, request, 0);
                assert_eq!(reply.unix_fds, 1);
                check_reply(&msg, &reply);
                // Every other lock is released again (its pipe closed).
                if lock.id % 2 == 0 {
                    assert!(bus.inhibitor_released(lock.id).is_some());
                }
            }
        }
        assert!(bus.inhibitors.len() <= MAX_INHIBITORS);
        assert!(bus.inhibitors.len() <= MAX_INHIBITORS_PER_CLIENT);
        assert!(client.matches.len() <= MAX_MATCHES);
        let signal = bus.prepare_for_shutdown(true);
        assert!(wire::encode(&signal).is_ok());
        rest = &rest[used..];
    }
});
