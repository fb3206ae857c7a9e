"""Rewrite a kdump-compressed dump with its pages in snappy or zstd.

Nothing in the bed writes those two: Debian 12's makedumpfile 1.7.2 is
built with snappy and zstd disabled, and its QEMU 7.2 offers only
kdump-zlib. This converter takes a real dump (a cell's ``vmcore.kdump``,
zlib pages) and stores its pages as ``makedumpfile -p`` (snappy) or ``-z``
(zstd) stores them (makedumpfile.c, write_kdump_pages_cyclic()): each page
is decompressed and compressed again on its own (``snappy_compress``; zstd
level 1 with ``ZSTD_compressCCtx``), a page the codec cannot shrink is
stored raw (flags 0), and the header's ``status`` names the codec
(write_kdump_header()). Pages that shared one stored copy (the zero page)
still share one, compressed like any other (makedumpfile keeps its shared
zero page raw: both read back the same). Header, sub header, notes and
bitmaps are copied byte for byte; only the page descriptors and the page
data change.

Compression goes through the system's libsnappy and libzstd by ctypes, the
libraries drgn_hotplug.dumps decompresses with (no Python package).

    python -m vmcores.kdump_recompress --codec zstd vmcore.kdump vmcore-zstd.kdump

>>> compress("zstd", bytes(4096))[:4].hex(), len(compress("zstd", os.urandom(4096)))
('28b52ffd', 4096)
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import struct
import sys
from pathlib import Path
from typing import Callable

from drgn_hotplug.dumps import (COMPRESSIONS, DISK_DUMP_HEADER, PAGE_DESC, PlainFile, codec_library, decompress,
                                read_kdump_layout)

# diskdump_mod.h's page_desc.flags and disk_dump_header.status bits, as the reader knows them.
CODEC_FLAGS = {name: flag for flag, name in COMPRESSIONS.items() if name in ("snappy", "zstd")}
# The status word of struct disk_dump_header (64-bit layout): after the
# signature, header_version, utsname, padding and the 16-byte timeval.
STATUS_AT = struct.calcsize("<8si390s6xqq")
# makedumpfile's zstd level (write_kdump_pages_*: ZSTD_compressCCtx(..., 1)).
ZSTD_LEVEL = 1


def compress(codec: str, page: bytes) -> bytes:
    """``page`` compressed with ``codec``, or ``page`` itself when that does
    not make it shorter (makedumpfile then stores it raw).

    >>> compress("snappy", bytes(4096)) != bytes(4096), compress("snappy", b"x")
    (True, b'x')
    """
    packed = _c_compressor(codec)(page)
    return packed if packed is not None and len(packed) < len(page) else page


@functools.lru_cache(maxsize=None)
def _c_compressor(codec: str) -> Callable[[bytes], bytes | None]:
    """One-page compression by the system's C library; None on failure."""
    lib = codec_library(codec)
    return _zstd(lib) if codec == "zstd" else _snappy(lib)


def _zstd(lib) -> Callable[[bytes], bytes | None]:
    for name in ("ZSTD_compressBound", "ZSTD_compressCCtx", "ZSTD_isError", "ZSTD_createCCtx"):
        getattr(lib, name).restype = ctypes.c_size_t if name != "ZSTD_createCCtx" else ctypes.c_void_p
    lib.ZSTD_compressCCtx.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                      ctypes.c_size_t, ctypes.c_int]
    # One context reused for every page, as makedumpfile does (one per thread).
    cctx = lib.ZSTD_createCCtx()

    def run(page: bytes) -> bytes | None:
        cap = lib.ZSTD_compressBound(ctypes.c_size_t(len(page)))
        out = ctypes.create_string_buffer(cap)
        n = lib.ZSTD_compressCCtx(cctx, out, cap, page, len(page), ZSTD_LEVEL)
        return None if lib.ZSTD_isError(ctypes.c_size_t(n)) else out.raw[:n]

    return run


def _snappy(lib) -> Callable[[bytes], bytes | None]:
    lib.snappy_max_compressed_length.restype = ctypes.c_size_t

    def run(page: bytes) -> bytes | None:
        n = ctypes.c_size_t(lib.snappy_max_compressed_length(ctypes.c_size_t(len(page))))
        out = ctypes.create_string_buffer(n.value)
        ok = lib.snappy_compress(page, ctypes.c_size_t(len(page)), out, ctypes.byref(n)) == 0
        return out.raw[:n.value] if ok else None

    return run


def recompress(src: str | os.PathLike, out: str | os.PathLike, codec: str) -> dict[str, int]:
    """Write ``out``: the kdump file ``src`` with its pages in ``codec``.
    Returns the count of stored pages by how they are stored now.

    >>> recompress("vmcore.kdump", "vmcore-zstd.kdump", "zstd")   # doctest: +SKIP
    {'zstd': 54321, 'raw': 12}
    """
    flag = CODEC_FLAGS[codec]
    with open(src, "rb") as f, open(out, "wb") as o:
        layout = read_kdump_layout(PlainFile(f))
        count = sum(run[1] for run in layout.runs)
        descs = list(PAGE_DESC.iter_unpack(os.pread(f.fileno(), count * PAGE_DESC.size, layout.descs_at)))
        o.write(_header(os.pread(f.fileno(), layout.descs_at, 0), flag))
        data_at = layout.descs_at + count * PAGE_DESC.size
        o.seek(data_at)
        stored, counts = _write_pages(f, o, descs, layout.block_size, codec, data_at)
        o.seek(layout.descs_at)
        # Most descriptors are copies of a few (the zero page's): pack each once.
        packed = {d: PAGE_DESC.pack(*stored[d[:3]], d[3]) for d in set(descs)}
        o.write(b"".join(map(packed.__getitem__, descs)))
    return counts


def _header(head: bytes, flag: int) -> bytes:
    """Everything before the page descriptors, the header's status naming
    the codec instead of the source's compression (its other bits kept).

    >>> head = bytes(STATUS_AT) + struct.pack("<I", 0x11) + bytes(DISK_DUMP_HEADER.size)
    >>> _header(head, 0x20)[STATUS_AT:STATUS_AT + 4].hex()
    '30000000'
    """
    (status,) = struct.unpack_from("<I", head, STATUS_AT)
    status = status & ~sum(COMPRESSIONS) | flag
    return head[:STATUS_AT] + struct.pack("<I", status) + head[STATUS_AT + 4:]


def _write_pages(f, o, descs, page_size: int, codec: str, data_at: int):
    """Each stored page once, in the source's order: {source (offset, size,
    flags): new (offset, size, flags)} and the count by storage."""
    stored: dict[tuple[int, int, int], tuple[int, int, int]] = {}
    counts = {codec: 0, "raw": 0}
    offset = data_at
    for key in sorted({d[:3] for d in descs}):
        page = decompress(key[2], os.pread(f.fileno(), key[1], key[0]), page_size)
        packed = compress(codec, page)
        raw = len(packed) == len(page)   # compressed is strictly shorter
        o.write(packed)
        stored[key] = (offset, len(packed), 0 if raw else CODEC_FLAGS[codec])
        counts["raw" if raw else codec] += 1
        offset += len(packed)
    return stored, counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmcores.kdump_recompress", description=__doc__.split("\n")[0])
    parser.add_argument("--codec", required=True, choices=sorted(CODEC_FLAGS))
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    counts = recompress(args.src, args.out, args.codec)
    print(", ".join(f"{name} {n}" for name, n in counts.items()), "stored pages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
