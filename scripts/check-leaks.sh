#!/bin/sh
# After the whole test suite: no capsa process, mount, loop device or state
# directory of a test may be left on the host. Tests put their state under /tmp/capsa-*
# and /tmp/cs-* (capsa) and /tmp/capsa-ctrd-* (containerd).
set -u
status=0
procs=$(ps -eo pid=,args= | grep -E 'containerd-shim-capsa-v2|qemu-system|virtiofsd|vhost-device-vsock|containerd --config /tmp/capsa-ctrd-' \
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
# CNI networks of the tests (network "capsa-test", bridges capsab*/capsat*)
# and netns that capsa made in the default state directory.
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
[ $status -eq 0 ] && echo "check-leaks: nothing left behind"
exit $status
