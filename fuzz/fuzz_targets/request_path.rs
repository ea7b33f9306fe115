//! The whole request path against a fake node: the bytes of one
//! connection (either dialect, chosen by the first byte as init does) are
//! framed by kios-init's `Connection`, handled by its handlers on a real
//! `State`, and every response must encode and decode. The first input
//! byte picks the peer (even: root, odd: a non-root uid); after every
//! request the fake processes obey init's signals and due services start,
//! with one process per service at most.
#![no_main]

use kios_fuzz::FakeNode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&who, stream)) = data.split_first() else {
        return;
    };
    let mut node = FakeNode::new();
    let peer = if who & 1 == 0 {
        node.root.clone()
    } else {
        node.nobody.clone()
    };
    let shutdown_before = node.state.shutdown.is_active();
    let _ = node.connection(&peer, stream);
    if !peer.is_root() {
        // Nothing a non-root peer sends changes the node.
        assert_eq!(node.state.shutdown.is_active(), shutdown_before);
        for name in kios_protocol::ServiceName::ALL {
            assert_eq!(node.state.supervisor.service(name).restarts, 0, "{name}");
        }
    }
});
