#!/usr/bin/env bash
# The README demo: builds (or reuses) the x86_64 6.1 "orphan" cell, a real
# Debian kernel whose memory hot-remove was made to skip the node-link removal,
# and checks its vmcore. Exit status 1: findings, as expected.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
cell=$(python3 -m vmcores build --arch x86_64 --kernel 6.1 --scenario orphan | tail -n 1)
vmlinux=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vmlinux"])' "$cell/cell.json")
echo "+ drgn-hotplug -c $cell/vmcore.kdump -s $vmlinux check"
exec drgn-hotplug -c "$cell/vmcore.kdump" -s "$vmlinux" check
