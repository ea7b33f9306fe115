//! Blocking work off the event loop (`ps`'s /proc reads, `verify`'s
//! hashing, kernel-log backlog reads, the shutdown's steps), each on a
//! thread of its own, with the failure to get a thread as an error.
//!
//! Why not tokio's blocking pool: `spawn_blocking` panics when the kernel
//! refuses a thread (EAGAIN under a pid limit: `pids.max` of the node's
//! cgroup, or RLIMIT_NPROC) while the pool has no idle thread, and its idle
//! threads end after ten seconds. A panic in a connection task would skip
//! the task's goodbye to the owner (the client's slot would stay taken for
//! ever); in a shutdown step it would leave the step to its bound. Here the
//! caller gets an [`io::Error`] and answers with it. At most one thread
//! per connection or shutdown step exists at a time, so they stay bounded
//! by the client limit.

use std::io;

use tokio::sync::oneshot;

/// Stack of a work thread: what tokio's pool gave the same work (only the
/// pages touched become resident).
pub const STACK_BYTES: usize = 2 * 1024 * 1024;

/// Runs `work` on a new thread named `kios-WHAT` and waits (without
/// blocking the loop) for its result. Errors: no thread could be made
/// (logged, with what it was for), or `work` panicked.
pub async fn run<T, F>(what: &'static str, work: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("kios-{what}"))
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        crate::kerr!("cannot start a thread for {what}: {e}");
        return Err(e);
    }
    rx.await
        .map_err(|_| io::Error::other(format!("{what} panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn work_runs_off_the_loop_and_its_result_comes_back() {
        let caller = std::thread::current().id();
        let (value, other_thread) = block_on(run("test", move || {
            (21 * 2, std::thread::current().id() != caller)
        }))
        .unwrap();
        assert_eq!(value, 42);
        assert!(other_thread);
    }

    #[test]
    fn a_panic_in_the_work_is_an_error_not_a_panic_of_the_caller() {
        let got = block_on(run("test-panic", || -> u32 { panic!("boom") }));
        let e = got.unwrap_err();
        assert!(e.to_string().contains("test-panic panicked"), "{e}");
    }
}
