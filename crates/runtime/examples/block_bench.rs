//! `make bench`, block part: in one run, side by side,
//! - hot-plug latency: from the request (`attach_block`) until the disk is
//!   there in the guest (a container polling `/sys/block` sees it);
//! - sequential read of a 256 MiB file: natively on the host, in a
//!   container over virtio-fs, and in a container from a hot-plugged drive
//!   (host page cache dropped before each read; each run reads a file of
//!   its own, so every read is the guest's first of that file).
//!
//! Needs root, the guest assets (`$CAPSA_TEST_ASSETS`, default
//! /var/cache/capsa/assets) and e2fsprogs.

use std::path::Path;
use std::time::{Duration, Instant};

use capsa_hypervisor::{BlockDevice, BlockDriver};
use capsa_runtime::resource::{volume, Rootfs};
use capsa_runtime::{ProcessSpec, Sandbox, VmSize, Volume};
use capsa_test_infra::block::ImageFile;
use capsa_test_infra::TestEnv;

const FILE_MIB: u64 = 256;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = capsa_test_infra::bench_runs(3);
    let env = TestEnv::new();
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for i in 0..runs {
        write_file(&data.join(format!("big{i}")), FILE_MIB);
    }
    let image_mib = FILE_MIB * runs as u64 + 64;
    let image = ImageFile::ext4(env.dir.path(), image_mib, Some(&data));
    let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");
    let mut sandbox = Sandbox::start(&config, VmSize::default())
        .await
        .expect("sandbox start");

    println!("== hot-plug latency: {runs} drives, request to disk seen in the guest ==");
    let mut plug = Vec::new();
    for i in 0..runs {
        let scratch = ImageFile::raw(env.dir.path(), 16);
        plug.push(hotplug_latency(&mut sandbox, &env, i, scratch.path()).await);
        println!("drive {i}: {:.0} ms", plug[i]);
    }
    println!("median hot-plug latency: {:.0} ms", median(&plug));

    println!("== sequential read of a {FILE_MIB} MiB file ({runs} runs each) ==");
    let (mut native, mut fs, mut blk) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let file = format!("big{i}");
        native.push(host_read(&data.join(&file)));
        let dir_volume = Volume {
            source: data.clone(),
            destination: "/data".into(),
            readonly: true,
        };
        fs.push(guest_read(&mut sandbox, &env, &format!("fs{i}"), &dir_volume, &file).await);
        let image_volume = Volume {
            source: image.path().to_path_buf(),
            destination: "/data".into(),
            readonly: true,
        };
        blk.push(guest_read(&mut sandbox, &env, &format!("blk{i}"), &image_volume, &file).await);
        println!(
            "run {i}: host {:.0} MiB/s, virtio-fs {:.0} MiB/s, block {:.0} MiB/s",
            native[i], fs[i], blk[i]
        );
    }
    let (n, f, b) = (median(&native), median(&fs), median(&blk));
    println!("median host (native):       {n:.0} MiB/s");
    println!("median container, virtio-fs: {f:.0} MiB/s");
    println!("median container, block:     {b:.0} MiB/s");
    println!("ratio block/virtio-fs: {:.2}", b / f);
    println!("ratio virtio-fs/host:  {:.2}", f / n);
    println!("ratio block/host:      {:.2}", b / n);
    sandbox.destroy().await.expect("destroy");
}

/// Attaches a drive while a container waits for one more disk in
/// `/sys/block`; milliseconds from the request until it printed.
async fn hotplug_latency(sandbox: &mut Sandbox, env: &TestEnv, i: usize, image: &Path) -> f64 {
    let cid = format!("plug{i}");
    let script = "n=$(ls /sys/block | wc -l); echo ready; \
                  while [ $(ls /sys/block | wc -l) -le $n ]; do usleep 5000; done; echo seen";
    start(sandbox, env, &cid, script, None).await;
    let ready = sandbox
        .agent()
        .read_stdout(&cid, &cid, 64)
        .await
        .expect("ready");
    assert_eq!(ready, b"ready\n");
    let device = BlockDevice {
        id: format!("bench{i}"),
        path: image.to_path_buf(),
        read_only: false,
        driver: BlockDriver::VirtioBlk,
    };
    let t = Instant::now();
    sandbox.attach_block(&device).await.expect("attach");
    let seen = sandbox
        .agent()
        .read_stdout(&cid, &cid, 64)
        .await
        .expect("seen");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(seen, b"seen\n");
    sandbox
        .agent()
        .wait_process(&cid, &cid)
        .await
        .expect("wait");
    sandbox.remove_container(&cid).await.expect("remove");
    sandbox.detach_block(&device.id).await.expect("detach");
    ms
}

/// Reads `/data/<file>` in a new container with `volume` at `/data`;
/// MiB/s from the guest's clock (`/proc/uptime` around `dd`).
async fn guest_read(
    sandbox: &mut Sandbox,
    env: &TestEnv,
    cid: &str,
    volume: &Volume,
    file: &str,
) -> f64 {
    drop_host_caches();
    let script = format!(
        "cut -d' ' -f1 /proc/uptime; dd if=/data/{file} of=/dev/null bs=1M 2>/dev/null; \
         cut -d' ' -f1 /proc/uptime"
    );
    start(sandbox, env, cid, &script, Some(volume)).await;
    let mut out = Vec::new();
    loop {
        match sandbox.agent().read_stdout(cid, cid, 4096).await {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
    }
    sandbox.agent().wait_process(cid, cid).await.expect("wait");
    sandbox.remove_container(cid).await.expect("remove");
    let text = String::from_utf8_lossy(&out);
    let t: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(t.len(), 2, "two uptimes: {text}");
    FILE_MIB as f64 / (t[1] - t[0]).max(0.01)
}

async fn start(
    sandbox: &mut Sandbox,
    env: &TestEnv,
    cid: &str,
    script: &str,
    volume: Option<&Volume>,
) {
    let process = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let mut spec = capsa_runtime::spec::build(&process, "", "bench").expect("spec");
    if let Some(v) = volume {
        volume::add_volume(&mut spec, v).expect("volume");
    }
    let rootfs = Rootfs::Dir(env.rootfs.clone());
    sandbox
        .create_container_from(cid, &rootfs, spec)
        .await
        .expect("create");
    sandbox.agent().start_container(cid).await.expect("start");
}

/// MiB/s of `dd` reading `file` on the host, its page cache dropped.
fn host_read(file: &Path) -> f64 {
    drop_host_caches();
    let t = Instant::now();
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args(["of=/dev/null", "bs=1M"])
        .output()
        .expect("dd");
    assert!(out.status.success());
    FILE_MIB as f64 / t.elapsed().max(Duration::from_millis(1)).as_secs_f64()
}

fn drop_host_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn write_file(path: &Path, mib: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}
