"""Every dump format of every bed cell gives the findings of the cell's
reference dump: QEMU's ELF with and without paging, QEMU's kdump-zlib as
QEMU writes it (a flattened stream with an empty machine field, read in
place), makedumpfile's ELF, flattened and lzo outputs at its filtered level
(cell.json ``dumps``; the reference of each in vmcores.cells.DUMP_FILES:
vmcore.kdump, or vmcore-filtered.kdump for the same filter), each through
``drgn-hotplug check --json`` as a user runs it, naming the format.

Cells are built on first use (vmcores.build_cell caches them): ``slow``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vmcores
from vmcores.cells import DUMP_FILES, matrix

pytest.importorskip("drgn")
pytestmark = pytest.mark.slow

CELLS = matrix()
# What QEMU writes for every cell (Debian's QEMU 7.2 offers kdump-zlib only).
QEMU_DUMPS = {"vmcore-qemu.elf", "vmcore-qemu-paging.elf", "vmcore-qemu-kdump-zlib.flat"}
# makedumpfile 1.7.2 reads x86_64 QEMU dumps without the vmlinux (not arm64's:
# "Can't get the address of system_utsname"); its -d 31 fails on the pmem cells.
MAKEDUMPFILE_DUMPS = {"vmcore-filtered.kdump", "vmcore-filtered-lzo.kdump", "vmcore-filtered.flat",
                      "vmcore-filtered.elf"}


@functools.lru_cache(maxsize=None)
def cell(arch: str, kernel: str, scenario: str) -> vmcores.Cell:
    return vmcores.build_cell(arch, kernel, scenario)


def check_json(dump: Path, vmlinux: Path) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(dump), "-s", str(vmlinux),
                           "check", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), f"{dump.name}: exit {proc.returncode}: {proc.stderr.strip()}"
    return proc.returncode, json.loads(proc.stdout)


def comparable(doc: dict) -> list[tuple]:
    """The findings as comparable rows; an unreadable object's reason quotes
    the reader's own fault text, so only what and where are compared."""
    rows = []
    for f in doc["findings"]:
        reason = "" if f["kind"] == "unreadable" else f["reason"]
        rows.append((f["kind"], f["severity"], f.get("start_pfn"), f.get("end_pfn"), f.get("node"),
                     f.get("block"), reason, f.get("facts", {}).get("address") if not reason else None))
    return sorted(rows, key=repr)


@pytest.mark.parametrize("key", CELLS, ids="/".join)
def test_every_format_gives_the_reference_findings(key):
    c = cell(*key)
    dumps = c.dumps
    assert QEMU_DUMPS <= set(dumps), f"the bed did not keep QEMU's dumps: {sorted(dumps)}"
    if key[0] == "x86_64" and c.meta.get("filtered_kdump_error") is None:
        assert MAKEDUMPFILE_DUMPS <= set(dumps)
    before = sorted(os.listdir(c.dir))
    references = {name: check_json(c.dir / name, c.vmlinux)
                  for name in ("vmcore.kdump", "vmcore-filtered.kdump") if name in dumps}
    for name, entry in dumps.items():
        status, doc = check_json(c.dir / name, c.vmlinux)
        ref_status, ref = references[DUMP_FILES[name]["reference"]]
        assert doc["kernel"]["dump_format"].split(" (")[0] == entry["format"], name
        assert (status, comparable(doc)) == (ref_status, comparable(ref)), name
        assert doc["kernel"]["release"] == ref["kernel"]["release"]
    # Nothing was written beside the dumps (no reassembled or converted copy).
    assert sorted(os.listdir(c.dir)) == before


@pytest.mark.parametrize("key", [("x86_64", "6.1", "orphan"), ("arm64", "6.1", "orphan")], ids="/".join)
def test_qemu_kdump_names_its_format_on_the_kernel_line(key):
    c = cell(*key)
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(c.dir / "vmcore-qemu-kdump-zlib.flat"),
                           "-s", str(c.vmlinux), "check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("dump format: flattened kdump-zlib")


def test_lzo_pages_read_by_drgn_hotplug_itself():
    """The kdump reader of drgn_hotplug.dumps (used where libkdumpfile gives
    up) on makedumpfile's lzo output (liblzo2 through ctypes) gives the
    model libkdumpfile gives."""
    from drgn_hotplug import checks, dumps
    from drgn_hotplug.drgn_reader import read_model

    c = cell("x86_64", "6.1", "orphan")
    path = c.dir / "vmcore-filtered-lzo.kdump"
    with open(path, "rb") as f:
        src = dumps.PlainFile(f)
        layout = dumps.read_kdump_layout(src)
        assert dumps.kdump_compression(src, layout) == "lzo"
        ours = dumps._program_from_pages(src, layout, str(path))
        ours.load_debug_info([str(c.vmlinux)])
        theirs = dumps.open_dump(str(path)).prog
        theirs.load_debug_info([str(c.vmlinux)])
        found = [checks.run_checks(read_model(p)) for p in (ours, theirs)]
    assert found[0] == found[1]
    assert sum(f.kind == "orphaned-link" for f in found[0]) == 2


@pytest.mark.parametrize("cut", [100, 4096 + 8, 400_000, 20_000_000])
def test_truncated_flattened_dump_is_one_line(tmp_path, cut):
    c = cell("x86_64", "6.1", "orphan")
    with open(c.dir / "vmcore-qemu-kdump-zlib.flat", "rb") as f:
        (tmp_path / "cut.flat").write_bytes(f.read(cut))
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(tmp_path / "cut.flat"),
                           "-s", str(c.vmlinux), "check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "truncated" in proc.stderr


# ---------------------------------------------------------------- debug info without -s

def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", *args, "check", "--json"],
                          capture_output=True, text=True, timeout=300)


def dump_identity(c: vmcores.Cell) -> tuple[str, str]:
    from drgn_hotplug.dumps import FlatFile, read_kdump_layout
    from drgn_hotplug.pairing import vmcoreinfo_fields

    with open(c.dir / "vmcore-qemu-kdump-zlib.flat", "rb") as f:
        info = read_kdump_layout(FlatFile(f, os.fstat(f.fileno()).st_size)).vmcoreinfo
    fields = vmcoreinfo_fields(info.decode())
    return fields["OSRELEASE"], fields["BUILD-ID"]


@pytest.mark.parametrize("key", [("x86_64", "5.10", "orphan"), ("arm64", "6.1", "orphan")], ids="/".join)
def test_vmlinux_found_by_build_id(tmp_path, key):
    """--debug-dir searched recursively among every bed kernel (other
    releases and the other arch included), and in the .build-id layout."""
    c = cell(*key)
    reference = comparable(json.loads(run_check("-c", str(c.kdump), "-s", str(c.vmlinux)).stdout))
    kernels_dir = c.vmlinux.parent.parent
    found = run_check("-c", str(c.dir / "vmcore-qemu-kdump-zlib.flat"), "--debug-dir", str(kernels_dir))
    assert found.returncode == 1, found.stderr
    assert comparable(json.loads(found.stdout)) == reference
    _, build_id = dump_identity(c)
    layout = tmp_path / ".build-id" / build_id[:2]
    layout.mkdir(parents=True)
    (layout / f"{build_id[2:]}.debug").symlink_to(c.vmlinux)
    by_layout = run_check("-c", str(c.kdump), "--debug-dir", str(tmp_path))
    assert by_layout.returncode == 1, by_layout.stderr
    assert comparable(json.loads(by_layout.stdout)) == reference


def test_no_matching_vmlinux_is_one_line(tmp_path):
    """Another kernel's vmlinux in the directory is no match: exit 2, one
    line naming the release and the build ID looked for."""
    c, other = cell("x86_64", "6.1", "orphan"), cell("x86_64", "5.10", "orphan")
    (tmp_path / "vmlinux").symlink_to(other.vmlinux)
    proc = run_check("-c", str(c.kdump), "--debug-dir", str(tmp_path))
    release, build_id = dump_identity(c)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and release in proc.stderr and build_id in proc.stderr
