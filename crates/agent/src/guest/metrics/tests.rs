use super::*;

/// A minimal parser of the text format: every line is a comment (`# HELP`
/// or `# TYPE` of the family that follows) or `name{labels} value`.
pub fn parse(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    let mut typed = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            typed = name.to_string();
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect(line)),
            None => (series, ""),
        };
        assert_eq!(name, typed, "sample after its TYPE: {line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let value: f64 = value.parse().expect(line);
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .unwrap_or_else(|| panic!("{name}{{{labels}}} missing"))
        .2
}

#[test]
fn proc_files_become_families() {
    let families = [
        meminfo("MemTotal:        2000 kB\nMemFree: 1000 kB\nHugePages_Total:       0\n"),
        cpu("cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 1 2 3\n", 100.0),
        uptime("12.50 40.00\n"),
    ];
    let mut all = families.to_vec();
    all.extend(loadavg("0.50 0.25 0.10 2/99 1234\n"));
    let text = render(&all);
    let s = parse(&text);
    assert_eq!(
        value(&s, "capsa_guest_meminfo_bytes", "field=\"MemTotal\""),
        2048000.0
    );
    assert!(!text.contains("HugePages_Total"), "not in kB");
    assert_eq!(
        value(&s, "capsa_guest_cpu_seconds_total", "mode=\"user\""),
        1.0
    );
    assert_eq!(
        value(&s, "capsa_guest_cpu_seconds_total", "mode=\"idle\""),
        10.0
    );
    assert_eq!(value(&s, "capsa_guest_uptime_seconds", ""), 12.5);
    assert_eq!(value(&s, "capsa_guest_load", "period=\"15m\""), 0.1);
    assert_eq!(value(&s, "capsa_guest_tasks", "state=\"total\""), 99.0);
    assert!(text.contains("# TYPE capsa_guest_cpu_seconds_total counter\n"));
}

#[test]
fn empty_families_are_left_out_and_labels_escaped() {
    assert_eq!(render(&[meminfo(""), uptime("")]), "");
    let f = Family::new("x", "gauge", "h").sample("l", "a\"b\\c\nd", 1.0);
    assert_eq!(
        render(&[f]),
        "# HELP x h\n# TYPE x gauge\nx{l=\"a\\\"b\\\\c\\nd\"} 1\n"
    );
}

#[test]
fn this_process_and_this_machine() {
    count_request();
    let figures = AgentFigures {
        containers: 3,
        requests: requests(),
    };
    let text = collect(Path::new("/proc"), figures);
    let s = parse(&text);
    assert_eq!(value(&s, "capsa_agent_containers", ""), 3.0);
    assert!(value(&s, "capsa_agent_requests_total", "") >= 1.0);
    assert!(value(&s, "capsa_agent_resident_memory_bytes", "") > 0.0);
    assert!(value(&s, "capsa_agent_threads", "") >= 1.0);
    assert!(value(&s, "capsa_agent_open_fds", "") >= 3.0);
    assert!(value(&s, "capsa_guest_meminfo_bytes", "field=\"MemTotal\"") > 0.0);
    assert!(value(&s, "capsa_guest_uptime_seconds", "") > 0.0);
}
