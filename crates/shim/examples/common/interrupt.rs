//! Ctrl-C (SIGINT), SIGTERM and SIGHUP end a benchmark of the shim's
//! examples at its next step with a panic, so that what it made is removed
//! as on any other error: by the guards' `Drop` (pods through CRI,
//! containerd, the CNI network, the snapshotter daemon).
//! A second signal exits at once.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, Signal};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Runs `bench` on a thread of its own while another waits for the
/// signals; returns whether `bench` finished without panicking.
pub fn run(bench: impl FnOnce() + Send + 'static) -> bool {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    // Threads spawned from here on inherit the mask; the processes the
    // benchmark spawns do not (std resets it in the child).
    set.thread_block().expect("block the stop signals");
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if RECEIVED.swap(sig as i32, Ordering::SeqCst) != 0 {
                eprintln!("bench: {sig} again: exiting without cleaning up");
                std::process::exit(128 + sig as i32);
            }
            eprintln!("bench: {sig}: stopping after this step, then cleaning up");
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
