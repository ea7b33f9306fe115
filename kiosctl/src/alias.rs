//! kiosctl under the names `poweroff` and `reboot` (hard links or symlinks
//! in /bin; /sbin is a link to bin). The kernel runs `/sbin/poweroff` for an
//! orderly power-off, and people type these names out of habit: both ask
//! kios-init for the graceful shutdown, exactly like `kiosctl shutdown`.
//!
//! Flags (decided here, documented in docs/kiosctl.md):
//! - `-f`, `--force`: skip the wait for the kubelet's pod eviction. The
//!   shutdown still goes through init (stop, unmount, sync): there is no
//!   way to bypass it, and none is needed.
//! - `-n`, `--no-sync`, `--no-wall`, `-i`, `-d DELAY`/`-dDELAY`,
//!   `-p`/`--poweroff` (as `reboot -p`, power off instead): accepted from
//!   busybox and systemd habits; only `-p` changes anything.
//! - `-h`, `--help`: a short usage; exit 0.
//! - anything else: usage error (exit 2) and nothing happens.
//!
//! `--socket` is not available under these names; `KIOS_SOCKET` is.

use std::ffi::OsStr;
use std::path::Path;

use kios_protocol::PowerMode;

/// The mode when argv[0]'s base name is `poweroff` or `reboot`.
pub fn mode_of_argv0(argv0: &OsStr) -> Option<PowerMode> {
    match Path::new(argv0).file_name()?.to_str()? {
        "poweroff" => Some(PowerMode::Poweroff),
        "reboot" => Some(PowerMode::Reboot),
        _ => None,
    }
}

/// What the arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Shutdown { mode: PowerMode, force: bool },
    Help,
}

/// Parses the arguments after argv[0]; `Err` is the usage message.
pub fn parse(mode: PowerMode, args: &[String]) -> Result<Invocation, String> {
    let mut mode = mode;
    let mut force = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-f" | "--force" => force = true,
            "-h" | "--help" => return Ok(Invocation::Help),
            "-p" | "--poweroff" => mode = PowerMode::Poweroff,
            "-n" | "--no-sync" | "--no-wall" | "-i" => {}
            "-d" => {
                let delay = rest.next().ok_or("-d needs a delay in seconds")?;
                check_delay(delay)?;
            }
            other if other.starts_with("-d") => check_delay(&other[2..])?,
            other => {
                return Err(format!(
                    "unexpected argument '{other}' (nothing was done)\n{}",
                    usage(mode)
                ))
            }
        }
    }
    Ok(Invocation::Shutdown { mode, force })
}

fn check_delay(text: &str) -> Result<(), String> {
    match text.parse::<u32>() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("-d: '{text}' is not a number of seconds")),
    }
}

/// The usage text under the alias name.
pub fn usage(mode: PowerMode) -> String {
    format!(
        "usage: {mode} [-f|--force]\n\
         Asks kios-init for a graceful {what}: the kubelet drains pods, services stop,\n\
         filesystems are unmounted, then the machine {ends}.\n\
         \x20 -f, --force   skip the wait for the kubelet's pod eviction\n\
         \x20 -n, -i, -d N, --no-wall, --no-sync are accepted and ignored\n\
         Same as: kiosctl shutdown{flag} [--force]",
        what = match mode {
            PowerMode::Poweroff => "power-off",
            PowerMode::Reboot => "reboot",
        },
        ends = match mode {
            PowerMode::Poweroff => "powers off",
            PowerMode::Reboot => "restarts",
        },
        flag = match mode {
            PowerMode::Poweroff => "",
            PowerMode::Reboot => " --reboot",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_base_name_decides() {
        assert_eq!(
            mode_of_argv0(OsStr::new("/sbin/poweroff")),
            Some(PowerMode::Poweroff)
        );
        assert_eq!(mode_of_argv0(OsStr::new("reboot")), Some(PowerMode::Reboot));
        assert_eq!(mode_of_argv0(OsStr::new("/bin/kiosctl")), None);
        assert_eq!(mode_of_argv0(OsStr::new("poweroff.sh")), None);
    }

    #[test]
    fn no_arguments_is_a_graceful_shutdown() {
        assert_eq!(
            parse(PowerMode::Poweroff, &[]),
            Ok(Invocation::Shutdown {
                mode: PowerMode::Poweroff,
                force: false
            })
        );
    }

    #[test]
    fn common_flags() {
        assert_eq!(
            parse(
                PowerMode::Reboot,
                &args(&["-f", "-n", "-d", "3", "--no-wall"])
            ),
            Ok(Invocation::Shutdown {
                mode: PowerMode::Reboot,
                force: true
            })
        );
        assert_eq!(
            parse(PowerMode::Reboot, &args(&["-p", "-d5"])),
            Ok(Invocation::Shutdown {
                mode: PowerMode::Poweroff,
                force: false
            })
        );
        assert_eq!(
            parse(PowerMode::Reboot, &args(&["--help"])),
            Ok(Invocation::Help)
        );
    }

    #[test]
    fn unknown_flags_do_nothing() {
        assert!(parse(PowerMode::Poweroff, &args(&["-w"])).is_err());
        assert!(parse(PowerMode::Poweroff, &args(&["-d"])).is_err());
        assert!(parse(PowerMode::Poweroff, &args(&["-dx"])).is_err());
        assert!(parse(PowerMode::Poweroff, &args(&["now"])).is_err());
    }
}
