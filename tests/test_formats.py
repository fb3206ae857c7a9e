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
import shutil
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


# ---------------------------------------------------------------- scan over many dumps

def scan_lines(*args: str, cwd: Path | None = None) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "scan", *args], capture_output=True,
                          text=True, timeout=900, cwd=cwd)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_scan_equals_check_per_dump_and_survives_bad_workers(tmp_path):
    """Every dump of two cells (both arches, every format) plus a truncated
    dump and a dump whose worker hangs (a FIFO nobody writes: open() blocks):
    per dump the exit status and findings of ``check``; the hang is a line
    of its own; the run goes on."""
    cells = [cell("x86_64", "6.1", "orphan"), cell("arm64", "6.1", "orphan")]
    with open(cells[0].dir / "vmcore-qemu-kdump-zlib.flat", "rb") as f:
        (tmp_path / "truncated.flat").write_bytes(f.read(3_000_000))
    os.mkfifo(tmp_path / "hangs.kdump")
    kernels_dir = str(cells[0].vmlinux.parent.parent)
    status, lines, err = scan_lines(*(str(c.dir) for c in cells), str(tmp_path / "truncated.flat"),
                                    str(tmp_path / "hangs.kdump"), "--jobs", "2", "--timeout", "60",
                                    "--debug-dir", kernels_dir)
    by_path = {line["path"]: line for line in lines}
    expected = {str(c.dir / name): c for c in cells for name in c.dumps}
    assert set(by_path) == set(expected) | {str(tmp_path / "truncated.flat"), str(tmp_path / "hangs.kdump")}
    for path, c in expected.items():
        ref_status, ref = check_json(Path(path), c.vmlinux)
        line = by_path[path]
        assert (line["exit_status"], comparable({"findings": line["findings"]})) == (ref_status, comparable(ref))
        assert line["format"].split(" (")[0] == c.dumps[Path(path).name]["format"]
        assert line["release"] == ref["kernel"]["release"] and len(line["build_id"]) == 40
    assert by_path[str(tmp_path / "truncated.flat")]["verdict"] == "unanalysable"
    assert "truncated" in by_path[str(tmp_path / "truncated.flat")]["reason"]
    assert by_path[str(tmp_path / "hangs.kdump")]["verdict"] == "timeout"
    assert status == 2
    assert "dumps: " in err and "orphaned-link/error" in err and "timeout 1" in err


def test_gnu_parallel_shards_concatenate_into_one_run(tmp_path):
    """The README's fleet recipe, run for real: GNU parallel runs the
    shards, their JSON lines concatenate into the lines of one scan."""
    if not shutil.which("parallel"):
        pytest.skip("GNU parallel is not installed (scripts/setup.sh installs it)")
    c = cell("x86_64", "6.1", "orphan")
    kernels_dir = c.vmlinux.parent.parent
    status, whole, _ = scan_lines(str(c.dir), "--jobs", "2", "--debug-dir", str(kernels_dir))
    recipe = (f"seq 0 2 | parallel -j 2 {sys.executable} -m drgn_hotplug.cli scan --shard {{}}/3 "
              f"--debug-dir {kernels_dir} {c.dir} > {tmp_path}/all.jsonl")
    subprocess.run(["bash", "-c", recipe], check=False, timeout=900, cwd=Path(__file__).parent.parent)
    shards = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    strip = lambda lines: sorted((l["path"], l["exit_status"], json.dumps(l.get("findings"))) for l in lines)
    assert len(whole) == len(c.dumps) and strip(shards) == strip(whole)
    assert status == 1 and all(line["verdict"] == "findings" for line in whole)
