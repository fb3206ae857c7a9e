"""vmcores.dumpfmt on real dumps: what drgn and gdb read through the converted
files must be what drgn reads through QEMU's own ELF dump of the same guest.

Each arch boots its 6.1 ``hotplug`` cell live once (so the dump holds a
hot-added DIMM above the boot RAM and its ZONE_MOVABLE struct pages), takes a
fresh physical ELF dump over QMP and converts it; the cell's own dumps cannot
serve, the bed deletes their raw ELF.  arm64 also boots trixie's 6.12, which
runs with 52-bit kernel VAs on 4K pages (LPA2: five levels, another
descriptor format).
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


LIVE_KERNELS = [("x86_64", "6.1"), ("arm64", "6.1"), ("arm64", "6.12+deb13")]


@pytest.fixture(scope="module", params=LIVE_KERNELS, ids="-".join)
def dumps(request, tmp_path_factory) -> Dumps:
    arch, kernel = request.param
    cell = vmcores.build_cell(arch, kernel, "hotplug")
    out = tmp_path_factory.mktemp(f"dumpfmt-{arch}-{kernel}")
    with vmcores.start_live(cell) as guest:
        guest.dump(out / "raw.elf")
    d = Dumps(arch, cell.vmlinux, out / "raw.elf", out / "vmcore.kdump",
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
@pytest.mark.parametrize("dumps", [("x86_64", "6.1")], indirect=True, ids="-".join)
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


# --- arm64 descriptors and walks, hand-made from the architecture's formats ------
# Arm ARM D8.3 (VMSAv8-64 translation table descriptors), 4K granule: bits[1:0]
# 0b11 table (page at level 3), 0b01 block; output address OA[47:12] in bits
# [47:12]; with FEAT_LPA2 (TCR_EL1.DS=1) OA[49:12] in bits [49:12] and
# OA[51:50] in bits [9:8], which are the shareability field SH[1:0] otherwise.
# Bits 50 (GP), 51 (DBM), 53/54 (PXN/UXN) and 10 (AF) are attributes.

AF, NG, PXN_UXN = 1 << 10, 1 << 11, 3 << 53


@pytest.mark.parametrize("entry, lpa2_pa, old_pa", [
    (0x41234000 | AF | NG | PXN_UXN | 3, 0x41234000, 0x41234000),
    # SH = 0b11 (inner shareable, the kernel's PTE_SHARED without LPA2) is OA[51:50] with it
    (0x41234000 | 0x300 | AF | 3, 0xC000041234000, 0x41234000),
    (0x41234000 | 0x100 | AF | 3, 0x4000041234000, 0x41234000),
    (0x41234000 | 0x200 | AF | 3, 0x8000041234000, 0x41234000),
    # OA[49:48]: address bits with LPA2, bits the old format has no use for
    (0x0003_0000_4123_4000 | AF | 3, 0x0003_0000_4123_4000, 0x41234000),
    # GP (bit 50) and DBM (bit 51) are attributes in both formats
    (0x000C_0000_4123_4000 | AF | 3, 0x41234000, 0x41234000),
    # the software bits 55-58 and 63 are no address either
    (0x8780_0000_4123_4000 | AF | 3, 0x41234000, 0x41234000),
], ids=["attributes", "bits9:8=11", "bit8", "bit9", "bits49:48", "GP+DBM", "software-bits"])
def test_arm64_output_address_lpa2_and_48bit(entry, lpa2_pa, old_pa):
    assert dumpfmt.Arm64PageTables(52).output_address(entry) == lpa2_pa
    assert dumpfmt.Arm64PageTables(48).output_address(entry) == old_pa
    assert dumpfmt.Arm64PageTables(39).output_address(entry) == old_pa


def test_arm64_lpa2_levels_and_descriptor_kinds():
    lpa2, old = dumpfmt.Arm64PageTables(52), dumpfmt.Arm64PageTables(48)
    # 5 levels (-1..3) with 16 root entries: 52 - 48 bits index level -1
    assert lpa2.shifts == (48, 39, 30, 21, 12) and lpa2.top_indices() == range(16)
    assert old.shifts == (39, 30, 21, 12) and old.top_indices() == range(512)
    block, table = 0x40000000 | AF | 1, 0x40000000 | 3
    # level -1 has no block descriptors; level 0 has them with LPA2 only (512 GiB)
    assert [lpa2.kind(block, s) for s in lpa2.shifts] == ["none", "leaf", "leaf", "leaf", "none"]
    assert [old.kind(block, s) for s in old.shifts] == ["none", "leaf", "leaf", "none"]
    assert [lpa2.kind(table, s) for s in lpa2.shifts] == ["table"] * 4 + ["leaf"]
    assert lpa2.kind(0x40000000 | AF, 30) == old.kind(0x40000000 | 2, 30) == "none"


def arm64_phys_dump(tables: dict[int, dict[int, int]], t1sz: int | None, va_bits: int = 52) -> tuple:
    """A PhysDump and its memory: 4K tables at the given physical addresses in
    one segment from 0x40000000, swapper_pg_dir at 0x40000000."""
    base = 0x40000000
    memory = bytearray(8 * 4096)
    for table_pa, entries in tables.items():
        for index, entry in entries.items():
            struct.pack_into("<Q", memory, table_pa - base + 8 * index, entry)
    info = {"PAGESIZE": "4096", "NUMBER(VA_BITS)": str(va_bits),
            "NUMBER(kimage_voffset)": "0xffff800000000000",
            "SYMBOL(swapper_pg_dir)": f"{0xffff800000000000 + base:x}"}
    if t1sz is not None:
        info["NUMBER(TCR_EL1_T1SZ)"] = hex(t1sz)
    dump = dumpfmt.PhysDump(Path("hand-made"), "aarch64", [dumpfmt.Segment(base, 0, len(memory))],
                            [], b"", "", info)
    return dump, bytes(memory)


def test_arm64_lpa2_walk_five_levels():
    # level -1 [15] -> level 0: [0] a 512 GiB block at PA 1 << 50 (OA[50] from bit 8),
    # [511] -> level 1: [0] -> level 2 [0] -> level 3 [5] one page; [1] a 1 GiB
    # block at PA 0x8000840000000 (OA[51] from bit 9).
    dump, memory = arm64_phys_dump({
        0x40000000: {15: 0x40001000 | 3},
        0x40001000: {0: 0x100 | AF | 1, 511: 0x40002000 | 3},
        0x40002000: {0: 0x40003000 | 3, 1: 0x0000_0008_4000_0000 | 0x200 | AF | 1},
        0x40003000: {0: 0x40004000 | 3},
        0x40004000: {5: 0x40000000 | AF | 3},
    }, t1sz=64 - 52)
    assert dumpfmt.kernel_mappings(dump, memory) == [
        dumpfmt.Mapping(0xFFFF_0000_0000_0000, 1 << 50, 1 << 39),
        dumpfmt.Mapping(0xFFFF_FF80_0000_5000, 0x40000000, 4096),
        dumpfmt.Mapping(0xFFFF_FF80_4000_0000, 0x8000840000000, 1 << 30),
    ]


def test_arm64_52bit_kernel_without_lpa2_walks_four_levels():
    # A 52-bit kernel on a CPU without LPA2 runs with T1SZ = 16: swapper_pg_dir
    # is its level-0 table and bits 9:8 are shareability again.
    dump, memory = arm64_phys_dump({
        0x40000000: {511: 0x40001000 | 3},
        0x40001000: {1: 0x40002000 | 3},
        0x40002000: {0: 0x40003000 | 3},
        0x40003000: {7: 0x40000000 | 0x300 | AF | 3},
    }, t1sz=64 - 48)
    assert dumpfmt.kernel_mappings(dump, memory) == [
        dumpfmt.Mapping(0xFFFF_FF80_4000_7000, 0x40000000, 4096)]


def test_arm64_contiguous_lpa2_page_table_is_one_mapping():
    pages = {i: 0x40000000 + (i << 12) | 0x100 | AF | 3 for i in range(512)}
    dump, memory = arm64_phys_dump({
        0x40000000: {0: 0x40001000 | 3},
        0x40001000: {0: 0x40002000 | 3},
        0x40002000: {0: 0x40003000 | 3},
        0x40003000: {0: 0x40004000 | 3},
        0x40004000: pages,
    }, t1sz=64 - 52)
    assert dumpfmt.kernel_mappings(dump, memory) == [
        dumpfmt.Mapping(0xFFF0_0000_0000_0000, (1 << 50) + 0x40000000, 512 << 12)]


def test_arm64_other_page_sizes_are_refused_in_one_line():
    dump, _ = arm64_phys_dump({}, t1sz=64 - 52)
    dump.vmcoreinfo["PAGESIZE"] = "65536"
    with pytest.raises(dumpfmt.DumpFormatError, match="^arm64 with 64K pages is not supported$"):
        dumpfmt.page_tables(dump)
