#!/bin/sh
# After the whole test suite: no capsa process, mount, loop device or state
# directory of a test may be left on the host. Tests put their state under /tmp/capsa-*
# and /tmp/cs-* (capsa), /tmp/capsa-ctrd-* (containerd) and /tmp/capsa-test-snap-*
# (capsa-snapshotter: its process, loop devices and mounts of its images).
set -u
status=0
procs=$(ps -eo pid=,args= | grep -E 'containerd-shim-capsa-v2|qemu-system|virtiofsd|vhost-device-vsock|containerd --config /tmp/capsa-ctrd-|capsa-snapshotter --root /tmp/' \
        | grep -E '/tmp/(capsa-|cs-)' | grep -v grep || true)
if [ -n "$procs" ]; then
    echo "check-leaks: processes left behind:"; echo "$procs"; status=1
fi
mounts=$(grep -E ' /tmp/(capsa-|cs-)' /proc/self/mountinfo || true)
if [ -n "$mounts" ]; then
    echo "check-leaks: mounts left behind:"; echo "$mounts"; status=1
fi
loops=$(for f in /sys/block/loop*/loop/backing_file; do
           [ -r "$f" ] || continue
           back=$(cat "$f")
           case "$back" in /tmp/capsa-*|/tmp/cs-*) echo "/dev/$(basename "$(dirname "$(dirname "$f")")") $back";; esac
         done)
if [ -n "$loops" ]; then
    echo "check-leaks: loop devices left attached:"; echo "$loops"; status=1
fi
dirs=$(find /tmp -maxdepth 1 \( -name 'capsa-test-*' -o -name 'cs-*' -o -name 'capsa-ctrd-*' \) 2>/dev/null || true)
if [ -n "$dirs" ]; then
    echo "check-leaks: directories left behind:"; echo "$dirs"; status=1
fi
# Shims' socket files (/run/containerd/s/<hash>) that nothing listens on
# any more: a shim that exited without removing its socket.
stale=""
if [ -d /run/containerd/s ]; then
    listening=$(awk 'NR > 1 && $8 ~ "^/run/containerd/s/" { print $8 }' /proc/net/unix | sort -u)
    for f in /run/containerd/s/*; do
        [ -S "$f" ] || continue
        echo "$listening" | grep -qxF "$f" || stale="$stale
$f"
    done
fi
stale=$(echo "$stale" | sed '/^$/d')
if [ -n "$stale" ]; then
    echo "check-leaks: shim sockets nothing listens on ($(echo "$stale" | wc -l)):"; echo "$stale" | head -20; status=1
fi
# Pod networking: capsa's taps (tap<N>_capsa) in any netns, the test CNI
# bridges (capsa-tb<N>) and their networks' iptables rules (comments naming
# capsa-test-<N>), CNI chains no rule jumps to any more, and network
# namespaces of tests (capsa-* of the runtime's tests, and containerd's
# cni-* that still hold a test subnet address 10.200.x.x or a capsa tap).
taps=$(ip -o link show 2>/dev/null | grep -oE '[0-9]+: tap[0-9]+_capsa' || true)
netns=""
for ns in $(ls /var/run/netns 2>/dev/null); do
    links=$(ip -n "$ns" -o link show 2>/dev/null || true)
    nstaps=$(echo "$links" | grep -oE 'tap[0-9]+_capsa' || true)
    [ -n "$nstaps" ] && taps="$taps
$ns: $nstaps"
    case "$ns" in capsa-*) netns="$netns $ns"; continue;; esac
    if [ -n "$nstaps" ] || ip -n "$ns" -o -4 addr show 2>/dev/null | grep -q ' inet 10\.200\.'; then
        netns="$netns $ns"
    fi
done
taps=$(echo "$taps" | sed '/^$/d')
if [ -n "$taps" ]; then
    echo "check-leaks: capsa taps left behind:"; echo "$taps"; status=1
fi
if [ -n "$netns" ]; then
    echo "check-leaks: network namespaces of tests left behind:$netns"; status=1
fi
bridges=$(ip -o link show type bridge 2>/dev/null | grep -oE ' capsa-tb[0-9]+' || true)
if [ -n "$bridges" ]; then
    echo "check-leaks: test CNI bridges left behind:$bridges"; status=1
fi
if command -v iptables-save >/dev/null 2>&1; then
    nat=$(iptables-save -t nat 2>/dev/null || true)
    rules=$(echo "$nat" | grep -E '^-A .*name: \\"capsa-test-[0-9]+\\"' || true)
    if [ -n "$rules" ]; then
        echo "check-leaks: iptables rules of test CNI networks left behind:"; echo "$rules"; status=1
    fi
    orphans=$(echo "$nat" | grep -oE '^:CNI-[A-Za-z0-9-]+' | cut -c2- | grep -v '^CNI-HOSTPORT-' |
              while read -r chain; do
                  echo "$nat" | grep -qE -- "-j $chain( |\$)" || echo "$chain"
              done)
    if [ -n "$orphans" ]; then
        echo "check-leaks: CNI iptables chains no rule uses:"; echo "$orphans"; status=1
    fi
fi
# capsa run's CNI networks of the tests (network "capsa-test", bridges
# capsab*/capsat*) and netns that capsa made in the default state directory.
bridges=$(ip -o link show 2>/dev/null | grep -oE '^[0-9]+: capsa[bt][0-9]+' || true)
if [ -n "$bridges" ]; then
    echo "check-leaks: test bridges left behind:"; echo "$bridges"; status=1
fi
rules=$(iptables-save 2>/dev/null | grep -F 'name: \"capsa-test\"' || true)
if [ -n "$rules" ]; then
    echo "check-leaks: iptables rules of test networks left behind:"; echo "$rules"; status=1
fi
netns=$(grep -F ' - nsfs ' /proc/self/mountinfo | awk '{ print $5 }' | grep '^/run/capsa/' || true)
if [ -n "$netns" ]; then
    echo "check-leaks: network namespaces of capsa left bound:"; echo "$netns"; status=1
fi
# sandbox_cgroup_only: the pod cgroup parents of the tests
# (capsa-test-cg-*, with whatever capsa made below them) and capsa's default
# pod cgroups (capsa_<id>, for a sandbox spec without cgroupsPath), in
# every cgroup v1 hierarchy or at the v2 root.
cgroups=$(find /sys/fs/cgroup -maxdepth 2 -type d \( -name 'capsa-test-cg-*' -o -name 'capsa_*' \) 2>/dev/null || true)
if [ -n "$cgroups" ]; then
    echo "check-leaks: cgroups left behind:"; echo "$cgroups"; status=1
fi
[ $status -eq 0 ] && echo "check-leaks: nothing left behind"
exit $status
