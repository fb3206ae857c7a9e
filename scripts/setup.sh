#!/usr/bin/env bash
# Installs what drgn-hotplug's demo and tests need on a fresh Debian 12 machine
# (as root): QEMU and firmware for the test bed, crash and makedumpfile for the
# cross-checks, gdb (with python3-tabulate for its embedded system Python), and
# this package with its Python dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
    qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils
    busybox-static cpio xz-utils zstd
    crash makedumpfile parallel
    gdb gdb-multiarch python3-tabulate
    # the live guests' userland disk (vmcores/userland.py): mke2fs, and the
    # cross compiler for drgn on arm64 (PyPI has no aarch64 wheel of it)
    e2fsprogs gcc-aarch64-linux-gnu libc6-dev-arm64-cross make pkg-config
    # headless Chromium renders the pages of drgn-hotplug map (tests/test_map.py)
    chromium
)

missing_apt_packages() {
    local p
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

mapfile -t missing < <(missing_apt_packages)
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
