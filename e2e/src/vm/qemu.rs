//! One qemu process running a kiOS image.
//!
//! `qemu-system-x86_64 -accel tcg` (software emulation: KVM hung on these
//! machines, so it is used only when `KIOS_VM_KVM=1`), the serial console
//! written to a file, the human monitor on a Unix socket (for
//! `system_powerdown`), the data disk as virtio-blk, `-no-reboot` unless the
//! test wants the guest to reboot. Two ways to start the guest: the fast
//! path hands qemu the kernel and initramfs (`-kernel`/`-initrd`/`-append`);
//! the firmware path ([`VmConfig::firmware`]) starts UEFI firmware, which
//! boots the disk image's `EFI/BOOT/BOOTX64.EFI` as a machine would. Every wait has a deadline; a VM that is
//! still running when the [`Vm`] is dropped is killed by its pid.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::console::{AdminCommand, Console, Line};
use super::firmware::Firmware;
use super::{Kernel, VmError};

/// How often the harness looks at the console file and the qemu process.
const POLL: Duration = Duration::from_millis(20);

/// Console lines shown in error messages.
const TAIL_LINES: usize = 40;

/// How to run one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The folder for the console log, monitor socket and qemu's stderr.
    pub dir: PathBuf,
    /// Name of this boot's files, e.g. `boot1` -> `boot1.console.log`.
    pub name: String,
    pub kernel: Kernel,
    pub initramfs: PathBuf,
    /// The raw data disk (virtio-blk), if any.
    pub disk: Option<PathBuf>,
    /// Attach the disk read-only (`readonly=on`): the guest sees a
    /// write-protected device.
    pub disk_readonly: bool,
    pub memory_mib: u32,
    /// Kernel command line words after the harness's own
    /// (`console=ttyS0 panic=-1`); e.g. `datapart=auto`.
    pub cmdline: Vec<String>,
    /// `false`: `-no-reboot` (qemu exits when the guest reboots or powers
    /// off). `true`: a guest reboot restarts it in the same qemu.
    pub allow_reboot: bool,
    /// UEFI firmware that boots the disk: `kernel`, `initramfs` and
    /// `cmdline` are then not used (the disk's unified kernel image
    /// carries them).
    pub firmware: Option<Firmware>,
}

impl VmConfig {
    /// The usual kiOS VM: 512 MiB, `datapart=auto`, qemu exits on power-off.
    pub fn new(dir: &Path, name: &str, kernel: &Kernel, initramfs: &Path) -> VmConfig {
        VmConfig {
            dir: dir.to_owned(),
            name: name.to_owned(),
            kernel: kernel.clone(),
            initramfs: initramfs.to_owned(),
            disk: None,
            disk_readonly: false,
            memory_mib: 512,
            cmdline: vec!["datapart=auto".into()],
            allow_reboot: false,
            firmware: None,
        }
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join(format!("{}.console.log", self.name))
    }

    pub fn monitor_path(&self) -> PathBuf {
        self.dir.join(format!("{}.monitor.sock", self.name))
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("{}.qemu.stderr", self.name))
    }

    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut words = vec!["console=ttyS0".to_owned(), "panic=-1".to_owned()];
        words.extend(self.cmdline.iter().cloned());
        words.join(" ")
    }

    /// qemu's arguments.
    pub fn qemu_args(&self) -> Vec<String> {
        let kvm = std::env::var("KIOS_VM_KVM").is_ok_and(|v| v == "1");
        let mut args: Vec<String> = vec![
            "-accel".into(),
            if kvm { "kvm".into() } else { "tcg".into() },
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            "1".into(),
            "-nographic".into(),
            "-nic".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", self.console_path().display()),
            "-monitor".into(),
            format!("unix:{},server,nowait", self.monitor_path().display()),
        ];
        match &self.firmware {
            Some(firmware) => args.extend(firmware.qemu_args()),
            None => args.extend([
                "-kernel".into(),
                self.kernel.boot_image.display().to_string(),
                "-initrd".into(),
                self.initramfs.display().to_string(),
                "-append".into(),
                self.kernel_cmdline(),
            ]),
        }
        if let Some(disk) = &self.disk {
            args.push("-drive".into());
            args.push(format!(
                "file={},format=raw,if=virtio,cache=writeback{}",
                disk.display(),
                if self.disk_readonly {
                    ",readonly=on"
                } else {
                    ""
                }
            ));
        }
        if !self.allow_reboot {
            args.push("-no-reboot".into());
        }
        args
    }
}

/// A running (or finished) VM.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    child: Child,
    console: Console,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Vm {
    /// Starts qemu. The console file and monitor socket are created fresh.
    pub fn start(config: VmConfig) -> Result<Vm, VmError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| VmError::io("create", &config.dir, e))?;
        for stale in [config.console_path(), config.monitor_path()] {
            let _ = std::fs::remove_file(stale);
        }
        let stderr_path = config.stderr_path();
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| VmError::io("create", &stderr_path, e))?;
        let child = Command::new("qemu-system-x86_64")
            .args(config.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| VmError::ToolMissing {
                tool: "qemu-system-x86_64".into(),
                hint: "apt-get install qemu-system-x86",
                source,
            })?;
        let console = Console::new(&config.console_path());
        Ok(Vm {
            config,
            child,
            console,
            started: Instant::now(),
            exit: None,
        })
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// qemu's pid on the host.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since qemu was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// Reads new console output; returns `Some(status)` once qemu has exited.
    pub fn refresh(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(|e| VmError::io("wait for", Path::new("qemu-system-x86_64"), e))?;
        }
        self.console.poll()?;
        Ok(self.exit)
    }

    fn tail(&self) -> String {
        let mut tail = String::new();
        if let Some(panic) = self
            .console
            .lines()
            .iter()
            .find(|l| l.text.contains("Kernel panic"))
        {
            tail.push_str(&format!("THE KERNEL PANICKED: {}\n", panic.text));
        }
        tail.push_str(&self.console.tail(TAIL_LINES));
        if let Ok(stderr) = std::fs::read_to_string(self.config.stderr_path()) {
            if !stderr.trim().is_empty() {
                tail.push_str("\n--- qemu stderr ---\n");
                tail.push_str(stderr.trim());
            }
        }
        tail.push_str(&format!(
            "\n--- full console: {} ---",
            self.console.path().display()
        ));
        tail
    }

    /// Waits for the next console line (after the previous match) that
    /// satisfies `matches`.
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Line, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.refresh()?.is_some();
            if let Some(line) = self.console.take_match(&matches) {
                return Ok(line);
            }
            if exited {
                return Err(VmError::Exited {
                    what: what.to_owned(),
                    tail: self.tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    what: what.to_owned(),
                    waited_ms: timeout.as_millis(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the next console line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Line, VmError> {
        let owned = needle.to_owned();
        self.wait_line(needle, timeout, move |l| l.contains(&owned))
    }

    /// Waits until the admin script's command `n` has printed its END line
    /// (or the VM has gone), then returns it.
    pub fn wait_admin(&mut self, n: u32, timeout: Duration) -> Result<AdminCommand, VmError> {
        let end = format!("KIOS-E2E END {n} ");
        self.wait_for(&end, timeout)?;
        self.admin(n)
    }

    /// The admin script's command `n` as printed so far.
    pub fn admin(&mut self, n: u32) -> Result<AdminCommand, VmError> {
        self.console.poll()?;
        self.console
            .admin_blocks()
            .into_iter()
            .rev()
            .find(|c| c.n == n)
            .ok_or_else(|| VmError::Timeout {
                what: format!("admin command {n}"),
                waited_ms: 0,
                tail: self.tail(),
            })
    }

    /// Waits for qemu to exit by itself (power-off with `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.refresh()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    what: "qemu to exit (guest power-off)".into(),
                    waited_ms: timeout.as_millis(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends a command to qemu's human monitor and returns its answer.
    pub fn monitor(&mut self, command: &str) -> Result<String, VmError> {
        let path = self.config.monitor_path();
        let err = |source| VmError::Monitor {
            path: path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&path).map_err(err)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        let mut seen = Vec::new();
        read_until_prompt(&mut stream, &mut seen, 1).map_err(err)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(err)?;
        read_until_prompt(&mut stream, &mut seen, 2).map_err(err)?;
        Ok(String::from_utf8_lossy(&seen).into_owned())
    }

    /// Presses the ACPI power button.
    pub fn power_button(&mut self) -> Result<(), VmError> {
        self.monitor("system_powerdown").map(|_| ())
    }

    /// Kills qemu now (by pid) and waits for it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

/// Reads from the monitor until `(qemu) ` has been seen `prompts` times.
fn read_until_prompt(
    stream: &mut UnixStream,
    seen: &mut Vec<u8>,
    prompts: usize,
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(seen);
        if text.matches("(qemu)").count() >= prompts {
            return Ok(());
        }
        if seen.len() > 1 << 20 {
            return Err(std::io::Error::other("monitor answer too long"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "monitor closed",
            ));
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_console_disk_and_no_reboot() {
        let kernel = Kernel {
            version: "6.1.0-test".into(),
            vmlinuz: "/k/vmlinuz".into(),
            boot_image: "/k/vmlinux".into(),
            modules_root: None,
        };
        let mut config = VmConfig::new(Path::new("/t"), "boot1", &kernel, Path::new("/t/initrd"));
        config.disk = Some("/t/disk.img".into());
        let args = config.qemu_args();
        let joined = args.join(" ");
        assert!(joined.contains("-serial file:/t/boot1.console.log"));
        assert!(joined.contains("-monitor unix:/t/boot1.monitor.sock,server,nowait"));
        assert!(joined.contains("-drive file=/t/disk.img,format=raw,if=virtio"));
        assert!(args.contains(&"-no-reboot".to_owned()));
        assert!(joined.contains("-kernel /k/vmlinux"));
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[append + 1], "console=ttyS0 panic=-1 datapart=auto");
        assert!(!joined.contains("readonly=on"), "{joined}");
        config.disk_readonly = true;
        assert!(config
            .qemu_args()
            .join(" ")
            .contains("-drive file=/t/disk.img,format=raw,if=virtio,cache=writeback,readonly=on"));
        config.disk_readonly = false;
        config.allow_reboot = true;
        assert!(!config.qemu_args().contains(&"-no-reboot".to_owned()));

        config.firmware = Some(Firmware {
            code: "/fw/CODE.fd".into(),
            vars: "/t/vars.fd".into(),
        });
        let joined = config.qemu_args().join(" ");
        assert!(
            !joined.contains("-kernel") && !joined.contains("-append"),
            "{joined}"
        );
        assert!(joined.contains("-drive if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd"));
        assert!(joined.contains("-drive if=pflash,format=raw,unit=1,file=/t/vars.fd"));
        assert!(joined.contains("-drive file=/t/disk.img,format=raw,if=virtio"));
    }
}
