#!/bin/bash
# Writes the seed corpora of the targets that take encoded messages
# (fuzz/corpus/<target>/): requests, specs and replies in protobuf text
# format, encoded by protoc against capsa's .proto files, after the
# selector byte the target reads first. Run again when the protocol
# changes: fuzz/seeds.sh
set -euo pipefail
cd "$(dirname "$0")"
PROTOS=../crates/protocols/protos

# seed TARGET NAME SELECTOR TYPE: text format on stdin.
seed() {
  mkdir -p "corpus/$1"
  { printf "\\x$(printf %02x "$3")"; protoc -I "$PROTOS" --encode="$4" agent.proto health.proto; } > "corpus/$1/$2"
}
# raw TARGET NAME SELECTOR: bytes on stdin.
raw() {
  mkdir -p "corpus/$1"
  { printf "\\x$(printf %02x "$3")"; cat; } > "corpus/$1/$2"
}
# The index of an AgentService method, as agent_reply and agent_ctl_request
# pick it (the service's declaration order).
method() {
  grep -o 'rpc [A-Za-z]*' "$PROTOS/agent.proto" | awk '{print $2}' | grep -nx "$1" | cut -d: -f1 | awk '{print $1 - 1}'
}

SPEC='Version: "1.0.2"
Process {
  User { UID: 1000 GID: 1000 AdditionalGids: 10 }
  Args: "sh" Args: "-c" Args: "echo hi"
  Env: "PATH=/usr/bin:/bin"
  Cwd: "/"
  Capabilities { Bounding: "CAP_CHOWN" Effective: "CAP_CHOWN" Permitted: "CAP_CHOWN" }
  Rlimits { Type: "RLIMIT_NOFILE" Hard: 1024 Soft: 1024 }
  NoNewPrivileges: true
  ApparmorProfile: "docker-default"
}
Root { Path: "/run/kata-containers/shared/containers/c1/rootfs" }
Hostname: "c1"
Mounts { destination: "/proc" source: "proc" type: "proc" }
Mounts { destination: "/data" source: "/run/kata-containers/shared/containers/c1-data" type: "bind" options: "rbind" options: "ro" }
Mounts { destination: "/etc/x" source: "/run/kata-containers/shared/containers/../../../etc" type: "bind" }
Hooks { Prestart { Path: "/usr/bin/hook" } }
Annotations { key: "io.kubernetes.cri.container-type" value: "container" }
Linux {
  UIDMappings { HostID: 100000 ContainerID: 0 Size: 65536 }
  Sysctl { key: "net.ipv4.ip_forward" value: "1" }
  Sysctl { key: "kernel.msgmax" value: "8192" }
  Resources {
    Devices { Allow: false Access: "rwm" }
    Memory { Limit: 268435456 }
    CPU { Quota: 150000 Period: 100000 Cpus: "0-1" }
    Pids { Limit: 100 }
  }
  CgroupsPath: "/kubepods/pod1/c1"
  Namespaces { Type: "pid" } Namespaces { Type: "mount" } Namespaces { Type: "network" Path: "/proc/1/ns/net" }
  Seccomp { DefaultAction: "SCMP_ACT_ALLOW" Architectures: "SCMP_ARCH_X86_64"
            Syscalls { Names: "mount" Action: "SCMP_ACT_ERRNO" errnoret: 1 } }
  MaskedPaths: "/proc/kcore"
  ReadonlyPaths: "/proc/sys"
}'

# agent_request: 0 CreateContainer, 1 ExecProcess, 2 CopyFile,
# 3 CreateSandbox, 4 UpdateContainer, 5 SignalProcess,
# 6 SetGuestDateTime/ReseedRandomDev, 7 a sysctl key.
seed agent_request create-container 0 grpc.CreateContainerRequest <<EOT
container_id: "c1" exec_id: "c1"
storages { driver: "local" options: "mode=0750" mount_point: "/run/kata-containers/sandbox/local/c1" }
storages { driver: "ephemeral" options: "size=64m" options: "nodev" mount_point: "/run/kata-containers/sandbox/ephemeral/shm" }
OCI { $SPEC }
EOT
seed agent_request create-container-block 0 grpc.CreateContainerRequest <<EOT
container_id: "c2" exec_id: "c2"
storages { driver: "blk" source: "02/00" fstype: "ext4" mount_point: "/run/kata-containers/c2/rootfs" }
storages { driver: "scsi" source: "0:1" fstype: "ext4" options: "ro" mount_point: "/run/kata-containers/sandbox/storage/vol0" }
devices { type: "blk" id: "03/00" container_path: "/dev/xvdb" }
devices { type: "scsi" id: "0:2" container_path: "/dev/xvdc" vm_path: "/dev/sdc" }
OCI {
  Version: "1.0.2"
  Process { User { UID: 0 } Args: "sh" }
  Root { Path: "/run/kata-containers/c2/rootfs" }
  Mounts { destination: "/data" source: "/run/kata-containers/sandbox/storage/vol0" type: "bind" options: "rbind" }
  Linux {
    Devices { Path: "/dev/xvdb" Type: "b" Major: 7 Minor: 3 }
    Devices { Path: "/dev/xvdc" Type: "b" Major: 8 Minor: 32 }
    Resources {
      Devices { Allow: false Access: "rwm" }
      Devices { Allow: true Type: "b" Major: 7 Minor: 3 Access: "rwm" }
    }
  }
}
EOT
seed agent_request exec-process 1 grpc.ExecProcessRequest <<EOT
container_id: "c1" exec_id: "e1"
process { Terminal: true ConsoleSize { Height: 24 Width: 80 } User { UID: 0 } Args: "sh" Cwd: "/" }
EOT
seed agent_request copy-file 2 grpc.CopyFileRequest <<EOT
path: "/run/kata-containers/shared/containers/c1-resolv.conf"
file_size: 20 file_mode: 33188 dir_mode: 493 uid: 0 gid: 0 offset: 0
data: "nameserver 10.0.2.3\n"
EOT
seed agent_request copy-file-symlink 2 grpc.CopyFileRequest <<EOT
path: "/run/kata-containers/shared/containers/link" file_mode: 41471 data: "../../../etc/passwd"
EOT
seed agent_request create-sandbox 3 grpc.CreateSandboxRequest <<EOT
hostname: "pod1" sandbox_id: "pod1" sandbox_pidns: true
storages { driver: "virtio-fs" source: "kataShared" fstype: "virtiofs" options: "nodev" mount_point: "/run/kata-containers/shared/containers" }
kernel_modules { name: "overlay" parameters: "redirect_dir=on" }
EOT
seed agent_request update-container 4 grpc.UpdateContainerRequest <<EOT
container_id: "c1" resources { Memory { Limit: 536870912 Swap: -1 } CPU { Shares: 1024 Quota: -1 } }
EOT
seed agent_request signal-process 5 grpc.SignalProcessRequest <<EOT
container_id: "c1" exec_id: "e1" signal: 15
EOT
seed agent_request set-guest-date-time 6 grpc.SetGuestDateTimeRequest <<EOT
Sec: 1700000000 Usec: 5
EOT
printf 'net.ipv4.ip_forward' | raw agent_request sysctl 7

# oci_convert: even, a protocol oci.Spec; odd, a config.json.
seed oci_convert wire-spec 0 grpc.Spec <<< "$SPEC"
CONFIG_JSON='{
  "ociVersion": "1.0.2",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo hi"],
              "env": ["PATH=/usr/bin:/bin"], "cwd": "/",
              "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
              "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": true},
  "root": {"path": "rootfs"},
  "hostname": "c1",
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
             {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}],
  "annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"},
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}],
    "cgroupsPath": "kubepods-besteffort-pod1.slice:cri-containerd:c1",
    "sysctl": {"net.ipv4.ip_forward": "1"},
    "resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 150000, "period": 100000},
                  "devices": [{"allow": false, "access": "rwm"}]},
    "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
  }
}'
SANDBOX_JSON='{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/pause"], "cwd": "/", "user": {"uid": 65535, "gid": 65535}},
  "annotations": {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod1",
                  "io.kubernetes.cri.sandbox-memory": "268435456",
                  "io.kubernetes.cri.sandbox-cpu-quota": "150000", "io.kubernetes.cri.sandbox-cpu-period": "100000"}}'
printf '%s' "$CONFIG_JSON" | raw oci_convert config-json 1
printf '%s' "$SANDBOX_JSON" | raw oci_convert sandbox-config-json 1

# shim_spec: even, a config.json; odd, annotations and limits (arbitrary).
printf '%s' "$CONFIG_JSON" | raw shim_spec container-config-json 0
printf '%s' "$SANDBOX_JSON" | raw shim_spec sandbox-config-json 0

# agent_reply: the selector is the method.
seed agent_reply wait-process "$(method WaitProcess)" grpc.WaitProcessResponse <<< 'status: 137'
seed agent_reply read-stdout "$(method ReadStdout)" grpc.ReadStreamResponse <<< 'data: "hello\n"'
seed agent_reply list-processes "$(method ListProcesses)" grpc.ListProcessesResponse <<< 'process_list: "[1,7]"'
seed agent_reply guest-details "$(method GetGuestDetails)" grpc.GuestDetailsResponse <<< \
  'mem_block_size_bytes: 134217728 agent_details { version: "0.1.0" init_daemon: true storage_handlers: "virtio-fs" }'
seed agent_reply stats "$(method StatsContainer)" grpc.StatsContainerResponse <<< \
  'cgroup_stats { memory_stats { usage { usage: 1048576 limit: 268435456 } } pids_stats { current: 3 } }'
seed agent_reply version 0 grpc.VersionCheckResponse <<< 'grpc_version: "0.0.1" agent_version: "0.1.0"'

# agent_ctl_request: the selector is the method, the rest JSON.
ctl() { printf '%s' "$3" | raw agent_ctl_request "$1" "$(method "$2")"; }
ctl signal-process SignalProcess '{"container_id": "c1", "exec_id": "c1", "signal": 9}'
ctl copy-file CopyFile '{"path": "/run/kata-containers/x", "fileSize": "3", "data": "YWJj"}'
ctl guest-details GetGuestDetails '{"mem_block_size": true}'
ctl create-sandbox CreateSandbox '{"hostname": "h", "storages": [{"driver": "virtio-fs", "source": "kataShared", "mount_point": "/run/kata-containers/shared/containers"}]}'
ctl update-container UpdateContainer '{"container_id": "c1", "resources": {"Memory": {"Limit": "268435456"}}}'
