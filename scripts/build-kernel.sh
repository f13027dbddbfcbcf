#!/usr/bin/env bash
# Builds (or reuses) the Mitosis test kernel from Debian's linux-source-6.12.
#
#   scripts/build-kernel.sh [debug|perf]      prints the build directory (KDIR) last
#
# The build lives outside the repository, in $MITOSIS_CACHE (default
# ~/.cache/mitosis), keyed on the kernel source version, the config fragments and
# the rustc and bindgen versions (the kernel's Rust metadata is tied to the exact
# rustc that produced it). A second run with the same key only prints the path.
set -euo pipefail

variant=${1:-debug}
here=$(cd "$(dirname "$0")" && pwd)
cache=${MITOSIS_CACHE:-$HOME/.cache/mitosis}
tarball=/usr/src/linux-source-6.12.tar.xz
frags=("$here/kernel/base.config")
# Extra make flags of the variant, recorded in the tree for module builds against it,
# and extra boot parameters for its guests (scripts/vmrun.py --append).
makeflags=""
bootparams=""
case "$variant" in
  debug) frags+=("$here/kernel/debug.config") ;;
  perf) frags+=("$here/kernel/bench.config") ;;
  # KASAN with Rust needs a clang-built kernel (see kasan.config).
  # Under KASAN the ACPI interpreter is too slow for the PCI routing method (_PRT):
  # route PCI interrupts from the BIOS table instead.
  kasan) frags+=("$here/kernel/kasan.config"); makeflags="LLVM=1"; bootparams="pci=noacpi" ;;
  *) echo "build-kernel: unknown variant '$variant' (debug|perf|kasan)" >&2; exit 2 ;;
esac

[ -f "$tarball" ] || { echo "build-kernel: $tarball missing; run scripts/setup.sh" >&2; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$( { echo "$srcver"; cat "${frags[@]}"; echo "$makeflags"; rustc --version; bindgen --version; } | sha256sum | cut -c1-16)
kdir="$cache/kernel-$variant-$key"

if [ -f "$kdir/.mitosis-built" ]; then
  echo "$bootparams" > "$kdir/.mitosis-bootparams"
  echo "build-kernel: cached $variant kernel ($srcver) at $kdir" >&2
  echo "$kdir"
  exit 0
fi

echo "build-kernel: building $variant kernel $srcver into $kdir (about 6-10 min on 2 cores)" >&2
start=$(date +%s)
# Built in place: the tree records absolute paths, so it is never moved.
rm -rf "$kdir"
mkdir -p "$kdir"
tar -xf "$tarball" -C "$kdir" --strip-components=1
cd "$kdir"
# shellcheck disable=SC2086
make -s $makeflags rustavailable >&2
# shellcheck disable=SC2086
make -s $makeflags tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "${frags[@]}" >/dev/null
# shellcheck disable=SC2086
make -s $makeflags olddefconfig >/dev/null
# merge_config silently drops options whose dependencies are missing: check them.
missing=0
for f in "${frags[@]}"; do
  while IFS= read -r line; do
    case "$line" in CONFIG_*=y) grep -qx "$line" .config || { echo "build-kernel: $line did not stick" >&2; missing=1; } ;; esac
  done < "$f"
done
[ $missing -eq 0 ] || exit 1
jobs=$(( $(nproc) + 1 ))
# shellcheck disable=SC2086
make -s $makeflags -j"$jobs" bzImage modules >&2
echo "$bootparams" > "$kdir/.mitosis-bootparams"
touch "$kdir/.mitosis-built"
# Older builds of this variant (other keys) are dead weight: drop them.
for old in "$cache"/kernel-"$variant"-*; do
  [ "$old" = "$kdir" ] || rm -rf "$old"
done
echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2
echo "$kdir"
