#!/usr/bin/env bash
# Start latency of `capsa run true` against a bare QEMU boot of the same
# kernel with an initrd whose init powers off at once, the guest booted
# from the initrd and from the DAX root image (`image = $SHARE_DIR/capsa.img`).
# Runs alternate, RUNS of each, in one go; prints every sample, the medians
# and their ratios. Then the memory of idle pods: PAIRS pods at once
# booted from each, QEMU's PSS (the image's pages are shared by them all).
# Then draws one more start's timeline into $TIMELINE (docs/timeline.svg).
set -euo pipefail
rootfs=${1:?usage: bench.sh ROOTFS}
runs=${RUNS:-5}
share=${SHARE_DIR:-/usr/share/capsa}
qemu=${QEMU:-/usr/bin/qemu-system-x86_64}
accel=$(capsa check | awk '/^accelerator/ {print $2}')
work=$(mktemp -d /tmp/capsa-bench.XXXXXX)
# Idle pods still up when the script ends (a failed start): removed.
declare -a live=()
cleanup() {
  for entry in "${live[@]}"; do capsa --config "$work/${entry%%:*}.toml" rm -f "${entry#*:}" > /dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The resolved configuration (capsa config), booting the initrd and the image.
capsa config | sed '/^# source/d' > "$work/resolved.toml"
sed -e "s|^initrd = .*|initrd = \"$share/initrd.img\"|" -e 's|^image = .*|image = ""|' \
  "$work/resolved.toml" > "$work/initrd.toml"
sed -e 's|^initrd = .*|initrd = ""|' -e "s|^image = .*|image = \"$share/capsa.img\"|" \
  "$work/resolved.toml" > "$work/image.toml"

# The bare guest: busybox as /init, powering off at once.
mkdir -p "$work/initrd/bin"
cp /bin/busybox "$work/initrd/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$work/initrd/init"
chmod 0755 "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | lz4 -l -9 -q -c) > "$work/bare.img"

now_ms() { date +%s%3N; }
# capsa's kernel parameters (Kata's fast-boot ones) are the bare boot's too:
# what speeds up the kernel speeds up both.
fast_boot="tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests"
bare() {
  "$qemu" -M q35 -accel "$accel" -m 512 -smp 1 -nodefaults -no-user-config \
    -display none -no-reboot -serial null \
    -kernel "$share/vmlinuz" -initrd "$work/bare.img" -append "console=ttyS0 panic=1 quiet $fast_boot"
}
capsa_true() { capsa --config "$work/$1.toml" run --rootfs "$rootfs" -- true; }

declare -a t_bare t_capsa t_image
for i in $(seq "$runs"); do
  s=$(now_ms); bare; t_bare+=($(( $(now_ms) - s )))
  s=$(now_ms); capsa_true initrd; t_capsa+=($(( $(now_ms) - s )))
  s=$(now_ms); capsa_true image; t_image+=($(( $(now_ms) - s )))
  echo "run $i: bare ${t_bare[-1]} ms, capsa ${t_capsa[-1]} ms, capsa (image) ${t_image[-1]} ms"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mb=$(median "${t_bare[@]}"); mc=$(median "${t_capsa[@]}"); mi=$(median "${t_image[@]}")
echo "accelerator: $accel, runs: $runs each"
echo "median bare QEMU boot (same kernel, init powers off): ${mb} ms"
echo "median capsa run true (initrd):                      ${mc} ms"
echo "median capsa run true (DAX image):                   ${mi} ms"
awk -v c="$mc" -v b="$mb" 'BEGIN {printf "ratio capsa/bare: %.2f\n", c/b}'
awk -v c="$mi" -v b="$mb" 'BEGIN {printf "ratio capsa (image)/bare: %.2f\n", c/b}'

# Idle pods: PAIRS at once from each, QEMU's PSS once all are up.
pairs=${PAIRS:-2}
idle_pss() {
  local kind=$1 ids=() total=0
  for n in $(seq "$pairs"); do
    ids+=("bench-$kind-$$-$n")
    live+=("$kind:${ids[-1]}")
    capsa --config "$work/$kind.toml" run -d --name "${ids[-1]}" --rootfs "$rootfs" -- sleep 1000 > /dev/null
  done
  for id in "${ids[@]}"; do
    pid=$(capsa --config "$work/$kind.toml" inspect "$id" | sed -n 's/.*"hypervisor_pid": *\([0-9]*\).*/\1/p')
    total=$(( total + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup") ))
  done
  for id in "${ids[@]}"; do capsa --config "$work/$kind.toml" rm -f "$id" > /dev/null; done
  live=()
  echo "$kind: $pairs idle pods, QEMU PSS per pod: $(( total / pairs / 1024 )) MiB"
}
idle_pss initrd
idle_pss image

# One more start, drawn step by step: where the time of a start goes.
timeline=${TIMELINE:-docs/timeline.svg}
capsa --config "$work/initrd.toml" run --rootfs "$rootfs" --timeline "$timeline" -- true
echo "timeline of one capsa run true: $timeline"
