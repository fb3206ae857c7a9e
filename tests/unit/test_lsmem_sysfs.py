"""The lsmem formatter against the real lsmem of this machine, on this
machine's own /sys/devices/system/memory read the way lsmem reads it: every
option set, byte for byte. Skipped unless util-linux 2.38.1's lsmem (the one
transcribed) and memory block devices are here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from drgn_hotplug import lsmem

SYSFS = "/sys/devices/system/memory"
OPTION_SETS = ["", "-a", "-b", "-n", "-o RANGE,SIZE,STATE,NODE,ZONES", "-J", "-J -a", "--split=STATE",
               "--summary=only", "-r", "-P", "-o +NODE,ZONES -a", "--output-all", "-S none",
               "-S NODE -o RANGE,NODE", "-b -J -o SIZE,NODE,REMOVABLE", "-J --summary=always",
               "--summary=never -n -b", "-r -o ZONES,BLOCK -n"]


def _lsmem_version() -> str:
    if shutil.which("lsmem") is None:
        return ""
    return subprocess.run(["lsmem", "--version"], capture_output=True, text=True).stdout


pytestmark = pytest.mark.skipif(
    "2.38.1" not in _lsmem_version() or not os.path.exists(f"{SYSFS}/block_size_bytes"),
    reason="needs util-linux 2.38.1's lsmem and memory block devices")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().rstrip("\n")


def host_memory() -> lsmem.SysfsMemory:
    """/sys/devices/system/memory as lsmem.c's read_basic_info() and
    memory_block_read_attrs() read it (readdir order for the node link)."""
    names = sorted((n for n in os.listdir(SYSFS) if re.fullmatch(r"memory\d+", n)),
                   key=lambda n: int(n[6:]))

    def node(name: str) -> int:
        return next((int(e[4:]) for e in os.listdir(f"{SYSFS}/{name}")
                     if re.fullmatch(r"node\d+", e)), -1)

    have_zones = os.path.exists(f"{SYSFS}/memory0/valid_zones")
    blocks = [lsmem.SysfsBlock(int(n[6:]), _read(f"{SYSFS}/{n}/state"),
                               _read(f"{SYSFS}/{n}/removable") == "1", node(n),
                               lsmem.lsmem_zone_names(_read(f"{SYSFS}/{n}/valid_zones"))
                               if have_zones else ())
              for n in names]
    return lsmem.SysfsMemory(int(_read(f"{SYSFS}/block_size_bytes"), 16), blocks,
                             node(names[0]) != -1, have_zones)


@pytest.mark.parametrize("options", OPTION_SETS)
def test_formatter_equals_this_machines_lsmem(options):
    real = subprocess.run(["lsmem", *options.split()], capture_output=True, text=True,
                          env={"LANG": "C.UTF-8", "PATH": os.environ["PATH"]})
    assert real.returncode == 0, real.stderr
    assert lsmem.render(host_memory(), lsmem.parse_options(options.split())) == real.stdout
