# The arm64 lab's job, run by the arm64 initramfs's /init (tools/provision/init.sh) as
# /viommu/script.sh after its modules are loaded; tools/guest-lab/arm64-lab.ts puts it there
# with /viommu/job.sh (variables) and /viommu/command.sh (the command).
#
# L1 is Debian's arm64 Linux 6.12 on qemu-system-aarch64 (TCG, -M virt,virtualization=on,
# gic-version=3 -cpu max), so KVM is built in and /dev/kvm exists. The command runs with arm64
# binaries and the host's files at their own paths: a tmpfs root gets the arm64 Debian root's
# /usr, /etc and /var (root.img, the read-only virtio disk /dev/vda), and every other top-level
# directory of the host (9p tag "host", read-only), /tmp included, so the repository (a clone
# under /tmp too), node_modules symlinks and the cache keep their paths. As in the x86 KVM lab
# (kvm-lab-init.sh), L1's own temporary files go to a tmpfs at /run, TMPDIR=/run/tmp.
# @koromix/ in the repository's node_modules is replaced by the cache's arm64 copy (koffi loads
# its native module from there). Console lines use the x86 KVM lab's protocol (kvm-lab.ts):
# "VIOMMU-KVM-LAB: step=NAME", "failed step=NAME: WHY", "exit=N"; stdout and stderr go to the
# virtio-serial ports "out" and "err", each ended by $LAB_TOKEN.
say() { echo "VIOMMU-KVM-LAB: $*"; }
fail() {
  say "failed step=$1: $2"
  exit 1
}
[ -c /dev/kvm ] || fail kvm "no /dev/kvm in the arm64 L1: $(dmesg | grep -i kvm | tail -3 | tr '\n' ' ')"
say "step=kvm $(dmesg | grep -o -E 'VHE mode initialized successfully|Hyp mode initialized successfully' | head -1)"
# Defines LAB_KOROMIX (host node_modules/@koromix, resolved, or
# empty), LAB_KOROMIX_ARM64 (the cache's @koromix), LAB_TOKEN, and optionally LAB_WAIT (seconds
# to wait for the host to stop QEMU before /init powers off; default 60).
. /viommu/job.sh

say "step=root"
mkdir -p /arm64 /host /lab
mount -t ext4 -o ro,noload /dev/vda /arm64 || fail root "cannot mount the arm64 root image (/dev/vda)"
[ -x /arm64/usr/bin/node ] || fail root "no node in the arm64 root image"
say "step=9p"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host ||
  fail 9p "cannot mount the host root (9p tag host)"

mount -t tmpfs -o mode=755 tmpfs /lab || fail mounts "tmpfs root"
for d in usr etc var; do
  mkdir -p "/lab/$d" && mount --bind "/arm64/$d" "/lab/$d" || fail mounts "arm64 /$d"
done
for l in bin sbin lib; do ln -s "usr/$l" "/lab/$l"; done
for d in /host/*; do
  n="${d#/host/}"
  case "$n" in bin | boot | dev | etc | lib | lib32 | lib64 | libx32 | proc | run | sbin | sys | usr | var | lost+found) continue ;; esac
  [ -d "$d" ] && [ ! -L "$d" ] || continue
  mkdir -p "/lab/$n" && mount --bind "$d" "/lab/$n" || fail mounts "host /$n"
done
if [ -n "$LAB_KOROMIX" ] && [ -d "/lab$LAB_KOROMIX" ]; then
  mount --bind "/host$LAB_KOROMIX_ARM64" "/lab$LAB_KOROMIX" || fail mounts "arm64 koffi over $LAB_KOROMIX"
fi
mkdir -p /lab/proc /lab/sys /lab/dev /lab/tmp /lab/run
mount -t proc proc /lab/proc || fail mounts proc
mount -t sysfs sysfs /lab/sys || fail mounts sysfs
mount -t devtmpfs devtmpfs /lab/dev || fail mounts devtmpfs
mkdir -p /lab/dev/pts /lab/dev/shm
mount -t devpts devpts /lab/dev/pts
mount -t tmpfs tmpfs /lab/dev/shm
mount -t tmpfs -o mode=755 tmpfs /lab/run || fail mounts "tmpfs on /run"
mkdir -p -m 1777 /lab/run/tmp

out=""
err=""
for p in /sys/class/virtio-ports/*; do
  case "$(cat "$p/name" 2>/dev/null)" in
  out) out="/dev/$(basename "$p")" ;;
  err) err="/dev/$(basename "$p")" ;;
  esac
done
[ -c "$out" ] && [ -c "$err" ] || fail ports "virtio-serial ports out/err missing"

cp /viommu/command.sh /lab/run/.viommu-lab-command.sh
say "step=run uptime=$(cut -d' ' -f1 /proc/uptime)"
chroot /lab /bin/sh /run/.viommu-lab-command.sh </dev/null >"$out" 2>"$err"
rc=$?
printf '%s' "$LAB_TOKEN" >"$out"
printf '%s' "$LAB_TOKEN" >"$err"
say "exit=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
sleep "${LAB_WAIT:-60}"
