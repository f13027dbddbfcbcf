#!/usr/bin/env bash
# Builds the guest initramfs: busybox, rdma (iproute2) with its libraries, the module,
# the static user-space tools and the scenario scripts.
#
#   scripts/build-image.sh MODULE.ko BINDIR LIBMITOSIS.so OUT.cpio.gz
#
# With the Python package and the function handlers (their interpreter comes in a
# separate cached fragment, scripts/build-python.sh, appended for the scenarios that
# run Python).
set -euo pipefail
ko=$1 bindir=$2 sharedlib=$3 out=$4
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# The guest's root directory: mktemp's 0700 would keep every non-root process (a
# child resumed as an unprivileged user) from opening any path.
chmod 0755 "$stage"

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,scenarios,etc}
cp /bin/busybox "$stage/bin/busybox"
file /bin/busybox | grep -q "statically linked" || { echo "build-image: /bin/busybox is not static (install busybox-static)" >&2; exit 1; }
cp /usr/bin/rdma "$stage/usr/bin/rdma"
# tc (iproute2): the adversarial scenario delays a link with netem.
cp /usr/sbin/tc "$stage/usr/sbin/tc"
# rdma, tc, fork-dyn and hostile-peer are dynamic: bring their loader and libraries at
# their paths; hostile-peer's verbs library loads the rxe provider named by
# /etc/libibverbs.d/rxe.driver.
rxe_provider=$(ls /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so)
for exe in /usr/bin/rdma /usr/sbin/tc "$bindir/fork-dyn" "$bindir/hostile-peer" $rxe_provider; do
  ldd "$exe" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
done
for lib in $rxe_provider; do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
mkdir -p "$stage/etc/libibverbs.d"
cp /etc/libibverbs.d/rxe.driver "$stage/etc/libibverbs.d/"
cp "$ko" "$stage/mitosis.ko"
cp "$bindir/mitosis-test" "$bindir/fork-dyn" "$bindir/hostile-peer" "$bindir/norandom" "$stage/bin/"
# The launcher at fixed addresses (Makefile, guest-bins).
cp "$bindir/mitosis-fixed" "$stage/bin/mitosis"
cp "$root/tests/guest/rootfs/init" "$stage/init"
cp "$root"/tests/scenarios/*.sh "$root"/tests/scenarios/*.py "$stage/scenarios/"
# The Python package (with the shared library it loads) where Debian's python3.11
# looks first, and the function handlers.
pkg="$stage/usr/local/lib/python3.11/dist-packages/mitosis"
mkdir -p "$pkg"
cp "$root"/python/mitosis/*.py "$pkg/"
cp "$sharedlib" "$pkg/libmitosis.so"
mkdir -p "$stage/functions"
cp -r "$root"/functions/serve.py "$root"/functions/handlers "$root"/functions/templates \
  "$root"/functions/data "$stage/functions/"
chmod +x "$stage/init"
echo "root:x:0:0:root:/:/bin/sh" > "$stage/etc/passwd"
(cd "$stage" && find . | cpio -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
echo "build-image: $out ($(du -h "$out" | cut -f1))" >&2
