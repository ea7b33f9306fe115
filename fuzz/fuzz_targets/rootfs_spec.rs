//! rootfs/spec/files.toml: the spec parser and its validation on any text.
//! Every error names a line within the text.
#![no_main]

use std::path::Path;

use kios_rootfs::spec::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = parse(Path::new("files.toml"), text) {
        assert!(!errors.is_empty());
        let lines = text.lines().count().max(1);
        for e in &errors {
            assert!(
                e.line <= lines + 1,
                "line {} of {lines}: {}",
                e.line,
                e.message
            );
        }
    }
});
