//! The command line: global options and one subcommand per thing an
//! administrator does. clap turns every mistake into exit code 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kios_protocol::request::{MAX_AUDIT_LINES, MAX_LOG_LINES};
use kios_protocol::ServiceName;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the node refused the request or reported a problem (incl. verify findings)
  2  usage error
  3  could not reach the system socket

The socket: --socket PATH, else $KIOS_SOCKET, else /run/system.sock, else
/host/run/system.sock (the node's root in a `kubectl debug node` pod).
Colour only on a terminal, never when NO_COLOR is set.";

#[derive(Debug, Parser)]
#[command(
    name = "kiosctl",
    version,
    about = "See and steer a kiOS node through its system socket",
    long_about = "See and steer a kiOS node through kios-init's system socket: \
                  service state, logs, the boot timeline, the file inventory \
                  and its verification, restarts and graceful shutdown.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// The system socket (default: $KIOS_SOCKET, /run/system.sock, /host/run/system.sock)
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Output format: table, wide (more columns) or json (the node's reply line, for jq)
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Leave out table headers (and the summary lines around tables)
    #[arg(long, global = true)]
    pub no_headers: bool,

    /// How long to wait for a reply (e.g. 30s, 2m); streams wait forever
    #[arg(long, global = true, value_name = "DURATION", default_value = "60s",
          value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be more than 0".to_string());
    }
    Ok(duration)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for people
    Table,
    /// Tables with more columns
    Wide,
    /// The node's JSON, exactly as sent (one document; streams: one per line)
    Json,
}

/// The two services kios-init supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Crio,
    Kubelet,
}

impl From<Service> for ServiceName {
    fn from(service: Service) -> ServiceName {
        match service {
            Service::Crio => ServiceName::Crio,
            Service::Kubelet => ServiceName::Kubelet,
        }
    }
}

/// What `logs` reads: a service's output, the kernel log, or init's own lines of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogSource {
    Crio,
    Kubelet,
    /// The kernel log (/dev/kmsg) with init's `kiOS:` lines
    Kernel,
    /// Only init's lines of the kernel log
    Init,
}

impl LogSource {
    /// The supervised service, for `crio` and `kubelet`.
    pub fn service(self) -> Option<ServiceName> {
        match self {
            LogSource::Crio => Some(ServiceName::Crio),
            LogSource::Kubelet => Some(ServiceName::Kubelet),
            LogSource::Kernel | LogSource::Init => None,
        }
    }
}

/// An absolute path in the escaped form of the protocol (as `verify` and
/// `files` show paths: `\\` for a backslash, `\xNN` for other bytes).
fn absolute_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("'{text}' is not an absolute path (e.g. /bin/crio)"));
    }
    match kios_protocol::path::unescape(text) {
        Ok(_) => Ok(text.to_string()),
        Err(_) => Err(format!(
            "'{text}' is not in the escaped form verify shows: a backslash starts \\\\ or \\xNN"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node, its services and whether graceful shutdown is armed
    Status,

    /// Restart cri-o or the kubelet (the supervisor starts it again at once)
    Restart {
        #[arg(value_enum)]
        service: Service,
    },

    /// Shut the node down gracefully: the kubelet drains pods, then power off
    Shutdown {
        /// Reboot instead of powering off
        #[arg(long)]
        reboot: bool,
        /// Skip the wait for the kubelet's pod eviction
        #[arg(long)]
        force: bool,
    },

    /// Reboot the node gracefully (shutdown --reboot)
    Reboot {
        /// Skip the wait for the kubelet's pod eviction
        #[arg(long)]
        force: bool,
    },

    /// A service's recent output, or the kernel log (kernel) or init's lines of it (init)
    Logs {
        #[arg(value_enum)]
        service: LogSource,
        /// How many recent lines
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=MAX_LOG_LINES as i64))]
        lines: u32,
        /// Keep printing new lines as they come
        #[arg(short, long)]
        follow: bool,
        /// kernel and init only: lines no older than this (e.g. 10m, 2h)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<Duration>,
    },

    /// Watch services, shutdown and boot events live (plain lines when not on a terminal)
    Watch,

    /// The boot timeline, with each milestone's offset from init's start
    Boot,

    /// Every file of the image and why it is there, or one file in detail
    Files {
        /// An absolute path, e.g. /bin/crio, in the form verify shows
        /// (\xNN for a byte that is not printable UTF-8, \\ for \)
        #[arg(value_parser = absolute_path)]
        path: Option<String>,
    },

    /// Compare the live node with the image's inventory (exit 1 on findings)
    Verify,

    /// Versions of kiosctl, kios-init and the protocol
    Version,

    /// Every process of the node as a tree, with its role and pod (UNEXPECTED: not allowed to run)
    Ps {
        /// List kernel threads one by one instead of counting them
        #[arg(short, long)]
        all: bool,
    },

    /// Who restarted, shut down or rebooted the node, and what triggered earlier shutdowns
    Audit {
        /// How many recent entries
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=MAX_AUDIT_LINES as i64))]
        lines: u32,
    },

    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the man page (kiosctl.1), or write all pages to a directory
    Man {
        /// Write kiosctl.1 and one page per subcommand into DIR
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn output_is_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from(["kiosctl", "status", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Format::Json);
        let cli = Cli::try_parse_from(["kiosctl", "-o", "wide", "boot"]).unwrap();
        assert_eq!(cli.output, Format::Wide);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["kiosctl", "restart", "nosuch"][..],
            &["kiosctl", "logs", "crio", "-n", "0"],
            &["kiosctl", "logs", "crio", "-n", "10001"],
            &["kiosctl", "files", "bin/crio"],
            &["kiosctl", "status", "-o", "yaml"],
            &["kiosctl", "--timeout", "0s", "status"],
            &["kiosctl"],
        ] {
            let error = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }
}
