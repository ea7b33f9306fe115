//! Enough of systemd-logind on the system D-Bus for the upstream kubelet's
//! graceful node shutdown: a codec of our own for exactly the messages
//! needed (`wire`), the authentication (`auth`), what the bus answers
//! (`bus`, pure) and the socket component in init's event loop (`server`).
//!
//! Why not zbus: its peer-to-peer server on tokio adds 916 KiB to a static
//! musl binary and 872 KiB of resident memory (measured), against budgets
//! of 1536 KiB and 1024 KiB for all of kios-init.

pub mod auth;
pub mod bus;
pub mod server;
pub mod wire;

pub use server::{start, BusCommand, BusConfig, BusEvent, BusHandle, SYSTEM_BUS_SOCKET};
