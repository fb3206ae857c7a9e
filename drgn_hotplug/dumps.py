"""Open any kernel dump a user is likely to hand us, as a drgn Program.

drgn (libkdumpfile) opens ELF dumps and most kdump-compressed files itself.
It gives up on what QEMU's ``dump-guest-memory -z/-l/-s`` writes (and so
``virsh dump --memory-only --format=kdump-*``): the kdump header's utsname,
machine field included, is left empty (libkdumpfile: "KDUMP_ATTR_ARCH_NAME:
Key has no value"), and the file is a *flattened* stream (makedumpfile's
``-F`` format, normally undone with ``makedumpfile -R``). This module reads
those files directly, without writing anything: the flattened stream is
indexed in place, the kdump page descriptors are decoded here, and drgn is
given a platform, the VMCOREINFO note and one physical memory segment per
run of dumped pages (``drgn.Program(platform, vmcoreinfo=...)``,
``set_linux_kernel_custom`` and ``add_memory_segment``, drgn >= 0.3.0).

    >>> sniff_format(b"makedumpfile" + bytes(4) + (1).to_bytes(8, "big"))
    'flattened'
    >>> sniff_format(b"KDUMP   " + bytes(8)), sniff_format(b"\\x7fELF" + bytes(12))
    ('kdump', 'elf')
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

FLATTENED_SIGNATURE = b"makedumpfile"
# makedumpfile.h: the flattened header is one 4096-byte block; each record is
# a big-endian (offset, size) pair followed by ``size`` bytes of the file.
FLAT_HEADER_SIZE = 4096
FLAT_RECORD = struct.Struct(">qq")
KDUMP_SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
# diskdump_mod.h: struct disk_dump_header (64-bit), struct kdump_sub_header,
# struct page_desc.
DISK_DUMP_HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")
KDUMP_SUB_HEADER = struct.Struct("<QiiQQQQQQQQQQQ")
PAGE_DESC = struct.Struct("<QIIQ")
# page_desc.flags (diskdump_mod.h); a page with none of them is stored raw.
COMPRESSIONS = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}
# ELF e_machine -> drgn architecture name.
ELF_MACHINES = {62: "X86_64", 183: "AARCH64"}
# Pages decompressed and kept per dump: drgn reads struct pages one at a time.
PAGE_CACHE_PAGES = 256


class DumpError(Exception):
    """The dump cannot be read: the message is one line naming why."""


def sniff_format(head: bytes) -> str:
    """The container of a dump from its first bytes: ``elf``, ``kdump``,
    ``flattened`` or ``unknown``."""
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head[:8] in KDUMP_SIGNATURES:
        return "kdump"
    if head.startswith(FLATTENED_SIGNATURE):
        return "flattened"
    return "unknown"


class FlatFile:
    """A flattened dump seen as the file it stands for: ``pread`` of the
    reassembled file, indexed once by record (no copy is written).

    Later records overwrite earlier ones, as ``makedumpfile -R`` does.
    """

    def __init__(self, f: BinaryIO, size: int):
        self.f = f
        self.starts: list[int] = []    # reassembled offsets, sorted
        self.records: list[tuple[int, int, int]] = []   # (offset, size, position in the stream)
        self._index(size)

    def _index(self, size: int) -> None:
        records: dict[int, tuple[int, int, int]] = {}
        pos = FLAT_HEADER_SIZE
        while True:
            head = self.f.read(FLAT_RECORD.size) if self.f.seek(pos) == pos else b""
            if len(head) < FLAT_RECORD.size:
                raise DumpError("truncated flattened dump (no end marker)")
            offset, length = FLAT_RECORD.unpack(head)
            if offset == -1 and length == -1:
                break
            pos += FLAT_RECORD.size
            if offset < 0 or length < 0 or pos + length > size:
                raise DumpError(f"corrupt or truncated flattened dump at byte {pos - FLAT_RECORD.size}")
            records[offset] = (offset, length, pos)
            pos += length
        self.records = sorted(records.values())
        self.starts = [r[0] for r in self.records]

    def pread(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset`` of the reassembled file (short at its end)."""
        out = bytearray()
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while size > 0 and i < len(self.records):
            start, length, pos = self.records[i]
            if start > offset:
                break  # a hole: the reassembled file has none where data is read
            if offset < start + length:
                take = min(size, start + length - offset)
                self.f.seek(pos + offset - start)
                chunk = self.f.read(take)
                out += chunk
                offset += len(chunk)
                size -= len(chunk)
                if len(chunk) < take:
                    break
            i += 1
        return bytes(out)


class PlainFile:
    def __init__(self, f: BinaryIO):
        self.f = f

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.f.fileno(), size, offset)


@dataclass
class KdumpLayout:
    """What the kdump headers say: block (page) size, where the page
    descriptors start, the runs of dumped pfns, and the notes."""

    block_size: int
    descs_at: int
    runs: list[tuple[int, int, int]]      # (first pfn, pfn count, index of its first descriptor)
    vmcoreinfo: bytes
    max_mapnr: int

    @property
    def sub_header_at(self) -> int:
        """File offset of the kdump sub header: the block after the main header."""
        return self.block_size

    def desc_index(self, pfn: int) -> Optional[int]:
        """The index of ``pfn``'s page descriptor, None when the page is not dumped.

        >>> KdumpLayout(4096, 8192, [(1, 1, 0), (3, 2, 1)], b"", 8).desc_index(4)
        2
        """
        i = bisect.bisect_right(self.runs, pfn, key=lambda run: run[0]) - 1
        if i < 0 or pfn >= self.runs[i][0] + self.runs[i][1]:
            return None
        return self.runs[i][2] + pfn - self.runs[i][0]

    def desc_offset(self, pfn: int) -> Optional[int]:
        """File offset of ``pfn``'s page descriptor, None when the page is not dumped.

        >>> KdumpLayout(4096, 8192, [(1, 1, 0), (3, 2, 1)], b"", 8).desc_offset(4)
        8240
        """
        index = self.desc_index(pfn)
        return None if index is None else self.descs_at + index * PAGE_DESC.size

    def pfn_of(self, index: int) -> int:
        """The pfn whose page the ``index``-th descriptor holds.

        >>> KdumpLayout(4096, 8192, [(1, 1, 0), (3, 2, 1)], b"", 8).pfn_of(2)
        4
        """
        i = bisect.bisect_right(self.runs, index, key=lambda run: run[2]) - 1
        return self.runs[i][0] + index - self.runs[i][2]


def read_kdump_layout(src) -> KdumpLayout:
    """Decode a kdump-compressed file's headers and 2nd bitmap."""
    head = src.pread(DISK_DUMP_HEADER.size, 0)
    if len(head) < DISK_DUMP_HEADER.size:
        raise DumpError("truncated kdump header")
    (_sig, _version, _uts, _sec, _usec, _status, block_size, sub_blocks, bitmap_blocks,
     max_mapnr, *_rest) = DISK_DUMP_HEADER.unpack(head)
    if block_size <= 0 or block_size & (block_size - 1) or sub_blocks <= 0 or not bitmap_blocks:
        raise DumpError(f"corrupt kdump header (block size {block_size})")
    sub = src.pread(KDUMP_SUB_HEADER.size, block_size)
    if len(sub) < KDUMP_SUB_HEADER.size:
        raise DumpError("truncated kdump sub header")
    fields = KDUMP_SUB_HEADER.unpack(sub)
    vmcoreinfo_at, vmcoreinfo_size, max_mapnr_64 = fields[5], fields[6], fields[13]
    vmcoreinfo = src.pread(vmcoreinfo_size, vmcoreinfo_at) if vmcoreinfo_size else b""
    if len(vmcoreinfo) < vmcoreinfo_size:
        raise DumpError("truncated kdump file (VMCOREINFO)")
    max_mapnr = max_mapnr_64 or max_mapnr
    bitmap_at = (1 + sub_blocks) * block_size
    half = bitmap_blocks * block_size // 2
    # The 2nd bitmap: the pfns whose pages follow, one descriptor each.
    bitmap = src.pread(half, bitmap_at + half)
    if len(bitmap) < half:
        raise DumpError("truncated kdump file (bitmap)")
    return KdumpLayout(block_size, bitmap_at + 2 * half, bit_runs(bitmap, max_mapnr),
                       vmcoreinfo, max_mapnr)


def bit_runs(bitmap: bytes, limit: int) -> list[tuple[int, int, int]]:
    """Runs of set bits (LSB first) below ``limit``, each with the count of
    set bits before it.

    >>> bit_runs(bytes([0b00001110, 0xff, 0x01]), 24)
    [(1, 3, 0), (8, 9, 3)]
    >>> bit_runs(bytes([0b10000001]), 8)
    [(0, 1, 0), (7, 1, 1)]
    """
    value = int.from_bytes(bitmap, "little") & ((1 << limit) - 1)
    runs, rank, pos = [], 0, 0
    while value >> pos:
        rest = value >> pos
        start = pos + ((rest & -rest).bit_length() - 1)
        ones = ~(value >> start)
        length = (ones & -ones).bit_length() - 1
        runs.append((start, length, rank))
        rank += length
        pos = start + length
    return runs


class KdumpPages:
    """Page reads of a kdump-compressed file, decompressing as needed."""

    def __init__(self, src, layout: KdumpLayout, path: str):
        self.src, self.layout, self.path = src, layout, path
        self.cache: dict[int, bytes] = {}

    def read(self, address: int, count: int, run: tuple[int, int, int]) -> bytes:
        size = self.layout.block_size
        out = bytearray()
        while count > 0:
            pfn, within = divmod(address, size)
            page = self.page(run[2] + pfn - run[0])
            take = min(count, size - within)
            out += page[within:within + take]
            address += take
            count -= take
        return bytes(out)

    def page(self, index: int) -> bytes:
        page = self.cache.get(index)
        if page is None:
            if len(self.cache) >= PAGE_CACHE_PAGES:
                self.cache.clear()
            page = self.cache[index] = self._decode(index)
        return page

    def _decode(self, index: int) -> bytes:
        import drgn

        at = self.layout.descs_at + index * PAGE_DESC.size
        raw = self.src.pread(PAGE_DESC.size, at)
        if len(raw) < PAGE_DESC.size:
            raise drgn.FaultError(f"{self.path}: truncated (page descriptor {index})", at)
        offset, size, flags, _ = PAGE_DESC.unpack(raw)
        data = self.src.pread(size, offset)
        if len(data) < size:
            raise drgn.FaultError(f"{self.path}: truncated (page data of descriptor {index})", offset)
        try:
            page = decompress(flags, data, self.layout.block_size)
        except (DumpError, zlib.error) as error:
            raise drgn.FaultError(f"{self.path}: corrupt page {index}: {error}", offset) from None
        if len(page) != self.layout.block_size:
            raise drgn.FaultError(f"{self.path}: corrupt page {index} ({len(page)} bytes)", offset)
        return page


def compression_name(flags: int) -> str:
    """The compression a page descriptor names.

    >>> compression_name(1), compression_name(0), compression_name(0x20)
    ('zlib', 'none', 'zstd')
    """
    for bit, name in COMPRESSIONS.items():
        if flags & bit:
            return name
    return "none"


def decompress(flags: int, data: bytes, page_size: int) -> bytes:
    """A page as stored by makedumpfile or QEMU, decompressed."""
    name = compression_name(flags)
    if name == "none":
        return data
    if name == "zlib":
        return zlib.decompress(data)
    return _c_decompressor(name)(data, page_size)


def codec_library(name: str) -> ctypes.CDLL:
    """The system's C library of a kdump page compression (the one makedumpfile
    and QEMU link against): no Python package is needed."""
    lib_name = {"lzo": "lzo2", "snappy": "snappy", "zstd": "zstd"}[name]
    path = ctypes.util.find_library(lib_name)
    if path is None:
        raise DumpError(f"{name}-compressed pages need lib{lib_name}, which is not installed")
    return ctypes.CDLL(path)


@functools.lru_cache(maxsize=None)
def _c_decompressor(name: str) -> Callable[[bytes, int], bytes]:
    """lzo1x, snappy and zstd page decompression by ``codec_library``."""
    lib = codec_library(name)

    def run(data: bytes, page_size: int) -> bytes:
        out = ctypes.create_string_buffer(page_size)
        if name == "lzo":
            n = ctypes.c_size_t(page_size)   # lzo_uint is size_t on LP64
            ok = lib.lzo1x_decompress_safe(data, ctypes.c_size_t(len(data)), out, ctypes.byref(n), None) == 0
        elif name == "snappy":
            n = ctypes.c_size_t(page_size)
            ok = lib.snappy_uncompress(data, ctypes.c_size_t(len(data)), out, ctypes.byref(n)) == 0
        else:
            lib.ZSTD_decompress.restype = ctypes.c_size_t
            n = ctypes.c_size_t(lib.ZSTD_decompress(out, ctypes.c_size_t(page_size), data,
                                                      ctypes.c_size_t(len(data))))
            ok = n.value <= page_size
        if not ok:
            raise DumpError(f"bad {name} data")
        return out.raw[:n.value]

    return run


def first_compressed_page(src, layout: KdumpLayout) -> Optional[tuple[int, str]]:
    """The pfn and compression of the first compressed page among the first
    64 stored ones (zero pages are often stored raw); None if all are raw."""
    count = sum(run[1] for run in layout.runs)
    for index in range(min(count, 64)):
        raw = src.pread(PAGE_DESC.size, layout.descs_at + index * PAGE_DESC.size)
        if len(raw) < PAGE_DESC.size:
            break
        name = compression_name(PAGE_DESC.unpack(raw)[2])
        if name != "none":
            return layout.pfn_of(index), name
    return None


def vmcoreinfo_arch(vmcoreinfo: bytes) -> Optional[str]:
    """drgn's architecture name for a VMCOREINFO note.

    >>> vmcoreinfo_arch(b"OSRELEASE=6.1.0\\nSYMBOL(swapper_pg_dir)=ffff\\nNUMBER(VA_BITS)=48\\n")
    'AARCH64'
    >>> vmcoreinfo_arch(b"OSRELEASE=6.1.0\\nSYMBOL(phys_base)=ffff\\n")
    'X86_64'
    """
    # Each arch's arch_crash_save_vmcoreinfo() writes its own keys: x86_64
    # phys_base (arch/x86/kernel/machine_kexec_64.c), arm64 VA_BITS
    # (arch/arm64/kernel/crash_core.c, since v4.20).
    text = vmcoreinfo.decode("ascii", "replace")
    if "NUMBER(VA_BITS)=" in text or "NUMBER(KERNELPACMASK)" in text:
        return "AARCH64"
    if "SYMBOL(phys_base)=" in text or "NUMBER(phys_base)=" in text:
        return "X86_64"
    return None


@dataclass
class Opened:
    """A dump opened for drgn, and the format it was in."""

    prog: object
    format: str


def describe(container: str, compression: Optional[str]) -> str:
    """The format name the report carries.

    >>> describe("elf", None), describe("kdump", "zlib"), describe("flattened", "lzo")
    ('elf', 'kdump-zlib', 'flattened kdump-lzo')
    """
    if container == "elf":
        return "elf"
    name = f"kdump-{compression}" if compression != "none" else "kdump-uncompressed"
    return f"flattened {name}" if container == "flattened" else name


def open_dump(path: str) -> Opened:
    """A drgn Program on the dump at ``path`` (debug info not yet loaded).

    drgn opens ELF and ordinary kdump files itself; flattened streams and
    kdump files whose header lacks the machine (QEMU's) are read here.
    """
    try:
        f = open(path, "rb")
    except OSError as error:
        raise DumpError(f"cannot open {path}: {error.strerror}") from None
    try:
        return _open_file(f, path)
    except DumpError as error:
        f.close()
        # A fault found parsing the file names the file, as every other refusal does.
        if path in str(error):
            raise
        raise DumpError(f"cannot open {path}: {error}") from None


def _open_file(f, path: str) -> Opened:
    size = os.fstat(f.fileno()).st_size
    container = sniff_format(f.read(16))
    if container == "elf":
        loads = qemu_paging_loads(f, size)
        if loads:
            return Opened(_program_from_loads(f, loads, path), "elf (qemu paging)")
        loads = filtered_loads(f, size)
        if loads:
            return Opened(_program_from_loads(f, loads, path), "elf (filtered)")
        f.close()
        return Opened(_drgn_core_dump(path), "elf")
    if container == "unknown":
        f.close()
        return Opened(_drgn_core_dump(path), "unknown")
    src = FlatFile(f, size) if container == "flattened" else PlainFile(f)
    layout = read_kdump_layout(src)
    first = first_compressed_page(src, layout)
    form = describe(container, first[1] if first else "none")
    if container == "kdump":
        prog = _libkdumpfile_program(path, layout.block_size, first)
        if prog is not None:
            f.close()
            return Opened(prog, form)
    return Opened(_program_from_pages(src, layout, path), form)


def _libkdumpfile_program(path: str, block_size: int, first: Optional[tuple[int, str]]):
    """drgn's own kdump reading of ``path``; None where libkdumpfile refuses
    the file (QEMU's empty machine field) or cannot decompress its first
    compressed page (a libkdumpfile built without snappy, lzo or zstd opens
    such a file and fails on every page)."""
    import drgn

    prog = drgn.Program()
    try:
        prog.set_core_dump(path)
        if first is not None:
            prog.read(first[0] * block_size, 1, True)
    except Exception:  # libkdumpfile's errors reach Python as a bare Exception
        return None
    return prog


ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_NOTE = 1, 4
ET_CORE = 4
# QEMU's dump (target/*/arch_dump.c) names its CPU-state notes "QEMU".
QEMU_NOTE_NAME = b"QEMU\0"


def qemu_paging_loads(f: BinaryIO, size: int) -> list[tuple[int, int, int]]:
    """The (physical address, size, file offset) of the PT_LOADs of a QEMU
    ``dump-guest-memory -p`` ELF, or [] for any other ELF.

    Such a dump is told by its layout (see overlapping_loads) and its
    "QEMU" notes. Its virtual mappings cannot be trusted: with two memory backends QEMU 7.2
    cuts the direct map at the first one (node 1 then reads as zeros), and
    on aarch64 it writes identity mappings. Its physical addresses are right,
    so these dumps are read by physical address through the page tables.
    """
    f.seek(0)
    eh = f.read(ELF_HEADER.size)
    if len(eh) < ELF_HEADER.size or eh[4] != 2:
        return []
    phoff, phentsize, phnum = ELF_HEADER.unpack(eh)[5], ELF_HEADER.unpack(eh)[9], ELF_HEADER.unpack(eh)[10]
    if phentsize != PROGRAM_HEADER.size or phoff + phnum * phentsize > size:
        return []
    f.seek(phoff)
    table = f.read(phnum * phentsize)
    headers = [PROGRAM_HEADER.unpack_from(table, i * phentsize) for i in range(phnum)]
    if not overlapping_loads([(h[2], h[5]) for h in headers if h[0] == PT_LOAD]):
        return []   # not QEMU's paging layout: drgn reads it itself
    notes = b"".join(os.pread(f.fileno(), min(h[5], 1 << 20), h[2]) for h in headers if h[0] == PT_NOTE)
    if QEMU_NOTE_NAME not in notes or b"VMCOREINFO" not in notes:
        return []
    # A segment QEMU cut short (p_filesz < p_memsz) goes on in the file: QEMU
    # writes guest RAM once, in physical order, and points every mapping
    # into it (checked byte for byte against the non-paging dump).
    return [(h[4], h[6] if h[2] + h[6] <= size else h[5], h[2])
            for h in headers if h[0] == PT_LOAD and h[5]]


def elf_program_headers(f: BinaryIO, size: int) -> list[tuple]:
    """The program headers of a 64-bit ELF file ([] if they do not fit)."""
    f.seek(0)
    eh = f.read(ELF_HEADER.size)
    if len(eh) < ELF_HEADER.size or eh[4] != 2:
        return []
    fields = ELF_HEADER.unpack(eh)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phentsize != PROGRAM_HEADER.size or phoff + phnum * phentsize > size:
        return []
    f.seek(phoff)
    table = f.read(phnum * phentsize)
    return [PROGRAM_HEADER.unpack_from(table, i * phentsize) for i in range(phnum)]


def filtered_loads(f: BinaryIO, size: int) -> list[tuple[int, int, int]]:
    """The (physical address, size in the file, file offset) of the PT_LOADs
    of a filtered ELF dump (``makedumpfile -E -d N``: a segment's excluded
    tail has p_filesz < p_memsz), or [] for an unfiltered one.

    ELF readers (drgn too) read such a tail as zeros; struct pages or
    kernel objects that makedumpfile excluded would then read as zeros, not
    as missing. Read through the file's bytes only, an excluded page is
    unreadable, as in the same filter's kdump-compressed file.
    """
    headers = elf_program_headers(f, size)
    if not any(h[0] == PT_LOAD and h[5] < h[6] for h in headers):
        return []
    return [(h[4], h[5], h[2]) for h in headers if h[0] == PT_LOAD and h[5]]


def overlapping_loads(extents: list[tuple[int, int]]) -> bool:
    """Whether some PT_LOADs' file ranges (offset, size) overlap: QEMU's
    paging dump points each virtual mapping into the one copy of guest RAM
    it writes; makedumpfile, the kernel's /proc/vmcore and QEMU without
    paging give each segment its own bytes.

    >>> overlapping_loads([(0x1000, 0x20000), (0x5000, 0x1000)]), overlapping_loads([(0, 16), (16, 16)])
    (True, False)
    """
    end = -1
    for offset, size in sorted(extents):
        if size and offset < end:
            return True
        end = max(end, offset + size)
    return False


def elf_vmcoreinfo(f: BinaryIO) -> bytes:
    """The VMCOREINFO note's text of an ELF dump."""
    f.seek(0)
    eh = ELF_HEADER.unpack(f.read(ELF_HEADER.size))
    f.seek(eh[5])
    table = f.read(eh[10] * eh[9])
    for i in range(eh[10]):
        h = PROGRAM_HEADER.unpack_from(table, i * eh[9])
        if h[0] != PT_NOTE:
            continue
        data = os.pread(f.fileno(), h[5], h[2])
        pos = 0
        while pos + 12 <= len(data):
            namesz, descsz, _ = struct.unpack_from("<III", data, pos)
            name = data[pos + 12:pos + 12 + namesz]
            desc_at = pos + 12 + (namesz + 3) // 4 * 4
            if name.rstrip(b"\0") == b"VMCOREINFO":
                return data[desc_at:desc_at + descsz]
            pos = desc_at + (descsz + 3) // 4 * 4
    return b""


def _program_from_loads(f: BinaryIO, loads: list[tuple[int, int, int]], path: str):
    """drgn on an ELF dump's PT_LOADs as physical memory only."""
    import drgn

    vmcoreinfo = elf_vmcoreinfo(f)
    arch = vmcoreinfo_arch(vmcoreinfo)
    if arch is None:
        raise DumpError(f"{path} has no VMCOREINFO naming x86_64 or aarch64: not a Linux kernel dump we read")
    prog = drgn.Program(drgn.Platform(getattr(drgn.Architecture, arch)), vmcoreinfo=vmcoreinfo)
    prog.set_linux_kernel_custom(vmcoreinfo, False)
    fd = f.fileno()
    for paddr, filesz, offset in loads:
        prog.add_memory_segment(paddr, filesz, functools.partial(_read_file, f, fd, offset), physical=True)
    return prog


def _read_file(_f: BinaryIO, fd: int, base: int, _address: int, count: int, offset: int, _physical: bool) -> bytes:
    data = os.pread(fd, count, base + offset)
    if len(data) < count:
        import drgn

        raise drgn.FaultError("truncated dump", _address)
    return data


def identify(path: str) -> dict:
    """What a dump says about itself without drgn: its container ("elf",
    "kdump", "flattened", "unknown") and, from VMCOREINFO, its kernel's
    release and build ID (None when unreadable). Raises DumpError."""
    try:
        f = open(path, "rb")
    except OSError as error:
        raise DumpError(f"cannot open {path}: {error.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        container = sniff_format(f.read(16))
        if container == "elf":
            info = elf_vmcoreinfo(f) if size >= ELF_HEADER.size else b""
        elif container in ("kdump", "flattened"):
            src = FlatFile(f, size) if container == "flattened" else PlainFile(f)
            info = read_kdump_layout(src).vmcoreinfo
        else:
            info = b""
    fields = dict(line.split("=", 1) for line in info.decode("ascii", "replace").splitlines() if "=" in line)
    return {"container": container, "release": fields.get("OSRELEASE"), "build_id": fields.get("BUILD-ID")}


def is_core_dump(path: str) -> bool:
    """Whether a file looks like a kernel dump (an ELF core, kdump or
    flattened file), for picking dumps out of a directory: a vmlinux is an
    ELF executable, not a core."""
    try:
        with open(path, "rb") as f:
            head = f.read(18)
    except OSError:
        return False
    container = sniff_format(head)
    if container == "elf":
        return len(head) == 18 and int.from_bytes(head[16:18], "little") == ET_CORE
    return container != "unknown"


def map_vmcoreinfo_safe_copy(prog) -> bool:
    """Let a kdump kernel's /proc/vmcore answer reads of ``vmcoreinfo_data``
    (debug info loaded); True if it had to.

    With a crash kernel loaded, the kernel keeps VMCOREINFO in a safe copy
    inside the crash kernel's reserved memory and, when it crashes, points
    ``vmcoreinfo_data`` at that copy (kernel/crash_core.c,
    crash_save_vmcoreinfo(); Linux v4.13, "kdump: protect vmcoreinfo data
    under the crash memory"). /proc/vmcore leaves the reservation out, so
    the buffer is unreadable there. The dump's VMCOREINFO note is the
    crashing kernel's byte copy of that buffer (update_vmcoreinfo_note()),
    so its bytes answer for it. Dumps written by QEMU or makedumpfile of a
    running kernel, and kernels without a loaded crash kernel, are left as
    they are.

    >>> map_vmcoreinfo_safe_copy(prog)      # a /proc/vmcore, debug info loaded   # doctest: +SKIP
    True
    """
    import drgn

    try:
        note = prog["VMCOREINFO"].string_()
        address = prog["vmcoreinfo_data"].value_()
    except (LookupError, drgn.FaultError):
        return False
    # CRASHTIME= is appended by crash_save_vmcoreinfo() only, at the crash.
    if b"\nCRASHTIME=" not in note or not address:
        return False
    try:
        prog.read(address, 1)
        return False
    except drgn.FaultError:
        pass
    prog.add_memory_segment(address, len(note), functools.partial(_read_bytes, note), physical=False)
    return True


def _read_bytes(data: bytes, _address: int, count: int, offset: int, _physical: bool) -> bytes:
    """A drgn memory segment's read of ``data``.

    >>> _read_bytes(b"OSRELEASE=6.1", 0xffff0000, 3, 10, False)
    b'6.1'
    """
    return data[offset:offset + count]


def _drgn_core_dump(path: str):
    import drgn

    prog = drgn.Program()
    try:
        prog.set_core_dump(path)
    except Exception as error:
        # libkdumpfile's errors reach Python as a bare Exception (drgn 0.3.0).
        raise DumpError(f"cannot open {path}: {str(error).splitlines()[0] if str(error) else error!r}") from None
    return prog


def _program_from_pages(src, layout: KdumpLayout, path: str):
    """drgn given the platform, VMCOREINFO and the kdump's pages as
    physical memory segments."""
    import drgn

    arch = vmcoreinfo_arch(layout.vmcoreinfo)
    if arch is None:
        raise DumpError(f"{path} has no VMCOREINFO naming x86_64 or aarch64: not a Linux kernel dump we read")
    prog = drgn.Program(drgn.Platform(getattr(drgn.Architecture, arch)), vmcoreinfo=layout.vmcoreinfo)
    prog.set_linux_kernel_custom(layout.vmcoreinfo, False)
    pages = KdumpPages(src, layout, path)
    for run in layout.runs:
        start = run[0] * layout.block_size
        prog.add_memory_segment(start, run[1] * layout.block_size,
                                functools.partial(_read_segment, pages, run), physical=True)
    return prog


def _read_segment(pages: KdumpPages, run, address: int, count: int, _offset: int, _physical: bool) -> bytes:
    return pages.read(address, count, run)
