//! ListProcesses: the processes of a container's cgroup, as Kata 1.x's
//! agent answered it: format `json` is a JSON array of pids, format
//! `table` (or empty) a `ps`-like table. Pids are the guest's (the agent's
//! PID namespace), as `cgroup.procs` gives them.

use super::{cgroup, Sandbox, SandboxError};

/// One row of the table, from `/proc/<pid>/stat` and `cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    /// CPU time (user + system) in clock ticks.
    pub ticks: u64,
    pub cmd: String,
}

/// Parses `/proc/<pid>/stat`; the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(char, i32, u64, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((state, ppid, utime + stime, comm))
}

fn row(pid: i32) -> Option<Row> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, ppid, ticks, comm) = parse_stat(&stat)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cmd = if args.is_empty() {
        format!("[{comm}]")
    } else {
        args.join(" ")
    };
    Some(Row {
        pid,
        ppid,
        state,
        ticks,
        cmd,
    })
}

/// The table: a header and one line per process.
pub fn table(rows: &[Row], ticks_per_second: u64) -> String {
    let mut out = format!(
        "{:>7} {:>7} {:>4} {:>8} CMD\n",
        "PID", "PPID", "STAT", "TIME"
    );
    for r in rows {
        let secs = r.ticks / ticks_per_second.max(1);
        let time = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        out.push_str(&format!(
            "{:>7} {:>7} {:>4} {:>8} {}\n",
            r.pid, r.ppid, r.state, time, r.cmd
        ));
    }
    out
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a configuration value; no pointer involved.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
}

impl Sandbox {
    /// The processes of container `id` in `format` (`table`, `json`).
    pub async fn list_processes(
        &self,
        id: &str,
        format: &str,
        args: &[String],
    ) -> Result<Vec<u8>, SandboxError> {
        let container = self.container(id).await?;
        if !matches!(format, "" | "table" | "json") {
            return Err(SandboxError::Format(format.to_string()));
        }
        if !args.is_empty() {
            tracing::debug!(container = id, ?args, "ps arguments ignored");
        }
        let dir = container.cgroup.clone();
        let pids = tokio::task::spawn_blocking(move || cgroup::pids(&dir))
            .await?
            .map_err(|e| SandboxError::Cgroup(id.to_string(), e))?;
        if format == "json" {
            return Ok(serde_json::to_vec(&pids).unwrap_or_default());
        }
        let rows = tokio::task::spawn_blocking(move || {
            pids.into_iter().filter_map(row).collect::<Vec<_>>()
        })
        .await?;
        Ok(table(&rows, ticks_per_second()).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let stat = "42 (my (odd) cmd) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(('S', 7, 300, "my (odd) cmd".to_string()))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn table_rows() {
        let rows = vec![
            Row {
                pid: 1,
                ppid: 0,
                state: 'S',
                ticks: 100 * 3725,
                cmd: "sleep 100".into(),
            },
            Row {
                pid: 23,
                ppid: 1,
                state: 'R',
                ticks: 5,
                cmd: "[kworker]".into(),
            },
        ];
        let t = table(&rows, 100);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "    PID    PPID STAT     TIME CMD");
        assert_eq!(lines[1], "      1       0    S  1:02:05 sleep 100");
        assert_eq!(lines[2], "     23       1    R  0:00:00 [kworker]");
    }

    #[test]
    fn own_process_has_a_row() {
        let me = row(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(!me.cmd.is_empty());
    }
}
