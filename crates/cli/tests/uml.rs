//! `capsa` on User-Mode Linux: the installed `configuration-uml.toml`
//! (its paths pointed at the test assets' `linux-uml` and `initrd.img`)
//! runs containers, volumes, detached sandboxes, `exec` and the debug
//! console through the same commands as QEMU's configuration; the pod
//! network (`--network bridge -p`, a netns of one's own) through the
//! real CNI plugins; a UML kernel that dies is reported as a dead VM,
//! and nothing is left.
//!
//! Root is required (the driver's jails map ids and chown), as for every
//! `capsa run` test.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use capsa_test_infra::block::ImageFile;
use capsa_test_infra::cli::{assert_all_gone, capsa, capsa_with_input, run, text, Detached};
use capsa_test_infra::cni::TestNetwork;
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::net::{free_port, http_get, Greeter};
use capsa_test_infra::netns::PodNetns;
use capsa_test_infra::{assert_no_leaks, wait_until, TestEnv};

/// `jail_uid` of `config/configuration-uml.toml`.
const JAIL_UID: u32 = 1_900_000;

fn uml_env() -> TestEnv {
    TestEnv::with_installed_config("configuration-uml.toml")
}

/// [`uml_env`] with the debug console on.
fn uml_env_with_debug_console() -> TestEnv {
    let env = uml_env();
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("[agent.capsa]\n"), "{text}");
    let text = text.replace(
        "[agent.capsa]\n",
        "[agent.capsa]\ndebug_console_enabled = true\n",
    );
    std::fs::write(&env.config, text).unwrap();
    env
}

/// [`uml_env`] with block device use on: drives are UML ubd disks.
fn uml_env_with_block() -> TestEnv {
    let env = uml_env();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let on = text.replace(
        "disable_block_device_use = true",
        "disable_block_device_use = false",
    );
    assert_ne!(on, text, "the installed file sets disable_block_device_use");
    std::fs::write(&env.config, on).unwrap();
    env
}

/// Whether `pid` is gone (or a zombie).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

#[test]
fn run_true_and_the_workload_sees_the_uml_kernel() {
    let env = uml_env();
    let out = run(&env, &[], &["true"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "", "quiet when all is well");

    let out = run(
        &env,
        &[],
        &[
            "sh",
            "-c",
            "uname -r; grep -c ^processor /proc/cpuinfo; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].contains("-um"),
        "a UML kernel: {stdout}"
    );
    assert_eq!(lines[1], "1", "one CPU: {stdout}");
    // `capsa check` names the driver and what the host offers it.
    let out = capsa(&env, &["check"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("driver          User-Mode Linux ([hypervisor.uml])"),
        "{stdout}"
    );
    assert!(stdout.contains("UML kernel      ok: "), "{stdout}");
}

/// UML has one CPU and no hot-plug: a sandbox asking for more runs with
/// one vCPU, and the log says so once.
#[test]
fn asking_for_more_vcpus_runs_with_one_and_says_so_once() {
    let env = uml_env();
    let out = run(
        &env,
        &["--vcpus", "2", "--memory", "256"],
        &["sh", "-c", "grep -c ^processor /proc/cpuinfo"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "1\n");
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("User-Mode Linux has one CPU").count(),
        1,
        "{stderr}"
    );
}

/// `-v`: a directory shared read-write and read-only. The share is
/// idmapped for the jailed virtiofsd: host root's directory is the guest
/// root's, and what the guest's root writes is host root's, as on QEMU;
/// the volume's mount point is made in the rootfs (owned by host root).
/// A file of another host user is not the guest root's to write, and
/// no set-id file can be made.
#[test]
fn volumes_are_shared_read_write_and_read_only() {
    let env = uml_env();
    let vol = env.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    std::fs::write(vol.join("theirs"), "").unwrap();
    std::os::unix::fs::chown(vol.join("theirs"), Some(JAIL_UID + 1), None).unwrap();
    let rw = format!("{}:/data/vol", vol.display());
    let script = "cat /data/vol/in && echo from the guest > /data/vol/out && \
                  stat -c %u /data/vol/out && ! echo x >> /data/vol/theirs && \
                  ! chmod 4755 /data/vol/out";
    let out = run(&env, &["-v", &rw], &["sh", "-c", script], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\n0\n");
    let written = vol.join("out");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "from the guest\n"
    );
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!(meta.uid(), 0);
    // No set-uid-root file made on the host through the share.
    assert_eq!(meta.mode() & 0o6000, 0, "{:o}", meta.mode());
    assert_eq!(std::fs::read(vol.join("theirs")).unwrap(), b"");

    let ro = format!("{}:/home:ro", vol.display());
    let out = run(
        &env,
        &["-v", &ro],
        &["sh", "-c", "cat /home/in; echo no > /home/ro-write"],
        None,
    );
    assert!(
        !out.status.success(),
        "a read-only volume was written: {out:?}"
    );
    assert_eq!(text(&out.stdout), "from the host\n");
    assert!(!vol.join("ro-write").exists());
}

/// `run -d`, `ps`, `inspect`, `exec`, `exec --vm` (the debug console) and
/// `rm`, on UML.
#[test]
fn a_detached_sandbox_execs_has_a_debug_console_and_is_removed() {
    let env = uml_env_with_debug_console();
    let sb = Detached::start(&env, "uml-d", &["sleep", "1000"]);
    let out = capsa(&env, &["ps"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("uml-d"), "{out:?}");
    let v = sb.inspect();
    let roles: Vec<&str> = v["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes: {v:#}"))
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert_eq!(roles, ["hypervisor", "shared_fs", "vsock"], "{v:#}");
    // Every process of the VM runs as the jail's uid.
    for p in v["processes"].as_array().unwrap() {
        let pid = p["pid"].as_i64().unwrap();
        let uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
        assert_eq!(uid, JAIL_UID, "pid {pid}");
    }

    let out = capsa(
        &env,
        &["exec", "uml-d", "--", "sh", "-c", "echo in $(hostname)"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("in "), "{out:?}");

    // The VM's root environment: PID 1 is the agent.
    let out = capsa_with_input(
        &env,
        &["exec", "--vm", "uml-d"],
        b"echo sum=$((6*7)); echo pid1=$(readlink /proc/1/exe); exit\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("sum=42"), "{stdout}");
    assert!(stdout.contains("pid1=/init"), "{stdout}");

    let out = capsa(&env, &["rm", "-f", "uml-d"]);
    assert!(out.status.success(), "{out:?}");
    drop(sb);
    assert_all_gone(&env);
}

/// The UML kernel killed from outside: the sandbox's owner sees its VM
/// exit, records the workload killed (137), and nothing of the VM is
/// left (its guest processes, host processes in the kernel's PID
/// namespace, die with it).
#[test]
fn a_killed_uml_kernel_is_reported_exited_and_nothing_is_left() {
    let env = uml_env();
    let sb = Detached::start(&env, "uml-k", &["sleep", "1000"]);
    let kernel = sb.hypervisor_pid();
    let dir = env.state_dir.join("uml-k");
    assert!(!processes_naming(&dir.display().to_string()).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kernel),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let v = sb.wait_state("stopped");
    assert_eq!(v["containers"][0]["exit_code"], 137, "{v:#}");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || gone(kernel)),
        "UML {kernel} still there"
    );
    let left = processes_naming(&dir.display().to_string());
    assert!(left.is_empty(), "VM processes left: {left:?}");
    let out = capsa(&env, &["rm", "uml-k"]);
    assert!(out.status.success(), "{out:?}");
    drop(sb);
    assert_all_gone(&env);
}

/// How long the network or a state may take to come true.
const NET_WAIT: Duration = Duration::from_secs(60);

/// [`uml_env`] with a CNI network of its own (`runtime.cni_conflist`;
/// subnets 10.4.10-89, as `tests/network.rs`).
fn uml_env_with_network() -> (TestEnv, TestNetwork) {
    let env = uml_env();
    let net = TestNetwork::new(env.dir.path(), "capsau", 10);
    let path = env.write_config("test.conflist", &net.conflist());
    // The configuration file ends with its [runtime] table.
    env.append_config(&format!("cni_conflist = {path:?}"));
    (env, net)
}

/// Removes what a failed test left (`rm --force` releases networks),
/// before the network's bridge goes.
struct RemoveAll<'a>(&'a TestEnv);

impl Drop for RemoveAll<'_> {
    fn drop(&mut self) {
        let entries = std::fs::read_dir(&self.0.state_dir);
        for entry in entries.into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let _ = capsa(self.0, &["rm", "--force", &id]);
        }
    }
}

/// `--network bridge -p`: the container on UML has its address on eth0
/// (the vector NIC, found by MAC and renamed), its default route, serves
/// the host through the published port and at its address; once it is
/// killed, its network is released and nothing is left.
#[test]
fn uml_bridge_serves_a_published_port_and_leaves_nothing_behind() {
    let (env, net) = uml_env_with_network();
    let _cleanup = RemoveAll(&env);
    let port = free_port();
    let publish = format!("{port}:80");
    let httpd = "mkdir -p /www && echo hello-from-uml > /www/index.html && \
                 ip -o addr show dev eth0 && ip route && exec httpd -f -p 80 -h /www";
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "bridge",
            "-p",
            &publish,
            "--rootfs",
            &rootfs,
            "--",
            "sh",
            "-c",
            httpd,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let inspect = || {
        let out = capsa(&env, &["inspect", "web"]);
        assert!(out.status.success(), "inspect: {out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("inspect prints JSON")
    };
    let record = inspect();
    let address = record["cni"]["networks"][1]["result"]["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address recorded: {record:#}"))
        .to_string();
    assert!(
        address.starts_with(&format!("{}.", net.subnet)),
        "{address}"
    );

    // The kernel holds the pod's tap (fd 200), unprivileged, outside the
    // pod's netns.
    let kernel = record["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["role"] == "hypervisor"))
        .and_then(|p| p["pid"].as_i64())
        .unwrap_or_else(|| panic!("no hypervisor process: {record:#}"));
    let tap = std::fs::read_link(format!("/proc/{kernel}/fd/200")).unwrap();
    assert_eq!(tap, std::path::Path::new("/dev/net/tun"));
    let status = std::fs::read_to_string(format!("/proc/{kernel}/status")).unwrap();
    assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
    assert_eq!(
        std::fs::metadata(format!("/proc/{kernel}")).unwrap().uid(),
        JAIL_UID
    );
    let netns_of = |path: String| std::fs::read_link(path).unwrap();
    assert_ne!(
        netns_of(format!("/proc/{kernel}/ns/net")),
        netns_of(format!("/proc/{}/ns/net", std::process::id())),
    );
    let pod_netns = env.state_dir.join("web/netns");
    let pod_ino = std::fs::metadata(&pod_netns).unwrap().ino();
    let kernel_ino = std::fs::metadata(format!("/proc/{kernel}/ns/net"))
        .unwrap()
        .ino();
    assert_ne!(kernel_ino, pod_ino, "the kernel runs in the pod's netns");

    let local = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(http_get(local, NET_WAIT).trim(), "hello-from-uml");
    let ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
    assert_eq!(
        http_get(SocketAddr::new(ip, 80), NET_WAIT).trim(),
        "hello-from-uml"
    );
    let log = std::fs::read_to_string(env.state_dir.join("web/web.log")).unwrap();
    assert!(log.contains(&address), "{log}");
    assert!(
        log.contains(&format!("default via {}.1", net.subnet)),
        "{log}"
    );

    let out = capsa(&env, &["kill", "web", "--signal", "KILL"]);
    assert!(out.status.success(), "{out:?}");
    let mut v = serde_json::Value::Null;
    let stopped = wait_until(NET_WAIT, || {
        v = inspect();
        v["state"] == "stopped"
    });
    assert!(stopped, "never stopped: {v:#}");
    let owner = v["owner_pid"].as_i64().unwrap() as i32;
    let gone = wait_until(NET_WAIT, || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), None).is_err()
    });
    assert!(gone, "owner {owner} did not exit");
    assert!(!env.state_dir.join("web/netns").exists(), "netns left");
    assert_eq!(net.veths(), "", "veth left on {}", net.bridge);
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.rules("web").is_empty(), "{:?}", net.rules("web"));
    assert!(
        TcpStream::connect_timeout(&local, Duration::from_secs(5)).is_err(),
        "port {port} still forwarded"
    );
    let out = capsa(&env, &["rm", "web"]);
    assert!(out.status.success(), "{out:?}");
    assert_no_leaks(&env.state_dir);
}

/// `--network <netns>`: a netns of the test's own is joined (its veth's
/// address and default route in the guest, a TCP connection to the
/// host's end) and
/// left as it was.
#[test]
fn uml_joins_a_netns_of_ones_own_and_leaves_it_as_it_was() {
    let env = uml_env();
    let own = PodNetns::new();
    // IPv6 link-local addresses settle once duplicate address detection
    // is done: wait for it.
    let settled = wait_until(NET_WAIT, || {
        !own.in_ns(&["ip", "-6", "-o", "addr"]).contains("tentative")
    });
    assert!(settled, "IPv6 addresses never settled");
    let before = own.snapshot();
    let netns = own.netns().to_string_lossy().into_owned();
    // The host's end of the veth answers a TCP connection.
    let host: IpAddr = own.host_ip().parse().unwrap();
    let greeter = Greeter::start(host, "hello-from-host\n");
    let script = format!(
        "ip -o addr show dev eth0; ip route; timeout 30 nc {} {}",
        own.host_ip(),
        greeter.addr().port()
    );
    let out = run(&env, &["--network", &netns], &["sh", "-c", &script], None);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(said.contains(&format!("{}/24", own.pod_ip())), "{said}");
    assert!(
        said.contains(&format!("default via {}", own.host_ip())),
        "{said}"
    );
    assert!(said.contains("hello-from-host"), "{said}");
    drop(greeter);
    assert!(own.netns().exists(), "the netns was removed");
    assert_eq!(own.snapshot(), before, "the netns changed");
    assert_no_leaks(&env.state_dir);
}

/// The guest's root takes the vector NIC down and up again (`exec --vm`):
/// the link keeps its tap (the kernel reopens a copy of the inherited
/// descriptor, `kernel/patches/um`), and the container still reaches the
/// host's end of the veth.
#[test]
fn uml_nic_survives_the_guest_taking_it_down_and_up() {
    let env = uml_env_with_debug_console();
    let own = PodNetns::new();
    let netns = own.netns().to_string_lossy().into_owned();
    let rootfs = env.rootfs.to_string_lossy().into_owned();
    let _cleanup = RemoveAll(&env);
    let out = capsa(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "updown",
            "--network",
            &netns,
            "--rootfs",
            &rootfs,
            "--",
            "sleep",
            "1000",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let host: IpAddr = own.host_ip().parse().unwrap();
    let greeter = Greeter::start(host, "hello-again\n");
    let fetch = format!("timeout 30 nc {} {}", own.host_ip(), greeter.addr().port());
    let exec = |script: &str| capsa(&env, &["exec", "updown", "--", "sh", "-c", script]);
    let out = exec(&fetch);
    assert_eq!(text(&out.stdout), "hello-again\n", "{out:?}");

    let out = capsa_with_input(
        &env,
        &["exec", "--vm", "updown"],
        b"ip link set eth0 down && ip link set eth0 up && echo cycled; exit\n",
    );
    assert!(text(&out.stdout).contains("cycled"), "{out:?}");
    // The route through eth0 went with the link: put it back as the
    // agent set it.
    let out = capsa_with_input(
        &env,
        &["exec", "--vm", "updown"],
        format!(
            "ip route replace default via {} dev eth0; ip -o link show eth0; exit\n",
            own.host_ip()
        )
        .as_bytes(),
    );
    assert!(text(&out.stdout).contains("UP"), "{out:?}");
    let out = exec(&fetch);
    assert_eq!(text(&out.stdout), "hello-again\n", "{out:?}");
    drop(greeter);

    let out = capsa(&env, &["rm", "-f", "updown"]);
    assert!(out.status.success(), "{out:?}");
    assert_all_gone(&env);
}

/// Block device use on: a rootfs image and image volumes are hot-plugged
/// as ubd disks (the rootfs first: `/dev/ubda`); the container writes its
/// rootfs and the read-write volume, not the read-only one; the host
/// never mounts them, and nothing is left.
#[test]
fn a_rootfs_image_and_block_volumes_are_ubd_disks() {
    let env = uml_env_with_block();
    let data_dir = env.dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("hello"), "from the host\n").unwrap();
    let root = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let rw = ImageFile::ext4(env.dir.path(), 16, Some(&data_dir));
    let ro = ImageFile::ext4(env.dir.path(), 16, Some(&data_dir));
    let (img, rw_volume, ro_volume) = (
        root.path().display().to_string(),
        format!("{}:/rw", rw.path().display()),
        format!("{}:/ro:ro", ro.path().display()),
    );
    let script = "grep ' / ' /proc/mounts | cut -d' ' -f1,3; cat /rw/hello; \
                  echo x > /rw/new; echo y > /ro/new 2>/dev/null || echo refused; \
                  echo kept > /written";
    let out = capsa(
        &env,
        &[
            "run",
            "--rootfs-image",
            &img,
            "-v",
            &rw_volume,
            "-v",
            &ro_volume,
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "/dev/ubda ext4\nfrom the host\nrefused\n",
        "{out:?}"
    );
    assert_eq!(root.text("/written").as_deref(), Some("kept\n"));
    assert_eq!(rw.text("/new").as_deref(), Some("x\n"));
    assert_eq!(ro.text("/new"), None, "the read-only image is unchanged");
    for image in [&root, &rw, &ro] {
        assert!(!image.used_by_host(), "{}", image.path().display());
    }
    assert_all_gone(&env);
}
