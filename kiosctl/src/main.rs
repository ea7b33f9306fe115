//! kiosctl: the administrators' CLI for a kiOS node (see the library for
//! the work). This file parses arguments, picks the `poweroff`/`reboot`
//! personality from argv[0], and turns the outcome into an exit code:
//! 0 ok, 1 the node refused or reported a problem, 2 usage, 3 could not
//! reach the socket. A closed stdout (`kiosctl logs kubelet | head`) is a
//! normal end.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kiosctl::exit::{exit_for_error, is_broken_pipe, Exit};
use kiosctl::output::Out;
use kiosctl::{alias, cli, commands};

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let mut out = Out::stdout();
    let result = match alias::mode_of_argv0(&argv0) {
        Some(mode) => run_alias(mode, &mut out),
        None => commands::run(cli::Cli::parse(), &mut out),
    };
    let exit = match result {
        Ok(exit) => exit,
        Err(error) if is_broken_pipe(&error) => Exit::Ok,
        Err(error) => {
            let _ = out.flush();
            let _ = writeln!(std::io::stderr(), "kiosctl: {error:#}");
            exit_for_error(&error)
        }
    };
    // A reader that went away while we flushed is a normal end too.
    let _ = out.flush();
    exit.into()
}

fn run_alias(mode: kios_protocol::PowerMode, out: &mut Out) -> anyhow::Result<Exit> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match alias::parse(mode, &args) {
        Ok(alias::Invocation::Help) => {
            out.line(&alias::usage(mode))?;
            Ok(Exit::Ok)
        }
        Ok(alias::Invocation::Shutdown { mode, force }) => {
            let conn = commands::connect(None, std::time::Duration::from_secs(60))?;
            let painter = out.painter;
            let mut session = kiosctl::session::Session {
                conn,
                out,
                view: kiosctl::render::View {
                    wide: false,
                    no_headers: false,
                    painter,
                },
                json: false,
            };
            commands::shutdown(&mut session, mode, force)
        }
        Err(usage) => {
            let _ = writeln!(std::io::stderr(), "{mode}: {usage}");
            Ok(Exit::Usage)
        }
    }
}
