#!/bin/busybox sh
# An installed computer's initramfs: load the modules listed in /modules.load, mount the root
# the kernel's command line names (root=/dev/...) read-only and run its /sbin/init.
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.load); do
  insmod "/lib/modules/$(uname -r)/$m" || echo "system-init: insmod $m failed"
done
root=
for a in $(cat /proc/cmdline); do
  case "$a" in root=/dev/*) root=${a#root=} ;; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
if ! mount -t ext4 -o ro "$root" /newroot; then
  echo "system-init: cannot mount the root ${root:-(none named)}"
  poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
