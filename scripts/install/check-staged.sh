#!/usr/bin/env bash
# Checks what `make install` and `make dkms-install` put into a staging tree.
#   scripts/install/check-staged.sh STAGE DKMS_VERSION
set -euo pipefail
stage=$1 ver=$2
fail=0
need() { [ -e "$stage/$1" ] || { echo "check-staged: missing $1" >&2; fail=1; }; }
need usr/bin/mitosis
need usr/lib/libmitosis.so
need usr/lib/libmitosis.a
need usr/include/mitosis.h
need usr/lib/python3/dist-packages/mitosis/__init__.py
need etc/udev/rules.d/60-mitosis.rules
need etc/modprobe.d/mitosis.conf
need "usr/src/mitosis-$ver/dkms.conf"
need "usr/src/mitosis-$ver/Kbuild"
need "usr/src/mitosis-$ver/src/mitosis_main.rs"
ko=$(find "$stage/lib/modules" -name mitosis.ko 2>/dev/null | head -1)
[ -n "$ko" ] || { echo "check-staged: mitosis.ko not installed under lib/modules" >&2; fail=1; }
case "$ko" in */updates/*) ;; *) echo "check-staged: mitosis.ko not in updates/: $ko" >&2; fail=1 ;; esac
"$stage/usr/bin/mitosis" --version >/dev/null || fail=1
grep -q 'MODE="0660"' "$stage/etc/udev/rules.d/60-mitosis.rules" || fail=1
# The dkms.conf parses as the shell file dkms sources, with the fields dkms needs.
( set +u; kernel_source_dir=/k; . "$stage/usr/src/mitosis-$ver/dkms.conf"
  [ "$PACKAGE_NAME" = mitosis ] && [ "$PACKAGE_VERSION" = "$ver" ] && [ "${BUILT_MODULE_NAME[0]}" = mitosis ] \
    && [ "${MAKE[0]}" = "make KDIR=/k module" ] ) || { echo "check-staged: dkms.conf fields" >&2; fail=1; }
[ $fail -eq 0 ] && echo "check-staged: install and dkms-install staged every file"
exit $fail
