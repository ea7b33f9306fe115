//! kiosctl: the administrators' CLI for a kiOS node's system socket.
//!
//! The binary (`main.rs`) only parses arguments and maps the outcome to an
//! exit code; the work lives here:
//! - [`cli`]: the clap definition of every subcommand and global option;
//! - [`alias`]: kiosctl invoked as `poweroff` or `reboot`;
//! - [`discovery`]: where the socket is (`--socket`, `KIOS_SOCKET`,
//!   `/run/system.sock`, `/host/run/system.sock`) and the advice when none
//!   answers;
//! - [`client`]: one connection, one request line out, one reply line back,
//!   then optionally a stream of event lines;
//! - [`render`]: tables, durations, ages and timestamps for people;
//! - [`output`]: stdout with colour decided once, broken pipes as a normal end;
//! - [`watch`]: the live view of `kiosctl watch` on a terminal;
//! - [`signals`]: SIGTERM deferred while a shutdown request is in flight;
//! - [`session`]: a connection and how to show its replies;
//! - [`commands`]: one function per subcommand;
//! - [`exit`]: the documented exit codes and how failures map to them.

pub mod alias;
pub mod cli;
pub mod client;
pub mod commands;
pub mod discovery;
pub mod exit;
pub mod observe;
pub mod output;
pub mod render;
pub mod session;
pub mod signals;
pub mod watch;
