#!/usr/bin/env bash
# Builds the staged DKMS source tree with dkms itself, in private trees (nothing under
# /var/lib/dkms or /lib/modules is touched), against the kernel build at KDIR, and
# checks the module it produced.
#   scripts/install/dkms-build.sh STAGE DKMS_VERSION KDIR
set -euo pipefail
stage=$(cd "$1" && pwd) ver=$2 kdir=$(cd "$3" && pwd)
command -v dkms >/dev/null || { echo "dkms-build: dkms is not installed (make setup installs it)" >&2; exit 1; }
krel=$(cat "$kdir/include/config/kernel.release")
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
opts=(-m mitosis -v "$ver" -k "$krel" --sourcetree "$stage/usr/src" --dkmstree "$tree"
      --installtree "$tree/install")
dkms add "${opts[@]}" >/dev/null
if ! dkms build "${opts[@]}" --kernelsourcedir "$kdir" >"$tree.log" 2>&1; then
  cat "$tree.log" >&2
  find "$tree" -name make.log -exec tail -30 {} \; >&2
  echo "dkms-build: dkms build failed" >&2
  rm -f "$tree.log"
  exit 1
fi
rm -f "$tree.log"
ko=$(find "$tree/mitosis/$ver/$krel" -name 'mitosis.ko*' | head -1)
[ -n "$ko" ] || { echo "dkms-build: dkms reported success but built no mitosis.ko" >&2; exit 1; }
magic=$(modinfo -F vermagic "$ko")
case "$magic" in "$krel "*) ;; *) echo "dkms-build: $ko has vermagic '$magic', not $krel" >&2; exit 1 ;; esac
echo "dkms-build: dkms built mitosis $ver for $krel ($(stat -c %s "$ko") bytes)"
