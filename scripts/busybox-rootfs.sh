#!/usr/bin/env bash
# Makes a minimal container rootfs from Debian's busybox-static in $1.
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
mkdir -p "$dir"/{bin,etc,proc,sys,dev,tmp,root,home/user}
install -m 0755 /bin/busybox "$dir/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > "$dir/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$dir/etc/group"
