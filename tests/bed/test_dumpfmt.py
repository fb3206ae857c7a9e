"""vmcores.dumpfmt on real dumps: what drgn and gdb read through the converted
files must be what drgn reads through QEMU's own ELF dump of the same guest.

Each arch boots its 6.1 ``hotplug`` cell live once (so the dump holds a
hot-added DIMM above the boot RAM and its ZONE_MOVABLE struct pages), takes a
fresh physical ELF dump over QMP and converts it; the cell's own dumps cannot
serve, the bed deletes their raw ELF.
"""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import vmcores
from vmcores import dumpfmt

drgn = pytest.importorskip("drgn")
from drgn.helpers.linux.mm import pfn_to_page  # noqa: E402

pytestmark = pytest.mark.bed

GDB = {"x86_64": "gdb", "aarch64": "gdb-multiarch"}
DRGN_ARCH = {"x86_64": "X86_64", "aarch64": "AARCH64"}


@dataclass
class Dumps:
    arch: str
    vmlinux: Path
    raw: Path
    kdump: Path
    kvaddr: Path
    classic: Path
    phys: dumpfmt.PhysDump


def live(test):
    """A test on a freshly booted guest's dump."""
    return pytest.mark.slow(pytest.mark.live(test))


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def dumps(request, tmp_path_factory) -> Dumps:
    cell = vmcores.build_cell(request.param, "6.1", "hotplug")
    out = tmp_path_factory.mktemp(f"dumpfmt-{request.param}")
    with vmcores.start_live(cell) as guest:
        guest.dump(out / "raw.elf")
    d = Dumps(request.param, cell.vmlinux, out / "raw.elf", out / "vmcore.kdump",
              out / "kvaddr.elf", out / "classic.elf", dumpfmt.read_qemu_elf(out / "raw.elf"))
    dumpfmt.write_kdump(d.raw, d.kdump)
    dumpfmt.write_kvaddr_elf(d.raw, d.kvaddr)
    dumpfmt.write_classic_elf(d.raw, d.classic)
    return d


def program(core: Path, vmlinux: Path):
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([str(vmlinux)])
    return prog


def read_or_fault(prog, address: int, size: int, physical: bool = False):
    try:
        return prog.read(address, size, physical)
    except drgn.FaultError:
        return "fault"


def sample_pfns(phys: dumpfmt.PhysDump) -> list[int]:
    """First, middle and last pfn of every physical segment of the dump."""
    ps = phys.page_size
    return [pfn for s in phys.segments
            for pfn in (s.paddr // ps, (s.paddr + s.size // 2) // ps, s.end // ps - 1)]


def mem_sections(prog, phys: dumpfmt.PhysDump) -> tuple[bytes, list[bytes]]:
    """The SPARSEMEM_EXTREME root array and every non-null root's sections, one read each."""
    nr_roots = int(phys.vmcoreinfo["LENGTH(mem_section)"])
    roots = prog.read(prog["mem_section"].value_(), 8 * nr_roots)
    pointers = [p for p in struct.unpack(f"<{nr_roots}Q", roots) if p]
    return roots, [prog.read(p, phys.page_size) for p in pointers]


def struct_pages(prog, pfns: list[int]) -> list:
    size = prog.type("struct page").size
    return [read_or_fault(prog, pfn_to_page(prog, pfn).value_(), size) for pfn in pfns]


@live
def test_kdump_opens_with_the_guest_arch_and_release(dumps):
    prog = program(dumps.kdump, dumps.vmlinux)
    assert prog.platform.arch.name == DRGN_ARCH[dumps.phys.machine]
    release = prog["init_uts_ns"].name.release.string_().decode()
    assert release == dumps.phys.vmcoreinfo["OSRELEASE"]


@live
def test_kdump_struct_pages_match_raw_elf(dumps):
    pfns = sample_pfns(dumps.phys)
    raw = struct_pages(program(dumps.raw, dumps.vmlinux), pfns)
    assert any(page != "fault" for page in raw)
    assert struct_pages(program(dumps.kdump, dumps.vmlinux), pfns) == raw


@live
def test_kdump_mem_sections_match_raw_elf(dumps):
    raw_roots, raw_sections = mem_sections(program(dumps.raw, dumps.vmlinux), dumps.phys)
    assert raw_sections
    assert mem_sections(program(dumps.kdump, dumps.vmlinux), dumps.phys) == (raw_roots, raw_sections)


@live
def test_kdump_zero_pages_read_back_as_zeros(dumps):
    ps = dumps.phys.page_size
    raw = program(dumps.raw, dumps.vmlinux)
    kdump = program(dumps.kdump, dumps.vmlinux)
    ram = max(dumps.phys.segments, key=lambda s: s.size)
    candidates = range(ram.end - 64 * ps, ram.end, ps)
    zero = next(p for p in candidates if raw.read(p, ps, True) == bytes(ps))
    nonzero = next(p for p in range(ram.paddr, ram.end, ps) if raw.read(p, ps, True) != bytes(ps))
    assert kdump.read(zero, ps, True) == bytes(ps)
    assert kdump.read(nonzero, ps, True) == raw.read(nonzero, ps, True)


def gdb_batch(dumps: Dumps, commands: list[str]) -> str:
    offset = dumpfmt.vmcoreinfo_int(dumps.phys.vmcoreinfo, "KERNELOFFSET")
    argv = [GDB[dumps.phys.machine], "-nx", "-batch",
            "-ex", f"symbol-file -o {offset:#x} {dumps.vmlinux}",
            "-ex", f"core-file {dumps.kvaddr}"]
    for c in commands:
        argv += ["-ex", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout


def gdb_words(output: str) -> list[int]:
    """The 64-bit words of ``x/Ngx`` output."""
    return [int(w, 16) for line in output.splitlines() if re.match(r"0x[0-9a-f]+:", line)
            for w in line.split(":", 1)[1].split()]


@live
def test_gdb_reads_kvaddr_elf_like_drgn_reads_raw_elf(dumps):
    prog = program(dumps.raw, dumps.vmlinux)
    page = next(pfn_to_page(prog, pfn).value_() for pfn in sample_pfns(dumps.phys)
                if read_or_fault(prog, pfn_to_page(prog, pfn).value_(), 64) != "fault")
    root = prog["mem_section"][0].value_()
    out = gdb_batch(dumps, ["p init_uts_ns.name.release", f"x/8gx {page:#x}", f"x/8gx {root:#x}"])
    release = prog["init_uts_ns"].name.release.string_().decode()
    assert f'"{release}"' in out
    expected = [int.from_bytes(prog.read(a + 8 * i, 8), "little") for a in (page, root) for i in range(8)]
    assert gdb_words(out) == expected


@live
def test_kvaddr_elf_covers_linear_map_image_and_vmemmap(dumps):
    prog = program(dumps.raw, dumps.vmlinux)
    loads = kvaddr_loads(dumps.kvaddr)
    covered = lambda va: any(v <= va < v + size for v, size in loads)  # noqa: E731
    image = prog.symbol("init_uts_ns").address
    linear = prog["mem_section"].value_()
    vmemmap = next(pfn_to_page(prog, pfn).value_() for pfn in sample_pfns(dumps.phys)
                   if read_or_fault(prog, pfn_to_page(prog, pfn).value_(), 8) != "fault")
    assert covered(image) and covered(linear) and covered(vmemmap)
    assert not any(v < 2**63 for v, _ in loads)


def kvaddr_loads(path: Path) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        header = dumpfmt.ELF_HEADER.unpack(f.read(dumpfmt.ELF_HEADER.size))
        f.seek(header[5])
        phdrs = [dumpfmt.PROGRAM_HEADER.unpack(f.read(dumpfmt.PROGRAM_HEADER.size))
                 for _ in range(header[10])]
    return [(p[3], p[6]) for p in phdrs if p[0] == dumpfmt.PT_LOAD]


@live
# makedumpfile is built for the host's arch only: it reads the x86_64 dumps.
@pytest.mark.parametrize("dumps", ["x86_64"], indirect=True)
def test_makedumpfile_filters_the_classic_elf(dumps, tmp_path):
    out = tmp_path / "filtered.kdump"
    proc = subprocess.run(["makedumpfile", "-c", "-d", "31", "-x", str(dumps.vmlinux),
                           str(dumps.classic), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    release = program(out, dumps.vmlinux)["init_uts_ns"].name.release.string_().decode()
    assert release == dumps.phys.vmcoreinfo["OSRELEASE"]


# --- bad input: one-line errors, no traceback -------------------------------

def test_not_an_elf_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.write_bytes(b"not a dump")
    assert dumpfmt.main(["kdump", str(bad), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"dumpfmt: {bad}: not an ELF file\n"


def test_dump_without_vmcoreinfo_is_refused(tmp_path):
    src = tmp_path / "novmci.elf"
    load = dumpfmt.PROGRAM_HEADER.pack(dumpfmt.PT_LOAD, 7, 4096, 0, 0, 4096, 4096, 0)
    src.write_bytes((dumpfmt.elf_header("x86_64", 1) + load).ljust(8192, b"\0"))
    with pytest.raises(dumpfmt.DumpFormatError, match="no VMCOREINFO"):
        dumpfmt.write_kdump(src, tmp_path / "out")


def test_truncated_dump_is_refused(tmp_path):
    src = tmp_path / "short.elf"
    note = b"".join([dumpfmt.NOTE_HEADER.pack(11, 14, 0), b"VMCOREINFO\0\0", b"PAGESIZE=4096\0\0\0"])
    at = dumpfmt.ELF_HEADER.size + 2 * dumpfmt.PROGRAM_HEADER.size
    phdrs = (dumpfmt.PROGRAM_HEADER.pack(dumpfmt.PT_NOTE, 0, at, 0, 0, len(note), len(note), 0)
             + dumpfmt.PROGRAM_HEADER.pack(dumpfmt.PT_LOAD, 7, 4096, 0, 0, 1 << 20, 1 << 20, 0))
    src.write_bytes((dumpfmt.elf_header("x86_64", 2) + phdrs + note).ljust(8192, b"\0"))
    with pytest.raises(dumpfmt.DumpFormatError, match="truncated"):
        dumpfmt.write_kdump(src, tmp_path / "out")
