#!/usr/bin/env bash
# Builds (or reuses) the guests' Python runtime: Debian's CPython 3.11 with its
# standard library and the function handlers' wheels from PyPI
# (functions/requirements.txt), as an initramfs fragment the kernel unpacks over the
# base image (concatenated cpio archives). Nothing is downloaded at test time.
#
#   scripts/build-python.sh        prints the path of the cached .cpio.gz last
#
# Cached in $MITOSIS_CACHE (default ~/.cache/mitosis), keyed on this script, the
# requirements and the python3.11 package version.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MITOSIS_CACHE:-$HOME/.cache/mitosis}
py=/usr/bin/python3.11
req="$root/functions/requirements.txt"
[ -x "$py" ] || { echo "build-python: $py missing; run scripts/setup.sh" >&2; exit 1; }
pyver=$(dpkg-query -W -f='${Version} ' python3.11-minimal libpython3.11-stdlib)
key=$( { cat "$0" "$req"; echo "$pyver"; } | sha256sum | cut -c1-16)
out="$cache/python-$key.cpio.gz"
if [ -f "$out" ]; then
  echo "build-python: cached $out" >&2
  echo "$out"
  exit 0
fi
echo "build-python: building the Python runtime ($pyver) into $out" >&2
start=$(date +%s)
mkdir -p "$cache"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
site="$stage/usr/local/lib/python3.11/dist-packages"
mkdir -p "$stage/usr/bin" "$site"
cp "$py" "$stage/usr/bin/python3.11"
ln -s python3.11 "$stage/usr/bin/python3"
# The standard library without its tests, GUI and build parts.
tar -C / -cf - \
  --exclude=usr/lib/python3.11/test --exclude=usr/lib/python3.11/idlelib \
  --exclude=usr/lib/python3.11/tkinter --exclude=usr/lib/python3.11/turtledemo \
  --exclude=usr/lib/python3.11/ensurepip --exclude=usr/lib/python3.11/lib2to3 \
  --exclude='usr/lib/python3.11/config-*' --exclude='*/tests' \
  --exclude=usr/lib/python3.11/site-packages --exclude=usr/lib/python3.11/dist-packages \
  usr/lib/python3.11 | tar -C "$stage" -xf -
# The wheels (binary only: no compiler runs, the same files every time).
"$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-compile \
  --only-binary=:all: --target "$site" -r "$req" 2>&1 | grep -v "as the 'root' user" >&2 || true
[ -d "$site/Crypto" ] && [ -d "$site/PIL" ] && [ -d "$site/numpy" ] && [ -d "$site/jinja2" ] || {
  echo "build-python: wheels missing from $site" >&2; exit 1; }
find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
# CRIU, the function benchmark's baseline (scripts/setup.sh installs Debian's).
if [ -x /usr/sbin/criu ]; then
  install -D -m 0755 /usr/sbin/criu "$stage/usr/sbin/criu"
fi
# Byte-compile once here, so no guest compiles at import (and the files are stable).
"$py" -m compileall -q -j0 "$site" >/dev/null
# Every shared library the interpreter, its extension modules and the wheels need,
# from the host at the same paths (the wheels bring their own in *.libs).
find "$stage" -name '*.so*' -type f > "$stage/.libs-needed"
echo "$py" >> "$stage/.libs-needed"
[ -x "$stage/usr/sbin/criu" ] && echo /usr/sbin/criu >> "$stage/.libs-needed"
while read -r obj; do
  ldd "$obj" 2>/dev/null | grep -o '/[^ ]*' || true
done < "$stage/.libs-needed" | sort -u | while read -r lib; do
  case "$lib" in "$stage"*) continue ;; esac
  [ -e "$stage$lib" ] && continue
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
rm "$stage/.libs-needed"
"$stage/usr/bin/python3.11" -c 'print()' >/dev/null  # the host can run what it copied
(cd "$stage" && find . | cpio -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
# Older runtimes are dead weight.
for old in "$cache"/python-*.cpio.gz; do
  [ "$old" = "$out" ] || rm -f "$old"
done
echo "build-python: $(du -h "$out" | cut -f1) in $(( $(date +%s) - start )) s" >&2
echo "$out"
