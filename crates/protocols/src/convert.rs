//! Conversions between the OCI runtime spec (`oci_spec::runtime::Spec`, the
//! JSON form every runtime knows) and the agent API's `oci::Spec`.
//!
//! Enumerations (capabilities, rlimit types, seccomp actions, ...) travel as
//! the strings of the OCI JSON form; they are converted through serde so the
//! two forms cannot drift apart.

use std::path::PathBuf;

use oci_spec::runtime as o;
use protobuf::MessageField;
use serde::{de::DeserializeOwned, Serialize};

use crate::oci as g;

/// A field of a grpc spec that has no OCI meaning.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("invalid {field}: {value:?}")]
    Value { field: &'static str, value: String },
}

fn enum_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn enum_parse<T: DeserializeOwned>(field: &'static str, s: &str) -> Result<T, ConvertError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        ConvertError::Value {
            field,
            value: s.to_string(),
        }
    })
}

fn invalid(field: &'static str, e: impl std::fmt::Display) -> ConvertError {
    ConvertError::Value {
        field,
        value: e.to_string(),
    }
}

fn opt_vec<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn opt_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------- to grpc

/// The agent API form of an OCI spec.
pub fn spec_to_grpc(spec: &o::Spec) -> g::Spec {
    g::Spec {
        Version: spec.version().clone(),
        Process: spec.process().as_ref().map(process_to_grpc).into(),
        Root: spec
            .root()
            .as_ref()
            .map(|r| g::Root {
                Path: path_str(r.path()),
                Readonly: r.readonly().unwrap_or(false),
                ..Default::default()
            })
            .into(),
        Hostname: spec.hostname().clone().unwrap_or_default(),
        Mounts: spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| g::Mount {
                destination: path_str(m.destination()),
                source: m.source().as_deref().map(path_str).unwrap_or_default(),
                type_: m.typ().clone().unwrap_or_default(),
                options: m.options().clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        Hooks: spec.hooks().as_ref().map(hooks_to_grpc).into(),
        Annotations: spec.annotations().clone().unwrap_or_default(),
        Linux: spec.linux().as_ref().map(linux_to_grpc).into(),
        ..Default::default()
    }
}

/// The agent API form of the OCI hooks, every kind of them.
pub fn hooks_to_grpc(h: &o::Hooks) -> g::Hooks {
    let list = |hooks: &Option<Vec<o::Hook>>| -> Vec<g::Hook> {
        hooks
            .iter()
            .flatten()
            .map(|k| g::Hook {
                Path: path_str(k.path()),
                Args: k.args().clone().unwrap_or_default(),
                Env: k.env().clone().unwrap_or_default(),
                Timeout: k.timeout().unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    };
    #[allow(deprecated)] // prestart: deprecated by OCI, still sent by runtimes
    let prestart = list(h.prestart());
    g::Hooks {
        Prestart: prestart,
        Poststart: list(h.poststart()),
        Poststop: list(h.poststop()),
        CreateRuntime: list(h.create_runtime()),
        CreateContainer: list(h.create_container()),
        StartContainer: list(h.start_container()),
        ..Default::default()
    }
}

/// The agent API form of an OCI process (also used by ExecProcess).
pub fn process_to_grpc(p: &o::Process) -> g::Process {
    let u = p.user();
    g::Process {
        Terminal: p.terminal().unwrap_or(false),
        ConsoleSize: p
            .console_size()
            .map(|b| g::Box {
                Height: b.height() as u32,
                Width: b.width() as u32,
                ..Default::default()
            })
            .into(),
        User: MessageField::some(g::User {
            UID: u.uid(),
            GID: u.gid(),
            AdditionalGids: u.additional_gids().clone().unwrap_or_default(),
            Username: u.username().clone().unwrap_or_default(),
            Umask: u.umask(),
            ..Default::default()
        }),
        Args: p.args().clone().unwrap_or_default(),
        Env: p.env().clone().unwrap_or_default(),
        Cwd: path_str(p.cwd()),
        Capabilities: p
            .capabilities()
            .as_ref()
            .map(|c| {
                let set = |s: &Option<o::Capabilities>| -> Vec<String> {
                    let mut v: Vec<String> = s.iter().flatten().map(enum_str).collect();
                    v.sort();
                    v
                };
                g::LinuxCapabilities {
                    Bounding: set(c.bounding()),
                    Effective: set(c.effective()),
                    Inheritable: set(c.inheritable()),
                    Permitted: set(c.permitted()),
                    Ambient: set(c.ambient()),
                    ..Default::default()
                }
            })
            .into(),
        Rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| g::POSIXRlimit {
                Type: enum_str(&r.typ()),
                Hard: r.hard(),
                Soft: r.soft(),
                ..Default::default()
            })
            .collect(),
        NoNewPrivileges: p.no_new_privileges().unwrap_or(false),
        ApparmorProfile: p.apparmor_profile().clone().unwrap_or_default(),
        OOMScoreAdj: p.oom_score_adj().map(i64::from).unwrap_or_default(),
        SelinuxLabel: p.selinux_label().clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn linux_to_grpc(l: &o::Linux) -> g::Linux {
    let ids = |m: &Option<Vec<o::LinuxIdMapping>>| -> Vec<g::LinuxIDMapping> {
        m.iter()
            .flatten()
            .map(|m| g::LinuxIDMapping {
                HostID: m.host_id(),
                ContainerID: m.container_id(),
                Size: m.size(),
                ..Default::default()
            })
            .collect()
    };
    g::Linux {
        UIDMappings: ids(l.uid_mappings()),
        GIDMappings: ids(l.gid_mappings()),
        Sysctl: l.sysctl().clone().unwrap_or_default(),
        Resources: l.resources().as_ref().map(resources_to_grpc).into(),
        CgroupsPath: l
            .cgroups_path()
            .as_deref()
            .map(path_str)
            .unwrap_or_default(),
        Namespaces: l
            .namespaces()
            .iter()
            .flatten()
            .map(|n| g::LinuxNamespace {
                Type: enum_str(&n.typ()),
                Path: n.path().as_deref().map(path_str).unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        Devices: l
            .devices()
            .iter()
            .flatten()
            .map(|d| g::LinuxDevice {
                Path: path_str(d.path()),
                Type: enum_str(&d.typ()),
                Major: d.major(),
                Minor: d.minor(),
                FileMode: d.file_mode().unwrap_or_default(),
                UID: d.uid().unwrap_or_default(),
                GID: d.gid().unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        Seccomp: l.seccomp().as_ref().map(seccomp_to_grpc).into(),
        RootfsPropagation: l.rootfs_propagation().clone().unwrap_or_default(),
        MaskedPaths: l.masked_paths().clone().unwrap_or_default(),
        ReadonlyPaths: l.readonly_paths().clone().unwrap_or_default(),
        MountLabel: l.mount_label().clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// The agent API form of cgroup resources (also used by UpdateContainer).
pub fn resources_to_grpc(r: &o::LinuxResources) -> g::LinuxResources {
    g::LinuxResources {
        Devices: r
            .devices()
            .iter()
            .flatten()
            .map(|d| g::LinuxDeviceCgroup {
                Allow: d.allow(),
                Type: d.typ().map(|t| enum_str(&t)).unwrap_or_default(),
                Major: d.major().unwrap_or(-1),
                Minor: d.minor().unwrap_or(-1),
                Access: d.access().clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        Memory: r
            .memory()
            .as_ref()
            .map(|m| g::LinuxMemory {
                Limit: m.limit().unwrap_or_default(),
                Reservation: m.reservation().unwrap_or_default(),
                Swap: m.swap().unwrap_or_default(),
                Kernel: m.kernel().unwrap_or_default(),
                KernelTCP: m.kernel_tcp().unwrap_or_default(),
                Swappiness: m.swappiness().unwrap_or_default(),
                DisableOOMKiller: m.disable_oom_killer().unwrap_or(false),
                ..Default::default()
            })
            .into(),
        CPU: r
            .cpu()
            .as_ref()
            .map(|c| g::LinuxCPU {
                Shares: c.shares().unwrap_or_default(),
                Quota: c.quota().unwrap_or_default(),
                Period: c.period().unwrap_or_default(),
                RealtimeRuntime: c.realtime_runtime().unwrap_or_default(),
                RealtimePeriod: c.realtime_period().unwrap_or_default(),
                Cpus: c.cpus().clone().unwrap_or_default(),
                Mems: c.mems().clone().unwrap_or_default(),
                ..Default::default()
            })
            .into(),
        Pids: r
            .pids()
            .as_ref()
            .map(|p| g::LinuxPids {
                Limit: p.limit(),
                ..Default::default()
            })
            .into(),
        ..Default::default()
    }
}

fn seccomp_to_grpc(s: &o::LinuxSeccomp) -> g::LinuxSeccomp {
    g::LinuxSeccomp {
        DefaultAction: enum_str(&s.default_action()),
        Architectures: s.architectures().iter().flatten().map(enum_str).collect(),
        Flags: s.flags().iter().flatten().map(enum_str).collect(),
        Syscalls: s
            .syscalls()
            .iter()
            .flatten()
            .map(|c| g::LinuxSyscall {
                Names: c.names().clone(),
                Action: enum_str(&c.action()),
                ErrnoRet: c.errno_ret().map(g::linux_syscall::ErrnoRet::Errnoret),
                Args: c
                    .args()
                    .iter()
                    .flatten()
                    .map(|a| g::LinuxSeccompArg {
                        Index: a.index() as u64,
                        Value: a.value(),
                        ValueTwo: a.value_two().unwrap_or_default(),
                        Op: enum_str(&a.op()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

// -------------------------------------------------------------- from grpc

/// The OCI form of an agent API spec, as the guest writes it to
/// `config.json`.
pub fn spec_from_grpc(spec: &g::Spec) -> Result<o::Spec, ConvertError> {
    let mut out = o::Spec::default();
    out.set_version(spec.Version.clone());
    out.set_process(spec.Process.as_ref().map(process_from_grpc).transpose()?);
    out.set_root(spec.Root.as_ref().map(|r| {
        let mut root = o::Root::default();
        root.set_path(PathBuf::from(&r.Path));
        root.set_readonly(Some(r.Readonly));
        root
    }));
    out.set_hostname(opt_str(&spec.Hostname));
    out.set_mounts(Some(
        spec.Mounts
            .iter()
            .map(|m| {
                let mut mount = o::Mount::default();
                mount.set_destination(PathBuf::from(&m.destination));
                mount.set_source(opt_str(&m.source).map(PathBuf::from));
                mount.set_typ(opt_str(&m.type_));
                mount.set_options(opt_vec(&m.options));
                mount
            })
            .collect(),
    ));
    out.set_hooks(spec.Hooks.as_ref().map(hooks_from_grpc).transpose()?);
    out.set_annotations(Some(spec.Annotations.clone()));
    out.set_linux(spec.Linux.as_ref().map(linux_from_grpc).transpose()?);
    Ok(out)
}

/// The OCI form of agent API hooks. An empty list becomes an absent one
/// (protobuf cannot tell them apart; OCI runtimes treat both alike).
pub fn hooks_from_grpc(h: &g::Hooks) -> Result<o::Hooks, ConvertError> {
    let list = |hooks: &[g::Hook]| -> Result<Option<Vec<o::Hook>>, ConvertError> {
        opt_vec(hooks)
            .map(|hooks| {
                hooks
                    .iter()
                    .map(|k| {
                        // OCI: a timeout, when set, is greater than zero.
                        let timeout = match k.Timeout {
                            0 => None,
                            t if t > 0 => Some(t),
                            t => {
                                return Err(ConvertError::Value {
                                    field: "hook timeout",
                                    value: t.to_string(),
                                })
                            }
                        };
                        let mut hook = o::Hook::default();
                        hook.set_path(PathBuf::from(&k.Path));
                        hook.set_args(opt_vec(&k.Args));
                        hook.set_env(opt_vec(&k.Env));
                        hook.set_timeout(timeout);
                        Ok(hook)
                    })
                    .collect()
            })
            .transpose()
    };
    let mut out = o::Hooks::default();
    #[allow(deprecated)] // prestart: deprecated by OCI, still sent by runtimes
    out.set_prestart(list(&h.Prestart)?);
    out.set_poststart(list(&h.Poststart)?);
    out.set_poststop(list(&h.Poststop)?);
    out.set_create_runtime(list(&h.CreateRuntime)?);
    out.set_create_container(list(&h.CreateContainer)?);
    out.set_start_container(list(&h.StartContainer)?);
    Ok(out)
}

/// The OCI form of an agent API process.
pub fn process_from_grpc(p: &g::Process) -> Result<o::Process, ConvertError> {
    let mut out = o::Process::default();
    out.set_terminal(Some(p.Terminal));
    out.set_console_size(
        p.ConsoleSize
            .as_ref()
            .map(|b| {
                o::BoxBuilder::default()
                    .height(u64::from(b.Height))
                    .width(u64::from(b.Width))
                    .build()
            })
            .transpose()
            .map_err(|e| invalid("console size", e))?,
    );
    let mut user = o::User::default();
    if let Some(u) = p.User.as_ref() {
        user.set_uid(u.UID);
        user.set_gid(u.GID);
        user.set_additional_gids(opt_vec(&u.AdditionalGids));
        user.set_username(opt_str(&u.Username));
        user.set_umask(u.Umask);
    }
    out.set_user(user);
    out.set_args(opt_vec(&p.Args));
    out.set_env(opt_vec(&p.Env));
    out.set_cwd(PathBuf::from(if p.Cwd.is_empty() { "/" } else { &p.Cwd }));
    out.set_capabilities(match p.Capabilities.as_ref() {
        None => None,
        Some(c) => {
            let set = |v: &[String]| -> Result<Option<o::Capabilities>, ConvertError> {
                // Protobuf cannot tell an empty set from a missing one; OCI
                // runtimes treat both as empty.
                if v.is_empty() {
                    return Ok(None);
                }
                v.iter()
                    .map(|s| enum_parse("capability", s))
                    .collect::<Result<o::Capabilities, _>>()
                    .map(Some)
            };
            let mut caps = o::LinuxCapabilities::default();
            caps.set_bounding(set(&c.Bounding)?);
            caps.set_effective(set(&c.Effective)?);
            caps.set_inheritable(set(&c.Inheritable)?);
            caps.set_permitted(set(&c.Permitted)?);
            caps.set_ambient(set(&c.Ambient)?);
            Some(caps)
        }
    });
    out.set_rlimits(Some(
        p.Rlimits
            .iter()
            .map(|r| {
                o::PosixRlimitBuilder::default()
                    .typ(enum_parse::<o::PosixRlimitType>("rlimit type", &r.Type)?)
                    .hard(r.Hard)
                    .soft(r.Soft)
                    .build()
                    .map_err(|e| invalid("rlimit", e))
            })
            .collect::<Result<Vec<_>, ConvertError>>()?,
    ));
    out.set_no_new_privileges(Some(p.NoNewPrivileges));
    out.set_apparmor_profile(opt_str(&p.ApparmorProfile));
    out.set_oom_score_adj(if p.OOMScoreAdj == 0 {
        None
    } else {
        Some(
            i32::try_from(p.OOMScoreAdj).map_err(|_| ConvertError::Value {
                field: "oom_score_adj",
                value: p.OOMScoreAdj.to_string(),
            })?,
        )
    });
    out.set_selinux_label(opt_str(&p.SelinuxLabel));
    Ok(out)
}

fn linux_from_grpc(l: &g::Linux) -> Result<o::Linux, ConvertError> {
    let ids = |m: &[g::LinuxIDMapping]| -> Result<Option<Vec<o::LinuxIdMapping>>, ConvertError> {
        opt_vec(m)
            .map(|m| {
                m.iter()
                    .map(|m| {
                        o::LinuxIdMappingBuilder::default()
                            .host_id(m.HostID)
                            .container_id(m.ContainerID)
                            .size(m.Size)
                            .build()
                            .map_err(|e| invalid("id mapping", e))
                    })
                    .collect()
            })
            .transpose()
    };
    let mut out = o::Linux::default();
    out.set_uid_mappings(ids(&l.UIDMappings)?);
    out.set_gid_mappings(ids(&l.GIDMappings)?);
    out.set_sysctl((!l.Sysctl.is_empty()).then(|| l.Sysctl.clone()));
    out.set_resources(l.Resources.as_ref().map(resources_from_grpc).transpose()?);
    out.set_cgroups_path(opt_str(&l.CgroupsPath).map(PathBuf::from));
    out.set_namespaces(Some(
        l.Namespaces
            .iter()
            .map(|n| {
                let mut ns = o::LinuxNamespace::default();
                ns.set_typ(enum_parse("namespace type", &n.Type)?);
                ns.set_path(opt_str(&n.Path).map(PathBuf::from));
                Ok(ns)
            })
            .collect::<Result<Vec<_>, ConvertError>>()?,
    ));
    out.set_devices(
        opt_vec(&l.Devices)
            .map(|ds| {
                ds.iter()
                    .map(|d| {
                        let mut dev = o::LinuxDevice::default();
                        dev.set_path(PathBuf::from(&d.Path));
                        dev.set_typ(enum_parse("device type", &d.Type)?);
                        dev.set_major(d.Major);
                        dev.set_minor(d.Minor);
                        dev.set_file_mode(Some(d.FileMode));
                        dev.set_uid(Some(d.UID));
                        dev.set_gid(Some(d.GID));
                        Ok(dev)
                    })
                    .collect::<Result<Vec<_>, ConvertError>>()
            })
            .transpose()?,
    );
    out.set_seccomp(l.Seccomp.as_ref().map(seccomp_from_grpc).transpose()?);
    out.set_rootfs_propagation(opt_str(&l.RootfsPropagation));
    out.set_masked_paths(Some(l.MaskedPaths.clone()));
    out.set_readonly_paths(Some(l.ReadonlyPaths.clone()));
    out.set_mount_label(opt_str(&l.MountLabel));
    Ok(out)
}

/// The OCI form of agent API cgroup resources.
pub fn resources_from_grpc(r: &g::LinuxResources) -> Result<o::LinuxResources, ConvertError> {
    let nonzero_i = |v: i64| (v != 0).then_some(v);
    let nonzero_u = |v: u64| (v != 0).then_some(v);
    let mut out = o::LinuxResources::default();
    out.set_devices(Some(
        r.Devices
            .iter()
            .map(|d| {
                let mut dev = o::LinuxDeviceCgroup::default();
                dev.set_allow(d.Allow);
                dev.set_typ(if d.Type.is_empty() {
                    None
                } else {
                    Some(enum_parse("device cgroup type", &d.Type)?)
                });
                dev.set_major((d.Major >= 0).then_some(d.Major));
                dev.set_minor((d.Minor >= 0).then_some(d.Minor));
                dev.set_access(opt_str(&d.Access));
                Ok(dev)
            })
            .collect::<Result<Vec<_>, ConvertError>>()?,
    ));
    out.set_memory(r.Memory.as_ref().map(|m| {
        let mut mem = o::LinuxMemory::default();
        mem.set_limit(nonzero_i(m.Limit));
        mem.set_reservation(nonzero_i(m.Reservation));
        mem.set_swap(nonzero_i(m.Swap));
        mem.set_kernel(nonzero_i(m.Kernel));
        mem.set_kernel_tcp(nonzero_i(m.KernelTCP));
        mem.set_swappiness(nonzero_u(m.Swappiness));
        mem.set_disable_oom_killer(m.DisableOOMKiller.then_some(true));
        mem
    }));
    out.set_cpu(r.CPU.as_ref().map(|c| {
        let mut cpu = o::LinuxCpu::default();
        cpu.set_shares(nonzero_u(c.Shares));
        cpu.set_quota(nonzero_i(c.Quota));
        cpu.set_period(nonzero_u(c.Period));
        cpu.set_realtime_runtime(nonzero_i(c.RealtimeRuntime));
        cpu.set_realtime_period(nonzero_u(c.RealtimePeriod));
        cpu.set_cpus(opt_str(&c.Cpus));
        cpu.set_mems(opt_str(&c.Mems));
        cpu
    }));
    out.set_pids(r.Pids.as_ref().map(|p| {
        let mut pids = o::LinuxPids::default();
        pids.set_limit(p.Limit);
        pids
    }));
    Ok(out)
}

fn seccomp_from_grpc(s: &g::LinuxSeccomp) -> Result<o::LinuxSeccomp, ConvertError> {
    let mut out = o::LinuxSeccomp::default();
    out.set_default_action(enum_parse("seccomp default action", &s.DefaultAction)?);
    out.set_architectures(Some(
        s.Architectures
            .iter()
            .map(|a| enum_parse("seccomp architecture", a))
            .collect::<Result<Vec<_>, _>>()?,
    ));
    out.set_flags(
        opt_vec(&s.Flags)
            .map(|flags| {
                flags
                    .iter()
                    .map(|f| enum_parse("seccomp flag", f))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
    );
    out.set_syscalls(Some(
        s.Syscalls
            .iter()
            .map(|c| {
                let mut call = o::LinuxSyscall::default();
                call.set_names(c.Names.clone());
                call.set_action(enum_parse("seccomp action", &c.Action)?);
                call.set_errno_ret(match c.ErrnoRet {
                    Some(g::linux_syscall::ErrnoRet::Errnoret(e)) => Some(e),
                    None => None,
                });
                call.set_args(
                    opt_vec(&c.Args)
                        .map(|args| {
                            args.iter()
                                .map(|a| {
                                    let mut arg = o::LinuxSeccompArgBuilder::default()
                                        .index(a.Index as usize)
                                        .value(a.Value)
                                        .op(enum_parse::<o::LinuxSeccompOperator>(
                                            "seccomp operator",
                                            &a.Op,
                                        )?);
                                    if a.ValueTwo != 0 {
                                        arg = arg.value_two(a.ValueTwo);
                                    }
                                    arg.build().map_err(|e| invalid("seccomp argument", e))
                                })
                                .collect::<Result<Vec<_>, ConvertError>>()
                        })
                        .transpose()?,
                );
                Ok(call)
            })
            .collect::<Result<Vec<_>, ConvertError>>()?,
    ));
    Ok(out)
}
