//! The command's own output. A reader that goes away early
//! (`capsa inspect ID | head -c1`) ends the command quietly and
//! successfully, as it does for `ls` or `cat`; log lines of libraries stop
//! once the command has its result.

use std::fmt::Display;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

/// The reader of stdout is gone: not a failure of the command.
#[derive(Debug)]
pub struct StdoutClosed;

impl Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` and a newline to stdout.
pub fn line(text: impl Display) -> anyhow::Result<()> {
    write(format_args!("{text}\n"))
}

/// Writes `text` to stdout as it is.
pub fn text(text: impl Display) -> anyhow::Result<()> {
    write(format_args!("{text}"))
}

fn write(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => other.context("write to stdout"),
    }
}

/// Whether `e` is only the reader of stdout going away.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutClosed>().is_some()
}

static LOGS_OFF: AtomicBool = AtomicBool::new(false);

/// Log lines from now on are dropped: the command has its result (and
/// reports a failure itself), and what libraries say while the runtime
/// shuts down (connection tasks being cancelled) is noise.
pub fn logs_off() {
    LOGS_OFF.store(true, Ordering::SeqCst);
}

/// Where log lines go: stderr until [`logs_off`].
pub fn log_writer() -> Box<dyn Write> {
    if LOGS_OFF.load(Ordering::SeqCst) {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    }
}
