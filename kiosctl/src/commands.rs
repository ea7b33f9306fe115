//! One function per subcommand: build the request, ask the node, print the
//! reply (`-o json`: the reply line exactly as received), and say how the
//! run ended. Refusals come back as [`crate::client::Refused`] errors.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use kios_protocol::{
    BootReply, Event, FilesReply, LogsReply, PowerMode, Request, RestartReply, ServiceName,
    ShutdownReply, StatusReply, VerifyReply, VersionReply, WatchReply, PROTOCOL_VERSION,
};

use crate::cli::{Cli, Command, Format};
use crate::client::Connection;
use crate::discovery;
use crate::exit::Exit;
use crate::output::Out;
use crate::render::{self, View};
use crate::session::Session;

/// Connects to the first socket that answers.
pub fn connect(socket: Option<&Path>, timeout: std::time::Duration) -> Result<Connection> {
    let candidates = discovery::candidates_from_env(socket);
    let (stream, candidate) = discovery::connect(&candidates)?;
    Connection::new(stream, &candidate.path, timeout).with_context(|| {
        format!(
            "cannot set up the connection to {}",
            candidate.path.display()
        )
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli, out: &mut Out) -> Result<Exit> {
    match &cli.command {
        Command::Completion { shell } => {
            // Into memory first: clap_complete panics on a write error, and a
            // closed pipe must stay a normal end.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kiosctl", &mut script);
            out.writer().write_all(&script)?;
            out.flush()?;
            return Ok(Exit::Ok);
        }
        Command::Man { dir } => {
            man(dir.as_deref(), out)?;
            return Ok(Exit::Ok);
        }
        _ => {}
    }
    let view = View {
        wide: cli.output == Format::Wide,
        no_headers: cli.no_headers,
        painter: out.painter,
    };
    let json = cli.output == Format::Json;
    if matches!(cli.command, Command::Version) && !json {
        out.line(&format!("kiosctl    {}", env!("CARGO_PKG_VERSION")))?;
        out.flush()?;
    }
    let conn = connect(cli.socket.as_deref(), cli.timeout)?;
    let mut s = Session {
        conn,
        out,
        view,
        json,
    };
    let exit = match cli.command {
        Command::Status => status(&mut s)?,
        Command::Restart { service } => restart(&mut s, service.into())?,
        Command::Shutdown { reboot, force } => {
            let mode = if reboot {
                PowerMode::Reboot
            } else {
                PowerMode::Poweroff
            };
            shutdown(&mut s, mode, force)?
        }
        Command::Reboot { force } => shutdown(&mut s, PowerMode::Reboot, force)?,
        Command::Logs {
            service,
            lines,
            follow,
            since,
        } => match service.service() {
            Some(service) if since.is_none() => logs(&mut s, service, lines as usize, follow)?,
            Some(_) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "kiosctl: --since is for 'logs kernel' and 'logs init'"
                );
                Exit::Usage
            }
            None => {
                let request = Request::KernelLog {
                    init_only: service == crate::cli::LogSource::Init,
                    lines: lines as usize,
                    follow,
                    since_ms: since.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
                };
                crate::observe::kernel_log(&mut s, request)?
            }
        },
        Command::Watch => watch(&mut s)?,
        Command::Boot => boot(&mut s)?,
        Command::Files { path } => files(&mut s, path)?,
        Command::Verify => verify(&mut s)?,
        Command::Version => version(&mut s)?,
        Command::Ps { all } => crate::observe::ps(&mut s, all)?,
        Command::Audit { lines } => crate::observe::audit(&mut s, lines as usize)?,
        Command::Completion { .. } | Command::Man { .. } => Exit::Ok,
    };
    s.out.flush()?;
    Ok(exit)
}

fn man(dir: Option<&Path>, out: &mut Out) -> Result<()> {
    let command = Cli::command();
    match dir {
        None => {
            clap_mangen::Man::new(command)
                .render(out.writer())
                .context("cannot write the man page")?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kiosctl") && n.ends_with(".1"))
                .collect();
            names.sort();
            for name in names {
                out.line(&dir.join(name).display().to_string())?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

fn status(s: &mut Session) -> Result<Exit> {
    let reply: StatusReply = s.ask(&Request::Status)?;
    if !s.json {
        s.out.write(&render::status(&reply, s.view))?;
        if s.view.wide && !s.view.no_headers {
            // The image's identity comes with `version`.
            let version: VersionReply = s.ask(&Request::Version)?;
            s.out
                .write(&format!("\n{}", render::image_identity(&version)))?;
        }
    }
    Ok(Exit::Ok)
}

fn restart(s: &mut Session, service: ServiceName) -> Result<Exit> {
    let reply: RestartReply = s.ask(&Request::Restart { service })?;
    if !s.json {
        let text = match reply.old_pid {
            Some(pid) => format!(
                "restarting {}: stopped pid {pid}; the supervisor starts it again at once",
                reply.service
            ),
            None => format!(
                "restarting {}: it was not running; the supervisor starts it at once",
                reply.service
            ),
        };
        s.out.line(&text)?;
    }
    Ok(Exit::Ok)
}

/// `shutdown`, `reboot`, and the `poweroff`/`reboot` aliases.
pub fn shutdown(s: &mut Session, mode: PowerMode, force: bool) -> Result<Exit> {
    // Init may SIGTERM everything before we read its reply: print it anyway.
    let term = crate::signals::DeferTerm::start();
    let reply: ShutdownReply = s.ask(&Request::Shutdown { mode, force })?;
    if !s.json {
        let how = if force {
            "without waiting for the kubelet"
        } else {
            "the kubelet drains pods first"
        };
        s.out.line(&format!(
            "graceful {} started ({how}); phase: {}. Follow it with: kiosctl watch",
            reply.mode, reply.phase
        ))?;
    }
    s.out.flush()?;
    if term.received() {
        let _ = writeln!(
            std::io::stderr(),
            "kiosctl: the node is stopping every process now, this one included"
        );
    }
    Ok(Exit::Ok)
}

fn stream_closed(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "kiosctl: the node closed the connection; {what} ended"
    );
}

fn logs(s: &mut Session, service: ServiceName, lines: usize, follow: bool) -> Result<Exit> {
    let reply: LogsReply = s.ask(&Request::Logs {
        service,
        lines,
        follow,
    })?;
    let clean = s.out.terminal;
    let show = |line: &str| {
        if clean {
            render::sanitize(line)
        } else {
            line.to_string()
        }
    };
    if !s.json {
        for line in &reply.lines {
            s.out.line(&show(line))?;
        }
    }
    s.out.flush()?;
    if !follow {
        return Ok(Exit::Ok);
    }
    while let Some(raw) = s.conn.next_event()? {
        if s.json {
            s.out.line(&raw)?;
        } else if let Ok(Event::Log(log)) = Event::decode(&raw) {
            s.out.line(&show(&log.line))?;
        }
        s.out.flush()?;
    }
    stream_closed("logs --follow");
    Ok(Exit::Ok)
}

fn watch(s: &mut Session) -> Result<Exit> {
    if !s.json && s.out.terminal {
        return crate::watch::live(s);
    }
    let _: WatchReply = s.ask(&Request::Watch)?;
    while let Some(raw) = s.conn.next_event()? {
        if s.json {
            s.out.line(&raw)?;
        } else {
            match Event::decode(&raw) {
                Ok(event) => s.out.line(&render::event_line(&event))?,
                // An event kind newer than this kiosctl: show it as sent.
                Err(_) => s.out.line(&render::sanitize(&raw))?,
            }
        }
        s.out.flush()?;
    }
    stream_closed("watch");
    Ok(Exit::Ok)
}

fn boot(s: &mut Session) -> Result<Exit> {
    let reply: BootReply = s.ask(&Request::Boot)?;
    if !s.json {
        s.out.write(&render::boot(&reply, s.view))?;
    }
    Ok(Exit::Ok)
}

fn files(s: &mut Session, path: Option<String>) -> Result<Exit> {
    let one = path.is_some();
    let reply: FilesReply = s.ask(&Request::Files { path })?;
    if !s.json {
        match reply.files.as_slice() {
            [file] if one && !s.view.no_headers => s.out.write(&render::file_detail(file))?,
            _ => s.out.write(&render::files(&reply, s.view))?,
        }
    }
    Ok(Exit::Ok)
}

fn verify(s: &mut Session) -> Result<Exit> {
    let reply: VerifyReply = s.ask(&Request::Verify)?;
    if !s.json {
        s.out.write(&render::verify(&reply, s.view))?;
    }
    Ok(if reply.clean { Exit::Ok } else { Exit::Problem })
}

fn version(s: &mut Session) -> Result<Exit> {
    let reply: VersionReply = s.ask(&Request::Version)?;
    if !s.json {
        s.out.line(&format!("kios-init  {}", reply.init))?;
        s.out.line(&format!("protocol   {}", reply.protocol))?;
        s.out.write(&render::image_identity(&reply))?;
    }
    if reply.protocol != PROTOCOL_VERSION {
        let _ = writeln!(
            std::io::stderr(),
            "kiosctl: warning: the node speaks protocol {}, this kiosctl {PROTOCOL_VERSION}",
            reply.protocol
        );
    }
    Ok(Exit::Ok)
}
