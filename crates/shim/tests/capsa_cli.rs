//! `capsa exec`, `exec --vm` and `agent-ctl` on a pod the shim runs.

mod common;

use common::{capsa, text, Setup};

#[test]
fn capsa_commands_reach_a_pod_of_the_shim() {
    let s = Setup::new();
    s.env
        .append_config("[agent.capsa]\ndebug_console_enabled = true");
    let out = s.run(&["-d"], "cli1", &["sleep", "1000"]);
    assert!(out.status.success(), "{out:?}\n{}", s.ctrd.log_tail());

    let out = capsa(&s, &["ps"], None);
    let line = text(&out.stdout)
        .lines()
        .find(|l| l.starts_with("cli1 "))
        .map(String::from)
        .unwrap_or_else(|| panic!("cli1 missing from ps: {out:?}"));
    assert!(line.contains(" running "), "{line}");

    let out = capsa(
        &s,
        &["exec", "cli1", "--", "sh", "-c", "echo $((6*7))"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "42\n", "{out:?}");
    assert_eq!(text(&out.stderr), "", "{out:?}");

    let out = capsa(&s, &["agent-ctl", "cli1", "Check", "{}"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("SERVING"), "{out:?}");

    let out = capsa(
        &s,
        &["exec", "--vm", "cli1"],
        Some(b"echo pid1=$(readlink /proc/1/exe); exit\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("pid1=/init"), "{out:?}");

    s.ctrd
        .ctr_ok(&["task", "kill", "--signal", "SIGKILL", "cli1"]);
    s.wait_stopped("cli1");
    s.ctrd.ctr_ok(&["task", "delete", "cli1"]);
    s.ctrd.ctr_ok(&["containers", "delete", "cli1"]);
    s.assert_all_gone();
}
