#!/usr/bin/env bash
# resolve-modules.sh MODDIR LIST: print the module files (paths relative to MODDIR) needed for
# the module names in LIST (one a line, '#' comments; a trailing '?' marks an optional one),
# dependencies first, each once, using MODDIR/modules.dep. Built-in modules
# (modules.builtin) are skipped; a missing non-optional module is an error.
set -euo pipefail
moddir="$1"
list="$2"
declare -A path_of=() deps_of=() seen=()
while IFS= read -r line; do
  file="${line%%:*}"
  name="${file##*/}"
  name="${name%%.ko*}"
  name="${name//-/_}"
  path_of[$name]="$file"
  deps_of[$file]="${line#*:}"
done <"$moddir/modules.dep"
declare -A builtin=()
if [ -f "$moddir/modules.builtin" ]; then
  while IFS= read -r b; do
    b="${b##*/}"
    b="${b%%.ko*}"
    builtin[${b//-/_}]=1
  done <"$moddir/modules.builtin"
fi
visit() {
  local file="$1" d
  [ -n "${seen[$file]:-}" ] && return 0
  seen[$file]=1
  for d in ${deps_of[$file]}; do visit "$d"; done
  echo "$file"
}
while IFS= read -r want; do
  want="${want%%#*}"
  want="$(echo "$want" | tr -d '[:space:]')"
  [ -n "$want" ] || continue
  optional=0
  case "$want" in *\?) optional=1 want="${want%\?}" ;; esac
  want="${want//-/_}"
  if [ -n "${path_of[$want]:-}" ]; then
    visit "${path_of[$want]}"
  elif [ -n "${builtin[$want]:-}" ]; then
    echo "resolve-modules: $want is built in" >&2
  elif [ "$optional" = 1 ]; then
    echo "resolve-modules: optional $want not found, skipped" >&2
  else
    echo "resolve-modules: module $want not found in $moddir" >&2
    exit 1
  fi
done <"$list"
