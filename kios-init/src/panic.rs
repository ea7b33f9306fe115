//! What a panic in PID 1 does.
//!
//! The image builds kios-init with `panic = "abort"` (Cargo.toml, profile
//! `image`: unwinding costs a fifth of the binary, and the binary lives in
//! RAM). A panic then cannot be caught: left alone, PID 1 would die and the
//! kernel panic, with the data partition unsynced. [`install`] sets a hook
//! that says what happened in the kernel log and ends the node the way a
//! shutdown ends it, synced: in the mode of the shutdown under way, else a
//! reboot, so the node comes back supervised.
//!
//! A build that unwinds (the unit tests) keeps its `catch_unwind` guards;
//! the hook then only logs.

use crate::sys::PowerMode;

/// What the hook does after logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPanic {
    /// The panic unwinds to a guard (`catch_unwind`): carry on.
    Unwind,
    /// The process aborts next: end the node first, in this mode.
    End(PowerMode),
}

/// The decision, from the panic strategy and the shutdown under way.
pub fn after_panic(unwinds: bool, shutdown: Option<PowerMode>) -> AfterPanic {
    if unwinds {
        AfterPanic::Unwind
    } else {
        AfterPanic::End(shutdown.unwrap_or(PowerMode::Restart))
    }
}

/// Installs the hook (kios-init's `main`, after the PID 1 guard).
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let shutdown = crate::runtime::owner::shutdown_under_way().map(PowerMode::from);
        match after_panic(cfg!(panic = "unwind"), shutdown) {
            AfterPanic::Unwind => crate::kerr!("bug: {info}"),
            AfterPanic::End(mode) => {
                let how = match mode {
                    PowerMode::PowerOff => "powering off",
                    PowerMode::Restart => "rebooting",
                };
                crate::kerr!("bug: {info}; PID 1 cannot go on: syncing and {how}");
                crate::sys::final_reboot(mode);
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aborting_build_ends_the_node_in_the_shutdowns_mode_or_reboots() {
        assert_eq!(
            after_panic(false, None),
            AfterPanic::End(PowerMode::Restart)
        );
        assert_eq!(
            after_panic(false, Some(PowerMode::PowerOff)),
            AfterPanic::End(PowerMode::PowerOff)
        );
        assert_eq!(
            after_panic(true, Some(PowerMode::PowerOff)),
            AfterPanic::Unwind
        );
    }
}
