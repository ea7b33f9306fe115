//! The legacy one-byte stream of the patched kubelet: a connection whose
//! first byte is a legacy command, then any bytes, as root. Unknown bytes
//! are ignored; the node keeps one process per service.
#![no_main]

use kios_fuzz::FakeNode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut node = FakeNode::new();
    let root = node.root.clone();
    // Force the legacy dialect: 0x01..=0x04 first.
    let mut stream = Vec::with_capacity(data.len() + 1);
    stream.push(0x01 + data.first().map_or(0, |b| b % 4));
    stream.extend_from_slice(data);
    let error = node.connection(&root, &stream);
    assert!(
        error.is_none(),
        "the legacy dialect has no framing errors: {error:?}"
    );
});
