//! Ctrl-C (SIGINT), SIGTERM and SIGHUP end a benchmark of the shim's
//! examples at its next step with a panic, so that what it made is removed
//! as on any other error: by the guards' `Drop` (pods through CRI,
//! containerd, the CNI network, the snapshotter daemon). A second signal
//! exits at once.
//!
//! The signals are caught by handlers (`signal-hook`'s iterator), not
//! blocked: a blocked mask is inherited by every process the benchmark
//! spawns (std does not reset it), and containerd, its shims and the
//! snapshotter daemon would then ignore the SIGTERM that stops them
//! cleanly. Handlers go back to the default in a child at `exec`.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Runs `bench` on a thread of its own while another waits for the
/// signals; returns whether `bench` finished without panicking.
pub fn run(bench: impl FnOnce() + Send + 'static) -> bool {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).expect("catch the stop signals");
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let name = Signal::try_from(sig).map_or("a signal", |s| s.as_str());
            if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
                eprintln!("bench: {name} again: exiting without cleaning up");
                std::process::exit(128 + sig);
            }
            eprintln!("bench: {name}: stopping after this step, then cleaning up");
        }
    });
    std::thread::spawn(bench).join().is_ok()
}

/// Panics when a stop signal came.
pub fn check() {
    let sig = RECEIVED.load(Ordering::SeqCst);
    if sig != 0 {
        let name = Signal::try_from(sig).map_or("a signal", |s| s.as_str());
        panic!("interrupted by {name}");
    }
}
