"""Test-bed cells: one kernel, one scenario, its dumps and its ground truth, cached.

A cell directory is named ``<arch>-<kernel>-<scenario>-<package version>-<bed hash>``
under ``<cache>/cells``; the bed hash covers the code that makes a cell, so a
change to it builds new cells instead of reusing stale ones.

Example:
    >>> cell = build_cell("x86_64", "6.1", "orphan")          # doctest: +SKIP
    >>> cell.truth["dangling_links"]                           # doctest: +SKIP
    [{'node': 1, 'block': 32}, {'node': 1, 'block': 33}]
    >>> with start_live(cell) as g:                            # doctest: +SKIP
    ...     g.run("cat /proc/meminfo | head -1")
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import dumpfmt
from .guest import QEMU_KDUMP_FORMATS, X86_CMDLINE, GuestSpec
from .initramfs import build_initramfs
from .packages import Kernel, cache_root, fetch_busybox, fetch_kernel, kernels, series
from .flavours import FLAVOURS, Flavour
from .virtio_mem_bed import FLAVOURS as VIRTIO_MEM_FLAVOURS
from .scenarios import SCENARIOS, LiveGuest, Scenario

# Series ids per arch, from the series table (vmcores.packages.SERIES).
KERNELS = kernels()

# The files whose code decides what a guest does and what its cell records
# (packages are keyed by their version instead), per arch.
BED_FILES = ("initramfs.py", "guest.py", "scenarios.py", "truth.py", "dumpfmt.py")
ARCH_BED_FILES = {"x86_64": (), "arm64": ("aarch64.py", "arm64_bed.py")}

# Every scenario by name: the classic ones, then the flavours.
ALL_SCENARIOS: dict[str, Scenario] = {**SCENARIOS, **FLAVOURS, **VIRTIO_MEM_FLAVOURS}


def matrix() -> list[tuple[str, str, str]]:
    """Every (arch, kernel, scenario) the bed builds: each classic scenario
    on every series of its arches, each flavour on the series it names.

    >>> matrix()[0], ("x86_64", "7.x", "orphan") in matrix(), ("arm64", "6.12", "boot") in matrix()
    (('x86_64', '5.10', 'boot'), True, False)
    >>> ("x86_64", "6.1", "offline") in matrix(), ("x86_64", "5.10", "offline") in matrix()
    (True, False)
    """
    return [(arch, kernel, name) for arch, kernels in KERNELS.items() for kernel in kernels
            for name, s in ALL_SCENARIOS.items() if runs_on(s, arch, kernel, kernels)]


def runs_on(s: Scenario, arch: str, kernel: str, kernels: list[str]) -> bool:
    if isinstance(s, Flavour):
        return s.runs_on(arch, kernel, kernels)
    return arch in s.arches


@functools.lru_cache(maxsize=None)
def bed_hash(arch: str, scenario: str = "boot") -> str:
    """A short hash of the code that makes a cell of ``scenario`` on ``arch``
    (BED_FILES, the arch's files, and for a flavour the modules it names,
    Flavour.bed_files)."""
    h = hashlib.sha256()
    s = ALL_SCENARIOS.get(scenario)
    flavour_files = s.bed_files if isinstance(s, Flavour) else ()
    for name in BED_FILES + ARCH_BED_FILES[arch] + flavour_files:
        path = Path(__file__).with_name(name)
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:10]


def cells_dir() -> Path:
    return cache_root() / "cells"


@dataclass
class Cell:
    """A built cell directory (see docs/CONTRACTS.md)."""

    dir: Path

    @functools.cached_property
    def meta(self) -> dict:
        return json.loads((self.dir / "cell.json").read_text())

    @functools.cached_property
    def truth(self) -> dict:
        return json.loads((self.dir / "truth.json").read_text())

    @property
    def vmlinux(self) -> Path:
        return Path(self.meta["vmlinux"])

    @property
    def kdump(self) -> Path:
        return self.dir / "vmcore.kdump"

    @property
    def kvaddr_elf(self) -> Path:
        return self.dir / "vmcore-kvaddr.elf"

    @property
    def filtered_kdump(self) -> Path | None:
        path = self.dir / "vmcore-filtered.kdump"
        return path if path.exists() else None

    @property
    def dumps(self) -> dict[str, dict]:
        """Every dump file of the cell: {file name: {"writer", "format",
        "filtered"}} (DUMP_FILES)."""
        return self.meta.get("dumps", {"vmcore.kdump": DUMP_FILES["vmcore.kdump"]})

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"


def check_combination(arch: str, kernel: str, scenario: str) -> None:
    if (arch, kernel, scenario) not in matrix():
        raise ValueError(f"no cell {arch} {kernel} {scenario}: choose among "
                         + ", ".join("/".join(c) for c in matrix()))


def build_cell(arch: str, kernel: str, scenario: str) -> Cell:
    """Build (or reuse from cache) one cell and return it."""
    check_combination(arch, kernel, scenario)
    k = fetch_kernel(arch, kernel)
    name = f"{arch}-{kernel}-{scenario}-{k.version}-{bed_hash(arch, scenario)}"
    final = cells_dir() / name
    cells_dir().mkdir(parents=True, exist_ok=True)
    # Parallel test sessions may ask for the same cell: one builds, the others wait.
    with open(cells_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "cell.json").exists():
            work = cells_dir() / f".{name}.tmp{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            try:
                make_cell(k, scenario, work, final)
                shutil.rmtree(final, ignore_errors=True)
                work.rename(final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            prune_older_cells(final)
    return Cell(final)


def prune_older_cells(newest: Path, keep: int = 2) -> None:
    """Delete the older builds of the same cell, keeping the ``keep`` newest
    (a test may still be reading the previous one); keeps the cache small."""
    arch, kernel, scenario = cell_key(newest.name)
    builds = sorted(cells_dir().glob(f"{arch}-{kernel}-{scenario}-*/cell.json"),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old.parent, ignore_errors=True)
        (cells_dir() / f".{old.parent.name}.lock").unlink(missing_ok=True)


def cell_key(name: str) -> tuple[str, str, str]:
    """The (arch, kernel, scenario) of a cell directory name; series ids hold no
    "-" (vmcores.packages.Series), package versions may.

    >>> cell_key("x86_64-7.x-orphan-7.3.4-1~bpo13+1-0123456789")
    ('x86_64', '7.x', 'orphan')
    >>> cell_key("arm64-6.12+deb13-boot-6.12.118-1-0123456789")
    ('arm64', '6.12+deb13', 'boot')
    """
    arch, kernel, scenario = name.split("-")[:3]
    return arch, kernel, scenario


def guest_spec(k: Kernel, scenario: str, workdir: Path) -> GuestSpec:
    """Boot parameters of a cell's guest; writes its initrd into ``workdir``."""
    s = ALL_SCENARIOS[scenario]
    roots = s.boot_modules(k) if isinstance(s, Flavour) else s.modules
    modules = k.modules_in_load_order(["qemu_fw_cfg", *roots])
    initrd = workdir / "initrd"
    cpio = build_initramfs(fetch_busybox(k.arch), modules)
    if k.arch == "arm64":
        from . import arm64_bed

        cpio = arm64_bed.acpi_override(k) + cpio
        cmdline = arm64_bed.cmdline()
    else:
        cmdline = X86_CMDLINE
    initrd.write_bytes(cpio)
    extra_args = s.qemu_args(k.arch) if isinstance(s, Flavour) else []
    return GuestSpec(k.arch, k.image, initrd, f"{cmdline} {s.cmdline}".strip(), extra_args)


def make_cell(k: Kernel, scenario: str, work: Path, final: Path) -> None:
    """Boot, play the scenario, capture the truth, dump and convert, into ``work``
    (renamed ``final`` once complete)."""
    started = time.monotonic()
    spec = guest_spec(k, scenario, work)
    s = ALL_SCENARIOS[scenario]
    with LiveGuest(spec, k.meta, scenario) as g:
        s.play(g)
        truth = g.truth()
        if isinstance(s, Flavour):
            truth["flavour"] = s.flavour_truth(g)
        qemu_dumps = g.dump_all(work / "raw.elf", work)
        (work / "console.log").write_text(g.console_text)
        argv, kaslr_offset = g.argv, g.kaslr_offset
        seconds = {"boot": g.boot_seconds, "scenario": g.scenario_seconds, "dump": g.dump_seconds,
                   "extra_dumps": g.extra_dump_seconds}
    (work / "truth.json").write_text(json.dumps(truth, indent=1))
    meta = {
        "arch": k.arch, "kernel": k.series, "suite": series(k.series).suite, "abi": k.abi,
        "package_version": k.version,
        "vmlinux": str(k.vmlinux), "kernel_dir": str(k.dir), "image": str(k.image),
        "initrd": str(final / "initrd"),
        "qemu_argv": argv, "cmdline": spec.cmdline, "kaslr_offset": kaslr_offset,
        "scenario": scenario, "scenario_hash": bed_hash(k.arch, scenario), "qemu_version": qemu_version(k.arch),
    }
    convert_start = time.monotonic()
    meta.update(convert_dumps(work / "raw.elf", work, k, qemu_dumps))
    seconds["convert"] = time.monotonic() - convert_start
    seconds["total"] = time.monotonic() - started
    meta["seconds"] = {phase: round(s, 1) for phase, s in seconds.items()}
    (work / "cell.json").write_text(json.dumps(meta, indent=1))


def convert_dumps(raw: Path, out: Path, k: Kernel, qemu_dumps: dict[str, Path]) -> dict:
    """Write the cell's dump formats from QEMU's raw ELF, which is kept as
    vmcore-qemu.elf; QEMU's other dumps (``qemu_dumps``) are kept as written.

    On x86_64, makedumpfile runs alongside the Python conversions.
    Returns facts for cell.json: ``dumps`` (every dump file of the cell, see
    dump_entry) and why the filtered dumps are missing, if they are.
    """
    facts: dict = {}
    classic = out / "classic.elf"
    try:
        filtering = start_makedumpfile(raw, classic, out / "vmcore-filtered.kdump") if k.arch == "x86_64" else None
        dumpfmt.write_kdump(raw, out / "vmcore.kdump")
        dumpfmt.write_kvaddr_elf(raw, out / "vmcore-kvaddr.elf")
        if filtering:
            facts["filtered_kdump_error"] = makedumpfile_error(filtering, out / "vmcore-filtered.kdump")
            if facts["filtered_kdump_error"] is None:
                run_makedumpfile_formats(classic, out)
        raw.rename(out / "vmcore-qemu.elf")
        for path in (out / "vmcore-qemu.elf", *qemu_dumps.values()):
            keep_sparse(path)
    finally:
        raw.unlink(missing_ok=True)
        classic.unlink(missing_ok=True)
    facts["dumps"] = {name: entry for name in sorted(DUMP_FILES)
                      if (out / name).exists() for entry in [DUMP_FILES[name]]}
    return facts


# Every dump file a cell may hold: how it was written, the format
# drgn_hotplug.dumps names it by (elf, kdump-<compression>, "flattened ..."),
# and whether it is filtered (vmcore-filtered.kdump is then the reference
# its findings equal; else vmcore.kdump).
DUMP_FILES = {
    "vmcore.kdump": {"writer": "vmcores.dumpfmt.write_kdump", "format": "kdump-zlib", "filtered": False},
    "vmcore-kvaddr.elf": {"writer": "vmcores.dumpfmt.write_kvaddr_elf", "format": "elf", "filtered": False},
    "vmcore-qemu.elf": {"writer": "qemu dump-guest-memory", "format": "elf", "filtered": False},
    "vmcore-qemu-paging.elf": {"writer": "qemu dump-guest-memory -p", "format": "elf", "filtered": False},
    **{f"vmcore-qemu-{fmt}.flat": {"writer": f"qemu dump-guest-memory format={fmt}",
                                   "format": f"flattened {fmt}", "filtered": False}
       for fmt in QEMU_KDUMP_FORMATS},
    "vmcore-filtered.kdump": {"writer": "makedumpfile -c -d 31", "format": "kdump-zlib", "filtered": True},
}
# makedumpfile's other outputs, at the filtered level of vmcore-filtered.kdump:
# file -> (option, the compression it needs built in or None, format).
MAKEDUMPFILE_FORMATS = {
    "vmcore-filtered-lzo.kdump": (["-l"], "lzo", "kdump-lzo"),
    "vmcore-filtered-snappy.kdump": (["-p"], "snappy", "kdump-snappy"),
    "vmcore-filtered-zstd.kdump": (["-z"], "zstd", "kdump-zstd"),
    "vmcore-filtered.flat": (["-F", "-c"], None, "flattened kdump-zlib"),
    "vmcore-filtered.elf": (["-E"], None, "elf"),
}
DUMP_FILES.update({name: {"writer": f"makedumpfile {' '.join(opts)} -d 31", "format": fmt, "filtered": True}
                   for name, (opts, _, fmt) in MAKEDUMPFILE_FORMATS.items()})
# The dump whose findings each one's equal. makedumpfile 1.7.2's -E keeps the
# pages its -c/-l/-F drop at the same -d 31 on 6.12 and 7.x (kernfs names in
# slab pages: unreadable warnings in the kdump, none in the ELF): on every
# x86_64 cell its findings are vmcore.kdump's.
for name, entry in DUMP_FILES.items():
    entry["reference"] = ("vmcore-filtered.kdump" if entry["filtered"] and name != "vmcore-filtered.elf"
                          else "vmcore.kdump")


def run_makedumpfile_formats(classic: Path, out: Path) -> None:
    """makedumpfile's ELF, flattened and every compression it was built with
    (Debian's 1.7.2: lzo, not snappy nor zstd), each 0.5-2 s."""
    built = makedumpfile_compressions()
    for name, (opts, needs, _) in MAKEDUMPFILE_FORMATS.items():
        if needs is not None and needs not in built:
            continue
        if "-F" in opts:   # the flattened stream goes to stdout
            with open(out / name, "wb") as f:
                subprocess.run(["makedumpfile", *opts, "-d", "31", str(classic)], stdout=f,
                               stderr=subprocess.DEVNULL, check=True)
        else:
            subprocess.run(["makedumpfile", *opts, "-d", "31", str(classic), str(out / name)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


@functools.lru_cache(maxsize=None)
def makedumpfile_compressions() -> set[str]:
    """The compressions this makedumpfile was built with (``makedumpfile -v``
    prints ``lzo\tenabled``)."""
    text = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in text.splitlines() if line.endswith("enabled") and
            not line.endswith("disabled")}


def keep_sparse(path: Path) -> None:
    """Free the zero blocks of a dump QEMU wrote (an ELF is as large as guest
    RAM, ~120-180 MB once sparse) and make it readable (QEMU writes 0400)."""
    subprocess.run(["fallocate", "--dig-holes", str(path)], check=True)
    path.chmod(0o644)


def start_makedumpfile(raw: Path, classic: Path, out: Path) -> subprocess.Popen:
    """Start ``makedumpfile -c -d 31`` on the dump (a ~20 MB filtered kdump).

    makedumpfile rejects QEMU 7.2's layout (section headers before program
    headers), hence the classic-layout copy first. No ``-x vmlinux``: the
    dump's VMCOREINFO note (``-device vmcoreinfo``) tells makedumpfile all it
    needs, and reading a Debian vmlinux's DWARF took it 30-60 s of the 32-62 s
    it ran per cell (2 s without) for a byte-identical output (measured on
    5.10 orphan, 6.1 discard, 7.3 orphan; the same error on 7.3 pmem).
    """
    dumpfmt.write_classic_elf(raw, classic)
    return subprocess.Popen(["makedumpfile", "-c", "-d", "31", str(classic), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def makedumpfile_error(proc: subprocess.Popen, out: Path) -> str | None:
    """None once makedumpfile succeeded, else its last error line. It fails on
    the pmem cell: it cannot read the struct pages of the inactive subsection
    (testbed-notes)."""
    _, err = proc.communicate()
    if proc.returncode:
        out.unlink(missing_ok=True)
        return (err.strip().splitlines() or ["failed"])[-1]
    return None


@functools.lru_cache(maxsize=None)
def qemu_version(arch: str) -> str:
    binary = "qemu-system-x86_64" if arch == "x86_64" else "qemu-system-aarch64"
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0]


@contextlib.contextmanager
def start_live(cell: Cell) -> Iterator[LiveGuest]:
    """Boot a cell's guest again and replay its scenario; QEMU is killed on exit.

    >>> with start_live(cell) as g:                           # doctest: +SKIP
    ...     print(g.drgn_qmp_socket, g.gdb_port)
    """
    with cell_guest(cell) as g:
        ALL_SCENARIOS[cell.meta["scenario"]].play(g)
        yield g


def cell_guest(cell: Cell, extra_args: tuple[str, ...] = (), scenario: str | None = None) -> LiveGuest:
    """The cell's guest, not yet booted (a context manager boots it), with
    extra QEMU arguments (e.g. a further ``-qmp`` socket) and the scenario
    name its truth records (the cell's own by default)."""
    meta = cell.meta
    s = ALL_SCENARIOS[meta["scenario"]]
    flavour_args = s.qemu_args(meta["arch"]) if isinstance(s, Flavour) else []
    spec = GuestSpec(meta["arch"], Path(meta["image"]), cell.dir / "initrd", meta["cmdline"],
                     [*flavour_args, *extra_args])
    kernel_meta = json.loads((Path(meta["kernel_dir"]) / "kernel.json").read_text())
    return LiveGuest(spec, kernel_meta, scenario or meta["scenario"])
