#!/usr/bin/env bash
# Builds (or reuses) an initramfs fragment with Debian's perf and the shared libraries
# it loads, for the benchmark's CPU profiles of the guests (`make KVARIANT=perf bench
# BENCH_PROFILE=1`, docs/benchmarks.md). The kernel unpacks it over the base image
# (concatenated cpio archives), as it does the Python runtime's.
#
#   scripts/build-perf.sh        prints the path of the cached .cpio.gz last
#
# Installs linux-perf when it is missing (the tests never need it). Cached in
# $MITOSIS_CACHE (default ~/.cache/mitosis), keyed on this script and the package
# version.
set -euo pipefail
cache=${MITOSIS_CACHE:-$HOME/.cache/mitosis}
if ! dpkg-query -W -f='${Status}' linux-perf 2>/dev/null | grep -q "install ok installed"; then
  echo "build-perf: installing linux-perf" >&2
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends linux-perf >&2 \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends linux-perf >&2; }
fi
perf=/usr/bin/perf
# Debian's /usr/bin/perf may be a wrapper that runs perf_VERSION for the running
# kernel: take the real binary.
real=$(ls /usr/bin/perf_[0-9]* 2>/dev/null | sort -V | tail -1 || true)
[ -n "$real" ] && perf=$real
"$perf" version >/dev/null || { echo "build-perf: $perf does not run" >&2; exit 1; }
ver=$(dpkg-query -W -f='${Version}' linux-perf)
key=$( { cat "$0"; echo "$ver $perf"; } | sha256sum | cut -c1-16)
out="$cache/perf-$key.cpio.gz"
if [ -f "$out" ]; then
  echo "build-perf: cached $out" >&2
  echo "$out"
  exit 0
fi
mkdir -p "$cache"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
install -D -m 0755 "$perf" "$stage/usr/bin/perf"
ldd "$perf" | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
(cd "$stage" && find . | cpio -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
echo "build-perf: $out ($(du -h "$out" | cut -f1), perf $ver)" >&2
echo "$out"
