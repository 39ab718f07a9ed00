//! What the benchmark ran on, for the shim's examples to print.

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPUs this process may run on.
#[allow(dead_code)] // Not every example prints it.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
