//! A process tree that never dies of SIGTERM and grows back when a part of
//! it is killed (`regrow=true` in kubelet.conf): the stand-in for a
//! process that will not go away (D state cannot be made here).
//!
//! The kubelet stand-in starts the first one, a keeper, once it is
//! connected. Every regrow process blocks SIGTERM in every thread (the
//! signal stays pending for ever) and starts one more process every time
//! one arrives. A keeper keeps one child, a leaf, and starts a new leaf
//! when that one dies; a leaf starts a new keeper when its parent dies.
//! So killing any one of them, or TERM to all of them, leaves more
//! processes than before; only SIGKILL to every one at once (`kill(-1)`)
//! ends the tree.
//!
//! Each process prints `KIOS-E2E regrow started pid=N ppid=P role=R slot=S`.
//! At most [`MAX_PROCESSES`] are started per boot (slot files
//! `/run/kios-e2e/regrow.S`, taken with `O_EXCL`), so a bug here cannot
//! fork-bomb the machine running the tests.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use super::{emit, RUN_DIR};

/// The argument by which the stand-in binary runs as a regrow process.
pub const ARG: &str = "--kios-e2e-regrow";

/// Regrow processes started per boot, at most.
pub const MAX_PROCESSES: u32 = 48;

/// How often a regrow process looks at its child and its parent.
const LOOK: Duration = Duration::from_millis(20);

/// Takes the next free slot; `None` once [`MAX_PROCESSES`] are used.
fn take_slot() -> Option<u32> {
    let _ = std::fs::create_dir_all(RUN_DIR);
    (1..=MAX_PROCESSES).find(|slot| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(Path::new(RUN_DIR).join(format!("regrow.{slot}")))
            .is_ok()
    })
}

/// What a regrow process does for the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Keeps a leaf child; starts a new one when it dies.
    Keeper,
    /// Starts a new keeper when its parent dies.
    Leaf,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Keeper => "keeper",
            Role::Leaf => "leaf",
        }
    }
}

/// Starts one more regrow process (a child of this one), if a slot is left.
pub fn start_one(role: Role) -> Option<Child> {
    let slot = take_slot()?;
    match Command::new("/proc/self/exe")
        .arg(ARG)
        .arg(role.as_str())
        .arg(slot.to_string())
        .spawn()
    {
        Ok(child) => Some(child),
        Err(e) => {
            emit(&format!("regrow error cannot start slot={slot}: {e}"));
            None
        }
    }
}

/// Reaps children started on SIGTERM or for a dead parent, so they do not
/// linger as zombies of this process.
fn reap_in_background(mut child: Child) {
    let _ = std::thread::Builder::new()
        .name("regrow-wait".into())
        .spawn(move || {
            let _ = child.wait();
        });
}

/// Runs as a regrow process; never returns (only SIGKILL ends it).
pub fn main(role: Option<&str>, slot: Option<&str>) -> i32 {
    let role = match role {
        Some("leaf") => Role::Leaf,
        _ => Role::Keeper,
    };
    // First, before any thread: every thread inherits the blocked mask.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    if let Err(e) = set.thread_block() {
        emit(&format!("regrow error cannot block SIGTERM: {e}"));
    }
    let mut parent = nix::unistd::getppid();
    emit(&format!(
        "regrow started pid={} ppid={parent} role={} slot={}",
        std::process::id(),
        role.as_str(),
        slot.unwrap_or("?")
    ));
    let _ = std::thread::Builder::new()
        .name("regrow-term".into())
        .spawn(move || loop {
            if let Ok(Signal::SIGTERM) = set.wait() {
                emit(&format!(
                    "regrow sigterm-ignored pid={}: starting one more",
                    std::process::id()
                ));
                if let Some(child) = start_one(Role::Leaf) {
                    reap_in_background(child);
                }
            }
        });
    let mut child = match role {
        Role::Keeper => start_one(Role::Leaf),
        Role::Leaf => None,
    };
    loop {
        std::thread::sleep(LOOK);
        if role == Role::Keeper {
            match child.as_mut() {
                Some(c) => {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        emit(&format!("regrow child-died pid={}", c.id()));
                        child = start_one(Role::Leaf);
                    }
                }
                None => child = start_one(Role::Leaf),
            }
        }
        let now = nix::unistd::getppid();
        if now != parent {
            emit(&format!("regrow parent-died ppid={parent}"));
            parent = now;
            if role == Role::Leaf {
                if let Some(replacement) = start_one(Role::Keeper) {
                    reap_in_background(replacement);
                }
            }
        }
    }
}
