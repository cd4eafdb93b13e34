#!/bin/busybox sh
# The lab's /init: load the modules listed in /modules.load, mount the host's root (9p, read
# only) and the VM's exchange folder (9p, writable), build a root of bind mounts over the host's
# with tmpfs for the places tools write to, and serve commands on the second serial port.
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /host /newroot
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.load); do
  insmod "/lib/modules/$(uname -r)/$m" || echo "lab-init: insmod $m failed"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 host /host || poweroff -f
mount -t tmpfs -o mode=755 root /newroot
for e in /host/* /host/.[!.]*; do
  n=${e#/host/}
  case "$n" in proc|sys|dev|run|tmp|lost+found|'.[!.]*') continue ;; esac
  if [ "$n" = lib ] && [ -L "$e" ]; then
    mkdir /newroot/lib && for l in /host/usr/lib/*; do ln -s "/usr/lib/${l#/host/usr/lib/}" /newroot/lib/; done
  elif [ -L "$e" ]; then
    cp -a "$e" "/newroot/$n"
  elif [ -d "$e" ]; then
    mkdir "/newroot/$n" && mount --bind "$e" "/newroot/$n"
  fi
done
mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/run /newroot/tmp /newroot/lab
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t tmpfs -o mode=755 run /newroot/run
mkdir -p /newroot/run/lock /newroot/run/lvm
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
# The folders the kernel's command line names (lab.show=, the test binaries'), which the tmpfs
# above may hide: shown at their own paths, read-only, as the host has them.
for a in $(cat /proc/cmdline); do
  case "$a" in
    lab.show=/*) p=${a#lab.show=}; mkdir -p "/newroot$p" && mount --bind "/host$p" "/newroot$p" ;;
  esac
done
# Somewhere to mount the guest's filesystems.
mount -t tmpfs -o mode=755 mnt /newroot/mnt
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 lab /newroot/lab || poweroff -f
# LVM writes its metadata archives under /etc/lvm: a writable copy of the host's.
mkdir /etc-lvm && cp -a /host/etc/lvm/. /etc-lvm/ 2>/dev/null
mount -t tmpfs -o mode=755 etc-lvm /newroot/etc/lvm && cp -a /etc-lvm/. /newroot/etc/lvm/
# This kernel's modules, for modprobe run in the guest (the host's are for another kernel).
mkdir -p /newroot/lib/modules 2>/dev/null; mount --bind /lib/modules /newroot/lib/modules
# qemu's user network: the host's loopback is 10.0.2.2.
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi
stty -F /dev/ttyS1 raw -echo
# The command loop runs under a busybox shell that only waits: as PID 1 it reaps the processes
# orphaned to it (a background command killed by a test would otherwise stay a zombie, alive
# to `kill -0`).
touch /newroot/run/busybox && mount --bind /bin/busybox /newroot/run/busybox
cat > /newroot/run/lab-runner <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
# No udev in the lab: libdevmapper and LVM make their device nodes themselves.
export DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1
exec </dev/ttyS1 >/dev/ttyS1
echo "bulwark-lab-ready"
while read -r n; do
  (cd /lab && exec sh "/lab/$n.sh") </dev/null >"/lab/$n.out" 2>"/lab/$n.err"
  echo "bulwark-lab-done $n $?"
done
EOF
echo "lab-init: ready"
cd /newroot
exec chroot /newroot /run/busybox sh -c '/bin/sh /run/lab-runner & wait; echo "lab-init: command loop ended"; /run/busybox poweroff -f'
