#!/usr/bin/env bash
# A/B harness for start time (issue 14, item 4): `capsa run true` under two
# or more configurations, side by side in one run, each next to a bare
# QEMU boot of the same kernel and initrd whose init powers off at once,
# given the same extra kernel parameters (`kernel_params` of the
# configuration) so that what speeds up the kernel itself speeds up the
# bare boot too. Runs alternate (bare A, capsa A, bare B, capsa B, ...),
# RUNS rounds; prints every sample, the medians, capsa/bare per variant
# and each variant against the first: of the wall time, and of the CPU
# time (user + system) of the boot and all its processes (QEMU, helpers,
# capsa), which moves much less than the wall time when other work
# competes for the cores.
#
#   scripts/ab-boot.sh ROOTFS NAME=CONFIG.toml [NAME=CONFIG.toml ...]
#
# `capsa` is the one on PATH (or $CAPSA); the bare boot uses the kernel of
# each configuration and $QEMU, with capsa's built-in fast-boot kernel
# parameters ($BARE_PARAMS to change them) and the configuration's
# `kernel_params`. Per variant NAME, $CAPSA_NAME and $BARE_PARAMS_NAME
# override both (to compare with another build of capsa).
set -euo pipefail
rootfs=${1:?usage: ab-boot.sh ROOTFS NAME=CONFIG.toml ...}
shift
[ $# -ge 1 ] || { echo "usage: ab-boot.sh ROOTFS NAME=CONFIG.toml ..." >&2; exit 2; }
runs=${RUNS:-5}
capsa=${CAPSA:-capsa}
qemu=${QEMU:-/usr/bin/qemu-system-x86_64}
bare_params=${BARE_PARAMS-tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests}
work=$(mktemp -d /tmp/capsa-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/initrd/bin"
cp /bin/busybox "$work/initrd/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$work/initrd/init"
chmod 0755 "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | lz4 -l -9 -q -c) > "$work/bare.img"

# A key of the resolved configuration ("" when unset).
key() { "$capsa" --config "$1" config | sed -n "s/^$2 = \"\\(.*\\)\"$/\\1/p" | head -n1; }

names=() configs=() kernels=() extras=() bins=()
for arg in "$@"; do
  [ -f "${arg#*=}" ] || { echo "no configuration ${arg#*=}" >&2; exit 2; }
  n=${arg%%=*} bin_var="CAPSA_${arg%%=*}" params_var="BARE_PARAMS_${arg%%=*}"
  names+=("$n")
  configs+=("${arg#*=}")
  bins+=("${!bin_var:-$capsa}")
  kernels+=("$(key "${arg#*=}" kernel)")
  extras+=("${!params_var-$bare_params} $(key "${arg#*=}" kernel_params)")
done
accel=$("$capsa" --config "${configs[0]}" check | awk '/^accelerator/ {print $2}')

# Runs "$@" and appends "WALL_MS CPU_MS" (the CPU time of it and its
# reaped descendants) to $work/t.
timed() {
  local TIMEFORMAT='%R %U %S'
  { time "$@" 2>> "$work/stderr" ; } 2> "$work/time" || echo "FAILED: $*" >> "$work/stderr"
  awk '{printf "%d %d\n", $1 * 1000, ($2 + $3) * 1000}' "$work/time" >> "$work/t"
}
bare() {
  local kernel=${kernels[$1]} params=${extras[$1]}
  "$qemu" -M q35 -accel "$accel" -m 512 -smp 1 -nodefaults -no-user-config \
    -display none -no-reboot -serial null -kernel "$kernel" -initrd "$work/bare.img" \
    -append "console=ttyS0 panic=1 quiet $params"
}

declare -A wall_bare wall_capsa cpu_bare cpu_capsa
for i in $(seq "$runs"); do
  line="run $i:"
  for v in "${!names[@]}"; do
    n=${names[$v]} c=${configs[$v]}
    : > "$work/t"
    timed bare "$v"
    timed "${bins[$v]}" --config "$c" run --rootfs "$rootfs" -- true
    read -r wb cb wc cc < <(tr '\n' ' ' < "$work/t"; echo)
    wall_bare[$n]+="$wb " cpu_bare[$n]+="$cb "
    wall_capsa[$n]+="$wc " cpu_capsa[$n]+="$cc "
    line+=" $n bare $wb ($cb cpu) capsa $wc ($cc cpu);"
  done
  echo "$line"
done
[ ! -s "$work/stderr" ] || { echo "stderr of the runs:"; cat "$work/stderr"; }

median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "accelerator: $accel, runs: $runs each, load: $(cut -d' ' -f1-3 /proc/loadavg)"
report() {
  local what=$1 first="" n mb mc
  local -n b=$2 c=$3
  for n in "${names[@]}"; do
    mb=$(median "${b[$n]}"); mc=$(median "${c[$n]}")
    [ -n "$first" ] || first=$mc
    awk -v w="$what" -v n="$n" -v b="$mb" -v c="$mc" -v f="$first" \
      'BEGIN {printf "%s %-12s bare %6d ms  capsa %6d ms  capsa/bare %.2f  capsa vs first %.2f\n", w, n, b, c, c/b, c/f}'
  done
}
report wall wall_bare wall_capsa
report cpu cpu_bare cpu_capsa
