//! Service output as cut into lines for the tail, the log files and
//! `logs -f`: no line exceeds the limit, and no byte is lost except
//! newlines and a `\r` before them. The first byte picks the limit.
#![no_main]

use kios_init::runtime::logcapture::LineSplitter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&max, output)) = data.split_first() else {
        return;
    };
    let max = usize::from(max) + 1;
    let mut splitter = LineSplitter::new(max);
    let mut lines = Vec::new();
    // In two writes, split where the second byte says.
    let at = output
        .get(1)
        .map_or(0, |b| usize::from(*b))
        .min(output.len());
    splitter.push(&output[..at], &mut lines);
    splitter.push(&output[at..], &mut lines);
    lines.extend(splitter.finish());
    for line in &lines {
        assert!(line.len() <= max * 3, "{} > {max}", line.len());
        assert!(!line.contains('\n'));
    }
    if std::str::from_utf8(output).is_ok() {
        let kept: usize = lines.iter().map(String::len).sum();
        let newlines = output.iter().filter(|b| **b == b'\n').count();
        let crs = output.iter().filter(|b| **b == b'\r').count();
        assert!(kept + newlines + crs >= output.len(), "lost bytes");
    }
});
