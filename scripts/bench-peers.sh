#!/usr/bin/env bash
# capsa against its peers, side by side in one run (issue 23): runc,
# gVisor (Debian's `runsc`, ptrace platform), capsa on QEMU (the default
# configuration: KVM where usable, else TCG) and capsa on User-Mode Linux
# (configuration-uml.toml). For each, on the same busybox root filesystem:
#
#   true       `true` end to end (create, start, wait, delete), RUNS times,
#              alternating runtimes, the median;
#   pss        the proportional set size of an idle sandbox (`sleep`), PAIRS
#              (default 2) at once: every process of them (process trees;
#              processes that share one address space, as UML's kernel
#              threads do, counted once), divided by PAIRS: runc's
#              container, runsc's sandbox and gofer, capsa's VM (kernel or
#              QEMU, virtiofsd, vhost-device-vsock, the guest's processes);
#   pss+owner  capsa's the same with the process that manages the sandbox
#              (`capsa run -d`'s owner, a shim's counterpart);
#   cpu        a shell loop (pure computation), timed inside the container;
#   fork       300 fork+exec of a shell, timed inside;
#   syscalls   300,000 one-byte reads and writes (`dd bs=1`), timed inside;
#   read       reading a 128 MiB file of the root filesystem (virtio-fs for
#              capsa, the gofer for gVisor, the host's file system for runc),
#              timed inside.
#
# The loops also run on the host, the reference of `cpu`. Prints every
# sample and a table of medians with ratios to runc and to gVisor.
#
#   scripts/bench-peers.sh ROOTFS
#
# RUNS (default 5), UML_CONFIG, QEMU_CONFIG (default: capsa's own search),
# ONLY="runc runsc uml qemu" to pick runtimes.
set -euo pipefail
src=${1:?usage: bench-peers.sh ROOTFS}
runs=${RUNS:-5}
uml_config=${UML_CONFIG:-/usr/share/defaults/capsa/configuration-uml.toml}
qemu_config=${QEMU_CONFIG:-}
only=${ONLY:-runc runsc uml qemu}
work=$(mktemp -d /tmp/capsa-peers.XXXXXX)
chmod 0755 "$work"
declare -a live=()
cleanup() {
  for entry in "${live[@]}"; do stop_idle "${entry%%:*}" "${entry#*:}" > /dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for rt in $only; do
  case $rt in
    runc) command -v runc > /dev/null || { echo "runc is not installed" >&2; exit 2; } ;;
    runsc) command -v runsc > /dev/null || { echo "runsc is not installed (apt-get install runsc)" >&2; exit 2; } ;;
    uml) [ -f "$uml_config" ] || { echo "no UML configuration $uml_config" >&2; exit 2; } ;;
    qemu) ;;
    *) echo "unknown runtime $rt (runc, runsc, uml, qemu)" >&2; exit 2 ;;
  esac
done

# The root filesystem: a copy, with the file `read` reads.
cp -a "$src" "$work/rootfs"
head -c $((128 << 20)) /dev/urandom > "$work/rootfs/bench.bin"
# The OCI bundle of runc and runsc (its config.json is rewritten per command).
mkdir -p "$work/bundle"
(cd "$work/bundle" && runc spec)
spec() {
  jq --arg root "$work/rootfs" --argjson args "$(printf '%s\n' "$@" | jq -R . | jq -s .)" \
    '.root.path = $root | .root.readonly = false | .process.terminal = false | .process.args = $args' \
    "$work/bundle/config.json" > "$work/bundle/config.json.new"
  mv "$work/bundle/config.json.new" "$work/bundle/config.json"
}
capsa_config() {
  case $1 in
    uml) echo --config "$uml_config" ;;
    qemu) [ -z "$qemu_config" ] || echo --config "$qemu_config" ;;
  esac
}
n=0
# Runs "$@" in a new container of runtime $1, to the end; its output on
# stdout and stderr.
run_in() {
  local rt=$1 id="peers-$$-$((n++))"
  shift
  case $rt in
    runc) spec "$@"; runc --root "$work/runc" run --bundle "$work/bundle" "$id" < /dev/null ;;
    runsc) spec "$@"; runsc --root "$work/runsc" --platform=ptrace --network=none run --bundle "$work/bundle" "$id" < /dev/null ;;
    uml | qemu) capsa $(capsa_config "$rt") run --rootfs "$work/rootfs" -- "$@" < /dev/null ;;
  esac
}
# Idle sandbox number $2 of $1 (`sleep`), its id on stdout.
start_idle() {
  local rt=$1 id="idle-$$-$1-$2"
  case $rt in
    runc) spec sleep 100000; runc --root "$work/runc" run -d --bundle "$work/bundle" "$id" < /dev/null > /dev/null 2>&1 ;;
    # A bundle of its own: its path names the sandbox's processes.
    runsc)
      spec sleep 100000
      mkdir -p "$work/bundle-$2"
      cp "$work/bundle/config.json" "$work/bundle-$2/"
      runsc --root "$work/runsc" --platform=ptrace --network=none run -detach --bundle "$work/bundle-$2" "$id" < /dev/null > /dev/null ;;
    uml | qemu) capsa $(capsa_config "$rt") run -d --name "$id" --rootfs "$work/rootfs" -- sleep 100000 > /dev/null ;;
  esac
  echo "$id"
}
stop_idle() {
  case $1 in
    runc) runc --root "$work/runc" delete -f "$2" ;;
    runsc) runsc --root "$work/runsc" delete -force "$2" ;;
    uml | qemu) capsa $(capsa_config "$1") rm -f "$2" ;;
  esac
}
# The processes an idle sandbox $2 of $1 is made of (roots of trees).
roots_of() {
  case $1 in
    runc) runc --root "$work/runc" state "$2" | jq -r .pid ;;
    # The sandbox and the gofer; both name the bundle.
    runsc) pgrep -f -- "--bundle[= ]$work/bundle-${2##*-}( |$)" ;;
    # The VM's processes (as runsc's sandbox and gofer, runc's container:
    # not the process that manages it, which `owner_of` gives).
    uml | qemu) capsa $(capsa_config "$1") inspect "$2" | jq -r '.hypervisor_pid, (.processes // [])[].pid' ;;
  esac
}
# capsa's owner of sandbox $2 (the shim's counterpart of `capsa run -d`).
owner_of() { capsa $(capsa_config "$1") inspect "$2" | jq -r .owner_pid; }
children() { awk -v p="$1" '$4 == p {print $1}' /proc/[0-9]*/stat 2> /dev/null || true; }
# PSS in KiB of the process trees rooted at the given pids, each address
# space once.
pss_tree() {
  local -A seen=() spaces=()
  local todo=("$@") total=0 p key
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    [ -n "$p" ] && [ -z "${seen[$p]:-}" ] && [ -r "/proc/$p/smaps_rollup" ] || continue
    seen[$p]=1
    key=$(md5sum < "/proc/$p/maps" | cut -d' ' -f1)
    if [ -z "${spaces[$key]:-}" ]; then
      spaces[$key]=1
      total=$(( total + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup") ))
    fi
    mapfile -t -O "${#todo[@]}" todo < <(children "$p")
  done
  echo "$total"
}
now_ms() { date +%s%3N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# busybox `time`'s "real" line in ms.
real_ms() { awk '/^real/ {sub(/s$/, "", $3); print int(($2 + 0) * 60000 + $3 * 1000)}'; }

cpu_loop='i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done'
fork_loop='i=0; while [ $i -lt 300 ]; do /bin/sh -c :; i=$((i+1)); done'
syscall_loop='dd if=/dev/zero of=/dev/null bs=1 count=300000 2>/dev/null'
read_file='cat /bench.bin > /dev/null'
declare -A sample=()
add() { sample[$1]="${sample[$1]:-} $2"; }
# Inside container $1: `time sh -c "$2"`, in ms.
timed_inside() {
  local out
  out=$(run_in "$1" /bin/busybox time /bin/sh -c "$2" 2>&1 > /dev/null) || { echo "$1: $2 failed: $out" >&2; echo -1; return; }
  real_ms <<< "$out"
}
# On the host, busybox's shell with the host's /dev and /bin/sh.
timed_host() { /bin/busybox time /bin/busybox sh -c "$1" 2>&1 > /dev/null | real_ms; }

for r in $(seq "$runs"); do
  line="run $r:"
  for rt in $only; do
    s=$(now_ms)
    run_in "$rt" true > /dev/null 2>&1 || echo "$rt: true failed" >&2
    add "true/$rt" $(( $(now_ms) - s ))
    line+=" $rt ${sample[true/$rt]##* } ms;"
  done
  echo "$line"
done
for kind in cpu fork syscalls read; do
  case $kind in
    cpu) loop=$cpu_loop ;; fork) loop=$fork_loop ;; syscalls) loop=$syscall_loop ;; read) loop=$read_file ;;
  esac
  for r in $(seq "$runs"); do
    [ "$kind" = read ] || add "$kind/host" "$(timed_host "$loop")"
    for rt in $only; do add "$kind/$rt" "$(timed_inside "$rt" "$loop")"; done
  done
  echo "$kind (ms): $(for k in host $only; do [ -n "${sample[$kind/$k]:-}" ] && printf '%s:%s; ' "$k" "${sample[$kind/$k]}"; done)"
done
# PAIRS idle sandboxes of each runtime at once: what they hold once
# started (nothing runs in them), per sandbox; what they share (binaries,
# a kernel image) is divided among them, as on a host running many.
pairs=${PAIRS:-2}
for rt in $only; do
  ids=() roots=()
  for p in $(seq "$pairs"); do
    ids+=("$(start_idle "$rt" "$p")")
    live+=("$rt:${ids[-1]}")
  done
  for id in "${ids[@]}"; do mapfile -t -O "${#roots[@]}" roots < <(roots_of "$rt" "$id"); done
  per_sandbox() { awk -v k="$(pss_tree "$@")" -v n="$pairs" 'BEGIN {printf "%.1f", k / 1024 / n}'; }
  add "pss/$rt" "$(per_sandbox "${roots[@]}")"
  case $rt in
    uml | qemu)
      for id in "${ids[@]}"; do roots+=("$(owner_of "$rt" "$id")"); done
      add "pss+owner/$rt" "$(per_sandbox "${roots[@]}")" ;;
  esac
  for id in "${ids[@]}"; do stop_idle "$rt" "$id" > /dev/null 2>&1; done
  live=()
done
echo "pss (MiB): $(for k in $only; do printf '%s:%s; ' "$k" "${sample[pss/$k]}"; done)"
echo "pss with capsa's owner process (MiB): $(for k in $only; do [ -n "${sample[pss+owner/$k]:-}" ] && printf '%s:%s; ' "$k" "${sample[pss+owner/$k]}"; done)"

echo
printf '%-9s' ""
for k in host $only; do printf '%12s' "$k"; done
printf '%14s%14s\n' "uml/runsc" "qemu/runsc"
for kind in true pss pss+owner cpu fork syscalls read; do
  printf '%-9s' "$kind"
  declare -A med=()
  for k in host $only; do
    if [ -n "${sample[$kind/$k]:-}" ]; then
      med[$k]=$(median ${sample[$kind/$k]})
      printf '%12s' "${med[$k]}"
    else
      printf '%12s' "-"
    fi
  done
  for k in uml qemu; do
    if [ -n "${med[$k]:-}" ] && [ -n "${med[runsc]:-}" ] && [ "${med[runsc]}" != 0 ]; then
      awk -v a="${med[$k]}" -v b="${med[runsc]}" 'BEGIN {printf "%14.2f", a / b}'
    else
      printf '%14s' "-"
    fi
  done
  echo
  unset med
done
echo "(true, cpu, fork, syscalls, read: ms, medians of $runs; pss: MiB per idle sandbox, $pairs at once)"
ratio() {
  [ -n "${sample[$1]:-}" ] && [ -n "${sample[$2]:-}" ] || { echo "-"; return; }
  awk -v a="$(median ${sample[$1]})" -v b="$(median ${sample[$2]})" 'BEGIN {printf "%.2f", a / b}'
}
echo "issue 23's targets: UML start $(ratio true/uml true/runsc) x gVisor (<= 3), idle PSS $(ratio pss/uml pss/runsc) x gVisor (<= 2), CPU loop $(ratio cpu/uml cpu/host) x the host (<= 1.5)"
echo "against runc: start UML $(ratio true/uml true/runc) x, QEMU $(ratio true/qemu true/runc) x, gVisor $(ratio true/runsc true/runc) x"
