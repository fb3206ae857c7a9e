"""Convert QEMU's physical ELF dumps into the formats drgn, makedumpfile and gdb read.

QEMU 7.2's ``dump-guest-memory`` (paging=false, ELF) writes physical-address
PT_LOAD segments, one NT_PRSTATUS note per vCPU and, when the guest loaded
qemu_fw_cfg with ``-device vmcoreinfo``, the kernel's VMCOREINFO note.  Its
other formats are not usable here (see shared/testbed-notes.md), so this
module writes, with the standard library only:

- :func:`write_kdump`: a kdump-compressed file (makedumpfile's "KDUMP   "
  format, header version 6) that libkdumpfile, hence drgn, opens;
- :func:`write_classic_elf`: the same ELF with program headers right after the
  ELF header, the layout makedumpfile expects;
- :func:`write_kvaddr_elf`: an ELF whose PT_LOAD carry kernel virtual
  addresses (found by walking the guest's kernel page tables), what gdb needs.

Example::

    dump = read_qemu_elf("vmcore.elf")
    write_kdump("vmcore.elf", "vmcore.kdump")   # drgn -c vmcore.kdump -s vmlinux
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

EM_X86_64 = 62
EM_AARCH64 = 183
MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}
PT_LOAD = 1
PT_NOTE = 4
ET_CORE = 4
PF_RWX = 7
PN_XNUM = 0xFFFF
X86_START_KERNEL_MAP = 0xFFFFFFFF80000000
ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
NOTE_HEADER = struct.Struct("<III")


class DumpFormatError(Exception):
    """The input is not a dump this module can convert; the message is one line."""


@dataclass(frozen=True)
class Segment:
    """One physical PT_LOAD: ``size`` bytes at ``paddr``, stored at file ``offset``."""

    paddr: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.paddr + self.size


@dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes


@dataclass
class PhysDump:
    """What :func:`read_qemu_elf` found in a physical ELF dump.

    >>> dump = read_qemu_elf("vmcore.elf")          # doctest: +SKIP
    >>> dump.machine, dump.page_size, dump.vmcoreinfo["OSRELEASE"]  # doctest: +SKIP
    ('x86_64', 4096, '6.1.0-56-cloud-amd64')
    """

    path: Path
    machine: str
    segments: list[Segment]
    notes: list[Note]
    note_bytes: bytes
    vmcoreinfo_text: str = ""
    vmcoreinfo: dict[str, str] = field(default_factory=dict)

    @property
    def page_size(self) -> int:
        if "PAGESIZE" not in self.vmcoreinfo:
            raise DumpFormatError(f"{self.path}: no VMCOREINFO note (guest without "
                                  "qemu_fw_cfg or QEMU without -device vmcoreinfo)")
        return int(self.vmcoreinfo["PAGESIZE"])

    @property
    def nr_cpus(self) -> int:
        return sum(1 for n in self.notes if n.name == "CORE" and n.type == 1)


def read_qemu_elf(path: str | os.PathLike) -> PhysDump:
    """Parse the headers and notes of a QEMU physical ELF dump (any header order).

    >>> read_qemu_elf("vmcore.elf").segments[0]    # doctest: +SKIP
    Segment(paddr=0, offset=5432, size=655360)
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(ELF_HEADER.size)
            machine, phoff, phnum = _check_elf_header(path, header)
            f.seek(phoff)
            phdrs = [PROGRAM_HEADER.unpack(f.read(PROGRAM_HEADER.size)) for _ in range(phnum)]
            segments = [Segment(p[4], p[2], p[5]) for p in phdrs if p[0] == PT_LOAD]
            note_bytes = b"".join(_read_at(f, p[2], p[5]) for p in phdrs if p[0] == PT_NOTE)
    except OSError as e:
        raise DumpFormatError(f"{path}: {e.strerror}") from None
    except struct.error:
        raise DumpFormatError(f"{path}: truncated program headers") from None
    notes = parse_notes(note_bytes)
    text = next((n.desc.rstrip(b"\0").decode("ascii", "replace")
                 for n in notes if n.name == "VMCOREINFO"), "")
    return PhysDump(path, machine, sorted(segments, key=lambda s: s.paddr), notes,
                    note_bytes, text, parse_vmcoreinfo(text))


def _check_elf_header(path: Path, header: bytes) -> tuple[str, int, int]:
    if len(header) < ELF_HEADER.size or header[:4] != b"\x7fELF":
        raise DumpFormatError(f"{path}: not an ELF file")
    if header[4] != 2 or header[5] != 1:
        raise DumpFormatError(f"{path}: not a little-endian ELF64 file")
    fields = ELF_HEADER.unpack(header)
    e_type, e_machine, e_phoff, e_phnum = fields[1], fields[2], fields[5], fields[10]
    if e_type != ET_CORE:
        raise DumpFormatError(f"{path}: ELF type {e_type} is not a core file")
    if e_machine not in MACHINES:
        raise DumpFormatError(f"{path}: unsupported ELF machine {e_machine}")
    return MACHINES[e_machine], e_phoff, e_phnum


def _read_at(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DumpFormatError(f"{f.name}: note segment truncated")
    return data


def parse_notes(data: bytes) -> list[Note]:
    """Split an ELF note segment into notes; a truncated tail is dropped.

    >>> parse_notes(struct.pack("<III", 5, 2, 9) + b"CORE\\0\\0\\0\\0" + b"hi\\0\\0")
    [Note(name='CORE', type=9, desc=b'hi')]
    """
    notes, pos = [], 0
    while pos + NOTE_HEADER.size <= len(data):
        namesz, descsz, ntype = NOTE_HEADER.unpack_from(data, pos)
        name_at = pos + NOTE_HEADER.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if desc_at + descsz > len(data):
            break
        name = data[name_at:name_at + namesz].rstrip(b"\0").decode("ascii", "replace")
        notes.append(Note(name, ntype, data[desc_at:desc_at + descsz]))
        pos = end
    return notes


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_vmcoreinfo(text: str) -> dict[str, str]:
    """VMCOREINFO lines ``KEY=VALUE`` as a dict of strings.

    >>> parse_vmcoreinfo("PAGESIZE=4096\\nSYMBOL(_stext)=ffffffff81000000\\n")
    {'PAGESIZE': '4096', 'SYMBOL(_stext)': 'ffffffff81000000'}
    """
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def vmcoreinfo_int(info: dict[str, str], key: str) -> int:
    """A VMCOREINFO value as an int: SYMBOL()/KERNELOFFSET are bare hex, NUMBER()
    is decimal unless written 0x... (arm64's kimage_voffset, PHYS_OFFSET).

    >>> vmcoreinfo_int({"SYMBOL(x)": "ffff0000"}, "SYMBOL(x)")
    4294901760
    >>> vmcoreinfo_int({"NUMBER(y)": "-129"}, "NUMBER(y)")
    -129
    """
    try:
        value = info[key]
    except KeyError:
        raise DumpFormatError(f"VMCOREINFO has no {key}") from None
    if key.startswith("SYMBOL(") or key == "KERNELOFFSET":
        return int(value, 16)
    return int(value, 0) if value.lower().startswith(("0x", "-0x")) else int(value)


@contextlib.contextmanager
def mapped(dump: PhysDump) -> Iterator[mmap.mmap]:
    """The dump file mapped read-only (QEMU writes dumps mode 0400: only reading)."""
    with open(dump.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if any(s.offset + s.size > size for s in dump.segments):
            raise DumpFormatError(f"{dump.path}: truncated (a PT_LOAD ends past the file end)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def page_ranges(dump: PhysDump) -> list[tuple[int, int, Segment]]:
    """(first pfn, end pfn, segment) for every PT_LOAD, refusing unaligned ones.

    >>> d = PhysDump(Path("x"), "x86_64", [Segment(0, 4096, 8192)], [], b"", "", {"PAGESIZE": "4096"})
    >>> page_ranges(d)
    [(0, 2, Segment(paddr=0, offset=4096, size=8192))]
    """
    ps = dump.page_size
    if not dump.segments:
        raise DumpFormatError(f"{dump.path}: no PT_LOAD segment")
    if any(s.paddr % ps or s.size % ps for s in dump.segments):
        raise DumpFormatError(f"{dump.path}: a PT_LOAD is not page aligned")
    return [(s.paddr // ps, s.end // ps, s) for s in dump.segments]


# --- kdump-compressed output --------------------------------------------------

KDUMP_SIGNATURE = b"KDUMP   "
KDUMP_HEADER_VERSION = 6          # the first with 64-bit pfns in the sub header
DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_LEVEL_EXCLUDE_ZERO = 1
# struct disk_dump_header for 64-bit targets: the 390-byte new_utsname is
# followed by 6 bytes of padding so that struct timeval is 8-aligned.
DISK_DUMP_HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")
# struct kdump_sub_header (64-bit), fields up to max_mapnr_64.
KDUMP_SUB_HEADER = struct.Struct("<QiiQQQQQQQQQQQ")
PAGE_DESC = struct.Struct("<QIIQ")
ZERO_SCAN_CHUNK = 1 << 20


def write_kdump(src_elf: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write ``out`` as a kdump-compressed dump of the QEMU ELF ``src_elf``.

    Pages are zlib-compressed one by one; all-zero pages share one stored zero
    page, as makedumpfile -d 1 does, so they still read back as zeros.

    >>> write_kdump("vmcore.elf", "vmcore.kdump")   # doctest: +SKIP
    """
    dump = read_qemu_elf(src_elf)
    ranges = page_ranges(dump)
    ps = dump.page_size
    max_mapnr = max(end for _, end, _ in ranges)
    bitmap = pfn_bitmap(ranges, ps)
    sub_header_blocks, sub_header = kdump_sub_header(dump, max_mapnr)
    bitmap_blocks = 2 * len(bitmap) // ps
    desc_at = (1 + sub_header_blocks + bitmap_blocks) * ps
    npages = sum(end - start for start, end, _ in ranges)
    with mapped(dump) as mm, open(out, "wb") as f:
        f.write(kdump_header(dump, mm, max_mapnr, sub_header_blocks, bitmap_blocks))
        f.seek(ps)
        f.write(sub_header)
        f.seek((1 + sub_header_blocks) * ps)
        f.write(bitmap)
        f.write(bitmap)
        descs = write_kdump_pages(mm, ranges, ps, f, desc_at + npages * PAGE_DESC.size)
        f.seek(desc_at)
        f.write(descs)


def pfn_bitmap(ranges: list[tuple[int, int, Segment]], page_size: int) -> bytearray:
    """One kdump page bitmap (bit pfn%8 of byte pfn//8), padded to whole blocks.

    >>> pfn_bitmap([(1, 10, None)], 8)
    bytearray(b'\\xfe\\x03\\x00\\x00\\x00\\x00\\x00\\x00')
    """
    max_mapnr = max(end for _, end, _ in ranges)
    nbytes = -(-max_mapnr // 8)
    bitmap = bytearray(-(-nbytes // page_size) * page_size)
    for start, end, _ in ranges:
        _set_bits(bitmap, start, end)
    return bitmap


def _set_bits(bitmap: bytearray, start: int, end: int) -> None:
    # Whole bytes are filled with one slice assignment: a 1 GiB range is
    # 32768 bytes of 0xff, not 262144 Python operations.
    head_end = min(end, -(-start // 8) * 8)
    tail_start = max(head_end, end // 8 * 8)
    for pfn in (*range(start, head_end), *range(tail_start, end)):
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    if tail_start > head_end:
        bitmap[head_end // 8:tail_start // 8] = b"\xff" * ((tail_start - head_end) // 8)


def kdump_sub_header(dump: PhysDump, max_mapnr: int) -> tuple[int, bytes]:
    """(size in blocks, bytes) of the kdump sub header, VMCOREINFO text and ELF notes.

    libkdumpfile takes VMCOREINFO from the notes for header version >= 4 and
    the architecture's registers from the NT_PRSTATUS notes.
    """
    ps = dump.page_size
    vmcoreinfo = dump.vmcoreinfo_text.encode()
    vmcoreinfo_at = ps + KDUMP_SUB_HEADER.size
    note_at = vmcoreinfo_at + len(vmcoreinfo)
    fixed = KDUMP_SUB_HEADER.pack(
        _phys_base(dump), DUMP_LEVEL_EXCLUDE_ZERO, 0, 0, max_mapnr,
        vmcoreinfo_at, len(vmcoreinfo), note_at, len(dump.note_bytes), 0, 0,
        0, max_mapnr, max_mapnr)
    body = fixed + vmcoreinfo + dump.note_bytes
    return -(-len(body) // ps), body


def _phys_base(dump: PhysDump) -> int:
    # makedumpfile stores phys_base (x86_64) or PHYS_OFFSET (arm64) here.
    for key in ("NUMBER(phys_base)", "NUMBER(PHYS_OFFSET)"):
        if key in dump.vmcoreinfo:
            return vmcoreinfo_int(dump.vmcoreinfo, key) & (2**64 - 1)
    return 0


def kdump_header(dump: PhysDump, mm: mmap.mmap, max_mapnr: int, sub_header_blocks: int,
                 bitmap_blocks: int) -> bytes:
    """The disk_dump_header block.

    tv_usec stays 0: libkdumpfile first tries the 32-bit header layout, whose
    block_size overlaps tv_usec, and must find it implausible.
    """
    timestamp = int(os.stat(dump.path).st_mtime)
    return DISK_DUMP_HEADER.pack(
        KDUMP_SIGNATURE, KDUMP_HEADER_VERSION, utsname(dump, mm), timestamp, 0,
        DUMP_DH_COMPRESSED_ZLIB, dump.page_size, sub_header_blocks, bitmap_blocks,
        min(max_mapnr, 2**32 - 1), 0, 0, 0, 0, dump.nr_cpus)


UTS_LEN = 65


def utsname(dump: PhysDump, mm: mmap.mmap) -> bytes:
    """struct new_utsname for the kdump header: the guest's own init_uts_ns
    when VMCOREINFO locates it, else one built from OSRELEASE and the ELF
    machine.  libkdumpfile takes the architecture from ``machine`` and ignores
    a header whose release, version or machine is empty.
    """
    own = _init_uts_ns(dump, mm)
    if own is not None:
        return own
    fields = ("Linux", "(none)", dump.vmcoreinfo.get("OSRELEASE", "unknown"), "#1",
              dump.machine, "(none)")
    return b"".join(v.encode()[:UTS_LEN - 1].ljust(UTS_LEN, b"\0") for v in fields)


# Before v5.11 VMCOREINFO had no OFFSET(uts_namespace.name) and struct
# uts_namespace began with a struct kref (4 bytes); the OSRELEASE comparison
# below rejects a wrong guess.
UTS_NAMESPACE_NAME_BEFORE_5_11 = 4


def _init_uts_ns(dump: PhysDump, mm: mmap.mmap) -> bytes | None:
    info = dump.vmcoreinfo
    if "SYMBOL(init_uts_ns)" not in info:
        return None
    offset = (vmcoreinfo_int(info, "OFFSET(uts_namespace.name)")
              if "OFFSET(uts_namespace.name)" in info else UTS_NAMESPACE_NAME_BEFORE_5_11)
    name = vmcoreinfo_int(info, "SYMBOL(init_uts_ns)") + offset
    raw = phys_read(dump, mm, kernel_image_phys(dump, name), 6 * UTS_LEN)
    release = raw[2 * UTS_LEN:3 * UTS_LEN].split(b"\0")[0].decode("ascii", "replace")
    return raw if raw and release == info.get("OSRELEASE") else None


def kernel_image_phys(dump: PhysDump, vaddr: int) -> int:
    """Physical address of a kernel-image (symbol) address, without page tables.

    x86_64 maps the image at __START_KERNEL_map + phys_base; arm64 at
    kimage_voffset above its physical load address.
    """
    info = dump.vmcoreinfo
    if dump.machine == "x86_64":
        return vaddr - X86_START_KERNEL_MAP + vmcoreinfo_int(info, "NUMBER(phys_base)")
    return (vaddr - vmcoreinfo_int(info, "NUMBER(kimage_voffset)")) & (2**64 - 1)


def phys_read(dump: PhysDump, mm: mmap.mmap, paddr: int, size: int) -> bytes:
    """``size`` bytes at ``paddr`` if one PT_LOAD holds them all, else b"".

    >>> d = PhysDump(Path("x"), "x86_64", [Segment(0x1000, 0, 4)], [], b"", "", {})
    >>> phys_read(d, b"abcd", 0x1001, 2), phys_read(d, b"abcd", 0x1003, 2)
    (b'bc', b'')
    """
    for seg in dump.segments:
        if seg.paddr <= paddr and paddr + size <= seg.end:
            at = seg.offset + paddr - seg.paddr
            return bytes(mm[at:at + size])
    return b""


def write_kdump_pages(mm: mmap.mmap, ranges, page_size: int, f, data_at: int) -> bytearray:
    """Write page data from ``data_at`` on; return the page descriptor array."""
    zero_page = bytes(page_size)
    f.seek(data_at)
    zero_desc = _store_page(f, zero_page, data_at)
    offset = data_at + zero_desc[1]
    descs = bytearray()
    for _, _, seg in ranges:
        for page_at, is_zero in _pages(mm, seg, page_size):
            if is_zero:
                descs += PAGE_DESC.pack(*zero_desc)
                continue
            desc = _store_page(f, mm[page_at:page_at + page_size], offset)
            descs += PAGE_DESC.pack(*desc)
            offset += desc[1]
    return descs


def _store_page(f, page: bytes, offset: int) -> tuple[int, int, int, int]:
    # makedumpfile keeps a page uncompressed when zlib does not shrink it.
    packed = zlib.compress(page, 1)
    if len(packed) < len(page):
        f.write(packed)
        return offset, len(packed), DUMP_DH_COMPRESSED_ZLIB, 0
    f.write(page)
    return offset, len(page), 0, 0


def _pages(mm: mmap.mmap, seg: Segment, page_size: int) -> Iterator[tuple[int, bool]]:
    """(file offset, all zero?) for each page of ``seg``, testing 1 MiB at a time
    first so that the mostly-empty RAM of a fresh guest costs little."""
    zero_chunk = bytes(ZERO_SCAN_CHUNK)
    zero_page = zero_chunk[:page_size]
    for chunk_at in range(seg.offset, seg.offset + seg.size, ZERO_SCAN_CHUNK):
        chunk_end = min(chunk_at + ZERO_SCAN_CHUNK, seg.offset + seg.size)
        all_zero = mm[chunk_at:chunk_end] == zero_chunk[:chunk_end - chunk_at]
        for page_at in range(chunk_at, chunk_end, page_size):
            yield page_at, all_zero or mm[page_at:page_at + page_size] == zero_page


# --- ELF output ---------------------------------------------------------------

@dataclass(frozen=True)
class Mapping:
    """``size`` bytes of physical memory at ``paddr`` seen at virtual ``vaddr``."""

    vaddr: int
    paddr: int
    size: int


def write_classic_elf(src_elf: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rewrite a QEMU ELF dump with its program headers right after the ELF
    header and no section headers, the layout makedumpfile reads; zero pages
    become file holes.

    >>> write_classic_elf("vmcore.elf", "vmcore-classic.elf")   # doctest: +SKIP
    """
    dump = read_qemu_elf(src_elf)
    with mapped(dump) as mm:
        write_elf(dump, mm, [Mapping(0, s.paddr, s.size) for s in dump.segments], out)


def write_elf(dump: PhysDump, mm: mmap.mmap, loads: list[Mapping],
              out: str | os.PathLike) -> None:
    """A sparse ELF core: header, program headers, the dump's notes, then the
    physical segments once each, page-aligned, zero pages left as holes.
    Every PT_LOAD points into that physical image, so memory mapped at several
    virtual addresses is stored once.  Each load must lie in one segment.
    """
    ps = dump.page_size
    phnum = 1 + len(loads)
    if phnum >= PN_XNUM:
        raise DumpFormatError(f"{dump.path}: {phnum} program headers do not fit in an ELF header")
    note_at = ELF_HEADER.size + phnum * PROGRAM_HEADER.size
    placed, data_end = _place_segments(dump.segments, note_at + len(dump.note_bytes), ps)
    phdrs = [PROGRAM_HEADER.pack(PT_NOTE, 0, note_at, 0, 0, len(dump.note_bytes),
                                 len(dump.note_bytes), 0)]
    phdrs += [PROGRAM_HEADER.pack(PT_LOAD, PF_RWX, _file_offset(placed, m), m.vaddr,
                                  m.paddr, m.size, m.size, 0) for m in loads]
    with open(out, "wb") as f:
        f.write(elf_header(dump.machine, phnum))
        f.write(b"".join(phdrs))
        f.write(dump.note_bytes)
        for at, seg in placed:
            copy_sparse(mm, seg.offset, seg.size, f, at, ps)
        f.truncate(data_end)


def _place_segments(segments: list[Segment], start: int, page_size: int):
    """[(output offset, segment)] laid out page-aligned from ``start``, and the end."""
    placed, at = [], -(-start // page_size) * page_size
    for seg in segments:
        placed.append((at, seg))
        at += -(-seg.size // page_size) * page_size
    return placed, at


def _file_offset(placed: list[tuple[int, Segment]], m: Mapping) -> int:
    for at, seg in placed:
        if seg.paddr <= m.paddr and m.paddr + m.size <= seg.end:
            return at + m.paddr - seg.paddr
    raise ValueError(f"mapping {m} is not inside one physical segment")


def elf_header(machine: str, phnum: int) -> bytes:
    e_machine = next(k for k, v in MACHINES.items() if v == machine)
    ident = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")
    return ELF_HEADER.pack(ident, ET_CORE, e_machine, 1, 0, ELF_HEADER.size, 0, 0,
                           ELF_HEADER.size, PROGRAM_HEADER.size, phnum, 0, 0, 0)


def copy_sparse(mm: mmap.mmap, src: int, size: int, f, dst: int, page_size: int) -> None:
    """Copy ``size`` bytes from ``mm[src:]`` to file offset ``dst``, one write
    per run of non-zero pages and nothing for zero pages."""
    run_start = None
    for page_at, is_zero in _pages(mm, Segment(0, src, size), page_size):
        if run_start is None and not is_zero:
            run_start = page_at
        elif run_start is not None and is_zero:
            os.pwrite(f.fileno(), mm[run_start:page_at], dst + run_start - src)
            run_start = None
    if run_start is not None:
        os.pwrite(f.fileno(), mm[run_start:src + size], dst + run_start - src)


# --- kernel virtual address ELF -------------------------------------------------

def write_kvaddr_elf(src_elf: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write an ELF core whose PT_LOAD carry the kernel virtual addresses found by
    walking the guest kernel's own page tables (direct/linear map, kernel image,
    vmalloc and modules, vmemmap, fixmap), p_paddr the physical address, so
    that ``gdb vmlinux`` + ``core-file out`` reads kernel memory.

    >>> write_kvaddr_elf("vmcore.elf", "vmcore-kvaddr.elf")   # doctest: +SKIP
    """
    dump = read_qemu_elf(src_elf)
    with mapped(dump) as mm:
        mappings = clip_to_segments(merge_mappings(kernel_mappings(dump, mm)), dump.segments)
        write_elf(dump, mm, mappings, out)


class PageTables:
    """How one architecture's kernel page tables are laid out and decoded.

    ``shifts`` are the address shifts of the levels from the root down;
    ``va_bits`` the width of the kernel half (addresses are sign-extended).
    """

    shifts: tuple[int, ...]
    va_bits: int
    address_mask: int
    page_bits: tuple[int, int]      # (mask, value) of a valid last-level entry

    def top_indices(self) -> range:
        raise NotImplementedError

    def kind(self, entry: int, shift: int) -> str:
        """What one descriptor at the level of ``shift`` is: "leaf", "table" or "none"."""
        raise NotImplementedError

    def output_address(self, entry: int) -> int:
        """The physical address a descriptor points at (next table, page or block)."""
        return entry & self.address_mask

    def vaddr(self, index_bits: int) -> int:
        """The kernel address of table-index bits: the kernel half is the top one."""
        return index_bits | (~0 << self.va_bits) & (2**64 - 1)


class X86PageTables(PageTables):
    """x86_64 4-level (48-bit) or 5-level (57-bit, pgtable_l5_enabled) tables."""

    PRESENT, PSE = 0x1, 0x80
    page_bits = (PRESENT, PRESENT)

    def __init__(self, five_level: bool, sme_mask: int):
        self.shifts = (48, 39, 30, 21, 12) if five_level else (39, 30, 21, 12)
        self.va_bits = self.shifts[0] + 9
        self.address_mask = 0x000FFFFFFFFFF000 & ~sme_mask

    def top_indices(self) -> range:
        return range(256, 512)                  # the upper half is the kernel's

    def kind(self, entry: int, shift: int) -> str:
        if not entry & self.PRESENT:
            return "none"
        if shift == 12 or (shift in (21, 30) and entry & self.PSE):
            return "leaf"
        return "table"


class Arm64PageTables(PageTables):
    """arm64 TTBR1 tables with the 4K granule: 3 levels for 39-bit VAs, 4 for
    48, 5 (from level -1, 16 root entries) for 52.

    Descriptor bits[1:0]: 0b11 table (page at the last level), 0b01 block,
    else invalid.  52-bit VAs with 4K pages run only with FEAT_LPA2 (TCR_EL1.DS
    = 1), whose descriptors differ (Arm ARM D8.3, "Translation table
    descriptor formats"): output address bits [49:12] stay in place, bits
    [51:50] move into descriptor bits [9:8] (the shareability field without
    LPA2), and blocks are allowed at level 0 (512 GiB) as well as levels 1
    (1 GiB) and 2 (2 MiB).

    >>> t = Arm64PageTables(52)
    >>> hex(t.output_address(0x0003_0000_4000_0403))      # bits 9:8 = 0: OA[49:12] only
    '0x3000040000000'
    >>> hex(t.output_address(0x0000_0000_4000_0303))      # bits 9:8 = 0b11: OA[51:50]
    '0xc000040000000'
    >>> hex(Arm64PageTables(48).output_address(0x0000_0000_4000_0703))  # bits 9:8 = SH
    '0x40000000'
    """

    page_bits = (3, 3)
    OA_LOW = 0x0000_FFFF_FFFF_F000              # OA[47:12], the format without LPA2
    LPA2_OA_LOW = 0x0003_FFFF_FFFF_F000         # OA[49:12]
    LPA2_OA_HIGH_SHIFT = 42                     # descriptor bits [9:8] -> OA[51:50]
    LPA2_OA_HIGH = 0x300

    def __init__(self, va_bits: int):
        if va_bits not in (39, 48, 52):
            raise DumpFormatError(f"arm64 with {va_bits}-bit kernel VAs and 4K pages is not supported")
        self.va_bits = va_bits
        self.shifts = {39: (30, 21, 12), 48: (39, 30, 21, 12), 52: (48, 39, 30, 21, 12)}[va_bits]
        # With 4K pages the kernel sets TCR_EL1.DS exactly when it runs with
        # 52-bit VAs (__cpu_setup sets both under ARM64_HAS_VA52;
        # early_map_kernel() falls back to 48 bits, the old format and one
        # level less when the CPU lacks LPA2): "arm64: Enable LPA2 at boot
        # if supported by the system", A. Biesheuvel, v6.9.
        self.lpa2 = va_bits == 52
        self.address_mask = self.LPA2_OA_LOW if self.lpa2 else self.OA_LOW
        self.block_shifts = (21, 30, 39) if self.lpa2 else (21, 30)

    def top_indices(self) -> range:
        return range(1 << (self.va_bits - self.shifts[0]))

    def kind(self, entry: int, shift: int) -> str:
        low = entry & 3
        if low == 3:
            return "leaf" if shift == 12 else "table"
        if low == 1 and shift in self.block_shifts:
            return "leaf"
        return "none"

    def output_address(self, entry: int) -> int:
        if self.lpa2:
            return (entry & self.LPA2_OA_LOW) | (entry & self.LPA2_OA_HIGH) << self.LPA2_OA_HIGH_SHIFT
        return entry & self.OA_LOW


def page_tables(dump: PhysDump) -> tuple[PageTables, int]:
    """The architecture's page-table decoder and the physical address of the
    kernel's root table (init_top_pgt on x86_64, swapper_pg_dir on arm64)."""
    info = dump.vmcoreinfo
    if dump.machine == "x86_64":
        # pgtable_l5_enabled in VMCOREINFO since v4.17 (commit c100a583601d).
        five = "NUMBER(pgtable_l5_enabled)" in info and vmcoreinfo_int(info, "NUMBER(pgtable_l5_enabled)") == 1
        sme = vmcoreinfo_int(info, "NUMBER(sme_mask)") if "NUMBER(sme_mask)" in info else 0
        root = vmcoreinfo_int(info, "SYMBOL(init_top_pgt)")
        return X86PageTables(five, sme), kernel_image_phys(dump, root)
    if dump.page_size != 4096:
        raise DumpFormatError(f"arm64 with {dump.page_size // 1024}K pages is not supported")
    # TCR_EL1_T1SZ (v5.9, commit bbdbc11804ff) is the VA size the kernel runs
    # with; VA_BITS only the configured maximum: a 52-bit kernel on a CPU
    # without LPA2 runs with 48 bits, swapper_pg_dir then being its level-0
    # table (pgd_to_folded_p4d()).  Before v5.9, 4K-page kernels had at most
    # 48-bit VAs, so VA_BITS was exact.
    if "NUMBER(TCR_EL1_T1SZ)" in info:
        va_bits = 64 - vmcoreinfo_int(info, "NUMBER(TCR_EL1_T1SZ)")
    else:
        va_bits = vmcoreinfo_int(info, "NUMBER(VA_BITS)")
    root = vmcoreinfo_int(info, "SYMBOL(swapper_pg_dir)")
    return Arm64PageTables(va_bits), kernel_image_phys(dump, root)


def kernel_mappings(dump: PhysDump, mm: mmap.mmap) -> list[Mapping]:
    """Every leaf of the kernel half of the guest's page tables, in walk order.

    Each table is walked once: x86's espfix area points hundreds of entries
    at the same few tables, and repeating those aliases would only multiply
    segments.  Tables outside the dump are skipped.
    """
    tables, root = page_tables(dump)
    found: list[Mapping] = []
    seen: set[int] = set()

    def walk(table_pa: int, depth: int, base: int, indices) -> None:
        raw = phys_read(dump, mm, table_pa, 4096)
        if not raw or table_pa in seen:
            return
        seen.add(table_pa)
        shift = tables.shifts[depth]
        entries = struct.unpack("<512Q", raw)
        if shift == 12:
            whole = _contiguous_pages(tables, entries)
            if whole is not None:
                found.append(Mapping(base, whole, 512 << 12))
                return
        for i in indices:
            entry = entries[i]
            kind = tables.kind(entry, shift) if entry else "none"
            if kind == "leaf":
                size = 1 << shift
                found.append(Mapping(base | i << shift, tables.output_address(entry) & -size, size))
            elif kind == "table" and depth + 1 < len(tables.shifts):
                walk(tables.output_address(entry), depth + 1, base | i << shift, range(512))

    walk(root, 0, 0, tables.top_indices())
    return [Mapping(tables.vaddr(m.vaddr), m.paddr, m.size) for m in found]


def _contiguous_pages(tables: PageTables, entries: tuple[int, ...]) -> int | None:
    """The physical start of a last-level table whose 512 entries all map
    consecutive pages, else None.  arm64's linear map is all 4K pages
    (rodata=full): this keeps a 2 GiB guest to ~1000 checks instead of
    500,000 entries decoded one by one.
    """
    mask, value = tables.page_bits
    if any(e & mask != value for e in entries):
        return None
    addresses = [tables.output_address(e) for e in entries]
    first = addresses[0]
    if addresses != list(range(first, first + (512 << 12), 1 << 12)):
        return None
    return first


def merge_mappings(mappings: list[Mapping]) -> list[Mapping]:
    """Sort by virtual address and join neighbours contiguous in both spaces.

    >>> merge_mappings([Mapping(0x2000, 0x5000, 0x1000), Mapping(0x1000, 0x4000, 0x1000)])
    [Mapping(vaddr=4096, paddr=16384, size=8192)]
    """
    merged: list[Mapping] = []
    for m in sorted(mappings, key=lambda m: m.vaddr):
        last = merged[-1] if merged else None
        if last and last.vaddr + last.size == m.vaddr and last.paddr + last.size == m.paddr:
            merged[-1] = Mapping(last.vaddr, last.paddr, last.size + m.size)
        else:
            merged.append(m)
    return merged


def clip_to_segments(mappings: list[Mapping], segments: list[Segment]) -> list[Mapping]:
    """Cut mappings at physical segment edges, dropping what the dump lacks
    (MMIO that the kernel ioremapped, holes a large page spans).

    >>> clip_to_segments([Mapping(0x10000, 0, 0x3000)], [Segment(0x1000, 0, 0x1000)])
    [Mapping(vaddr=69632, paddr=4096, size=4096)]
    """
    clipped = []
    for m in mappings:
        for seg in segments:
            start, end = max(m.paddr, seg.paddr), min(m.paddr + m.size, seg.end)
            if start < end:
                clipped.append(Mapping(m.vaddr + start - m.paddr, start, end - start))
    return clipped


def main(argv: list[str]) -> int:
    """``python -m vmcores.dumpfmt {kdump,classic,kvaddr} SRC OUT``"""
    writers = {"kdump": write_kdump, "classic": write_classic_elf, "kvaddr": write_kvaddr_elf}
    if len(argv) != 3 or argv[0] not in writers:
        print(f"usage: python -m vmcores.dumpfmt {{{','.join(writers)}}} SRC OUT", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        writers[argv[0]](argv[1], argv[2])
    except DumpFormatError as e:
        print(f"dumpfmt: {e}", file=sys.stderr)
        return 1
    print(f"{argv[2]}: written in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
