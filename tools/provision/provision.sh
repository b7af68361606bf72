#!/usr/bin/env bash
# Provision the viommu Linux-guest lab on this machine (Debian 12 host, run as root).
#
#   tools/provision/provision.sh           build whatever is missing (idempotent)
#   tools/provision/provision.sh --check   report what is present; exit 0 if complete, 1 if not
#
# Everything lands in ${VIOMMU_CACHE:-$HOME/.cache/viommu} (outside the repo, so fresh clones
# on the same machine reuse it):
#   trixie-root/            Debian 13 root (debootstrap) with qemu-system-x86 from trixie-backports
#   bin/qemu-system-x86_64  wrapper: runs the root's QEMU through the root's dynamic loader with
#                           --library-path (no chroot), so host paths (UNIX sockets for vfio-user,
#                           disk images, temp dirs) work as-is
#   kernel/vmlinuz          Debian 13 linux-image-6.12*-amd64 bzImage
#   kernel/vmlinux          uncompressed ELF kernel (zstd payload of the bzImage), for the KVM VMM
#   kernel/modules/         the package's /lib/modules/<kver> tree
#   guest-bin/              guest programs from guest/*.c, statically linked
#   initramfs.cpio.gz       base initramfs (newc): busybox, modules, /init, guest programs
#   kvm-lab.cpio.gz         the KVM lab's L1 initramfs: busybox, kvm_amd + 9p (+ vfio) modules,
#                           /init (kvm-lab-init.sh) that mounts the host root over 9p, chroots
#                           and runs one command with /dev/kvm (tools/guest-lab/kvm-lab.ts)
#   kvm-lab/scratch/        writable scratch shared into L1 (tsx's transform cache lives here)
#   manifest.json           QEMU and kernel versions, file list
#
# Test scripts are not baked into the base initramfs: the harness appends a second, small
# gzip'd newc archive holding /viommu/script.sh (the kernel unpacks concatenated archives in
# order), and /init runs that script. See tools/guest-lab/README.md.
#
# The package mirror is taken from this machine's apt sources at run time (or $VIOMMU_MIRROR).
set -euo pipefail
shopt -s nullglob

CACHE="${VIOMMU_CACHE:-$HOME/.cache/viommu}"
ROOT="$CACHE/trixie-root"
KDIR="$CACHE/kernel"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
INITRAMFS_VERSION=3 # bump when the initramfs layout or /init changes
KVM_LAB_VERSION=1   # bump when the L1 initramfs layout changes
START=$SECONDS
STEPS=10
CHECK=0

for arg in "$@"; do
  case "$arg" in
  --check) CHECK=1 ;;
  -h | --help)
    sed -n '2,25p' "$0"
    exit 0
    ;;
  *)
    echo "[provision] unknown argument: $arg" >&2
    exit 2
    ;;
  esac
done

log() { echo "[provision]   $* (t=$((SECONDS - START))s)"; }
step() {
  local n="$1"
  shift
  echo "[provision] step $n/$STEPS: $* (t=$((SECONDS - START))s)"
}
die() {
  echo "[provision] ERROR: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Validity checks: each returns 0 when the step's output is present and usable.

host_ok() {
  local t
  for t in debootstrap zstd cpio gcc xz gzip busybox dpkg-deb depmod readelf; do
    command -v "$t" >/dev/null 2>&1 || return 1
  done
  [ -f /usr/include/linux/vfio.h ] || return 1
  # busybox must be static: it runs inside the guest.
  file_is_static "$(command -v busybox)" || return 1
}

file_is_static() {
  # A static ELF has no PT_INTERP; the bookworm busybox-static package is.
  ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

root_ok() { [ -f "$ROOT/.viommu-debootstrap-ok" ] && [ -x "$ROOT/usr/bin/apt-get" ]; }

qemu_ok() {
  [ -f "$ROOT/.viommu-qemu-ok" ] && [ -x "$ROOT/usr/bin/qemu-system-x86_64" ] &&
    [ -x "$CACHE/bin/qemu-system-x86_64" ] && "$CACHE/bin/qemu-system-x86_64" --version >/dev/null 2>&1
}

kernel_ok() {
  [ -f "$KDIR/.viommu-kernel-ok" ] && [ -s "$KDIR/vmlinuz" ] && [ -s "$KDIR/vmlinux" ] &&
    [ -f "$KDIR/modules/modules.dep" ] && [ "$(head -c 4 "$KDIR/vmlinux" | od -An -tx1 | tr -d ' ')" = "7f454c46" ]
}

guest_bin_ok() {
  # Every guest/*.c has a binary newer than every file in guest/ (sources and headers).
  local src name f
  [ -d "$CACHE/guest-bin" ] || return 1
  for src in "$REPO"/guest/*.c; do
    name="$(basename "$src" .c)"
    [ -x "$CACHE/guest-bin/$name" ] || return 1
    for f in "$REPO"/guest/*; do
      [ "$CACHE/guest-bin/$name" -nt "$f" ] || return 1
    done
  done
}

initramfs_ok() {
  [ -s "$CACHE/initramfs.cpio.gz" ] && [ -f "$CACHE/initramfs.stamp" ] &&
    [ "$(cat "$CACHE/initramfs.stamp")" = "$(initramfs_inputs_hash)" ]
}

initramfs_inputs_hash() {
  # Everything that goes into the base initramfs; a change rebuilds it.
  {
    echo "layout=$INITRAMFS_VERSION"
    cat "$HERE/init.sh" "$HERE/modules.list"
    cat "$KDIR/kver" 2>/dev/null || true
    sha256sum "$CACHE"/guest-bin/* 2>/dev/null || true
    sha256sum "$(command -v busybox)" 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

kvm_lab_ok() {
  [ -s "$CACHE/kvm-lab.cpio.gz" ] && [ -f "$CACHE/kvm-lab.stamp" ] &&
    [ "$(cat "$CACHE/kvm-lab.stamp")" = "$(kvm_lab_inputs_hash)" ]
}

kvm_lab_inputs_hash() {
  {
    echo "layout=$KVM_LAB_VERSION"
    cat "$HERE/kvm-lab-init.sh" "$HERE/kvm-lab-modules.list"
    cat "$KDIR/kver" 2>/dev/null || true
    sha256sum "$(command -v busybox)" 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

kvm_smoke_ok() { [ -f "$CACHE/kvm-lab/smoke.ok" ] && [ "$CACHE/kvm-lab/smoke.ok" -nt "$CACHE/kvm-lab.cpio.gz" ]; }

manifest_ok() {
  [ -s "$CACHE/manifest.json" ] && [ "$CACHE/manifest.json" -nt "$CACHE/initramfs.cpio.gz" ] &&
    [ "$CACHE/manifest.json" -nt "$ROOT/.viommu-qemu-ok" ] && [ "$CACHE/manifest.json" -nt "$KDIR/.viommu-kernel-ok" ] &&
    [ "$CACHE/manifest.json" -nt "$CACHE/kvm-lab.cpio.gz" ]
}

# ---------------------------------------------------------------------------------------------

if [ "$CHECK" = 1 ]; then
  rc=0
  report() {
    if "$2"; then echo "[provision] present: $1"; else
      echo "[provision] MISSING: $1"
      rc=1
    fi
  }
  echo "[provision] cache: $CACHE"
  report "host tools (debootstrap zstd cpio gcc xz busybox-static vfio.h)" host_ok
  report "trixie root ($ROOT)" root_ok
  report "QEMU from trixie-backports ($CACHE/bin/qemu-system-x86_64)" qemu_ok
  report "kernel vmlinuz/vmlinux/modules ($KDIR)" kernel_ok
  report "guest programs ($CACHE/guest-bin)" guest_bin_ok
  report "initramfs ($CACHE/initramfs.cpio.gz)" initramfs_ok
  report "KVM lab L1 initramfs ($CACHE/kvm-lab.cpio.gz)" kvm_lab_ok
  report "KVM lab smoke boot (L1 with /dev/kvm)" kvm_smoke_ok
  report "manifest ($CACHE/manifest.json)" manifest_ok
  if [ -x "$CACHE/bin/qemu-system-x86_64" ]; then
    echo "[provision] qemu: $("$CACHE/bin/qemu-system-x86_64" --version 2>/dev/null | head -1 || echo unusable)"
  fi
  [ -f "$KDIR/kver" ] && echo "[provision] kernel: $(cat "$KDIR/kver")"
  exit "$rc"
fi

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap)"
mkdir -p "$CACHE"

# Mirror: the first non-security Debian URI in this machine's apt sources.
find_mirror() {
  if [ -n "${VIOMMU_MIRROR:-}" ]; then
    echo "$VIOMMU_MIRROR"
    return
  fi
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas: pick URIs from a stanza whose Suites has no "-security".
    uri="$(awk '
      BEGIN { RS=""; FS="\n" }
      {
        u=""; s=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { u=$i; sub(/^URIs:[ \t]*/, "", u); split(u, a, /[ \t]+/); u=a[1] }
          if ($i ~ /^Suites:/) { s=$i }
        }
        if (u != "" && s !~ /-security/ && u ~ /debian\/?$/) { print u; exit }
      }' "$f")"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      uri="$(awk '$1 == "deb" && $0 !~ /-security/ {
               for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")"
      [ -n "$uri" ] && break
    done
  fi
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt sources; set VIOMMU_MIRROR"
  echo "${uri%/}"
}

# chroot helpers: /proc and /dev bind mounts live only while apt runs inside the root.
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
# Remove the root safely: first any mounts left inside it by an interrupted run, then the files
# without crossing into other filesystems.
remove_root() {
  local m
  [ -d "$ROOT" ] || return 0
  awk -v r="$ROOT/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || die "cannot unmount $m"
  done
  rm -rf --one-file-system "$ROOT"
}
in_root() { DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 chroot "$ROOT" "$@"; }

# stage_modules STAGE LIST: the modules named in LIST and their dependencies (modules.dep),
# decompressed into STAGE/lib/modules/<kver>/, and STAGE/etc/viommu/modules listing their plain
# names in load order (dependencies first) for /init's insmod loop.
stage_modules() {
  local stage="$1" list="$2" rel dst
  mkdir -p "$stage/lib/modules/$KVER" "$stage/etc/viommu"
  "$HERE/resolve-modules.sh" "$KDIR/modules" "$list" >"$stage/etc/viommu/modules.order"
  while read -r rel; do
    [ -n "$rel" ] || continue
    dst="$stage/lib/modules/$KVER/$(basename "$rel")"
    case "$rel" in
    *.ko.xz) xz -dc "$KDIR/modules/$rel" >"${dst%.xz}" ;;
    *.ko.zst) zstd -qdc "$KDIR/modules/$rel" >"${dst%.zst}" ;;
    *.ko.gz) gzip -dc "$KDIR/modules/$rel" >"${dst%.gz}" ;;
    *) cp "$KDIR/modules/$rel" "$dst" ;;
    esac
  done <"$stage/etc/viommu/modules.order"
  sed -e 's#.*/##' -e 's#\.ko\(\.xz\|\.zst\|\.gz\)\?$##' "$stage/etc/viommu/modules.order" \
    >"$stage/etc/viommu/modules"
  echo "$KVER" >"$stage/etc/viommu/kver"
}

# ---------------------------------------------------------------------------------------------
step 1 "host packages (debootstrap zstd cpio gcc xz-utils busybox-static binutils kmod)"
if host_ok; then
  log "host tools already installed, skipped"
else
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    debootstrap zstd cpio gcc libc6-dev linux-libc-dev xz-utils gzip busybox-static binutils kmod
  host_ok || die "host tools still missing after apt-get install"
fi

MIRROR=""
step 2 "debootstrap Debian 13 (trixie) into $ROOT"
if root_ok; then
  log "trixie root present, skipped"
else
  MIRROR="$(find_mirror)"
  log "mirror from apt sources: $MIRROR"
  remove_root
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    {
      tail -20 "$CACHE/debootstrap.log" >&2
      die "debootstrap failed (log: $CACHE/debootstrap.log)"
    }
  touch "$ROOT/.viommu-debootstrap-ok"
fi

step 3 "qemu-system-x86 from trixie-backports inside the root"
if qemu_ok; then
  log "QEMU present: $("$CACHE/bin/qemu-system-x86_64" --version | head -1), skipped"
else
  [ -n "$MIRROR" ] || MIRROR="$(find_mirror)"
  cat >"$ROOT/etc/apt/sources.list.d/viommu.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: trixie trixie-updates trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # debootstrap's own sources.list names trixie again; keep a single source of truth.
  : >"$ROOT/etc/apt/sources.list"
  # No services may start inside the root.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  chroot_mounts
  in_root apt-get update -q >"$CACHE/apt-root.log" 2>&1 || {
    tail -20 "$CACHE/apt-root.log" >&2
    die "apt-get update inside the root failed"
  }
  in_root apt-get install -y -q --no-install-recommends -t trixie-backports \
    qemu-system-x86 qemu-utils >>"$CACHE/apt-root.log" 2>&1 || {
    tail -20 "$CACHE/apt-root.log" >&2
    die "installing qemu-system-x86 inside the root failed (log: $CACHE/apt-root.log)"
  }
  cleanup_mounts
  mkdir -p "$CACHE/bin"
  # The wrapper runs the root's QEMU on the host kernel without chroot: the root's ld.so loads
  # the root's libraries; -L points at the root's firmware (qboot, SeaBIOS, option ROMs) and
  # QEMU_MODULE_DIR at its loadable modules. All paths given to QEMU are host paths.
  cat >"$CACHE/bin/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# Generated by tools/provision/provision.sh: QEMU from the trixie root, run without chroot.
ROOT="$(cd "$(dirname "$0")/../trixie-root" && pwd)"
LIBS="$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu/pulseaudio"
export QEMU_MODULE_DIR="$ROOT/usr/lib/x86_64-linux-gnu/qemu"
exec "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$LIBS" \
  "$ROOT/usr/bin/qemu-system-x86_64" -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios" "$@"
EOF
  chmod +x "$CACHE/bin/qemu-system-x86_64"
  "$CACHE/bin/qemu-system-x86_64" --version >/dev/null || die "QEMU wrapper does not run"
  touch "$ROOT/.viommu-qemu-ok"
  log "installed: $("$CACHE/bin/qemu-system-x86_64" --version | head -1)"
fi

step 4 "Debian 13 kernel linux-image-6.12*-amd64: vmlinuz, vmlinux, modules"
if kernel_ok; then
  log "kernel $(cat "$KDIR/kver") present, skipped"
else
  chroot_mounts
  # The trixie (not backports) 6.12 signed image; the highest version if several are listed.
  PKG="$(in_root apt-cache search --names-only '^linux-image-6\.12\.[0-9]+.*-amd64$' |
    awk '{print $1}' | grep -E '^linux-image-6\.12\.[0-9]+\+deb13-amd64$' | sort -V | tail -1)"
  [ -n "$PKG" ] || die "no linux-image-6.12*-amd64 package found in trixie"
  log "kernel package: $PKG"
  rm -rf "$ROOT/tmp/viommu-kernel"
  mkdir -p "$ROOT/tmp/viommu-kernel"
  in_root sh -c "cd /tmp/viommu-kernel && apt-get download -q '$PKG'" >>"$CACHE/apt-root.log" 2>&1 ||
    die "apt-get download $PKG failed"
  cleanup_mounts
  DEB="$(ls "$ROOT"/tmp/viommu-kernel/*.deb | head -1)"
  rm -rf "$KDIR" "$KDIR.tmp"
  mkdir -p "$KDIR.tmp/x"
  dpkg-deb -x "$DEB" "$KDIR.tmp/x"
  VMLINUZ="$(ls "$KDIR.tmp"/x/boot/vmlinuz-* | head -1)"
  KVER="${VMLINUZ##*/vmlinuz-}"
  cp "$VMLINUZ" "$KDIR.tmp/vmlinuz"
  cp "$KDIR.tmp"/x/boot/config-* "$KDIR.tmp/config" 2>/dev/null || true
  cp "$KDIR.tmp"/x/boot/System.map-* "$KDIR.tmp/System.map" 2>/dev/null || true
  # The package ships no modules.dep (its postinst runs depmod): run the host's depmod on a
  # base directory laid out as <base>/lib/modules/<kver>.
  mkdir -p "$KDIR.tmp/base/lib/modules"
  if [ -d "$KDIR.tmp/x/usr/lib/modules/$KVER" ]; then
    mv "$KDIR.tmp/x/usr/lib/modules/$KVER" "$KDIR.tmp/base/lib/modules/$KVER"
  else
    mv "$KDIR.tmp/x/lib/modules/$KVER" "$KDIR.tmp/base/lib/modules/$KVER"
  fi
  depmod -b "$KDIR.tmp/base" "$KVER"
  mv "$KDIR.tmp/base/lib/modules/$KVER" "$KDIR.tmp/modules"
  rm -rf "$KDIR.tmp/base"
  rm -rf "$KDIR.tmp/x"
  echo "$KVER" >"$KDIR.tmp/kver"
  echo "$PKG" >"$KDIR.tmp/package"
  # vmlinux: the bzImage's payload (setup header payload_offset 0x248 / payload_length 0x24C,
  # relative to the protected-mode code at (setup_sects+1)*512) is a zstd frame followed by the
  # 4-byte uncompressed size.
  "$HERE/extract-vmlinux.sh" "$KDIR.tmp/vmlinuz" "$KDIR.tmp/vmlinux"
  touch "$KDIR.tmp/.viommu-kernel-ok"
  mv "$KDIR.tmp" "$KDIR"
  rm -rf "$ROOT/tmp/viommu-kernel"
  kernel_ok || die "kernel extraction incomplete"
  log "kernel $KVER: vmlinuz $(stat -c %s "$KDIR/vmlinuz") B, vmlinux $(stat -c %s "$KDIR/vmlinux") B"
fi
KVER="$(cat "$KDIR/kver")"

step 5 "guest programs (guest/*.c, static)"
if guest_bin_ok; then
  log "guest programs up to date, skipped"
else
  mkdir -p "$CACHE/guest-bin"
  for src in "$REPO"/guest/*.c; do
    name="$(basename "$src" .c)"
    gcc -O2 -static -Wall -Wextra -Werror -std=gnu11 -I"$REPO/guest" -o "$CACHE/guest-bin/$name.tmp" "$src"
    mv "$CACHE/guest-bin/$name.tmp" "$CACHE/guest-bin/$name"
    log "built $name"
  done
fi

step 6 "base initramfs ($CACHE/initramfs.cpio.gz)"
if initramfs_ok; then
  log "initramfs up to date, skipped"
else
  STAGE="$CACHE/initramfs.stage"
  rm -rf "$STAGE"
  mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc/viommu,usr/bin,viommu}
  mkdir -p "$STAGE/lib/modules/$KVER"
  cp "$(command -v busybox)" "$STAGE/bin/busybox"
  cp "$HERE/init.sh" "$STAGE/init"
  chmod 755 "$STAGE/init"
  cp "$CACHE"/guest-bin/* "$STAGE/usr/bin/"
  stage_modules "$STAGE" "$HERE/modules.list"
  log "modules: $(tr '\n' ' ' <"$STAGE/etc/viommu/modules")"
  (cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) |
    gzip -6 >"$CACHE/initramfs.cpio.gz.tmp"
  mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
  initramfs_inputs_hash >"$CACHE/initramfs.stamp"
  rm -rf "$STAGE"
  log "initramfs: $(stat -c %s "$CACHE/initramfs.cpio.gz") bytes"
fi

step 7 "smoke boot (kernel + initramfs under QEMU TCG)"
if [ -f "$CACHE/smoke.ok" ] && [ "$CACHE/smoke.ok" -nt "$CACHE/initramfs.cpio.gz" ]; then
  log "smoke boot already passed for this initramfs, skipped"
else
  SMOKE="$(mktemp -d)"
  printf '#!/bin/sh\necho "RESULT name=smoke status=pass detail=kernel=$(uname -r)"\n' >"$SMOKE/script.sh"
  (cd "$SMOKE" && mkdir -p viommu && cp script.sh viommu/script.sh &&
    printf 'viommu\nviommu/script.sh\n' | cpio -o -H newc --quiet -R 0:0 | gzip >extra.cpio.gz)
  cat "$CACHE/initramfs.cpio.gz" "$SMOKE/extra.cpio.gz" >"$SMOKE/initrd"
  t0=$SECONDS
  timeout -k 5 180 "$CACHE/bin/qemu-system-x86_64" -machine q35 -accel tcg -m 512 -smp 1 -nographic \
    -no-reboot -nic none -kernel "$KDIR/vmlinuz" -initrd "$SMOKE/initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4" </dev/null >"$SMOKE/serial.log" 2>&1 || true
  if grep -q 'RESULT name=smoke status=pass' "$SMOKE/serial.log"; then
    log "guest booted and ran the script in $((SECONDS - t0))s"
    touch "$CACHE/smoke.ok"
    rm -rf "$SMOKE"
  else
    tail -40 "$SMOKE/serial.log" >&2
    die "smoke boot failed (serial log: $SMOKE/serial.log)"
  fi
fi

step 8 "KVM lab L1 initramfs ($CACHE/kvm-lab.cpio.gz)"
if kvm_lab_ok; then
  log "L1 initramfs up to date, skipped"
else
  STAGE="$CACHE/kvm-lab.stage"
  rm -rf "$STAGE"
  mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,host,scratch,viommu}
  cp "$(command -v busybox)" "$STAGE/bin/busybox"
  cp "$HERE/kvm-lab-init.sh" "$STAGE/init"
  chmod 755 "$STAGE/init"
  stage_modules "$STAGE" "$HERE/kvm-lab-modules.list"
  log "modules: $(tr '\n' ' ' <"$STAGE/etc/viommu/modules")"
  (cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) |
    gzip -6 >"$CACHE/kvm-lab.cpio.gz.tmp"
  mv "$CACHE/kvm-lab.cpio.gz.tmp" "$CACHE/kvm-lab.cpio.gz"
  kvm_lab_inputs_hash >"$CACHE/kvm-lab.stamp"
  rm -rf "$STAGE"
  log "L1 initramfs: $(stat -c %s "$CACHE/kvm-lab.cpio.gz") bytes"
fi
mkdir -p "$CACHE/kvm-lab/scratch"

step 9 "KVM lab smoke boot (L1 under TCG -cpu max: kvm_amd, /dev/kvm, the host's node over 9p)"
if kvm_smoke_ok; then
  log "KVM lab smoke boot already passed for this L1 initramfs, skipped"
else
  SMOKE="$(mktemp -d)"
  mkdir -p "$SMOKE/job/viommu"
  printf 'LAB_WRITABLE=""\nLAB_HUGEPAGES=0\nLAB_TOKEN=VIOMMU-SMOKE-EOF\n' >"$SMOKE/job/viommu/job.sh"
  printf '#!/bin/sh\ntest -c /dev/kvm && echo "kvm-smoke: /dev/kvm present"\n%s -e "console.log(\\"kvm-smoke: node \\" + process.version)"\n' \
    "$(command -v node || echo node)" >"$SMOKE/job/viommu/command.sh"
  (cd "$SMOKE/job" && find viommu | cpio -o -H newc --quiet -R 0:0 | gzip >"$SMOKE/job.cpio.gz")
  cat "$CACHE/kvm-lab.cpio.gz" "$SMOKE/job.cpio.gz" >"$SMOKE/initrd"
  t0=$SECONDS
  # The host stops QEMU once /init reports the exit status (it would otherwise wait 60 s).
  timeout -k 5 300 "$CACHE/bin/qemu-system-x86_64" -machine q35 -accel tcg,thread=multi -cpu max \
    -smp 2 -m 2048 -nodefaults -no-user-config -display none -monitor none -serial "file:$SMOKE/serial.log" \
    -no-reboot -kernel "$KDIR/vmlinuz" -initrd "$SMOKE/initrd" -append "console=ttyS0 panic=-1 loglevel=4" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$CACHE/kvm-lab/scratch,mount_tag=scratch,security_model=none,multidevs=remap" \
    -device virtio-serial-pci -chardev "file,id=out,path=$SMOKE/out" -device virtserialport,chardev=out,name=out \
    -chardev "file,id=err,path=$SMOKE/err" -device virtserialport,chardev=err,name=err </dev/null >"$SMOKE/qemu.log" 2>&1 &
  qpid=$!
  while kill -0 "$qpid" 2>/dev/null && ! grep -q -E 'VIOMMU-KVM-LAB: (exit=|failed)' "$SMOKE/serial.log" 2>/dev/null; do
    sleep 1
  done
  sleep 1
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  if grep -q 'VIOMMU-KVM-LAB: exit=0' "$SMOKE/serial.log" && grep -q 'kvm-smoke: /dev/kvm present' "$SMOKE/out" &&
    grep -q 'kvm-smoke: node v' "$SMOKE/out"; then
    log "L1 booted, loaded kvm_amd and ran the host's node in $((SECONDS - t0))s: $(grep -o 'node v.*' "$SMOKE/out")"
    touch "$CACHE/kvm-lab/smoke.ok"
    rm -rf "$SMOKE"
  else
    grep 'VIOMMU-KVM-LAB' "$SMOKE/serial.log" >&2 || tail -30 "$SMOKE/serial.log" >&2
    cat "$SMOKE/qemu.log" "$SMOKE/err" >&2 2>/dev/null || true
    die "KVM lab smoke boot failed (serial log: $SMOKE/serial.log)"
  fi
fi

step 10 "manifest ($CACHE/manifest.json)"
if manifest_ok; then
  log "manifest up to date, skipped"
else
  QEMU_VERSION="$("$CACHE/bin/qemu-system-x86_64" --version | head -1 | sed -n 's/.*version \([^ ]*\).*/\1/p')"
  QEMU_PKG="$(in_root dpkg-query -W -f '${Version}' qemu-system-x86 2>/dev/null || echo unknown)"
  cat >"$CACHE/manifest.json.tmp" <<EOF
{
  "schema": 1,
  "cache": "$CACHE",
  "qemu": {
    "version": "$QEMU_VERSION",
    "package": "qemu-system-x86 $QEMU_PKG",
    "binary": "$CACHE/bin/qemu-system-x86_64",
    "invocation": "root dynamic loader with --library-path (no chroot)"
  },
  "kernel": {
    "release": "$KVER",
    "package": "$(cat "$KDIR/package")",
    "vmlinuz": "$KDIR/vmlinuz",
    "vmlinux": "$KDIR/vmlinux",
    "modules": "$KDIR/modules"
  },
  "initramfs": "$CACHE/initramfs.cpio.gz",
  "kvmLab": { "initramfs": "$CACHE/kvm-lab.cpio.gz", "scratch": "$CACHE/kvm-lab/scratch", "layout": $KVM_LAB_VERSION },
  "guestPrograms": [$(for f in "$CACHE"/guest-bin/*; do printf '"%s",' "$(basename "$f")"; done | sed 's/,$//')],
  "initramfsLayout": $INITRAMFS_VERSION,
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
  mv "$CACHE/manifest.json.tmp" "$CACHE/manifest.json"
  log "QEMU $QEMU_VERSION, kernel $KVER"
fi

# The arm64 lab, last (its own script and cache subfolder): a failure or a timeout there leaves
# the x86 lab, manifest included, complete.
"$HERE/arm64.sh" || echo "[provision] WARNING: arm64 lab provisioning failed (tools/provision/arm64.sh); arm64 tests will be SKIPPED"
echo "[provision] done in $((SECONDS - START))s; cache $CACHE"
