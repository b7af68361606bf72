#!/bin/sh
# Coverage-guided fuzzing with Jazzer.js (libFuzzer) of one target in fuzz/, for long runs:
#   tools/fuzz/run.sh virtio-iommu-request|vfio-user-message [seconds, default 60]
# New inputs that reach new coverage are added to fuzz/corpus/<target>/ (replayed by
# test/fuzz/corpus-replay.test.ts in `npm test`); a crash is written as crash-* and fails.
# Jazzer.js 4's prebuilt native fuzzer needs glibc 2.38; on an older host it runs under the
# guest lab's Debian 13 loader and libraries (tools/provision/provision.sh provides them).
set -eu
target=${1:?usage: tools/fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-60}
cd "$(dirname "$0")/../.."
[ -f "fuzz/$target.js" ] || { echo "no fuzz target fuzz/$target.js" >&2; exit 2; }
corpus="fuzz/corpus/$target"
mkdir -p "$corpus"
run=""
glibc=$(ldd --version 2>/dev/null | head -1 | sed 's/.* //')
if [ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -1)" != "2.38" ]; then
  root=${VIOMMU_CACHE:-$HOME/.cache/viommu}/trixie-root
  [ -x "$root/lib64/ld-linux-x86-64.so.2" ] || {
    echo "glibc $glibc is older than 2.38 and the guest lab root ($root) is missing: run tools/provision/provision.sh" >&2
    exit 2
  }
  run="$root/lib64/ld-linux-x86-64.so.2 --library-path $root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
  echo "fuzz: host glibc $glibc < 2.38, running node under $root's loader" >&2
fi
sync=""
[ "$target" = virtio-iommu-request ] && sync=--sync
# shellcheck disable=SC2086
exec $run "$(command -v node)" --import tsx node_modules/.bin/jazzer "fuzz/$target" $sync \
  --includes src -- "$corpus" -max_total_time="$seconds" -print_final_stats=1
