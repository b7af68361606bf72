#!/bin/busybox sh
# /init of the KVM lab's L1 initramfs (installed by tools/provision/provision.sh as
# kvm-lab.cpio.gz; driven by tools/guest-lab/kvm-lab.ts).
#
# L1 is Debian's Linux 6.12 under QEMU TCG with `-cpu max` (AMD SVM + NPT emulated). This init:
#  1. mounts proc, sysfs, devtmpfs;
#  2. loads kvm_amd (irqbypass, ccp, kvm first) and the 9p modules; /dev/kvm must then exist;
#  3. mounts the host root (9p tag "host", read-only) at /host, and over it the host directories
#     the job wants writable (9p tags w0, w1, ...), proc/sys/dev/tmpfs, and the persistent
#     scratch directory (tag "scratch") whose tsx-cache/ becomes /run/tmp/tsx-0 (TMPDIR is
#     /run/tmp, a tmpfs; so this is tsx's transform cache, and only the first run in L1
#     compiles TypeScript);
#  4. runs /viommu/command.sh (from the job archive appended to this initramfs) chrooted into
#     /host, stdout to the virtio-serial port "out", stderr to "err", stdin from /dev/null;
#  5. writes the job's end-of-stream token on both ports, prints "VIOMMU-KVM-LAB: exit=N" on the
#     console, and waits for the host to stop QEMU (powers off after 60 s on its own).
# Each step prints "VIOMMU-KVM-LAB: step=NAME"; a failed step prints
# "VIOMMU-KVM-LAB: failed step=NAME: WHY" and powers off, so the host can say which step failed.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
umask 022
say() { echo "VIOMMU-KVM-LAB: $*"; }
fail() {
  say "failed step=$1: $2"
  poweroff -f
  sleep 10
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
say "step=modules uptime=$(cut -d' ' -f1 /proc/uptime)"

kver="$(cat /etc/viommu/kver)"
cmdline="$(cat /proc/cmdline)"
for m in $(cat /etc/viommu/modules); do
  key="$(echo "$m" | tr - _)"
  params=""
  for w in $cmdline; do
    case "$w" in "$key".*=*) params="$params ${w#"$key".}" ;; esac
  done
  # shellcheck disable=SC2086
  insmod "/lib/modules/$kver/$m.ko" $params 2>/tmp/insmod.err || say "insmod $m: $(cat /tmp/insmod.err)"
done
[ -c /dev/kvm ] || fail kvm "no /dev/kvm after loading kvm_amd (does the CPU model have svm?): $(dmesg | grep -i -E 'kvm|svm' | tail -3 | tr '\n' ' ')"
say "step=kvm $(dmesg | grep -o -E 'Nested (Virtualization|Paging) enabled' | tr '\n' ' ')"

[ -f /viommu/job.sh ] || fail job "no /viommu/job.sh in the initramfs"
# Defines LAB_WRITABLE ("tag:path ..."), LAB_HUGEPAGES, LAB_TOKEN.
. /viommu/job.sh

say "step=9p"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host ||
  fail 9p "cannot mount the host root (9p tag host)"
for w in $LAB_WRITABLE; do
  tag="${w%%:*}"
  dir="${w#*:}"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap "$tag" "/host$dir" ||
    fail 9p "cannot mount $dir writable (9p tag $tag)"
done
mount -t proc proc /host/proc || fail mounts "proc"
mount -t sysfs sysfs /host/sys || fail mounts "sysfs"
mount -t devtmpfs devtmpfs /host/dev || fail mounts "devtmpfs"
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
# L1's own temporary files: a tmpfs at /run, TMPDIR=/run/tmp (the host's /tmp stays visible at
# /tmp, read-only unless the job made it writable).
mount -t tmpfs -o mode=755 tmpfs /host/run || fail mounts "tmpfs on /run"
mkdir -p -m 1777 /host/run/tmp
mkdir -p /scratch /host/run/tmp/tsx-0
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap scratch /scratch ||
  fail 9p "cannot mount the scratch directory (9p tag scratch)"
mkdir -p /scratch/tsx-cache
mount --bind /scratch/tsx-cache /host/run/tmp/tsx-0 || fail mounts "tsx cache"
if [ "${LAB_HUGEPAGES:-0}" -gt 0 ]; then
  echo "$LAB_HUGEPAGES" >/proc/sys/vm/nr_hugepages
  mkdir -p /host/dev/hugepages
  mount -t hugetlbfs none /host/dev/hugepages || fail mounts "hugetlbfs"
fi

# Find the virtio-serial ports by name.
out=""
err=""
for p in /sys/class/virtio-ports/*; do
  case "$(cat "$p/name" 2>/dev/null)" in
  out) out="/dev/$(basename "$p")" ;;
  err) err="/dev/$(basename "$p")" ;;
  esac
done
[ -c "$out" ] && [ -c "$err" ] || fail ports "virtio-serial ports out/err missing"

mkdir -p /host/run/viommu-kvm-lab
cp /viommu/command.sh /host/run/viommu-kvm-lab/command.sh
say "step=run uptime=$(cut -d' ' -f1 /proc/uptime)"
chroot /host /bin/sh /run/viommu-kvm-lab/command.sh <"/dev/null" >"$out" 2>"$err"
rc=$?
printf '%s' "$LAB_TOKEN" >"$out"
printf '%s' "$LAB_TOKEN" >"$err"
say "exit=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
sleep 60
poweroff -f
