//! `logs kernel|init [LINES] [follow] [since MS]` on the connection: the
//! backlog read off the loop (`runtime::blocking`), a follower on a thread of its own
//! (`kmsgread`), and the client task's loop that writes what the follower
//! hands over. A slow client only ever costs it records (counted and sent
//! as `kmsg-missed`), never init's time.

use std::path::PathBuf;

use kios_protocol::{ErrorBody, ErrorCode, Event, KernelLogReply, Reply, Response};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};

use super::connection::Connection;
use crate::kmsgread::{self, Filter, Followed, FollowerSlot, Source, FOLLOW_QUEUE, MAX_FOLLOWERS};

/// The kernel log device.
pub const KMSG: &str = "/dev/kmsg";

/// What a `logs kernel|init` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLogRequest {
    pub init_only: bool,
    pub lines: usize,
    pub follow: bool,
    pub since_ms: Option<u64>,
}

/// The response, and for `follow` the records to stream after it.
pub enum Started {
    Once(Response),
    /// A response line already encoded, with its newline.
    Encoded(Vec<u8>),
    Follow(Response, mpsc::Receiver<Followed>),
}

/// The device, or init's in-memory lines when it logs to stderr.
fn device() -> Option<PathBuf> {
    match crate::kmsg::target() {
        crate::kmsg::LogTarget::Kmsg => Some(PathBuf::from(KMSG)),
        crate::kmsg::LogTarget::Stderr => None,
    }
}

fn unavailable(e: std::io::Error) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Unavailable,
        format!("cannot read the kernel log {KMSG}: {e}"),
    )
}

/// Opens the log and reads the backlog (blocking).
fn read(req: KernelLogRequest) -> Result<(Box<dyn Source>, Filter, KernelLogReply), ErrorBody> {
    let (mut source, boot_ms) = kmsgread::open(device().as_deref()).map_err(unavailable)?;
    let filter = Filter {
        init_only: req.init_only,
        min_usec: req
            .since_ms
            .map(|ms| source.now_usec().saturating_sub(ms.saturating_mul(1000))),
    };
    let records = kmsgread::backlog(source.as_mut(), filter, req.lines).map_err(unavailable)?;
    Ok((source, filter, KernelLogReply { boot_ms, records }))
}

/// Answers the request; for `follow` also starts the follower.
pub async fn start(req: KernelLogRequest) -> Started {
    if !req.follow {
        let read =
            crate::runtime::blocking::run("kmsg-read", move || read(req).map(|(_, _, r)| r)).await;
        return Started::Once(match read {
            Ok(reply) => reply.map(Reply::KernelLog),
            Err(e) => Err(ErrorBody::new(
                ErrorCode::Unavailable,
                format!("the kernel log cannot be read now: {e}"),
            )),
        });
    }
    let Some(slot) = FollowerSlot::claim() else {
        return Started::Once(Err(ErrorBody::new(
            ErrorCode::Busy,
            format!(
                "at most {MAX_FOLLOWERS} clients follow the kernel log at once; try again later"
            ),
        )));
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("kios-kmsg-follow".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _slot = slot;
            match read(req) {
                Ok((source, filter, reply)) => {
                    let last = reply.records.last().map(|r| r.seq);
                    if reply_tx.send(Ok(reply)).is_ok() {
                        kmsgread::follow(source, filter, last, tx);
                    }
                }
                Err(e) => {
                    let _ = reply_tx.send(Err(e));
                }
            }
        });
    if let Err(e) = spawned {
        return Started::Once(Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("cannot start a kernel log follower: {e}"),
        )));
    }
    match reply_rx.await {
        Ok(Ok(reply)) => Started::Follow(Ok(Reply::KernelLog(reply)), rx),
        Ok(Err(e)) => Started::Once(Err(e)),
        Err(_) => Started::Once(Err(ErrorBody::new(
            ErrorCode::Internal,
            "the kernel log follower ended before its first reply",
        ))),
    }
}

/// Writes followed records as events until the client hangs up, is told
/// to close, or a write does not finish in time.
pub async fn stream(
    conn: &mut Connection<UnixStream>,
    close: &Notify,
    mut rx: mpsc::Receiver<Followed>,
) {
    loop {
        tokio::select! {
            biased;
            _ = close.notified() => return,
            followed = rx.recv() => {
                let event = match followed {
                    Some(Followed::Record(record)) => Event::Kmsg(record),
                    Some(Followed::Missed(count)) => Event::KmsgMissed { count },
                    None => return,
                };
                let mut line = event.encode();
                line.push('\n');
                if !super::write_bounded(conn, line.as_bytes(), close).await {
                    return;
                }
            }
            // Nothing more is asked on a following connection; EOF or an
            // error ends it.
            incoming = conn.read_request() => {
                if !matches!(incoming, Ok(Some(_))) {
                    return;
                }
            }
        }
    }
}
