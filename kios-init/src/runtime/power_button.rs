//! The ACPI power button: every `/dev/input/event*` device is read (non
//! blocking, on the event loop) for `EV_KEY KEY_POWER` presses, which start a
//! graceful power-off. Devices that appear after boot are picked up through
//! the runtime's inotify watch on `/dev/input` (the owner opens each new
//! `eventN`; its reader task sends the presses).
//!
//! This is how `virsh shutdown`, qemu's `system_powerdown` and cloud
//! providers ask a VM to stop.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use crate::runtime::event::{Event, Events};

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

/// The event devices in `dir` now (names only).
pub fn event_devices(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .filter(|name| is_event_device(name))
        .collect()
}

/// Opens one event device for reading on the event loop (non-blocking).
/// Failures are logged.
pub fn open_device(path: &Path) -> Option<AsyncFd<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => {
            crate::kwarn!("power button: cannot open {}: {e}", path.display());
            return None;
        }
    };
    match crate::sys::process::async_file(file) {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::kwarn!("power button: cannot watch {}: {e}", path.display());
            None
        }
    }
}

/// Reads one device until it goes away: each press is an
/// [`Event::PowerButton`], the end an [`Event::InputDeviceGone`].
pub async fn read_device(device: PathBuf, fd: AsyncFd<File>, events: Events) {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        // The buffer lives in this block only (not in the task's memory).
        let read = {
            let mut buf = [0u8; EVENT_SIZE * 16];
            let read = guard.try_io(|inner| {
                let mut file: &File = inner.get_ref();
                file.read(&mut buf)
            });
            match read {
                Ok(Ok(0)) => None,
                Ok(Ok(n)) => Some(has_power_press(&buf[..n - n % EVENT_SIZE])),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => Some(false),
                // ENODEV: the device went away.
                Ok(Err(_)) => None,
                Err(_would_block) => Some(false),
            }
        };
        drop(guard);
        match read {
            None => break,
            Some(true) => {
                let press = Event::PowerButton {
                    device: device.clone(),
                };
                if !events.send(press).await {
                    return;
                }
            }
            Some(false) => {}
        }
    }
    events.send(Event::InputDeviceGone { device }).await;
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
