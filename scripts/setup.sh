#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test Mitosis:
# Debian packages, the rust-src component and a pinned bindgen-cli.
# Idempotent: a second run only checks.
set -euo pipefail

BINDGEN_VERSION=0.73.2
PKGS=(flex bison bc libelf-dev libssl-dev cpio libclang-dev clang lld
      qemu-system-x86 busybox-static linux-source-6.12 iproute2 xz-utils
      librdmacm-dev libibverbs-dev ibverbs-providers
      python3.11 python3-pip kmod criu dkms)

need=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "setup: adding rust-src"
  rustup component add rust-src
fi

if ! command -v bindgen >/dev/null || ! bindgen --version | grep -q "$BINDGEN_VERSION"; then
  echo "setup: installing bindgen-cli $BINDGEN_VERSION"
  cargo install --locked --quiet bindgen-cli --version "$BINDGEN_VERSION"
fi
echo "setup: ok ($(rustc --version), $(bindgen --version))"
