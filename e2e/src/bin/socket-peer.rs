//! `socket-peer SOCKET`: a minimal Unix socket client for the harness (what
//! `socat - UNIX-CONNECT:SOCKET` did): stdin lines go to the socket, the
//! socket's bytes to stdout. The namespace harness starts it through
//! `setpriv` as uid 65534 to test the system socket's peer checks. Once
//! stdin ends it half-closes the socket and copies what is left; it gives up
//! after [`IDLE`] without a byte from the socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Longest wait for the socket to send anything.
const IDLE: Duration = Duration::from_secs(10);

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: socket-peer SOCKET");
        std::process::exit(2);
    };
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("socket-peer: connect {}: {e}", path.to_string_lossy());
            std::process::exit(1);
        }
    };
    if let Err(e) = stream.set_read_timeout(Some(IDLE)) {
        eprintln!("socket-peer: set timeout: {e}");
        std::process::exit(1);
    }
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("socket-peer: {e}");
            std::process::exit(1);
        }
    };
    std::thread::spawn(move || {
        // Copies stdin as it comes (line by line from a pipe), then
        // half-closes so the server sees the end of the requests.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut reader = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("socket-peer: read: {e}");
                std::process::exit(1);
            }
        }
    }
}
