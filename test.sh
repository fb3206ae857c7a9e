#!/usr/bin/env bash
# The project's test command (README "Tests"): installs what the suite needs on a
# fresh Debian 12 machine, builds or reuses the real-kernel test bed, runs pytest.
# Extra arguments go to pytest, e.g. ./test.sh -k orphan
set -euo pipefail
cd "$(dirname "$0")"

apt_packages=(
    qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils
    busybox-static cpio xz-utils zstd
    crash makedumpfile
    gdb gdb-multiarch python3-tabulate
)

install_apt_packages() {
    local missing=()
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "test.sh: installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

install_apt_packages
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m vmcores build-all
python3 -m pytest -ra "$@"
