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
fn proc_files_become_kata_families() {
    let mut all = vec![
        meminfo(
            "MemTotal:        2000 kB\nMemFree: 1000 kB\nActive(anon):  4 kB\nDirectMap2M: 8 kB\nHugePages_Total:       3\nCommitted_AS: 1 kB\n",
        ),
        cpu("cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 1 2 3\nintr 5 6\n"),
        uptime("12.50 40.00\n"),
        vmstat("nr_free_pages 10\npgfault 77\n"),
        netdev("Inter-|   Receive\n face |bytes\n  eth0: 10 2 0 0 0 0 0 0 20 3 0 0 0 0 0 0\n"),
        diskstats(" 254 0 vda 1 2 3 4 5 6 7 8 9 10 11\n 7 0 loop0 1 1 1 1\n"),
    ];
    all.extend(loadavg("0.50 0.25 0.10 2/99 1234\n"));
    let text = render(&all);
    let s = parse(&text);
    assert_eq!(
        value(&s, "capsa_guest_meminfo", "item=\"mem_total\""),
        2048000.0
    );
    assert_eq!(
        value(&s, "capsa_guest_meminfo", "item=\"active_anon\""),
        4096.0
    );
    assert_eq!(
        value(&s, "capsa_guest_meminfo", "item=\"direct_map_2M\""),
        8192.0
    );
    assert_eq!(
        value(&s, "capsa_guest_meminfo", "item=\"hugepages_total\""),
        3.0
    );
    assert_eq!(
        value(&s, "capsa_guest_meminfo", "item=\"committed_as\""),
        1024.0
    );
    assert_eq!(
        value(&s, "capsa_guest_cpu_time", "cpu=\"total\",item=\"user\""),
        100.0
    );
    assert_eq!(
        value(&s, "capsa_guest_cpu_time", "cpu=\"0\",item=\"system\""),
        3.0
    );
    assert_eq!(value(&s, "capsa_guest_uptime_seconds", ""), 12.5);
    assert_eq!(value(&s, "capsa_guest_load", "item=\"load15\""), 0.1);
    assert_eq!(value(&s, "capsa_guest_tasks", "item=\"max\""), 99.0);
    assert_eq!(value(&s, "capsa_guest_vm_stat", "item=\"pgfault\""), 77.0);
    assert_eq!(
        value(
            &s,
            "capsa_guest_netdev_stat",
            "interface=\"eth0\",item=\"sent_bytes\""
        ),
        20.0
    );
    assert_eq!(
        value(&s, "capsa_guest_diskstat", "disk=\"vda\",item=\"writes\""),
        5.0
    );
    assert!(!text.contains("loop0"), "{text}");
    assert!(!text.contains("intr"), "{text}");
}

#[test]
fn meminfo_items_are_katas() {
    for (key, item) in [
        ("MemAvailable", "mem_available"),
        ("SwapCached", "swap_cached"),
        ("Inactive(file)", "inactive_file"),
        ("AnonHugePages", "anon_hugepages"),
        ("KReclaimable", "k_reclaimable"),
        ("SUnreclaim", "s_unreclaim"),
        ("PageTables", "page_tables"),
        ("NFS_Unstable", "nfs_unstable"),
        ("WritebackTmp", "writeback_tmp"),
        ("DirectMap4k", "direct_map_4k"),
        ("HugePages_Rsvd", "hugepages_rsvd"),
        ("Hugepagesize", "hugepagesize"),
        ("Percpu", "per_cpu"),
    ] {
        assert_eq!(meminfo_item(key), item, "{key}");
    }
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
    assert!(value(&s, "capsa_agent_process_resident_memory_bytes", "") > 0.0);
    assert!(value(&s, "capsa_agent_threads", "") >= 1.0);
    assert!(value(&s, "capsa_agent_process_open_fds", "") >= 3.0);
    assert!(value(&s, "capsa_agent_proc_status", "item=\"vmrss\"") > 0.0);
    assert!(value(&s, "capsa_agent_proc_stat", "item=\"utime\"") >= 0.0);
    assert!(value(&s, "capsa_agent_scrape_count", "") >= 1.0);
    assert!(value(&s, "capsa_guest_meminfo", "item=\"mem_total\"") > 0.0);
    assert!(value(&s, "capsa_guest_uptime_seconds", "") > 0.0);
}
