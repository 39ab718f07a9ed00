//! `capsa run --timeline`: the SVG names every step of a start and a
//! teardown, with times that nest.

use std::process::Command;
use std::time::Duration;

use capsa_test_infra::{assert_no_leaks, run_bounded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

/// The steps of a `capsa run --rootfs DIR -- true`, as the SVG names them.
const STEPS: &[&str] = &[
    "capsa run",
    "sandbox start",
    "pod network",
    "vm start",
    "vhost-device-vsock",
    "virtiofsd",
    "qemu (until QMP answers)",
    "guest kernel (vsock ready)",
    "agent listening",
    "agent dial",
    "CreateSandbox",
    "guest network",
    "container create",
    "resize",
    "attach resources",
    "rootfs share",
    "CreateContainer",
    "container start",
    "workload",
    "teardown",
    "health probe",
    "DestroySandbox",
    "vm shutdown",
    "qemu stop",
    "helper stop",
    "pod network teardown",
    "state removal",
];

struct Bar {
    name: String,
    depth: usize,
    start: f64,
    end: f64,
}

fn bars(svg: &str) -> Vec<Bar> {
    let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("step"))
        .map(|n| {
            let attr = |a: &str| n.attribute(a).unwrap_or_else(|| panic!("{a} missing"));
            let bar = Bar {
                name: attr("data-name").to_string(),
                depth: attr("data-depth").parse().expect("depth"),
                start: attr("data-start-ms").parse().expect("start"),
                end: attr("data-end-ms").parse().expect("end"),
            };
            // Each bar says its name and duration in words.
            let texts: Vec<_> = n
                .children()
                .filter(|c| c.has_tag_name("text"))
                .filter_map(|c| c.text())
                .collect();
            assert!(texts.contains(&bar.name.as_str()), "{texts:?}");
            assert!(texts.iter().any(|t| t.ends_with(" ms")), "{texts:?}");
            bar
        })
        .collect()
}

#[test]
fn run_writes_a_timeline_naming_every_step() {
    let env = TestEnv::new();
    let out_dir = tempfile::tempdir().expect("temp dir");
    let svg_path = out_dir.path().join("run.svg");
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsa"));
    c.arg("--config").arg(&env.config).args(["run", "--rootfs"]);
    c.arg(&env.rootfs)
        .arg("--timeline")
        .arg(&svg_path)
        .args(["--", "true"]);
    let out = run_bounded(c, None, LIMIT);
    assert_no_leaks(&env.state_dir);
    assert!(out.status.success(), "{out:?}");
    let svg = std::fs::read_to_string(&svg_path).expect("timeline written");
    let bars = bars(&svg);
    let mut names: Vec<_> = bars.iter().map(|b| b.name.as_str()).collect();
    names.dedup();
    assert_eq!(names, STEPS, "the steps, in the order they started");
    // Times: non-negative, each step inside its parent (the nearest
    // earlier bar one level up), children no earlier than the parent.
    for (n, bar) in bars.iter().enumerate() {
        assert!(bar.start >= 0.0 && bar.end >= bar.start, "{}", bar.name);
        if bar.depth == 0 {
            continue;
        }
        let parent = bars[..n]
            .iter()
            .rev()
            .find(|p| p.depth + 1 == bar.depth)
            .unwrap_or_else(|| panic!("{} has no parent", bar.name));
        assert!(
            bar.start >= parent.start && bar.end <= parent.end,
            "{} ({}..{}) not within {} ({}..{})",
            bar.name,
            bar.start,
            bar.end,
            parent.name,
            parent.start,
            parent.end
        );
    }
    assert_eq!(bars[0].depth, 0);
    assert!(bars[1..].iter().all(|b| b.depth > 0), "all under capsa run");
}

#[test]
fn timeline_in_a_missing_directory_fails_before_the_vm_boots() {
    let env = TestEnv::new();
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsa"));
    c.arg("--config").arg(&env.config).args(["run", "--rootfs"]);
    c.arg(&env.rootfs)
        .args(["--timeline", "/nonexistent-capsa-dir/t.svg", "--", "true"]);
    let out = run_bounded(c, None, LIMIT);
    assert_no_leaks(&env.state_dir);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--timeline /nonexistent-capsa-dir/t.svg"),
        "{stderr}"
    );
}
