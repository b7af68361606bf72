#!/usr/bin/env bash
# extract-vmlinux.sh BZIMAGE OUT: write the uncompressed ELF kernel held in an x86 bzImage.
# Uses the setup header: setup_sects (0x1F1, 0 means 4), payload_offset (0x248) and
# payload_length (0x24C), both relative to the protected-mode code at (setup_sects+1)*512.
# The payload is the compressed vmlinux followed by its 4-byte little-endian size. zstd, xz and
# gzip payloads are handled; the result must be an ELF file.
set -euo pipefail
in="$1"
out="$2"
u8() { od -An -tu1 -j "$2" -N 1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N 4 "$1" | tr -d ' '; }
[ "$(dd if="$in" bs=1 skip=$((0x202)) count=4 status=none)" = "HdrS" ] || {
  echo "extract-vmlinux: $in is not a bzImage (no HdrS)" >&2
  exit 1
}
setup_sects="$(u8 "$in" $((0x1F1)))"
[ "$setup_sects" = 0 ] && setup_sects=4
pm=$(((setup_sects + 1) * 512))
poff="$(u32 "$in" $((0x248)))"
plen="$(u32 "$in" $((0x24C)))"
start=$((pm + poff))
magic="$(od -An -tx1 -j "$start" -N 4 "$in" | tr -d ' \n')"
payload() { dd if="$in" iflag=skip_bytes,count_bytes skip="$start" count=$((plen - 4)) bs=1M status=none; }
case "$magic" in
28b52ffd) payload | zstd -qdc >"$out.tmp" ;;
fd377a58) payload | xz -dc >"$out.tmp" ;;
1f8b*) payload | gzip -dc >"$out.tmp" ;;
*)
  echo "extract-vmlinux: unknown payload magic $magic at $start" >&2
  exit 1
  ;;
esac
[ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] || {
  echo "extract-vmlinux: payload did not decompress to an ELF file" >&2
  exit 1
}
mv "$out.tmp" "$out"
