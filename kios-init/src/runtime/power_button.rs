//! The ACPI power button: every `/dev/input/event*` device is read (non
//! blocking, on the event loop) for `EV_KEY KEY_POWER` presses, which start a
//! graceful power-off. Devices that appear after boot are picked up through
//! the runtime's inotify watch on `/dev/input` (the runtime calls
//! [`open_device`] for each new `eventN`).
//!
//! This is how `virsh shutdown`, qemu's `system_powerdown` and cloud
//! providers ask a VM to stop.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kios_protocol::PowerMode;
use tokio::io::unix::AsyncFd;

use crate::runtime::state::Shared;
use crate::runtime::supervisor::Now;

/// The input devices directory.
pub const INPUT_DIR: &str = "/dev/input";

/// `struct input_event` on 64-bit Linux: timeval (16 bytes), type (u16),
/// code (u16), value (i32).
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// Whether `bytes` (whole input events) hold a power-button press.
pub fn has_power_press(bytes: &[u8]) -> bool {
    bytes.chunks_exact(EVENT_SIZE).any(|event| {
        let kind = u16::from_ne_bytes([event[16], event[17]]);
        let code = u16::from_ne_bytes([event[18], event[19]]);
        let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Whether a `/dev/input` entry name is an event device.
pub fn is_event_device(name: &str) -> bool {
    name.strip_prefix("event")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The devices already being read, so none is opened twice.
#[derive(Debug, Default, Clone)]
pub struct OpenDevices(Rc<RefCell<HashSet<PathBuf>>>);

/// Opens every event device in `dir` now.
pub fn scan(shared: &Shared, open: &OpenDevices, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str() {
            if is_event_device(name) {
                open_device(shared, open, &dir.join(name));
            }
        }
    }
}

/// Starts reading one event device (a no-op if it is read already).
pub fn open_device(shared: &Shared, open: &OpenDevices, path: &Path) {
    if open.0.borrow().contains(path) {
        return;
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => {
            crate::kwarn!("power button: cannot open {}: {e}", path.display());
            return;
        }
    };
    let fd = match crate::sys::process::async_file(file) {
        Ok(fd) => fd,
        Err(e) => {
            crate::kwarn!("power button: cannot watch {}: {e}", path.display());
            return;
        }
    };
    open.0.borrow_mut().insert(path.to_path_buf());
    tokio::task::spawn_local(read_device(
        shared.clone(),
        open.clone(),
        path.to_path_buf(),
        fd,
    ));
}

async fn read_device(shared: Shared, open: OpenDevices, path: PathBuf, fd: AsyncFd<File>) {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        let mut buf = [0u8; EVENT_SIZE * 16];
        let read = guard.try_io(|inner| {
            let mut file: &File = inner.get_ref();
            file.read(&mut buf)
        });
        match read {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if has_power_press(&buf[..n - n % EVENT_SIZE]) {
                    let by = format!("power button ({})", path.display());
                    shared.borrow_mut().request_shutdown(
                        PowerMode::Poweroff,
                        false,
                        &by,
                        Now::current(),
                    );
                }
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // ENODEV: the device went away.
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
    }
    open.0.borrow_mut().remove(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(has_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(
            !has_power_press(&event(EV_KEY, KEY_POWER, 2)),
            "auto-repeat"
        );
        assert!(!has_power_press(&event(EV_KEY, 30, 1)), "the A key");
        assert!(!has_power_press(&event(0x00, KEY_POWER, 1)), "EV_SYN");
        let mut several = event(0x04, 4, 116);
        several.extend(event(EV_KEY, KEY_POWER, 1));
        several.extend(event(0, 0, 0));
        assert!(has_power_press(&several));
        assert!(
            !has_power_press(&several[..EVENT_SIZE + 10]),
            "a partial event is not read"
        );
    }

    #[test]
    fn event_device_names() {
        assert!(is_event_device("event0"));
        assert!(is_event_device("event12"));
        assert!(!is_event_device("event"));
        assert!(!is_event_device("mice"));
        assert!(!is_event_device("event1x"));
        assert!(!is_event_device("by-path"));
    }
}
