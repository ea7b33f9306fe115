//! The line decoder: any bytes as one request line. A parsed request
//! re-encodes to a line that parses to the same request; an error has a
//! wire code and a one-line error body.
#![no_main]

use kios_protocol::{encode_error, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Request::parse_line(data) {
        Ok(request) => {
            let line = request.to_line();
            assert!(!line.contains('\n'), "{line:?}");
            assert_eq!(
                Request::parse(&line).as_ref(),
                Ok(&request),
                "{request:?} re-encoded as {line:?}"
            );
            let _ = (
                request.verb(),
                request.changes_state(),
                request.is_streaming(),
            );
        }
        Err(error) => {
            let body = error.to_body();
            assert_eq!(body.code, error.code());
            assert!(!encode_error(&body).contains('\n'));
        }
    }
});
