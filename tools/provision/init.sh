#!/bin/busybox sh
# /init of the viommu guest-lab initramfs (installed by tools/provision/provision.sh).
#
# 1. mounts proc, sysfs, devtmpfs, tmpfs;
# 2. loads the modules listed in /etc/viommu/modules (dependency order) with insmod, passing any
#    "module.param=value" words from the kernel command line to that module;
# 3. runs /viommu/script.sh, which the harness supplies in a second cpio archive appended to the
#    base initramfs (the kernel unpacks concatenated archives in order);
# 4. prints "VIOMMU-LAB: script exit=N" and powers off (QEMU runs with -no-reboot).
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin:/sbin
export HOME=/root
umask 022
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "VIOMMU-LAB: init start uptime=$(cut -d' ' -f1 /proc/uptime)"

kver="$(cat /etc/viommu/kver)"
cmdline="$(cat /proc/cmdline)"
for m in $(cat /etc/viommu/modules); do
  key="$(echo "$m" | tr - _)"
  params=""
  for w in $cmdline; do
    case "$w" in "$key".*=*) params="$params ${w#"$key".}" ;; esac
  done
  # shellcheck disable=SC2086
  insmod "/lib/modules/$kver/$m.ko" $params 2>/tmp/insmod.err ||
    echo "VIOMMU-LAB: insmod $m failed: $(cat /tmp/insmod.err)"
done
mdev -s 2>/dev/null
echo "VIOMMU-LAB: ready uptime=$(cut -d' ' -f1 /proc/uptime)"

rc=0
if [ -f /viommu/script.sh ]; then
  cd /viommu || true
  sh /viommu/script.sh
  rc=$?
  cd /
else
  echo "VIOMMU-LAB: no /viommu/script.sh"
  case " $cmdline " in *" viommu.shell=1 "*) setsid cttyhack sh ;; esac
fi
echo "VIOMMU-LAB: script exit=$rc"
sync
poweroff -f
sleep 5
