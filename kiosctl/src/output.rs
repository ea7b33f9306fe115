//! Standard output for every command: buffered, colour decided once, and
//! every write returns its error so a closed pipe ends the run normally
//! (see [`crate::exit::is_broken_pipe`]). Nothing in kiosctl uses `println!`.

use std::ffi::OsString;
use std::io::{self, BufWriter, IsTerminal, Stdout, Write};

/// Whether to colour: only on a terminal, and never when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>).
pub fn color_enabled(stdout_is_terminal: bool, no_color: Option<&OsString>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The colours kiosctl uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Green,
    Yellow,
    Red,
    Dim,
    Bold,
}

impl Color {
    fn sgr(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
            Color::Dim => "2",
            Color::Bold => "1",
        }
    }
}

/// Paints text when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Painter {
    pub enabled: bool,
}

impl Painter {
    pub fn paint(self, text: &str, color: Color) -> String {
        if self.enabled && !text.is_empty() {
            format!("\x1b[{}m{text}\x1b[0m", color.sgr())
        } else {
            text.to_string()
        }
    }
}

/// Standard output.
pub struct Out {
    stdout: BufWriter<Stdout>,
    pub terminal: bool,
    pub painter: Painter,
}

impl Out {
    /// Stdout of this process, colour from its terminal-ness and NO_COLOR.
    pub fn stdout() -> Out {
        let terminal = io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR");
        Out {
            stdout: BufWriter::new(io::stdout()),
            terminal,
            painter: Painter {
                enabled: color_enabled(terminal, no_color.as_ref()),
            },
        }
    }

    /// Writes text as is.
    pub fn write(&mut self, text: &str) -> io::Result<()> {
        self.stdout.write_all(text.as_bytes())
    }

    /// Writes text and a newline.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        self.stdout.write_all(text.as_bytes())?;
        self.stdout.write_all(b"\n")
    }

    /// Writes a block of lines (adds the final newline when missing).
    pub fn block(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.write(text)?;
        if !text.ends_with('\n') {
            self.stdout.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()
    }

    /// The raw writer, for clap_complete, clap_mangen and crossterm.
    pub fn writer(&mut self) -> &mut BufWriter<Stdout> {
        &mut self.stdout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = OsString::from("1");
        let empty = OsString::new();
        assert!(color_enabled(true, None));
        assert!(color_enabled(true, Some(&empty)));
        assert!(!color_enabled(true, Some(&set)));
        assert!(!color_enabled(false, None));
        assert!(!color_enabled(false, Some(&set)));
    }

    #[test]
    fn painter_off_leaves_text_alone() {
        assert_eq!(
            Painter { enabled: false }.paint("running", Color::Green),
            "running"
        );
        assert_eq!(
            Painter { enabled: true }.paint("running", Color::Green),
            "\x1b[32mrunning\x1b[0m"
        );
    }
}
