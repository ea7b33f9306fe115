//! SIGTERM deferred while a shutdown request is in flight.
//!
//! A forced shutdown (or one with no kubelet to wait for) goes straight to
//! the stopping phase, where kios-init sends SIGTERM to every process, the
//! kiosctl that asked included, often before it has read the reply. While
//! [`DeferTerm`] lives, SIGTERM only sets a flag, so kiosctl prints the
//! node's answer and exits 0 by itself; SIGKILL, which init sends after its
//! bound, still ends it. Only the shutdown commands use this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::SIGTERM;
use signal_hook::SigId;

/// While alive, SIGTERM is recorded instead of ending the process.
pub struct DeferTerm {
    received: Arc<AtomicBool>,
    id: Option<SigId>,
}

impl DeferTerm {
    /// Starts deferring. If the handler cannot be installed the process
    /// keeps the default behaviour: nothing worse than without this.
    pub fn start() -> DeferTerm {
        let received = Arc::new(AtomicBool::new(false));
        let id = signal_hook::flag::register(SIGTERM, received.clone()).ok();
        DeferTerm { received, id }
    }

    /// Whether SIGTERM arrived while deferred.
    pub fn received(&self) -> bool {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for DeferTerm {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            signal_hook::low_level::unregister(id);
        }
    }
}
