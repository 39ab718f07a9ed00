//! Guest-wide agent methods against a real VM: GetGuestDetails,
//! OnlineCPUMem, SetGuestDateTime, ReseedRandomDev, CopyFile, GetMetrics;
//! OnlineCPUMem of a hot-added vCPU; `local` and `ephemeral` storages; the
//! debug console.

use capsa_agent_client::until;
use capsa_protocols::{agent, GUEST_SHARED_DIR};
use capsa_test_infra::{assert_no_leaks, TestEnv};

mod common;
mod guest_common;

use common::boot;
use guest_common::{console_run, container_spec, finish, run, status, CALL, CONSOLE_PARAMS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_methods_act_on_the_guest() {
    let env = TestEnv::new();
    let mut sandbox = boot(&env).await;
    let raw = sandbox.agent().raw().clone();

    let details = raw
        .get_guest_details(
            until(CALL),
            &agent::GuestDetailsRequest {
                mem_block_size: true,
                mem_hotplug_probe: true,
                ..Default::default()
            },
        )
        .await
        .expect("GetGuestDetails");
    let agent_details = details.agent_details.as_ref().expect("agent details");
    assert_eq!(agent_details.version, env!("CARGO_PKG_VERSION"));
    assert!(agent_details.init_daemon, "the agent is PID 1");
    for driver in ["virtio-fs", "local", "ephemeral"] {
        assert!(
            agent_details.storage_handlers.iter().any(|h| h == driver),
            "{driver} in {:?}",
            agent_details.storage_handlers
        );
    }
    let block = details.mem_block_size_bytes;
    assert!(block >= 1 << 20 && block.is_power_of_two(), "{block}");

    raw.online_cpu_mem(
        until(CALL),
        &agent::OnlineCPUMemRequest {
            wait: true,
            nb_cpus: 1,
            ..Default::default()
        },
    )
    .await
    .expect("OnlineCPUMem with everything online");

    raw.reseed_random_dev(
        until(CALL),
        &agent::ReseedRandomDevRequest {
            data: (0..=255u8).cycle().take(512).collect(),
            ..Default::default()
        },
    )
    .await
    .expect("ReseedRandomDev");

    const WHEN: i64 = 2_000_000_000; // 2033-05-18
    raw.set_guest_date_time(
        until(CALL),
        &agent::SetGuestDateTimeRequest {
            Sec: WHEN,
            Usec: 250_000,
            ..Default::default()
        },
    )
    .await
    .expect("SetGuestDateTime");
    let bad_time = raw
        .set_guest_date_time(
            until(CALL),
            &agent::SetGuestDateTimeRequest {
                Sec: 1,
                Usec: 1_000_000,
                ..Default::default()
            },
        )
        .await;
    let s = status(bad_time);
    assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        s.message(),
        "microseconds 1000000 is out of range (0 to 999999)"
    );

    // CopyFile into the container's rootfs, in two chunks; the container
    // and the host see it.
    let spec = container_spec(&mut sandbox, &env, "c1", "date +%s; cat /copied.txt");
    let path = format!("{GUEST_SHARED_DIR}/c1/rootfs/copied/dir/copied.txt");
    for (offset, data) in [(0, &b"copied "[..]), (7, &b"by the agent\n"[..])] {
        raw.copy_file(
            until(CALL),
            &agent::CopyFileRequest {
                path: path.clone(),
                file_size: 20,
                file_mode: 0o100644,
                dir_mode: 0o040755,
                offset,
                data: data.to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("CopyFile");
    }
    let link = format!("{GUEST_SHARED_DIR}/c1/rootfs/copied.txt");
    raw.copy_file(
        until(CALL),
        &agent::CopyFileRequest {
            path: link,
            file_size: 22,
            file_mode: 0o120777,
            data: b"copied/dir/copied.txt".to_vec(),
            ..Default::default()
        },
    )
    .await
    .expect("CopyFile of a symbolic link");
    sandbox
        .create_container_spec("c1", &spec)
        .await
        .expect("create");

    let metrics = raw
        .get_metrics(until(CALL), &agent::GetMetricsRequest::default())
        .await
        .expect("GetMetrics")
        .metrics;
    let samples = parse_prometheus(&metrics);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
            .1
    };
    assert_eq!(value("capsa_agent_containers"), 1.0);
    assert!(value("capsa_agent_requests_total") >= 8.0, "{metrics}");
    assert!(value("capsa_agent_process_resident_memory_bytes") > 1e6);
    assert!(value("capsa_agent_process_open_fds") >= 3.0);
    assert!(value("capsa_agent_threads") >= 2.0);
    assert!(value("capsa_guest_uptime_seconds") > 0.0);
    for family in [
        "capsa_guest_meminfo",
        "capsa_guest_load",
        "capsa_guest_cpu_time",
        "capsa_guest_tasks",
        "capsa_guest_vm_stat",
        "capsa_guest_netdev_stat",
        "capsa_guest_filesystem",
        "capsa_agent_proc_status",
    ] {
        assert!(samples.iter().any(|(n, _)| n == family), "{family}");
    }
    assert!(metrics.contains("capsa_guest_meminfo{item=\"mem_total\"} "));

    let (out, code) = finish(&sandbox, "c1").await;
    let host_copy = std::fs::read_to_string(env.rootfs.join("copied/dir/copied.txt"));
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    let date: i64 = lines.next().unwrap().parse().expect("date +%s");
    assert!((WHEN..WHEN + 600).contains(&date), "guest clock {date}");
    assert_eq!(lines.next(), Some("copied by the agent"));
    assert_eq!(host_copy.unwrap(), "copied by the agent\n");
}

/// `name value` of each sample of a text exposition, checking each line is
/// a comment or a sample whose family was declared before.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(kind == "gauge" || kind == "counter", "{line}");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let name = series.split('{').next().unwrap();
        assert!(typed.iter().any(|t| t == name), "untyped sample: {line}");
        samples.push((name.to_string(), value.parse().expect(line)));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_ephemeral_storages_are_mounted_then_removed() {
    let env = TestEnv::with_qemu_extra(CONSOLE_PARAMS);
    let mut sandbox = boot(&env).await;
    let eph = "/run/kata-containers/sandbox/ephemeral/scratch";
    let local = "/run/kata-containers/sandbox/local/vol";
    let mut spec = container_spec(
        &mut sandbox,
        &env,
        "s1",
        "df -k /scratch | tail -n 1; stat -c %a /vol; grep ' /scratch ' /proc/mounts; \
         echo kept > /vol/file",
    );
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, dest) in [(eph, "/scratch"), (local, "/vol")] {
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap(),
        );
    }
    spec.set_mounts(Some(mounts));
    let storage = |driver: &str, mount_point: &str, options: &[&str]| agent::Storage {
        driver: driver.into(),
        source: if driver == "ephemeral" {
            "tmpfs"
        } else {
            "local"
        }
        .into(),
        fstype: if driver == "ephemeral" {
            "tmpfs"
        } else {
            "local"
        }
        .into(),
        options: options.iter().map(|o| o.to_string()).collect(),
        mount_point: mount_point.into(),
        ..Default::default()
    };
    let req = agent::CreateContainerRequest {
        container_id: "s1".into(),
        exec_id: "s1".into(),
        OCI: Some(capsa_protocols::convert::spec_to_grpc(&spec)).into(),
        storages: vec![
            storage("ephemeral", eph, &["size=8m", "nodev"]),
            storage("local", local, &["mode=0750"]),
        ],
        ..Default::default()
    };
    sandbox.agent().create_container(req).await.expect("create");
    let during = console_run(
        &env,
        &sandbox,
        "grep -c sandbox/ephemeral/scratch /proc/mounts; exit\n",
    )
    .await;
    let (out, code) = finish(&sandbox, "s1").await;
    let after = console_run(
        &env,
        &sandbox,
        "echo mounted=$(grep -c sandbox/ephemeral/scratch /proc/mounts); cat /run/kata-containers/sandbox/local/vol/file; exit\n",
    )
    .await;
    // The sandbox still runs containers after the removal.
    let (again, _) = run(&mut sandbox, &env, "s2", "echo again").await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);

    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let size: u64 = lines[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(size, 8192, "size=8m honoured: {out}");
    assert_eq!(lines[1], "750", "mode of the local storage");
    assert!(lines[2].starts_with("tmpfs /scratch tmpfs rw,"), "{out}");
    let options: Vec<&str> = lines[2]
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split(',')
        .collect();
    assert!(
        options.contains(&"nodev") && options.contains(&"nosuid"),
        "storages are always nodev,nosuid: {out}"
    );
    assert!(
        during.contains("\r\n1\r\n"),
        "mounted while the container lives: {during:?}"
    );
    assert!(
        after.contains("mounted=0\r\n"),
        "unmounted with the container: {after:?}"
    );
    assert!(
        after.contains("kept\r\n"),
        "a local storage is a directory, kept: {after:?}"
    );
    assert_eq!(again, "again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_console_runs_a_shell_of_the_vm() {
    let env = TestEnv::with_qemu_extra(CONSOLE_PARAMS);
    let sandbox = boot(&env).await;
    let out = console_run(
        &env,
        &sandbox,
        "echo $((6*7)); readlink /proc/1/exe; echo \"$HOME:$PATH\"; tty; exit\n",
    )
    .await;
    // A second session after the first ended.
    let second = console_run(&env, &sandbox, "echo second; exit\n").await;
    guest_common::assert_serving(&sandbox).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
    assert!(out.contains("42\r\n"), "{out:?}");
    assert!(
        out.contains("/init\r\n"),
        "the VM root environment: {out:?}"
    );
    assert!(out.contains("/:/bin:"), "HOME and PATH: {out:?}");
    assert!(out.contains("/dev/pts/"), "a pty: {out:?}");
    assert!(second.contains("second\r\n"), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debug_console_unless_asked() {
    let env = TestEnv::new();
    let sandbox = boot(&env).await;
    let path = env.state_dir.join(sandbox.id()).join("vsock.sock");
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("CONNECT {}\n", guest_common::CONSOLE_PORT).as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut reply),
    )
    .await;
    guest_common::assert_serving(&sandbox).await;
    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        read.is_ok() && !reply.starts_with("OK"),
        "nothing listens on the console port: {reply:?}"
    );
}

/// A vCPU hot-added behind the agent's back (over the VM's debug
/// channel, as the driver's `resize_vcpus` does) appears offline in the
/// guest; `OnlineCPUMem` brings it online. The VM boots with 1 vCPU and
/// room for 2 (`default_maxvcpus`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_cpu_mem_onlines_a_hot_added_vcpu() {
    let env = TestEnv::with_qemu_extra(&format!(
        "{CONSOLE_PARAMS}\ndefault_vcpus = 1\ndefault_maxvcpus = 2"
    ));
    let sandbox = boot(&env).await;
    capsa_hypervisor::debug::add_vcpu(&env.state_dir.join(sandbox.id()))
        .await
        .expect("a vCPU hot-added");

    // The guest has it once its sysfs entry exists; offline until onlined.
    let before = console_run(
        &env,
        &sandbox,
        "i=0; while [ ! -e /sys/devices/system/cpu/cpu1/online ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo cpu1=$(cat /sys/devices/system/cpu/cpu1/online) online=$(cat /sys/devices/system/cpu/online)\nexit\n",
    )
    .await;
    assert!(before.contains("cpu1=0 online=0"), "{before}");

    sandbox
        .agent()
        .raw()
        .online_cpu_mem(
            until(CALL),
            &agent::OnlineCPUMemRequest {
                wait: true,
                nb_cpus: 1,
                ..Default::default()
            },
        )
        .await
        .expect("OnlineCPUMem");
    let after = console_run(
        &env,
        &sandbox,
        "echo online=$(cat /sys/devices/system/cpu/online) nproc=$(nproc)\nexit\n",
    )
    .await;
    assert!(after.contains("online=0-1 nproc=2"), "{after}");

    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
}
