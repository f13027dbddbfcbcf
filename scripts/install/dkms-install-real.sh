#!/usr/bin/env bash
# `make dkms-install` for real: the sources into /usr/src, then dkms add, build and
# install with dkms's default trees (/var/lib/dkms, /lib/modules/KVER/updates/dkms,
# depmod), for the test kernel at KDIR, then dkms remove. Checks that the module
# landed where modprobe looks, with that kernel's vermagic and in modules.dep, and
# that removing it takes it away again; in between, that the kernel install hook
# (/etc/kernel/postinst.d/dkms) rebuilds and installs it once it was taken away.
#   scripts/install/dkms-install-real.sh KDIR DKMS_VERSION [MODTREE.cpio.gz] [NEW_KDIR]
#
# With NEW_KDIR, a kernel of another release (the kasan variant's): after the checks
# above, it is "installed" (its /lib/modules/REL with a `build` link) and its install
# hook run, which must build the module for that release with that kernel's compiler
# (clang there) and install it beside the first release's, which stays.
#
# With MODTREE, the installed /lib/modules/KVER (without its `build` link) is also
# packed as an initramfs fragment, so a guest booting that kernel can `modprobe` the
# module dkms installed (the foundation scenario's `dkms-modprobe` check). The fragment
# is removed first and written only when the install passed.
#
# The test kernel is no kernel this machine boots, so /lib/modules/KVER is made for it
# (its `build` link points at KDIR, as a headers package would) and removed again, with
# everything else this script created, on every exit. It does not run (and says
# SKIPPED, not passed) as non-root, or when /lib/modules/KVER or /usr/src/mitosis-VER
# already exists: a real kernel of the same release, or a real install, is never
# touched.
set -euo pipefail
kdir=$(cd "$1" && pwd) ver=$2 modtree=${3:-} newkdir=${4:-}
[ -n "$modtree" ] && rm -f "$modtree"
krel=$(cat "$kdir/include/config/kernel.release")
moddir=/lib/modules/$krel src=/usr/src/mitosis-$ver
newrel= newmoddir=
if [ -n "$newkdir" ]; then
  newkdir=$(cd "$newkdir" && pwd)
  newrel=$(cat "$newkdir/include/config/kernel.release")
  [ "$newrel" != "$krel" ] || { echo "dkms-install-real: $newkdir is release $krel too: no second release" >&2; exit 1; }
  newmoddir=/lib/modules/$newrel
fi
skip() { echo "dkms-install-real: SKIPPED (not run): $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root"
command -v dkms >/dev/null || { echo "dkms-install-real: dkms is not installed (make setup installs it)" >&2; exit 1; }
[ -e "$moddir" ] && skip "$moddir exists on this machine"
[ -n "$newmoddir" ] && [ -e "$newmoddir" ] && skip "$newmoddir exists on this machine"
[ -e "$src" ] && skip "$src exists on this machine"
dkms status -m mitosis -v "$ver" 2>/dev/null | grep -q . && skip "dkms already knows mitosis/$ver"

stage= log=
cleanup() {
  [ -n "$stage" ] && rm -rf "$stage"
  [ -n "$log" ] && rm -f "$log" "$log.hook"
  dkms remove -m mitosis -v "$ver" --all >/dev/null 2>&1 || true
  rm -rf "$moddir" "$src"
  [ -n "$newmoddir" ] && rm -rf "$newmoddir"
  rmdir /lib/modules 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$moddir"
ln -s "$kdir" "$moddir/build"
log=$(mktemp)
if ! make -s dkms-install KVER="$krel" >"$log" 2>&1; then
  cat "$log" >&2
  find /var/lib/dkms/mitosis -name make.log -exec tail -30 {} \; >&2 2>/dev/null || true
  echo "dkms-install-real: make dkms-install failed" >&2
  exit 1
fi
fail=0
dkms status -m mitosis -v "$ver" -k "$krel" | grep -q installed \
  || { echo "dkms-install-real: dkms status does not say installed" >&2; fail=1; }
ko=$(modinfo -k "$krel" -n mitosis 2>/dev/null || true)
case "$ko" in "$moddir"/updates/dkms/mitosis.ko*) ;; *) echo "dkms-install-real: modinfo -k $krel finds '$ko', not updates/dkms" >&2; fail=1 ;; esac
magic=$(modinfo -k "$krel" -F vermagic mitosis 2>/dev/null || true)
case "$magic" in "$krel "*) ;; *) echo "dkms-install-real: vermagic '$magic', not $krel" >&2; fail=1 ;; esac
grep -q 'updates/dkms/mitosis.ko' "$moddir/modules.dep" \
  || { echo "dkms-install-real: depmod did not list the module" >&2; fail=1; }
# A kernel installed later: its package's postinst runs the kernel hooks, and dkms's
# (/etc/kernel/postinst.d/dkms KVER) must build and install the module for it with no
# one asking (AUTOINSTALL). Here the "new" kernel is the same release with the module
# taken away first: this machine has no second release to install.
hook=/etc/kernel/postinst.d/dkms
autoinstalled=
if [ $fail -eq 0 ]; then
  if ! dkms uninstall -m mitosis -v "$ver" -k "$krel" >"$log.hook" 2>&1 \
      || ! dkms unbuild -m mitosis -v "$ver" -k "$krel" >>"$log.hook" 2>&1; then
    cat "$log.hook" >&2; echo "dkms-install-real: dkms uninstall/unbuild failed" >&2; fail=1
  elif [ -n "$(find "$moddir" -name 'mitosis.ko*')" ]; then
    echo "dkms-install-real: dkms uninstall left the module installed" >&2; fail=1
  elif [ ! -x "$hook" ]; then
    echo "dkms-install-real: no $hook (the dkms package installs it)" >&2; fail=1
  elif ! "$hook" "$krel" >"$log.hook" 2>&1; then
    cat "$log.hook" >&2; echo "dkms-install-real: $hook $krel failed" >&2; fail=1
  elif ! dkms status -m mitosis -v "$ver" -k "$krel" | grep -q installed \
      || ! grep -q 'updates/dkms/mitosis.ko' "$moddir/modules.dep"; then
    cat "$log.hook" >&2
    echo "dkms-install-real: the kernel hook did not rebuild and install the module" >&2; fail=1
  else
    autoinstalled=", rebuilt and installed again by the kernel install hook $hook"
  fi
fi
# A kernel of another release installed later: its hook builds and installs the module
# for it; the first release's stays installed.
upgraded=
if [ $fail -eq 0 ] && [ -n "$newrel" ]; then
  mkdir -p "$newmoddir"
  ln -s "$newkdir" "$newmoddir/build"
  newko=
  if ! "$hook" "$newrel" >"$log.hook" 2>&1; then
    cat "$log.hook" >&2; echo "dkms-install-real: $hook $newrel failed" >&2; fail=1
  elif ! dkms status -m mitosis -v "$ver" -k "$newrel" | grep -q installed; then
    cat "$log.hook" >&2
    find /var/lib/dkms/mitosis -name make.log -exec tail -30 {} \; >&2 2>/dev/null || true
    echo "dkms-install-real: the kernel hook did not build and install the module for $newrel" >&2; fail=1
  else
    newko=$(modinfo -k "$newrel" -n mitosis 2>/dev/null || true)
    newmagic=$(modinfo -k "$newrel" -F vermagic mitosis 2>/dev/null || true)
    case "$newko" in "$newmoddir"/updates/dkms/mitosis.ko*) ;; *) echo "dkms-install-real: modinfo -k $newrel finds '$newko'" >&2; fail=1 ;; esac
    case "$newmagic" in "$newrel "*) ;; *) echo "dkms-install-real: vermagic '$newmagic', not $newrel" >&2; fail=1 ;; esac
    grep -q 'updates/dkms/mitosis.ko' "$newmoddir/modules.dep" \
      || { echo "dkms-install-real: depmod did not list the module for $newrel" >&2; fail=1; }
    dkms status -m mitosis -v "$ver" -k "$krel" | grep -q installed \
      || { echo "dkms-install-real: the $krel module went away" >&2; fail=1; }
    # Built with the compiler that kernel was built with (its .comment names it).
    want=GCC
    grep -qsx CONFIG_CC_IS_CLANG=y "$newkdir/include/config/auto.conf" && want=clang
    readelf -p .comment "$newko" 2>/dev/null | grep -q "$want" \
      || { echo "dkms-install-real: $newko was not built with $want, as $newrel was" >&2; fail=1; }
    [ $fail -eq 0 ] && upgraded=", then built with $want and installed for a second release, $newrel, by that kernel's install hook (vermagic '$newmagic')"
  fi
fi
if [ $fail -eq 0 ] && [ -n "$modtree" ]; then
  stage=$(mktemp -d)
  mkdir -p "$stage/lib/modules"
  cp -a "$moddir" "$stage/lib/modules/"
  rm -f "$stage/lib/modules/$krel/build"
  (cd "$stage" && find . | cpio -o -H newc --quiet) | gzip -1 > "$modtree.tmp"
  mv "$modtree.tmp" "$modtree"
  echo "dkms-install-real: the installed module tree for guests: $modtree"
fi
dkms remove -m mitosis -v "$ver" --all >/dev/null
[ -z "$(find "$moddir" ${newmoddir:+"$newmoddir"} -name 'mitosis.ko*')" ] \
  || { echo "dkms-install-real: dkms remove left the module installed" >&2; fail=1; }
[ $fail -eq 0 ] && echo "dkms-install-real: dkms installed mitosis $ver into $moddir/updates/dkms ($(basename "$ko"), in modules.dep, vermagic $krel)$autoinstalled$upgraded, and removed it"
exit $fail
