//! vCPU and memory hot-plug on QEMU ([`ResourceHotplug`] for [`QemuVm`]).
//!
//! The room is made at boot ([`Sizing`]: `-smp N,maxcpus=M`, `-m
//! SIZE,slots=S,maxmem=MAX`, and with virtio-mem one `virtio-mem-pci`
//! device whose shared memfd backend covers `MAX - SIZE`, nothing plugged).
//!
//! vCPUs: `query-hotpluggable-cpus` names the free sockets/cores/threads
//! and the CPU type; `device_add` of that type at the first free one adds
//! a vCPU, `device_del` + `DEVICE_DELETED` removes the last one added.
//! Memory: with virtio-mem, `qom-set requested-size` then polling its
//! `size` until the guest has (un)plugged it; without, one `pc-dimm` per
//! growth over its own `memory-backend-memfd` (`share=on`: vhost-user
//! helpers map guest memory), the backend removed again if the device
//! cannot be added.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::block::hotplug_error;
use super::cmdline::{self, VIRTIO_MEM_ID};
use super::qmp::Event;
use super::session::QmpSession;
use super::QemuVm;
use crate::{Accelerator, Error, ResourceHotplug, VmConfig, VmResources, MEMORY_BLOCK_MIB};
use tokio::sync::broadcast::{self, error::RecvError};

/// The most vCPUs capsa gives a q35 VM: what x86 APIC ids allow without
/// an IOMMU for interrupt remapping, as Kata (its QEMU `maxcpus` on
/// amd64 is 240).
pub const MAX_Q35_VCPUS: u32 = 240;
/// The most DIMM slots QEMU's ACPI memory hot-plug has.
pub const MAX_MEMORY_SLOTS: u32 = 256;
/// How often QEMU is asked whether the guest has (un)plugged: the
/// virtio-mem device's `size`, a removed vCPU's presence.
const DEVICE_POLL: Duration = Duration::from_millis(100);
/// What the errors of memory and vCPU resizing name.
const MEMORY: &str = "memory";
const VCPUS: &str = "vCPUs";

/// The VM's room for hot-plug, resolved from its [`VmConfig`] and the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizing {
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
    /// DIMM slots (0 with virtio-mem or without memory hot-plug).
    pub slots: u32,
    /// Size of the virtio-mem device, MiB (0: none).
    pub virtio_mem_mib: u32,
    /// Size of the root image's NVDIMM, MiB (0: none): it takes a slot
    /// and room beyond `max_memory_mib` of its own.
    pub image_mib: u64,
}

impl Sizing {
    /// No hot-plug: the boot size is the maximum.
    pub fn fixed(cfg: &VmConfig) -> Self {
        Self {
            max_vcpus: cfg.vcpus,
            max_memory_mib: cfg.memory_mib,
            slots: 0,
            virtio_mem_mib: 0,
            image_mib: 0,
        }
    }

    /// The room `cfg` asks for on a host with `host_cpus` CPUs and
    /// `host_memory_mib` of memory (what a 0 maximum stands for): capped
    /// at what the machine type allows, never below the boot size, the
    /// memory headroom a whole number of [`MEMORY_BLOCK_MIB`].
    pub fn resolve(cfg: &VmConfig, host_cpus: u32, host_memory_mib: u32) -> Self {
        let q = super::settings(cfg);
        if !cmdline::has_root_ports(q.machine_type) {
            return Self::fixed(cfg);
        }
        let pick = |asked: u32, host: u32| if asked == 0 { host } else { asked };
        let max_vcpus = pick(cfg.max_vcpus, host_cpus)
            .min(MAX_Q35_VCPUS)
            .max(cfg.vcpus);
        let max_memory = pick(cfg.max_memory_mib, host_memory_mib).max(cfg.memory_mib);
        let headroom = round_down(max_memory - cfg.memory_mib);
        let slots = q.memory_slots.min(MAX_MEMORY_SLOTS);
        let (slots, virtio_mem_mib, headroom) = match (q.enable_virtio_mem, headroom) {
            (_, 0) => (0, 0, 0),
            (true, h) => (0, h, h),
            (false, _) if slots == 0 => (0, 0, 0),
            (false, h) => (slots, 0, h),
        };
        Self {
            max_vcpus,
            max_memory_mib: cfg.memory_mib + headroom,
            slots,
            virtio_mem_mib,
            image_mib: 0,
        }
    }

    /// [`Sizing::resolve`] for this host.
    pub fn for_host(cfg: &VmConfig) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self::resolve(cfg, cpus, host_memory_mib())
    }
}

/// The host's memory (`MemTotal`), MiB; 0 if unknown.
fn host_memory_mib() -> u32 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| u32::try_from(kib / 1024).unwrap_or(u32::MAX))
}

fn round_down(mib: u32) -> u32 {
    mib / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB
}

fn round_up(mib: u32) -> u32 {
    mib.div_ceil(MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB
}

/// A DIMM added by this driver (never removed: see [`ResourceHotplug`]).
#[derive(Debug)]
pub(super) struct Dimm {
    mib: u32,
}

/// What was hot-plugged into the VM, beyond its boot size.
#[derive(Debug, Default)]
pub(super) struct Plugged {
    pub sizing: Sizing,
    /// Device ids of the vCPUs added, oldest first.
    cpus: Vec<String>,
    dimms: Vec<Dimm>,
    /// What the guest had plugged of the virtio-mem device at the last
    /// look, MiB.
    virtio_mem_mib: u32,
    /// Numbers the next device ids.
    next: u64,
}

/// The first free slot in the answer of `query-hotpluggable-cpus`: the
/// CPU type to add and its topology properties, lowest ids first (QEMU
/// lists them from the highest).
pub fn free_cpu_slot(answer: &Value) -> Option<(String, serde_json::Map<String, Value>)> {
    let key = |props: &serde_json::Map<String, Value>| {
        ["node-id", "socket-id", "die-id", "core-id", "thread-id"]
            .map(|k| props.get(k).and_then(Value::as_u64).unwrap_or(0))
    };
    let mut free: Vec<(String, serde_json::Map<String, Value>)> = answer
        .as_array()?
        .iter()
        .filter(|c| c.get("qom-path").is_none() && c["vcpus-count"].as_u64() == Some(1))
        .filter_map(|c| {
            Some((
                c["type"].as_str()?.to_string(),
                c["props"].as_object()?.clone(),
            ))
        })
        .collect();
    free.sort_by_key(|(_, props)| key(props));
    free.into_iter().next()
}

/// Whether QEMU has the device `id` (created with `-device`/`device_add`).
async fn has_device(qmp: &QmpSession, id: &str, limit: Duration) -> Result<bool, Error> {
    let list = qmp
        .execute(
            "qom-list",
            Some(json!({ "path": "/machine/peripheral" })),
            limit,
        )
        .await
        .map_err(|e| hotplug_error(id, e))?;
    Ok(list
        .as_array()
        .is_some_and(|l| l.iter().any(|p| p["name"] == id)))
}

impl Plugged {
    /// Nothing plugged yet, room as `sizing` says.
    pub fn new(sizing: Sizing) -> Self {
        Self {
            sizing,
            ..Self::default()
        }
    }
}

impl QemuVm {
    fn vcpus_now(&self) -> u32 {
        self.cfg.vcpus + self.plugged.cpus.len() as u32
    }

    fn memory_now(&self) -> u32 {
        let dimms: u32 = self.plugged.dimms.iter().map(|d| d.mib).sum();
        self.cfg.memory_mib + dimms + self.plugged.virtio_mem_mib
    }

    async fn add_vcpu(&mut self) -> Result<(), Error> {
        let limit = self.cfg.hotplug_timeout;
        let qmp = self.session(VCPUS)?;
        let answer = qmp
            .execute("query-hotpluggable-cpus", None, limit)
            .await
            .map_err(|e| hotplug_error(VCPUS, e))?;
        let Some((driver, props)) = free_cpu_slot(&answer) else {
            return Err(hotplug_error(VCPUS, "QEMU has no free vCPU slot"));
        };
        self.plugged.next += 1;
        let id = format!("vcpu{}", self.plugged.next);
        let mut args = props;
        args.insert("driver".into(), driver.into());
        args.insert("id".into(), id.clone().into());
        let qmp = self.session(VCPUS)?;
        let deadline = Instant::now() + limit;
        // Subscribed before the command, so the guest's answer cannot be
        // missed.
        let events = qmp.subscribe();
        if let Err(e) = qmp.execute("device_add", Some(args.into()), limit).await {
            // A timed-out device_add may still have added the vCPU: then
            // it counts (whole, not half-added; removing it is not safe
            // everywhere, see resize_vcpus).
            if e.to_string().contains("no answer") && has_device(qmp, &id, limit).await? {
                tracing::warn!(vm = %self.cfg.id, device = %id, "device_add timed out but the vCPU was added");
                self.plugged.cpus.push(id.clone());
            }
            return Err(hotplug_error(&id, e));
        }
        self.wait_guest_saw(events, &id, deadline).await;
        self.plugged.cpus.push(id);
        Ok(())
    }

    /// Removes the vCPU added last: `device_del`, then waits (bounded by
    /// the hot-plug timeout) until the guest has ejected it and QEMU has
    /// removed the device. QEMU 7.2 sends `DEVICE_DELETED` only for the
    /// vCPU's lapic child, without the vCPU's id, so the wait looks for
    /// the device itself among QEMU's devices.
    async fn remove_vcpu(&mut self) -> Result<(), Error> {
        let Some(id) = self.plugged.cpus.last().cloned() else {
            return Ok(());
        };
        let limit = self.cfg.hotplug_timeout;
        let deadline = Instant::now() + limit;
        let qmp = self.session(&id)?;
        match qmp
            .execute("device_del", Some(json!({ "id": id })), limit)
            .await
        {
            Ok(_) => loop {
                if !has_device(qmp, &id, limit).await? {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(hotplug_error(
                        &id,
                        format!("the guest did not release {id} within {limit:?}; it stays"),
                    ));
                }
                tokio::time::sleep(DEVICE_POLL).await;
            },
            Err(e) if e.to_string().contains("not found") => {
                tracing::warn!(vm = %self.cfg.id, device = %id, "QEMU had no such vCPU");
            }
            Err(e) => return Err(hotplug_error(&id, e)),
        }
        self.plugged.cpus.pop();
        Ok(())
    }

    /// One DIMM for `target` MiB, within the maximum and the slots.
    async fn grow_dimms(&mut self, target: u32) -> Result<u32, Error> {
        let now = self.memory_now();
        if target < now {
            tracing::debug!(vm = %self.cfg.id, now, target, "DIMMs are not removed: memory stays");
        }
        if target <= now {
            return Ok(now);
        }
        if self.plugged.dimms.len() as u32 >= self.plugged.sizing.slots {
            tracing::warn!(vm = %self.cfg.id, now, target, slots = self.plugged.sizing.slots, "no DIMM slot left (memory_slots): memory stays");
            return Ok(now);
        }
        let step = round_up(target - now).min(round_down(self.plugged.sizing.max_memory_mib - now));
        if step == 0 {
            return Ok(now);
        }
        self.plugged.next += 1;
        let qdev = format!("dimm{}", self.plugged.next);
        let backend = format!("{qdev}-mem");
        let limit = self.cfg.hotplug_timeout;
        let qmp = self.session(MEMORY)?;
        let object = json!({
            "qom-type": "memory-backend-memfd",
            "id": backend,
            "size": u64::from(step) << 20,
            "share": true,
        });
        if let Err(e) = qmp.execute("object-add", Some(object), limit).await {
            self.drop_backend(&backend).await;
            return Err(hotplug_error(&qdev, e));
        }
        let device = json!({ "driver": "pc-dimm", "id": qdev, "memdev": backend });
        let deadline = Instant::now() + limit;
        let events = qmp.subscribe();
        if let Err(e) = qmp.execute("device_add", Some(device), limit).await {
            // A timed-out device_add may still have added the DIMM: then
            // it counts (DIMMs are not removed); otherwise its backend goes.
            if e.to_string().contains("no answer") && has_device(qmp, &qdev, limit).await? {
                tracing::warn!(vm = %self.cfg.id, device = %qdev, "device_add timed out but the DIMM was added");
                self.plugged.dimms.push(Dimm { mib: step });
            } else {
                self.drop_backend(&backend).await;
            }
            return Err(hotplug_error(&qdev, e));
        }
        self.wait_guest_saw(events, &qdev, deadline).await;
        tracing::debug!(vm = %self.cfg.id, device = %qdev, mib = step, "DIMM added");
        self.plugged.dimms.push(Dimm { mib: step });
        Ok(self.memory_now())
    }

    /// Waits until `deadline` for the guest to report (ACPI `_OST`, QMP
    /// `ACPI_DEVICE_OST`) that it has processed the insertion of `qdev`:
    /// from then on the vCPU or memory is visible in the guest (and
    /// `OnlineCPUMem` finds it). A guest that does not answer in time, or
    /// reports a failure, is logged: the device is plugged either way.
    async fn wait_guest_saw(
        &self,
        mut events: broadcast::Receiver<Event>,
        qdev: &str,
        deadline: Instant,
    ) {
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.name == "ACPI_DEVICE_OST" && ev.data["info"]["device"] == qdev => {
                        return ev.data["info"]["status"].as_u64();
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Some(0)) => {
                tracing::debug!(vm = %self.cfg.id, device = qdev, "the guest saw the device")
            }
            Ok(status) => {
                tracing::warn!(vm = %self.cfg.id, device = qdev, ?status, "the guest reported a failed insertion")
            }
            Err(_) => {
                tracing::warn!(vm = %self.cfg.id, device = qdev, "the guest did not acknowledge the device in time")
            }
        }
    }

    /// Removes the memory backend `id` after a failed DIMM; logged only (a
    /// backend that was never created is no error).
    async fn drop_backend(&self, id: &str) {
        let Ok(qmp) = self.session(MEMORY) else {
            return;
        };
        if let Err(e) = qmp
            .execute(
                "object-del",
                Some(json!({ "id": id })),
                self.cfg.hotplug_timeout,
            )
            .await
        {
            tracing::debug!(vm = %self.cfg.id, backend = id, error = %e, "roll back: object-del");
        }
    }

    /// Asks the guest to have `target` MiB (boot memory included) and
    /// waits, bounded, until its virtio-mem driver has (un)plugged it.
    async fn resize_virtio_mem(&mut self, target: u32) -> Result<u32, Error> {
        let want = round_up(target - self.cfg.memory_mib).min(self.plugged.sizing.virtio_mem_mib);
        let want_bytes = u64::from(want) << 20;
        let path = format!("/machine/peripheral/{VIRTIO_MEM_ID}");
        let limit = self.cfg.hotplug_timeout;
        let qmp = self.session(MEMORY)?;
        qmp.execute(
            "qom-set",
            Some(json!({ "path": path, "property": "requested-size", "value": want_bytes })),
            limit,
        )
        .await
        .map_err(|e| hotplug_error(VIRTIO_MEM_ID, e))?;
        let deadline = Instant::now() + limit;
        let size = loop {
            let size = qmp
                .execute(
                    "qom-get",
                    Some(json!({ "path": path, "property": "size" })),
                    limit,
                )
                .await
                .map_err(|e| hotplug_error(VIRTIO_MEM_ID, e))?;
            let size = size.as_u64().ok_or_else(|| {
                hotplug_error(VIRTIO_MEM_ID, format!("its size is {size}, not a number"))
            })?;
            if size == want_bytes {
                break size;
            }
            if Instant::now() >= deadline {
                tracing::warn!(vm = %self.cfg.id, requested_mib = want, plugged_mib = size >> 20, ?limit, "the guest did not (un)plug all the virtio-mem memory asked for in time");
                break size;
            }
            tokio::time::sleep(DEVICE_POLL).await;
        };
        self.plugged.virtio_mem_mib = u32::try_from(size >> 20).unwrap_or(u32::MAX);
        Ok(self.memory_now())
    }
}

#[async_trait::async_trait]
impl ResourceHotplug for QemuVm {
    async fn resize_vcpus(&mut self, vcpus: u32) -> Result<u32, Error> {
        self.session(VCPUS)?;
        let (before, max) = (self.vcpus_now(), self.plugged.sizing.max_vcpus);
        let target = vcpus.clamp(self.cfg.vcpus, max);
        if target != vcpus {
            tracing::debug!(vm = %self.cfg.id, asked = vcpus, target, max, boot = self.cfg.vcpus, "vCPU count capped");
        }
        while self.vcpus_now() < target {
            self.add_vcpu().await?;
        }
        if self.vcpus_now() > target && self.accel == Some(Accelerator::Tcg) {
            // QEMU 7.2 under TCG removes the vCPU, then corrupts its heap:
            // it segfaulted in malloc at the next device_add, 2 runs of 2.
            tracing::warn!(vm = %self.cfg.id, now = self.vcpus_now(), target, "vCPUs are not hot-removed under TCG (QEMU crashes after it): they stay");
        } else {
            while self.vcpus_now() > target {
                self.remove_vcpu().await?;
            }
        }
        if self.vcpus_now() != before {
            tracing::info!(vm = %self.cfg.id, before, now = self.vcpus_now(), "vCPUs resized");
        }
        Ok(self.vcpus_now())
    }

    async fn resize_memory(&mut self, memory_mib: u32) -> Result<u32, Error> {
        self.session(MEMORY)?;
        let (before, max) = (self.memory_now(), self.plugged.sizing.max_memory_mib);
        let target = memory_mib.clamp(self.cfg.memory_mib, max);
        if target != memory_mib {
            tracing::debug!(vm = %self.cfg.id, asked = memory_mib, target, max, boot = self.cfg.memory_mib, "memory capped");
        }
        let now = if self.plugged.sizing.virtio_mem_mib > 0 {
            self.resize_virtio_mem(target).await?
        } else {
            self.grow_dimms(target).await?
        };
        if now != before {
            tracing::info!(vm = %self.cfg.id, before_mib = before, now_mib = now, "memory resized");
        }
        Ok(now)
    }

    fn current(&self) -> VmResources {
        let sizing = self.plugged.sizing;
        VmResources {
            vcpus: self.vcpus_now(),
            memory_mib: self.memory_now(),
            max_vcpus: sizing.max_vcpus.max(self.cfg.vcpus),
            max_memory_mib: sizing.max_memory_mib.max(self.cfg.memory_mib),
            virtio_mem: sizing.virtio_mem_mib > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::cmdline::tests::cfg;
    use crate::qemu::qemu_mut;

    #[test]
    fn sizing_resolves_zero_caps_and_aligns() {
        let mut c = cfg();
        c.vcpus = 1;
        c.memory_mib = 512;
        c.max_vcpus = 0;
        c.max_memory_mib = 0;
        let s = Sizing::resolve(&c, 2, 24_000);
        assert_eq!(s.max_vcpus, 2, "0: the host's CPUs");
        assert_eq!(
            s.max_memory_mib,
            512 + 23_424,
            "0: the host's memory, whole blocks"
        );
        assert_eq!(s.slots, 10);
        assert_eq!(s.virtio_mem_mib, 0);

        c.max_vcpus = 1000;
        assert_eq!(Sizing::resolve(&c, 2, 24_000).max_vcpus, MAX_Q35_VCPUS);
        c.vcpus = 4;
        c.max_vcpus = 2;
        assert_eq!(
            Sizing::resolve(&c, 2, 24_000).max_vcpus,
            4,
            "never below boot"
        );

        c.max_memory_mib = 1000;
        let s = Sizing::resolve(&c, 2, 24_000);
        assert_eq!((s.max_memory_mib, s.slots), (896, 10), "3 whole blocks");
        c.max_memory_mib = 600;
        let s = Sizing::resolve(&c, 2, 24_000);
        assert_eq!((s.max_memory_mib, s.slots), (512, 0), "less than a block");
        c.max_memory_mib = 2048;
        qemu_mut(&mut c).memory_slots = 0;
        assert_eq!(
            Sizing::resolve(&c, 2, 24_000).max_memory_mib,
            512,
            "no slot"
        );
        qemu_mut(&mut c).enable_virtio_mem = true;
        let s = Sizing::resolve(&c, 2, 24_000);
        assert_eq!(
            (s.max_memory_mib, s.slots, s.virtio_mem_mib),
            (2048, 0, 1536)
        );

        let q = qemu_mut(&mut c);
        q.machine_type = capsa_config::MachineType::Microvm;
        assert_eq!(Sizing::resolve(&c, 2, 24_000), Sizing::fixed(&c));
    }

    #[test]
    fn the_first_free_cpu_slot() {
        let answer = json!([
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 3}, "vcpus-count": 1, "type": "max-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 2}, "vcpus-count": 1, "type": "max-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 1}, "vcpus-count": 1, "type": "max-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1,
             "qom-path": "/machine/unattached/device[0]", "type": "max-x86_64-cpu"}
        ]);
        let (driver, props) = free_cpu_slot(&answer).unwrap();
        assert_eq!(driver, "max-x86_64-cpu");
        assert_eq!(props["socket-id"], 1);
        assert_eq!(free_cpu_slot(&json!([answer[3]])), None, "all plugged");
        assert_eq!(free_cpu_slot(&json!({"not": "a list"})), None);
    }

    #[test]
    fn blocks_round() {
        assert_eq!((round_up(1), round_up(128), round_up(129)), (128, 128, 256));
        assert_eq!((round_down(127), round_down(256)), (0, 256));
    }
}
