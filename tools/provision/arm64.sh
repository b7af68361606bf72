#!/usr/bin/env bash
# Provision the arm64 lab (run as root, after tools/provision/provision.sh built the x86 lab):
#
#   tools/provision/arm64.sh           build whatever is missing (idempotent)
#   tools/provision/arm64.sh --check   report what is present; exit 0 if complete, 1 if not
#
# The lab is an arm64 "L1" guest on qemu-system-aarch64 (TCG, -M virt,virtualization=on,
# gic-version=3 -cpu max), which has KVM inside; `viommu run` on arm64 runs there, with node from
# an arm64 Debian 13 root. Everything lands in ${VIOMMU_CACHE:-$HOME/.cache/viommu}/arm64:
#   bin/qemu-system-aarch64  wrapper: qemu-system-arm from trixie-backports, installed in the x86
#                            lab's trixie-root and run through its ld.so (no chroot), as
#                            ../bin/qemu-system-x86_64 is
#   kernel/Image             Debian 13 linux-image-6.12.*+deb13-arm64 (an uncompressed arm64
#                            Image with an EFI stub), kernel/modules/, kernel/config
#   guest-bin/               guest/*.c cross-compiled for aarch64, static
#   initramfs.cpio.gz        arm64 busybox, /init (init.sh), modules-arm64.list, guest programs;
#                            boots both the L1 and the L2 guests
#   root.img                 arm64 Debian 13 root with nodejs (ext4): debootstrap --foreign here,
#                            its second stage run once inside the L1 guest, then kept; the lab
#                            attaches it read-only as a virtio disk
#   node_modules/            koffi and @koromix/koffi-linux-arm64 (npm pack), for node in root/
#   peer-qemu/               qemu-system-arm:arm64 (trixie-backports) and every arm64 library it
#                            needs, unpacked (dpkg-deb -x), with bin/peer-qemu-system-aarch64,
#                            a wrapper that runs it inside the L1 through its own ld.so: the
#                            peer for the side-by-side bench (bench/arm64-vs-qemu.ts)
#   manifest.json            versions and paths
# A failure here never affects the x86 lab: provision.sh calls this script and only warns.
set -euo pipefail
shopt -s nullglob

CACHE="${VIOMMU_CACHE:-$HOME/.cache/viommu}"
ROOT="$CACHE/trixie-root"
A="$CACHE/arm64"
AROOT_IMG="$A/root.img"
KDIR="$A/kernel"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
INITRAMFS_VERSION=1 # bump when the initramfs layout changes
START=$SECONDS
STEPS=10
CHECK=0
QEMU="$A/bin/qemu-system-aarch64"
PEER="$A/peer-qemu"
PEER_QEMU="$A/bin/peer-qemu-system-aarch64"

for arg in "$@"; do
  case "$arg" in
  --check) CHECK=1 ;;
  -h | --help)
    sed -n '2,27p' "$0"
    exit 0
    ;;
  *)
    echo "[arm64] unknown argument: $arg" >&2
    exit 2
    ;;
  esac
done

log() { echo "[arm64]   $* (t=$((SECONDS - START))s)"; }
step() {
  local n="$1"
  shift
  echo "[arm64] step $n/$STEPS: $* (t=$((SECONDS - START))s)"
}
die() {
  echo "[arm64] ERROR: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Validity checks: each returns 0 when the step's output is present and usable.
host_ok() {
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && [ -f /usr/aarch64-linux-gnu/include/linux/vfio.h ] &&
    [ -x "$ROOT/usr/bin/apt-get" ]
}
qemu_ok() {
  [ -x "$ROOT/usr/bin/qemu-system-aarch64" ] && [ -x "$QEMU" ] && "$QEMU" --version >/dev/null 2>&1
}
kernel_ok() {
  [ -f "$KDIR/.viommu-kernel-ok" ] && [ -s "$KDIR/Image" ] && [ -f "$KDIR/modules/modules.dep" ] &&
    [ "$(od -An -tx1 -j 56 -N 4 "$KDIR/Image" | tr -d ' ')" = "41524d64" ]
}
busybox_ok() { [ -x "$A/busybox" ] && [ "$(od -An -tx1 -N 4 "$A/busybox" | tr -d " ")" = "7f454c46" ]; }
guest_bin_ok() {
  local src name f
  for src in "$REPO"/guest/*.c; do
    name="$(basename "$src" .c)"
    [ -x "$A/guest-bin/$name" ] || return 1
    for f in "$REPO"/guest/*; do [ "$A/guest-bin/$name" -nt "$f" ] || return 1; done
  done
}
initramfs_inputs_hash() {
  {
    echo "layout=$INITRAMFS_VERSION"
    cat "$HERE/init.sh" "$HERE/modules-arm64.list"
    cat "$KDIR/kver" 2>/dev/null || true
    sha256sum "$A"/guest-bin/* "$A/busybox" 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}
initramfs_ok() {
  [ -s "$A/initramfs.cpio.gz" ] && [ -f "$A/initramfs.stamp" ] &&
    [ "$(cat "$A/initramfs.stamp")" = "$(initramfs_inputs_hash)" ]
}
root_ok() { [ -s "$AROOT_IMG" ] && [ -s "$A/root.node-version" ] && [ "$A/root.node-version" -nt "$AROOT_IMG" ]; }
koffi_version() { sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$REPO/node_modules/koffi/package.json" | head -1; }
koffi_ok() {
  [ -f "$A/node_modules/@koromix/koffi-linux-arm64/linux_arm64/koffi.node" ] &&
    [ -f "$A/node_modules/koffi/package.json" ] &&
    grep -q "\"version\": \"$(koffi_version)\"" "$A/node_modules/koffi/package.json"
}
peer_qemu_ok() {
  # An arm64 ELF (e_machine 0xb7 = EM_AARCH64) and its loader; it runs only inside the L1.
  [ -f "$PEER/.viommu-peer-ok" ] && [ -x "$PEER_QEMU" ] && [ -x "$PEER/usr/lib/ld-linux-aarch64.so.1" ] &&
    [ "$(od -An -tx1 -j 18 -N 2 "$PEER/usr/bin/qemu-system-aarch64" 2>/dev/null | tr -d ' ')" = "b700" ]
}
smoke_ok() { [ -f "$A/smoke.ok" ] && [ "$A/smoke.ok" -nt "$A/initramfs.cpio.gz" ] && [ "$A/smoke.ok" -nt "$A/root.node-version" ]; }

if [ "$CHECK" = 1 ]; then
  rc=0
  report() {
    if "$2"; then echo "[arm64] present: $1"; else
      echo "[arm64] MISSING: $1"
      rc=1
    fi
  }
  echo "[arm64] cache: $A"
  report "host cross compiler (gcc-aarch64-linux-gnu, arm64 vfio.h) and the trixie root" host_ok
  report "qemu-system-aarch64 ($QEMU)" qemu_ok
  report "arm64 kernel Image and modules ($KDIR)" kernel_ok
  report "arm64 busybox ($A/busybox)" busybox_ok
  report "arm64 guest programs ($A/guest-bin)" guest_bin_ok
  report "arm64 initramfs ($A/initramfs.cpio.gz)" initramfs_ok
  report "arm64 Debian root image with nodejs ($AROOT_IMG)" root_ok
  report "koffi for arm64 ($A/node_modules)" koffi_ok
  report "L1 smoke boot (KVM and node inside)" smoke_ok
  report "peer QEMU for arm64, run inside the L1 ($PEER)" peer_qemu_ok
  exit "$rc"
fi

[ "$(id -u)" = 0 ] || die "must run as root"
[ -x "$ROOT/usr/bin/apt-get" ] || die "the x86 lab's trixie root is missing: run tools/provision/provision.sh first"
mkdir -p "$A"
MIRROR="$(awk '/^URIs:/ { print $2; exit }' "$ROOT/etc/apt/sources.list.d/viommu.sources" 2>/dev/null || true)"
[ -n "$MIRROR" ] || die "no mirror in $ROOT/etc/apt/sources.list.d/viommu.sources"

MOUNTED=()
cleanup_mounts() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
  MOUNTED=()
}
trap cleanup_mounts EXIT
chroot_mounts() {
  local m
  for m in proc dev sys; do
    if ! mountpoint -q "$ROOT/$m"; then
      mount --bind "/$m" "$ROOT/$m"
      MOUNTED+=("$ROOT/$m")
    fi
  done
}
in_root() { DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 chroot "$ROOT" "$@"; }
root_apt_arm64() {
  # arm64 packages are only downloaded (never installed) in the x86 root.
  if ! in_root dpkg --print-foreign-architectures | grep -qx arm64; then
    in_root dpkg --add-architecture arm64
    in_root apt-get update -q >>"$A/apt.log" 2>&1 || die "apt-get update (arm64) failed (log: $A/apt.log)"
  fi
}
# download PKG... into DIR (host path) with the root's apt.
root_download() {
  local dir="$1"
  shift
  rm -rf "$ROOT/tmp/viommu-arm64-dl"
  mkdir -p "$ROOT/tmp/viommu-arm64-dl" "$dir"
  in_root sh -c "cd /tmp/viommu-arm64-dl && apt-get download -q $*" >>"$A/apt.log" 2>&1 ||
    die "apt-get download $* failed (log: $A/apt.log)"
  mv "$ROOT"/tmp/viommu-arm64-dl/*.deb "$dir/"
  rm -rf "$ROOT/tmp/viommu-arm64-dl"
}

# l1_boot DIR TIMEOUT_S LOG [QEMU ARGS...]: boot the L1 guest with the arm64 initramfs plus the
# files under DIR/viommu (at least viommu/script.sh, which /init runs), serial console into LOG.
l1_boot() {
  local dir="$1" t="$2" out="$3"
  shift 3
  (cd "$dir" && find viommu -print | cpio -o -H newc --quiet -R 0:0 | gzip >extra.cpio.gz)
  cat "$A/initramfs.cpio.gz" "$dir/extra.cpio.gz" >"$dir/initrd"
  timeout -k 5 "$t" "$QEMU" -M virt,virtualization=on,gic-version=3 -cpu max -accel tcg -m 2048 -smp 1 \
    -nographic -no-reboot -nic none -kernel "$KDIR/Image" -initrd "$dir/initrd" \
    -append "console=ttyAMA0 panic=-1 loglevel=4" "$@" </dev/null >"$out" 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
step 1 "host cross compiler (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, linux-libc-dev-arm64-cross)"
if host_ok; then
  log "present, skipped"
else
  apt-get update -q >>"$A/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross linux-libc-dev-arm64-cross >>"$A/apt.log" 2>&1 ||
    die "apt-get install of the cross compiler failed (log: $A/apt.log)"
  host_ok || die "cross compiler still missing"
fi

step 2 "qemu-system-arm from trixie-backports in $ROOT"
if qemu_ok; then
  log "present: $("$QEMU" --version | head -1), skipped"
else
  chroot_mounts
  in_root apt-get install -y -q --no-install-recommends -t trixie-backports qemu-system-arm \
    >>"$A/apt.log" 2>&1 || die "installing qemu-system-arm failed (log: $A/apt.log)"
  cleanup_mounts
  mkdir -p "$A/bin"
  cat >"$QEMU" <<'EOF'
#!/bin/sh
# Generated by tools/provision/arm64.sh: qemu-system-aarch64 from the trixie root, no chroot.
ROOT="$(cd "$(dirname "$0")/../../trixie-root" && pwd)"
LIBS="$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu/pulseaudio"
export QEMU_MODULE_DIR="$ROOT/usr/lib/x86_64-linux-gnu/qemu"
exec "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$LIBS" \
  "$ROOT/usr/bin/qemu-system-aarch64" -L "$ROOT/usr/share/qemu" "$@"
EOF
  chmod +x "$QEMU"
  qemu_ok || die "qemu-system-aarch64 wrapper does not run"
  log "installed: $("$QEMU" --version | head -1)"
fi

step 3 "Debian 13 arm64 kernel (linux-image-6.12.*+deb13-arm64) and modules"
if kernel_ok; then
  log "kernel $(cat "$KDIR/kver") present, skipped"
else
  chroot_mounts
  root_apt_arm64
  PKG="$(in_root apt-cache search --names-only '^linux-image-6\.12\.[0-9]+.*-arm64$' |
    awk '{print $1}' | grep -E '^linux-image-6\.12\.[0-9]+\+deb13-arm64$' | sort -V | tail -1)"
  [ -n "$PKG" ] || die "no linux-image-6.12*-arm64 package found"
  log "kernel package: $PKG"
  rm -rf "$KDIR" "$KDIR.tmp"
  root_download "$KDIR.tmp/deb" "$PKG:arm64"
  cleanup_mounts
  mkdir -p "$KDIR.tmp/x"
  dpkg-deb -x "$KDIR.tmp"/deb/*.deb "$KDIR.tmp/x"
  VMLINUZ="$(ls "$KDIR.tmp"/x/boot/vmlinuz-* | head -1)"
  KVER="${VMLINUZ##*/vmlinuz-}"
  # Debian's arm64 "vmlinuz" is the uncompressed Image (arm64 boot protocol header, EFI stub).
  cp "$VMLINUZ" "$KDIR.tmp/Image"
  cp "$KDIR.tmp"/x/boot/config-* "$KDIR.tmp/config"
  mkdir -p "$KDIR.tmp/base/lib/modules"
  if [ -d "$KDIR.tmp/x/usr/lib/modules/$KVER" ]; then
    mv "$KDIR.tmp/x/usr/lib/modules/$KVER" "$KDIR.tmp/base/lib/modules/$KVER"
  else
    mv "$KDIR.tmp/x/lib/modules/$KVER" "$KDIR.tmp/base/lib/modules/$KVER"
  fi
  depmod -b "$KDIR.tmp/base" "$KVER"
  mv "$KDIR.tmp/base/lib/modules/$KVER" "$KDIR.tmp/modules"
  rm -rf "$KDIR.tmp/base" "$KDIR.tmp/x" "$KDIR.tmp/deb"
  echo "$KVER" >"$KDIR.tmp/kver"
  echo "$PKG" >"$KDIR.tmp/package"
  touch "$KDIR.tmp/.viommu-kernel-ok"
  mv "$KDIR.tmp" "$KDIR"
  kernel_ok || die "arm64 kernel extraction incomplete"
  log "kernel $KVER: Image $(stat -c %s "$KDIR/Image") B"
fi
KVER="$(cat "$KDIR/kver")"

step 4 "arm64 busybox (busybox-static:arm64)"
if busybox_ok; then
  log "present, skipped"
else
  chroot_mounts
  root_apt_arm64
  rm -rf "$A/busybox.tmp"
  root_download "$A/busybox.tmp" "busybox-static:arm64"
  cleanup_mounts
  dpkg-deb -x "$A"/busybox.tmp/*.deb "$A/busybox.tmp/x"
  BB="$A/busybox.tmp/x/usr/bin/busybox"
  [ -f "$BB" ] || BB="$A/busybox.tmp/x/bin/busybox"
  [ -f "$BB" ] || die "no busybox binary in busybox-static:arm64"
  cp "$BB" "$A/busybox"
  chmod 755 "$A/busybox"
  rm -rf "$A/busybox.tmp"
fi

step 5 "guest programs (guest/*.c) for aarch64, static"
if guest_bin_ok; then
  log "up to date, skipped"
else
  mkdir -p "$A/guest-bin"
  for src in "$REPO"/guest/*.c; do
    name="$(basename "$src" .c)"
    aarch64-linux-gnu-gcc -O2 -static -Wall -Wextra -Werror -std=gnu11 -I"$REPO/guest" \
      -o "$A/guest-bin/$name.tmp" "$src"
    mv "$A/guest-bin/$name.tmp" "$A/guest-bin/$name"
    log "built $name"
  done
fi

step 6 "arm64 base initramfs ($A/initramfs.cpio.gz)"
if initramfs_ok; then
  log "up to date, skipped"
else
  STAGE="$A/initramfs.stage"
  rm -rf "$STAGE"
  mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,run,mnt,host,etc/viommu,usr/bin,viommu}
  mkdir -p "$STAGE/lib/modules/$KVER"
  cp "$A/busybox" "$STAGE/bin/busybox"
  cp "$HERE/init.sh" "$STAGE/init"
  chmod 755 "$STAGE/init"
  cp "$A"/guest-bin/* "$STAGE/usr/bin/"
  "$HERE/resolve-modules.sh" "$KDIR/modules" "$HERE/modules-arm64.list" >"$STAGE/etc/viommu/modules.order"
  while read -r rel; do
    [ -n "$rel" ] || continue
    dst="$STAGE/lib/modules/$KVER/$(basename "$rel")"
    case "$rel" in
    *.ko.xz) xz -dc "$KDIR/modules/$rel" >"${dst%.xz}" ;;
    *.ko.zst) zstd -qdc "$KDIR/modules/$rel" >"${dst%.zst}" ;;
    *.ko.gz) gzip -dc "$KDIR/modules/$rel" >"${dst%.gz}" ;;
    *) cp "$KDIR/modules/$rel" "$dst" ;;
    esac
  done <"$STAGE/etc/viommu/modules.order"
  sed -e 's#.*/##' -e 's#\.ko\(\.xz\|\.zst\|\.gz\)\?$##' "$STAGE/etc/viommu/modules.order" \
    >"$STAGE/etc/viommu/modules"
  echo "$KVER" >"$STAGE/etc/viommu/kver"
  log "modules: $(tr '\n' ' ' <"$STAGE/etc/viommu/modules")"
  (cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) |
    gzip -6 >"$A/initramfs.cpio.gz.tmp"
  mv "$A/initramfs.cpio.gz.tmp" "$A/initramfs.cpio.gz"
  initramfs_inputs_hash >"$A/initramfs.stamp"
  rm -rf "$STAGE"
  log "initramfs: $(stat -c %s "$A/initramfs.cpio.gz") bytes"
fi

step 7 "arm64 Debian 13 root with nodejs ($AROOT_IMG)"
if root_ok; then
  log "present: node $(cat "$A/root.node-version"), skipped"
else
  # The root lives in an ext4 image, not a directory over 9p: dpkg's many small writes and
  # renames over 9p under a software CPU took minutes per package; on a virtio disk they do not.
  # First stage on the host, into a directory that becomes the image (mke2fs -d); the second
  # stage then runs inside the arm64 guest on that image, once.
  STAGE_DIR="$A/root.stage"
  rm -rf --one-file-system "$STAGE_DIR" "$AROOT_IMG.tmp"
  log "debootstrap --foreign (first stage, on the host)"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=nodejs trixie "$STAGE_DIR" "$MIRROR" \
    >"$A/debootstrap.log" 2>&1 || {
    tail -20 "$A/debootstrap.log" >&2
    die "debootstrap --foreign failed (log: $A/debootstrap.log)"
  }
  # No fsync per file: the image is rebuilt from scratch if anything goes wrong.
  mkdir -p "$STAGE_DIR/etc/dpkg/dpkg.cfg.d"
  echo force-unsafe-io >"$STAGE_DIR/etc/dpkg/dpkg.cfg.d/viommu-unsafe-io"
  mke2fs -q -t ext4 -L viommu-arm64 -d "$STAGE_DIR" "$AROOT_IMG.tmp" 3G || die "mke2fs of the arm64 root failed"
  rm -rf --one-file-system "$STAGE_DIR"
  log "second stage inside the arm64 guest (software CPU; a few minutes)"
  STAGE2="$(mktemp -d)"
  mkdir -p "$STAGE2/viommu"
  cat >"$STAGE2/viommu/script.sh" <<'EOF'
mkdir -p /mnt/root
mount -t ext4 /dev/vda /mnt/root || { echo "VIOMMU-ARM64: cannot mount the root image"; exit 1; }
mount -t proc proc /mnt/root/proc
mount -t sysfs sysfs /mnt/root/sys
mount -t devtmpfs devtmpfs /mnt/root/dev
chroot /mnt/root /debootstrap/debootstrap --second-stage
rc=$?
echo "VIOMMU-ARM64: second stage exit=$rc"
if [ "$rc" = 0 ]; then
  v="$(chroot /mnt/root /usr/bin/node --version)" && echo "VIOMMU-ARM64: node=$v"
fi
rm -f /mnt/root/var/cache/apt/archives/*.deb /mnt/root/etc/dpkg/dpkg.cfg.d/viommu-unsafe-io
umount /mnt/root/dev /mnt/root/sys /mnt/root/proc
umount /mnt/root
sync
exit "$rc"
EOF
  l1_boot "$STAGE2" 3600 "$A/second-stage.log" \
    -drive "file=$AROOT_IMG.tmp,if=none,format=raw,id=root,cache=unsafe" -device virtio-blk-pci,drive=root
  rm -rf "$STAGE2"
  NODE_VERSION="$(sed -n 's/.*VIOMMU-ARM64: node=\(v[0-9.]*\).*/\1/p' "$A/second-stage.log" | head -1)"
  grep -q 'VIOMMU-ARM64: second stage exit=0' "$A/second-stage.log" && [ -n "$NODE_VERSION" ] || {
    tail -30 "$A/second-stage.log" >&2
    die "second stage failed (log: $A/second-stage.log)"
  }
  mv "$AROOT_IMG.tmp" "$AROOT_IMG"
  echo "$NODE_VERSION" >"$A/root.node-version"
  log "root ready: node $NODE_VERSION"
fi

step 8 "koffi and its arm64 native package (npm pack) in $A/node_modules"
if koffi_ok; then
  log "koffi $(koffi_version) present, skipped"
else
  V="$(koffi_version)"
  [ -n "$V" ] || die "no koffi in $REPO/node_modules (run npm ci)"
  rm -rf "$A/npm.tmp"
  mkdir -p "$A/npm.tmp"
  (cd "$A/npm.tmp" && npm pack --silent "koffi@$V" "@koromix/koffi-linux-arm64@$V" >/dev/null) ||
    die "npm pack koffi@$V @koromix/koffi-linux-arm64@$V failed"
  rm -rf "$A/node_modules"
  mkdir -p "$A/node_modules/koffi" "$A/node_modules/@koromix/koffi-linux-arm64"
  tar -xzf "$A/npm.tmp/koffi-$V.tgz" -C "$A/node_modules/koffi" --strip-components=1
  tar -xzf "$A/npm.tmp/koromix-koffi-linux-arm64-$V.tgz" -C "$A/node_modules/@koromix/koffi-linux-arm64" --strip-components=1
  rm -rf "$A/npm.tmp"
  koffi_ok || die "koffi arm64 native module missing after npm pack"
fi

step 9 "L1 smoke boot: /dev/kvm and node (with koffi) in the arm64 root"
if smoke_ok; then
  log "passed before for this initramfs and root, skipped"
else
  t0=$SECONDS
  # The lab's own job (tools/provision/arm64-lab-job.sh, as tools/guest-lab/arm64-lab.ts runs it),
  # with the command's stdout and stderr ports written to files.
  SMOKE="$(mktemp -d)"
  mkdir -p "$SMOKE/viommu"
  cp "$HERE/arm64-lab-job.sh" "$SMOKE/viommu/script.sh"
  KOROMIX="$(realpath "$REPO/node_modules/@koromix" 2>/dev/null || true)"
  printf "LAB_KOROMIX='%s'\nLAB_KOROMIX_ARM64='%s'\nLAB_TOKEN=VIOMMU-ARM64-SMOKE-EOF\nLAB_WAIT=0\n" \
    "$KOROMIX" "$A/node_modules/@koromix" >"$SMOKE/viommu/job.sh"
  cat >"$SMOKE/viommu/command.sh" <<EOF
#!/bin/sh
cd '$REPO' || exit 125
[ -c /dev/kvm ] && echo "VIOMMU-ARM64: kvm=yes"
exec node -e 'import("koffi").then((k) => console.log("VIOMMU-ARM64: node=" + process.version + " arch=" + process.arch + " koffi=" + typeof k.default.load))'
EOF
  l1_boot "$SMOKE" 900 "$A/smoke.log" -virtfs "local,path=/,mount_tag=host,security_model=none,multidevs=remap,readonly=on" \
    -drive "file=$AROOT_IMG,if=none,format=raw,id=root,readonly=on" -device virtio-blk-pci,drive=root \
    -device virtio-serial-pci -chardev "file,id=out,path=$SMOKE/out" -device virtserialport,chardev=out,name=out \
    -chardev "file,id=err,path=$SMOKE/err" -device virtserialport,chardev=err,name=err
  cat "$SMOKE/out" "$SMOKE/err" >>"$A/smoke.log" 2>/dev/null || true
  if grep -q 'VIOMMU-ARM64: kvm=yes' "$A/smoke.log" && grep -q 'VIOMMU-ARM64: node=.* arch=arm64 koffi=' "$A/smoke.log"; then
    log "L1 has /dev/kvm and runs $(grep -o 'node=.*' "$A/smoke.log" | head -1) in $((SECONDS - t0))s"
    touch "$A/smoke.ok"
    rm -rf "$SMOKE"
  else
    tail -30 "$A/smoke.log" >&2
    die "L1 smoke boot failed (log: $A/smoke.log)"
  fi
fi

step 10 "peer QEMU for arm64 (qemu-system-arm:arm64 and its libraries, unpacked) in $PEER"
if peer_qemu_ok; then
  log "present: $(cat "$PEER/.viommu-peer-ok"), skipped"
else
  chroot_mounts
  root_apt_arm64
  # The dependency closure of the backports build, as arm64 package names (virtual packages in
  # <...> and the host's own architecture left out); arch-all data (firmware ROMs) is not needed
  # for a -kernel boot with no NIC.
  PEER_PKGS="$(in_root apt-cache -t trixie-backports depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances qemu-system-arm:arm64 |
    grep -E '^[a-z0-9][^ ]*:arm64$' | sort -u | tr '\n' ' ')"
  case " $PEER_PKGS " in *" qemu-system-arm:arm64 "*) ;; *) die "no qemu-system-arm:arm64 in the apt lists" ;; esac
  log "$(echo "$PEER_PKGS" | wc -w) packages"
  rm -rf "$PEER" "$PEER.tmp"
  root_download "$PEER.tmp/deb" "-t trixie-backports $PEER_PKGS"
  cleanup_mounts
  for deb in "$PEER.tmp"/deb/*.deb; do dpkg-deb -x "$deb" "$PEER.tmp/x"; done
  VERSION="$(dpkg-deb -f "$PEER.tmp"/deb/qemu-system-arm_*_arm64.deb Version)"
  rm -rf "$PEER.tmp/deb"
  # Merged /usr: the loader and libraries under usr/lib, whichever way a package shipped them.
  if [ -d "$PEER.tmp/x/lib" ] && [ ! -L "$PEER.tmp/x/lib" ]; then
    cp -a "$PEER.tmp/x/lib/." "$PEER.tmp/x/usr/lib/"
    rm -rf "$PEER.tmp/x/lib"
  fi
  echo "qemu-system-arm $VERSION" >"$PEER.tmp/x/.viommu-peer-ok"
  mv "$PEER.tmp/x" "$PEER"
  rm -rf "$PEER.tmp"
  mkdir -p "$A/bin"
  cat >"$PEER_QEMU" <<'EOF'
#!/bin/sh
# Generated by tools/provision/arm64.sh: the arm64 qemu-system-aarch64 in ../peer-qemu, run inside
# the arm64 L1 through its own loader and libraries (not installed in the L1's root).
P="$(cd "$(dirname "$0")/../peer-qemu" && pwd)"
export QEMU_MODULE_DIR="$P/usr/lib/aarch64-linux-gnu/qemu"
exec "$P/usr/lib/ld-linux-aarch64.so.1" --library-path "$P/usr/lib/aarch64-linux-gnu" \
  "$P/usr/bin/qemu-system-aarch64" -L "$P/usr/share/qemu" "$@"
EOF
  chmod +x "$PEER_QEMU"
  peer_qemu_ok || die "peer QEMU incomplete after unpacking (log: $A/apt.log)"
  log "unpacked qemu-system-arm $VERSION ($(du -sm "$PEER" | cut -f1) MiB)"
fi

cat >"$A/manifest.json.tmp" <<EOF
{
  "schema": 1,
  "cache": "$A",
  "qemu": { "version": "$("$QEMU" --version | head -1 | sed -n 's/.*version \([^ ]*\).*/\1/p')", "binary": "$QEMU" },
  "kernel": { "release": "$KVER", "package": "$(cat "$KDIR/package")", "image": "$KDIR/Image", "modules": "$KDIR/modules" },
  "initramfs": "$A/initramfs.cpio.gz",
  "root": "$AROOT_IMG",
  "node": "$(cat "$A/root.node-version")",
  "nodeModules": "$A/node_modules",
  "peerQemu": { "package": "$(cat "$PEER/.viommu-peer-ok")", "wrapper": "$PEER_QEMU" },
  "guestPrograms": [$(for f in "$A"/guest-bin/*; do printf '"%s",' "$(basename "$f")"; done | sed 's/,$//')],
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
mv "$A/manifest.json.tmp" "$A/manifest.json"
echo "[arm64] done in $((SECONDS - START))s; cache $A"
