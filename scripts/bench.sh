#!/usr/bin/env bash
# Start latency of `capsa run true` against a bare QEMU boot of the same
# kernel with an initrd whose init powers off at once. Runs alternate, RUNS
# of each, in one go; prints every sample, the medians and their ratio;
# then draws one more start's timeline into $TIMELINE (docs/timeline.svg).
set -euo pipefail
rootfs=${1:?usage: bench.sh ROOTFS}
runs=${RUNS:-5}
share=${SHARE_DIR:-/usr/share/capsa}
qemu=${QEMU:-/usr/bin/qemu-system-x86_64}
accel=$(capsa check | awk '/^accelerator/ {print $2}')
work=$(mktemp -d /tmp/capsa-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The bare guest: busybox as /init, powering off at once.
mkdir -p "$work/initrd/bin"
cp /bin/busybox "$work/initrd/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$work/initrd/init"
chmod 0755 "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/bare.img"

now_ms() { date +%s%3N; }
bare() {
  "$qemu" -M q35 -accel "$accel" -m 512 -smp 1 -nodefaults -no-user-config \
    -display none -no-reboot -serial null \
    -kernel "$share/vmlinuz" -initrd "$work/bare.img" -append "console=ttyS0 panic=1 quiet"
}
capsa_true() { capsa run --rootfs "$rootfs" -- true; }

declare -a t_bare t_capsa
for i in $(seq "$runs"); do
  s=$(now_ms); bare; t_bare+=($(( $(now_ms) - s )))
  s=$(now_ms); capsa_true; t_capsa+=($(( $(now_ms) - s )))
  echo "run $i: bare ${t_bare[-1]} ms, capsa ${t_capsa[-1]} ms"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mb=$(median "${t_bare[@]}"); mc=$(median "${t_capsa[@]}")
echo "accelerator: $accel, runs: $runs each"
echo "median bare QEMU boot (same kernel, init powers off): ${mb} ms"
echo "median capsa run true:                               ${mc} ms"
awk -v c="$mc" -v b="$mb" 'BEGIN {printf "ratio capsa/bare: %.2f\n", c/b}'

# One more start, drawn step by step: where the time of a start goes.
timeline=${TIMELINE:-docs/timeline.svg}
capsa run --rootfs "$rootfs" --timeline "$timeline" -- true
echo "timeline of one capsa run true: $timeline"
