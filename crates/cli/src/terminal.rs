//! The local terminal in raw mode while a workload owns it.

use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};

/// Restores the saved terminal settings on drop.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal; `None` otherwise.
    pub fn enable_on_stdin() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(get_window_size, libc::TIOCGWINSZ, libc::winsize);

/// Rows and columns of the terminal on stdout, if it is one.
pub fn size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own; fd 1
    // stays open for the call.
    unsafe { get_window_size(1, &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The terminal's size now and after every SIGWINCH, while the returned
/// receiver lives; `None` if stdout is not a terminal.
pub fn follow_size() -> Option<tokio::sync::watch::Receiver<(u16, u16)>> {
    let first = size()?;
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()?;
    let (tx, rx) = tokio::sync::watch::channel(first);
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(now) = size() {
                if tx.send(now).is_err() {
                    return;
                }
            }
        }
    });
    Some(rx)
}
