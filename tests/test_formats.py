"""Every dump of the bed, in every format, through one ``drgn-hotplug scan``.

One scan (``--jobs 2``, the vmlinux found by build ID in the bed's kernel
directory) runs over every cell's dumps (cell.json ``dumps``: QEMU's ELF with
and without paging, QEMU's kdump-zlib as QEMU writes it, a flattened stream
with an empty machine field read in place; makedumpfile's kdump, lzo, ELF and
flattened outputs at its filtered level) and over the mutated dumps of
tests/test_corpus.py's slice of the mutation corpus. Its JSON lines must give,
per dump:

- for a bed dump, the exit status and findings of ``check`` on the dump's
  reference (vmcores.cells.DUMP_FILES: vmcore.kdump, or vmcore-filtered.kdump
  for the same filter), checked in this process (cli.render_command on the
  model read here): every format reads as its reference does, and scan says
  what check says (a reference's own line is check's on that very dump);
- for a corpus dump, the exit status and findings, or the one-line reason,
  of a ``drgn-hotplug check --json`` process on the same dump;
- on one cell of each arch, every format also through ``drgn-hotplug -c DUMP
  -s VMLINUX check --json`` as a user runs it.

Then: the /proc/vmcore of a kdump kernel (vmcores/kdump.py) gives the crashed
kernel's truth; the cells' vmcore.kdump with snappy and zstd pages
(vmcores/kdump_recompress.py) gives the reference findings and a corrupt page
of it an unreadable finding; debug info is found by build ID, a bad worker is
a line of its own, and the GNU parallel fleet recipe. Cells are built on first
use (vmcores.build_cell caches them): ``slow``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import vmcores
from vmcores import corpus
from vmcores.cells import DUMP_FILES, matrix

from test_live_guest import in_nomap_pages

pytest.importorskip("drgn")
pytestmark = pytest.mark.slow

CELLS = matrix()
# What QEMU writes for every cell: its 7.2 offers kdump-zlib only
# (query-dump-guest-memory-capability: elf, kdump-zlib, win-dmp).
QEMU_DUMPS = {"vmcore-qemu.elf", "vmcore-qemu-paging.elf", "vmcore-qemu-kdump-zlib.flat"}
# makedumpfile 1.7.2 reads x86_64 QEMU dumps without the vmlinux (not arm64's:
# "Can't get the address of system_utsname"); its -d 31 fails on the pmem cells.
MAKEDUMPFILE_DUMPS = {"vmcore-filtered.kdump", "vmcore-filtered-lzo.kdump", "vmcore-filtered.flat",
                      "vmcore-filtered.elf"}
# The dumps that also go through the CLI as a user runs it: on x86_64 every
# format and writer of the bed; on arm64 the two QEMU formats drgn_hotplug
# reads itself (its paging ELF by physical address, its flattened kdump).
CLI_DUMPS = {("x86_64", "6.1", "orphan"): None,
             ("arm64", "6.1", "orphan"): ("vmcore-qemu-paging.elf", "vmcore-qemu-kdump-zlib.flat")}
CLI_CELLS = list(CLI_DUMPS)
# tests/test_corpus.py's slice of the corpus.
CORPUS_SEED, CORPUS_TOTAL, CORPUS_STEP = 1, 1000, 25
# The /proc/vmcore cells (vmcores/kdump.py): 6.1 and the newest series.
KDUMP_CELLS = [("x86_64", "6.1", "orphan"), ("x86_64", "7.x", "orphan"), ("arm64", "6.1", "orphan"),
               ("arm64", "7.x", "orphan")]

logging.getLogger("drgn").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=None)
def cell(arch: str, kernel: str, scenario: str) -> vmcores.Cell:
    return vmcores.build_cell(arch, kernel, scenario)


def kernels_dir(c: vmcores.Cell) -> Path:
    """The bed's directory of every kernel (each vmlinux in a subdirectory)."""
    return c.vmlinux.parent.parent


@functools.lru_cache(maxsize=None)
def checked_here(dump: Path, vmlinux: Path) -> tuple[int, dict]:
    """What ``drgn-hotplug -c DUMP -s VMLINUX check --json`` gives (exit
    status, document), computed in this process as cli.main does it."""
    from drgn_hotplug import cli, report

    prog, dump_format = cli.open_target(core=str(dump), symbols=[str(vmlinux)])
    model = cli.read_model_checked(prog)
    model.kernel = dataclasses.replace(model.kernel, dump_format=dump_format)
    text, status = cli.render_command(model, "check", as_json=True, version=report.package_version())
    return status, json.loads(text)


def check_json(dump: Path, *options: str) -> tuple[int, dict]:
    """``drgn-hotplug -c DUMP OPTIONS check --json`` as a process: (exit status, document)."""
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(dump), *options,
                           "check", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), f"{dump.name}: exit {proc.returncode}: {proc.stderr.strip()}"
    return proc.returncode, json.loads(proc.stdout)


def without_unreadable(rows: list[tuple]) -> list[tuple]:
    return [row for row in rows if row[0] != "unreadable"]


def comparable(doc: dict) -> list[tuple]:
    """The findings as comparable rows; an unreadable object's reason quotes
    the reader's own fault text, so only what and where are compared."""
    rows = []
    for f in doc.get("findings") or []:
        reason = "" if f["kind"] == "unreadable" else f["reason"]
        rows.append((f["kind"], f["severity"], f.get("start_pfn"), f.get("end_pfn"), f.get("node"),
                     f.get("block"), reason, f.get("facts", {}).get("address") if not reason else None))
    return sorted(rows, key=repr)


# ---------------------------------------------------------------- one scan over every dump

@dataclasses.dataclass
class ScanRun:
    """One ``drgn-hotplug scan`` over the selected cells and the corpus slice."""

    status: int
    lines: dict[str, dict]          # by path
    stderr: str
    seconds: float
    cells: dict[tuple, vmcores.Cell]
    corpus: dict[str, corpus.Case]  # mutated dump -> its case
    listings: dict[tuple, tuple[list, list]]   # cell -> its files before and after


def scanned_cells(session) -> list[tuple]:
    """The cells of the selected per-cell format tests, and CLI_CELLS."""
    keys = {tuple(item.callspec.params["key"]) for item in session.items
            if getattr(item, "originalname", "") == "test_every_format_gives_the_reference_findings"
            and item.module.__name__ == __name__}
    return sorted(keys | set(CLI_CELLS))


def corpus_slice(scratch: Path) -> dict[str, corpus.Case]:
    """The mutated, truncated and synthetic dumps of the corpus slice whose
    command is ``check`` (the intact source dumps are the cells' own)."""
    cases = corpus.generate(CORPUS_SEED, CORPUS_TOTAL, scratch)[::CORPUS_STEP]
    dumps: dict[str, corpus.Case] = {}
    for case in cases:
        if case.command[0] == "check" and (case.make or case.truncate is not None or case.patches
                                          or case.file_patches):
            dumps[corpus.prepare_core(case, scratch)] = case
    return dumps


@pytest.fixture(scope="module")
def scan_run(request, tmp_path_factory) -> ScanRun:
    """The scan over the selected cells' dumps and the corpus slice; the
    reference dumps are checked in this process meanwhile."""
    cells = {key: cell(*key) for key in scanned_cells(request.session)}
    scratch = tmp_path_factory.mktemp("corpus")
    mutated = corpus_slice(scratch)
    before = {key: sorted(os.listdir(c.dir)) for key, c in cells.items()}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "drgn_hotplug.cli", "scan", "--jobs", "2",
                             "--debug-dir", str(kernels_dir(next(iter(cells.values())))),
                             *(str(c.dir) for c in cells.values()), *mutated],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The references are read here while the scan's workers run.
    for c in cells.values():
        for name in ("vmcore.kdump", "vmcore-filtered.kdump"):
            if name in c.dumps:
                checked_here(c.dir / name, c.vmlinux)
    out, err = proc.communicate(timeout=3600)
    seconds = time.monotonic() - start
    lines = [json.loads(line) for line in out.splitlines()]
    print(f"\nscan of {len(lines)} dumps: {seconds:.0f} s", file=sys.stderr)
    yield ScanRun(proc.returncode, {line["path"]: line for line in lines}, err, seconds, cells, mutated,
                  {key: (before[key], sorted(os.listdir(c.dir))) for key, c in cells.items()})
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("key", CELLS, ids="/".join)
def test_every_format_gives_the_reference_findings(key, scan_run):
    c = scan_run.cells[key]
    dumps = c.dumps
    assert QEMU_DUMPS <= set(dumps), f"the bed did not keep QEMU's dumps: {sorted(dumps)}"
    if key[0] == "x86_64" and c.meta.get("filtered_kdump_error") is None:
        assert MAKEDUMPFILE_DUMPS <= set(dumps)
    _, full = checked_here(c.dir / "vmcore.kdump", c.vmlinux)
    for name, entry in dumps.items():
        line = scan_run.lines[str(c.dir / name)]
        assert line["format"].split(" (")[0] == entry["format"], name
        assert line["release"] == full["kernel"]["release"] and len(line["build_id"]) == 40, name
        if entry["filtered"]:
            # A partial reading draws no finding the whole dump does not give.
            assert set(without_unreadable(comparable(line))) <= set(comparable(full)), name
        if name == "vmcore-filtered.elf" and any(f["kind"] == "unreadable" for f in line["findings"]):
            # makedumpfile -E filters by its own rules: where it left out a
            # page the whole dump has, the object is unreadable and the run exits 1.
            assert line["exit_status"] == 1, name
            continue
        ref_status, ref = checked_here(c.dir / DUMP_FILES[name]["reference"], c.vmlinux)
        assert line["exit_status"] == ref_status, f"{name}: {line['verdict']}: {line.get('reason')}"
        assert (line["exit_status"], comparable(line)) == (ref_status, comparable(ref)), name
    # Nothing was written beside the dumps (no reassembled or converted copy).
    assert scan_run.listings[key][0] == scan_run.listings[key][1]


def test_scan_lines_are_the_dumps_and_the_summary(scan_run):
    expected = {str(c.dir / name) for c in scan_run.cells.values() for name in c.dumps} | set(scan_run.corpus)
    assert set(scan_run.lines) == expected
    assert scan_run.status == 2   # the corpus has dumps nobody can analyse
    assert f"dumps: {len(expected)} (" in scan_run.stderr and "orphaned-link/error" in scan_run.stderr


def test_scan_equals_check_on_the_corpus_slice(scan_run):
    """Each mutated, truncated or synthetic dump: the scan line has the exit
    status and the findings, or the one-line reason, of ``check``."""
    options = ["--debug-dir", str(kernels_dir(scan_run.cells[CLI_CELLS[0]]))]

    def check(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", path, *options, "check", "--json"],
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        checks = dict(zip(scan_run.corpus, pool.map(check, scan_run.corpus)))
    for path, proc in checks.items():
        line, case = scan_run.lines[path], scan_run.corpus[path]
        assert line["exit_status"] == proc.returncode, f"case {case.id} {case.description}"
        if proc.returncode == 2:
            assert line["verdict"] == "unanalysable"
            assert "drgn-hotplug: " + line["reason"] == proc.stderr.strip(), case.description
        else:
            assert comparable(line) == comparable(json.loads(proc.stdout)), case.description
    assert len(checks) >= 10 and {p.returncode for p in checks.values()} >= {1, 2}


@pytest.mark.parametrize("key", CLI_CELLS, ids="/".join)
def test_check_cli_equals_the_scan_line(key, scan_run):
    """``drgn-hotplug -c DUMP -s VMLINUX check --json`` as a user runs it
    (CLI_DUMPS): the scan's line for the dump."""
    c = scan_run.cells[key]
    for name in CLI_DUMPS[key] or c.dumps:
        status, doc = check_json(c.dir / name, "-s", str(c.vmlinux))
        line = scan_run.lines[str(c.dir / name)]
        assert doc["kernel"]["dump_format"] == line["format"] and doc["kernel"]["release"] == line["release"]
        assert (status, comparable(doc)) == (line["exit_status"], comparable(line)), name
        assert doc["summary"] == line["summary"]


def test_gnu_parallel_shards_concatenate_into_one_run(tmp_path, scan_run):
    """The README's fleet recipe, run for real: GNU parallel runs the
    shards; their JSON lines are the lines of the one scan over the cell."""
    if not shutil.which("parallel"):
        pytest.skip("GNU parallel is not installed (scripts/setup.sh installs it)")
    c = scan_run.cells[CLI_CELLS[0]]
    whole = [scan_run.lines[str(c.dir / name)] for name in c.dumps]
    recipe = (f"seq 0 2 | parallel -j 2 {sys.executable} -m drgn_hotplug.cli scan --shard {{}}/3 "
              f"--debug-dir {kernels_dir(c)} {c.dir} > {tmp_path}/all.jsonl")
    subprocess.run(["bash", "-c", recipe], check=False, timeout=900, cwd=Path(__file__).parent.parent)
    shards = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    strip = lambda lines: sorted((l["path"], l["exit_status"], json.dumps(l.get("findings"))) for l in lines)
    assert strip(shards) == strip(whole)
    assert all(line["verdict"] == "findings" for line in whole)


def test_scan_survives_bad_workers(tmp_path):
    """A truncated dump and a dump whose worker hangs (a FIFO nobody writes:
    open() blocks) are lines of their own; the run goes on to the end."""
    c = cell(*CLI_CELLS[0])
    with open(c.dir / "vmcore-qemu-kdump-zlib.flat", "rb") as f:
        (tmp_path / "truncated.flat").write_bytes(f.read(3_000_000))
    os.mkfifo(tmp_path / "hangs.kdump")
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "scan", str(tmp_path / "hangs.kdump"),
                           str(tmp_path / "truncated.flat"), str(c.dir / "vmcore-filtered.kdump"),
                           "--jobs", "2", "--timeout", "15", "--debug-dir", str(kernels_dir(c))],
                          capture_output=True, text=True, timeout=300)
    by_path = {line["path"]: line for line in map(json.loads, proc.stdout.splitlines())}
    assert by_path[str(tmp_path / "hangs.kdump")]["verdict"] == "timeout"
    assert by_path[str(tmp_path / "truncated.flat")]["verdict"] == "unanalysable"
    assert "truncated" in by_path[str(tmp_path / "truncated.flat")]["reason"]
    assert by_path[str(c.dir / "vmcore-filtered.kdump")]["verdict"] == "findings"
    assert proc.returncode == 2
    assert "timeout 1" in proc.stderr and "orphaned-link/error 2" in proc.stderr


# ---------------------------------------------------------------- /proc/vmcore of a kdump kernel

@pytest.mark.parametrize("key", KDUMP_CELLS, ids="/".join)
def test_proc_vmcore_of_a_kdump_kernel_gives_the_crashed_kernels_truth(key):
    """The guest crashed (sysrq c) after its scenario; its kdump kernel copied
    /proc/vmcore out (vmcores/kdump.py). ``check`` on that ELF, vmlinux found
    by build ID, finds the orphaned links the crashed kernel's sysfs showed,
    and nothing else serious; its blocks are the crashed kernel's.

    /proc/vmcore, like /proc/kcore, holds the System RAM of the crashed
    kernel only: on arm64 the objects in the page an ACPI table (NOMAP)
    shares with early allocations are unreadable, as in a live run."""
    from drgn_hotplug import checks, cli, dumps
    from vmcores.kdump import build_proc_vmcore

    kd = build_proc_vmcore(*key)
    status, doc = check_json(kd.vmcore, "--debug-dir", str(kd.vmlinux.parent.parent))
    assert status == 1 and doc["kernel"]["dump_format"] == "elf"
    orphaned = {(f["node"], f["block"]) for f in doc["findings"] if f["kind"] == checks.ORPHANED_LINK}
    assert orphaned == {(d["node"], d["block"]) for d in kd.truth["dangling_links"]} != set()
    serious = [f for f in doc["findings"] if f["severity"] != "info" and f["kind"] != checks.ORPHANED_LINK]
    blind = in_nomap_pages(serious, doc["findings"])
    assert serious == blind and (blind != []) == (key[0] == "arm64")
    prog = dumps.open_dump(str(kd.vmcore)).prog
    prog.load_debug_info([str(kd.vmlinux)])
    # The crashed kernel's vmcoreinfo_data points into the crash kernel's
    # reservation, which /proc/vmcore leaves out: its note answers.
    assert dumps.map_vmcoreinfo_safe_copy(prog)
    model = cli.read_model_checked(prog)
    assert {(b.id, b.state) for b in model.blocks} == {(t["block"], t["state"]) for t in kd.truth["memory_blocks"]}


# ---------------------------------------------------------------- formats on the kernel line, lzo, truncation

@pytest.mark.parametrize("key", CLI_CELLS, ids="/".join)
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

    c = cell("x86_64", "6.1", "orphan")
    path = c.dir / "vmcore-filtered-lzo.kdump"
    with open(path, "rb") as f:
        src = dumps.PlainFile(f)
        assert dumps.first_compressed_page(src, dumps.read_kdump_layout(src))[1] == "lzo"
    found = [checks.run_checks(model) for model in models(path, c.vmlinux)]
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


# ---------------------------------------------------------------- snappy and zstd kdumps

# Nothing on Debian 12 writes them (makedumpfile 1.7.2: snappy and zstd
# disabled; QEMU 7.2: kdump-zlib only): vmcores/kdump_recompress.py rewrites
# a cell's vmcore.kdump with its pages in the codec, as makedumpfile -p/-z would.
RECOMPRESSED_CELLS = [("x86_64", "6.1", "orphan"), ("arm64", "6.1", "hotplug")]
CODECS = ["snappy", "zstd"]


@pytest.fixture(scope="module")
def recompressed(tmp_path_factory):
    """The cell's vmcore.kdump in a codec, written once per module:
    ``recompressed(key, codec)`` -> its path."""
    from vmcores.kdump_recompress import recompress

    scratch = tmp_path_factory.mktemp("recompressed")

    @functools.lru_cache(maxsize=None)
    def make(key: tuple, codec: str) -> Path:
        path = scratch / f"{'-'.join(key)}-{codec}.kdump"
        start = time.monotonic()
        recompress(cell(*key).kdump, path, codec)
        print(f"\n{path.name}: {path.stat().st_size >> 20} MiB in {time.monotonic() - start:.1f} s", file=sys.stderr)
        return path

    yield make
    shutil.rmtree(scratch, ignore_errors=True)


def stored_compressions(path: Path) -> collections.Counter:
    """How many page descriptors name each compression (``none``: stored raw)."""
    from drgn_hotplug import dumps

    with open(path, "rb") as f:
        layout = dumps.read_kdump_layout(dumps.PlainFile(f))
        count = sum(run[1] for run in layout.runs)
        descs = os.pread(f.fileno(), count * dumps.PAGE_DESC.size, layout.descs_at)
    return collections.Counter(dumps.compression_name(d[2]) for d in dumps.PAGE_DESC.iter_unpack(descs))


def programs(f, path: Path) -> tuple:
    """drgn on one kdump file (open ``f``) as ``open_dump`` opens it (libkdumpfile
    where it reads the file) and through drgn_hotplug's own page reader."""
    from drgn_hotplug import dumps

    src = dumps.PlainFile(f)
    return (dumps.open_dump(str(path)).prog,
            dumps._program_from_pages(src, dumps.read_kdump_layout(src), str(path)))


def models(path: Path, vmlinux: Path) -> tuple:
    """The models of the two ``programs`` on one kdump file."""
    from drgn_hotplug.drgn_reader import read_model

    with open(path, "rb") as f:
        progs = programs(f, path)
        for prog in progs:
            prog.load_debug_info([str(vmlinux)])
        return tuple(read_model(prog) for prog in progs)


def test_open_dump_trusts_libkdumpfile_after_reading_a_compressed_page(recompressed):
    """A libkdumpfile without the codec opens the file and fails every page:
    open_dump reads the first compressed page through it before using it.
    That page is the codec's, and drgn reads it as the own reader does."""
    from drgn_hotplug import dumps

    key = RECOMPRESSED_CELLS[0]
    for codec in CODECS:
        dump = recompressed(key, codec)
        with open(dump, "rb") as f:
            src = dumps.PlainFile(f)
            layout = dumps.read_kdump_layout(src)
            pfn, name = dumps.first_compressed_page(src, layout)
            desc = dumps.PAGE_DESC.unpack(src.pread(dumps.PAGE_DESC.size, layout.desc_offset(pfn)))
            assert name == codec and dumps.compression_name(desc[2]) == codec
            page = pfn * layout.block_size
            theirs, ours = (prog.read(page, layout.block_size, True) for prog in programs(f, dump))
            assert theirs == ours


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("key", RECOMPRESSED_CELLS, ids="/".join)
def test_snappy_and_zstd_kdumps_give_the_reference_findings(key, codec, recompressed):
    """``drgn-hotplug check`` on the codec's copy: the format named, the
    reference's exit status and findings; libkdumpfile and drgn_hotplug's
    own page reader (libsnappy/libzstd through ctypes) find the same."""
    import drgn

    from drgn_hotplug import checks

    c, dump = cell(*key), recompressed(key, codec)
    stored = stored_compressions(dump)
    assert stored[codec] > 0 and set(stored) <= {codec, "none"}, stored
    status, doc = check_json(dump, "-s", str(c.vmlinux))
    ref_status, ref = checked_here(c.kdump, c.vmlinux)
    assert doc["kernel"]["dump_format"] == f"kdump-{codec}"
    assert (status, comparable(doc)) == (ref_status, comparable(ref))
    # libkdumpfile (drgn's wheel links libsnappy and libzstd) opens it, so
    # the CLI read it through drgn; the own reader is what a drgn without them gets.
    drgn.Program().set_core_dump(str(dump))
    theirs, ours = models(dump, c.vmlinux)
    assert checks.run_checks(ours) == checks.run_checks(theirs)
    assert not ours.unreadable and not theirs.unreadable


@functools.lru_cache(maxsize=None)
def block_pages(key: tuple) -> dict[int, int]:
    """The cell's memory_block devices: address -> the pfn of the page holding it."""
    from drgn.helpers.linux.mm import virt_to_phys

    from drgn_hotplug import cli

    c = cell(*key)
    prog, _ = cli.open_target(core=str(c.kdump), symbols=[str(c.vmlinux)])
    page_size = prog["PAGE_SIZE"].value_()
    return {b.address: virt_to_phys(prog, b.address).value_() // page_size
            for b in cli.read_model_checked(prog).blocks}


def invert_page(dump: Path, out: Path, pfn: int) -> None:
    """``out``: ``dump`` with every byte of ``pfn``'s stored (compressed) page inverted."""
    from drgn_hotplug.dumps import PAGE_DESC
    from vmcores.corpus import kdump_layout

    shutil.copyfile(dump, out)
    with open(out, "r+b") as f:
        f.seek(kdump_layout(out).desc_offset(pfn))
        offset, size, flags, _ = PAGE_DESC.unpack(f.read(PAGE_DESC.size))
        assert flags, "the page is stored compressed"
        data = os.pread(f.fileno(), size, offset)
        os.pwrite(f.fileno(), bytes(b ^ 0xFF for b in data), offset)


# One codec per cell: the decoding that fails is the codec's, whatever the arch.
@pytest.mark.parametrize("key, codec", [pytest.param(key, codec, id=f"{'/'.join(key)}-{codec}")
                                        for key, codec in zip(RECOMPRESSED_CELLS, CODECS)])
def test_corrupt_snappy_or_zstd_page_is_unreadable(tmp_path, key, codec, recompressed):
    """The page of a memory_block device in the middle of the list, its
    compressed bytes inverted: the memory_blocks it holds are ``unreadable``
    findings (exit 1, nothing on stderr), from libkdumpfile as from the own
    page reader."""
    c, pages = cell(*key), block_pages(key)
    pfn = sorted(pages.values())[len(pages) // 2]
    lost = {address for address, page in pages.items() if page == pfn}
    bad = tmp_path / f"corrupt-{codec}.kdump"
    invert_page(recompressed(key, codec), bad, pfn)
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(bad), "-s", str(c.vmlinux),
                           "check", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    unreadable = [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "unreadable"]
    assert {f["facts"]["address"] for f in unreadable} == lost
    assert all(f["facts"]["what"] == "struct memory_block" for f in unreadable)
    theirs, ours = models(bad, c.vmlinux)
    assert {u.address for u in ours.unreadable} == {u.address for u in theirs.unreadable} == lost
    assert all("corrupt page" in u.reason for u in ours.unreadable)


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
    reference = comparable(checked_here(c.kdump, c.vmlinux)[1])
    found = run_check("-c", str(c.dir / "vmcore-qemu-kdump-zlib.flat"), "--debug-dir", str(kernels_dir(c)))
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
