"""What a debugger front end answers about the analysed kernel, and the
byte-level helpers every reader module decodes with.

A reader front end (gdb, drgn) only has to answer a few questions about the
target, the ``Target`` protocol below: read bytes, the address of a symbol,
the size of a type, the offset of a member, the value of an enumerator.
Everything else (the other modules of ``drgn_hotplug.reader``) is pure
Python, so two front ends on the same kernel build the same model.

Targets are 64-bit little-endian (x86_64, aarch64), as the model assumes.

>>> decode_words(bytes.fromhex("0100000000000000ff00000000000000"))
(1, 255)
"""

from __future__ import annotations

import operator
import re
import struct
from typing import Callable, Dict, Optional, Protocol, Tuple


WORD = 8


class ReadError(Exception):
    """The target could not supply the bytes at an address."""

    def __init__(self, address: int, size: int, reason: str = "unreadable"):
        super().__init__(f"cannot read {size} bytes at {address:#x}: {reason}")
        self.address = address
        self.reason = reason


class Target(Protocol):
    """What a debugger front end answers about the analysed kernel.

    Lookups return None when the kernel has no such symbol, type, member or
    enumerator (older kernels, other configs); ``read`` raises ReadError.
    ``member`` paths may cross anonymous unions: ``"symlink.target_kn"``.
    """

    def read(self, address: int, size: int) -> bytes: ...
    def symbol(self, name: str) -> Optional[int]: ...
    def sizeof(self, type_name: str) -> Optional[int]: ...
    def offsetof(self, type_name: str, member: str) -> Optional[int]: ...
    def enumerator(self, name: str) -> Optional[int]: ...
    def enumerators(self, type_name: str) -> Dict[str, int]: ...
    def symbol_type(self, name: str) -> Optional[str]: ...


def decode_words(data: bytes) -> Tuple[int, ...]:
    """Unsigned 64-bit little-endian words.

    >>> decode_words((7).to_bytes(8, "little"))
    (7,)
    """
    return struct.unpack(f"<{len(data) // WORD}Q", data[: len(data) // WORD * WORD])


def word_at(data: bytes, offset: int) -> int:
    """The unsigned word at ``offset``.

    >>> word_at(bytes(8) + (5).to_bytes(8, "little"), 8)
    5
    """
    return int.from_bytes(data[offset:offset + WORD], "little")


def int_at(data: bytes, offset: int, size: int = 4) -> int:
    """The signed integer of ``size`` bytes at ``offset``.

    >>> int_at((-1).to_bytes(4, "little", signed=True), 0)
    -1
    """
    return int.from_bytes(data[offset:offset + size], "little", signed=True)


def uint_at(data: bytes, offset: int, size: int = 4) -> int:
    """The unsigned integer of ``size`` bytes at ``offset``.

    >>> uint_at(b"\\x00\\x40", 0, 2)
    16384
    """
    return int.from_bytes(data[offset:offset + size], "little")


def read_word(target: Target, address: int) -> int:
    return int.from_bytes(target.read(address, WORD), "little")


def read_cstring(target: Target, address: int, limit: int = 256, page_size: int = 4096) -> str:
    """A NUL-terminated string, read without crossing into an unmapped page needlessly.

    Kernel names (kernfs, zone) are short; reading up to the page end first
    avoids failing on a string that ends just before an unmapped page.
    """
    first = min(limit, page_size - address % page_size)
    data = target.read(address, first)
    if b"\0" not in data and first < limit:
        data += target.read(address + first, limit - first)
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


class PageCache:
    """A Target whose ``read`` is served from whole pages, each page read once
    (the other questions go to the target itself).

    Kernel objects of one kind share slab pages (32 kernfs_nodes to a 4 KiB
    page), so walking 400K of them costs 12K reads instead of 400K. A page
    that cannot be read whole falls back to the exact read, so errors and
    partial readability stay those of the target.

    >>> class Memory:
    ...     reads = 0
    ...     def read(self, address, size):
    ...         Memory.reads += 1
    ...         return bytes((address + i) % 256 for i in range(size))
    >>> cache = PageCache(Memory(), 4096)
    >>> cache.read(0x1010, 2), cache.read(0x1ffe, 4), Memory.reads
    (b'\\x10\\x11', b'\\xfe\\xff\\x00\\x01', 2)
    """

    @classmethod
    def of(cls, target: Target, page_size: int) -> "PageCache":
        """``target`` itself when it already is a PageCache of ``page_size``
        pages (one cache shared by several readers reads a page once)."""
        if isinstance(target, cls) and target.page_size == page_size:
            return target
        return cls(target, page_size)

    def __init__(self, target: Target, page_size: int):
        self.target = target
        self.page_size = page_size
        # page address -> its bytes, None when unreadable
        self.pages: Dict[int, Optional[bytes]] = {}

    def __getattr__(self, name: str):
        return getattr(self.target, name)

    def read(self, address: int, size: int) -> bytes:
        data, offset = self.view(address, size)
        return data[offset:offset + size]

    def view(self, address: int, size: int) -> Tuple[bytes, int]:
        """(buffer, offset): the ``size`` bytes at ``address`` are
        ``buffer[offset:offset + size]``, without copying them out of the
        cached page (struct unpacking reads at an offset)."""
        offset = address % self.page_size
        first = address - offset
        data = self.pages[first] if first in self.pages else self._page(first)
        if data is not None and offset + size > self.page_size:
            data = self._span(first, offset + size)
        if data is None:
            return self.target.read(address, size), 0
        return data, offset

    def _page(self, address: int) -> Optional[bytes]:
        if address not in self.pages:
            try:
                self.pages[address] = self.target.read(address, self.page_size)
            except ReadError:
                self.pages[address] = None
        return self.pages[address]

    def _span(self, first: int, length: int) -> Optional[bytes]:
        pages = [self._page(at) for at in range(first, first + length, self.page_size)]
        return None if None in pages else b"".join(pages)


def fields_unpacker(fields: Dict[str, Tuple[int, str]]) -> Callable[..., Tuple[int, ...]]:
    """A function decoding the named fields (offset, struct format) of the
    struct at ``at`` in a buffer (default 0) in one ``unpack``, returned in
    the order of ``fields``.

    >>> fields_unpacker({"b": (8, "Q"), "a": (2, "h")})(bytes(2) + b"\\xff\\xff" + bytes(4) + bytes([9]) + bytes(7))
    (9, -1)
    """
    by_offset = sorted(fields, key=lambda name: fields[name][0])
    fmt, end = "<", 0
    for name in by_offset:
        offset, code = fields[name]
        if offset < end:
            raise ReadError(0, 0, f"overlapping struct members at offset {offset}")
        fmt += f"{offset - end}x{code}" if offset > end else code
        end = offset + struct.calcsize("<" + code)
    unpack = struct.Struct(fmt).unpack_from
    if by_offset == list(fields):
        return unpack
    reorder = operator.itemgetter(*(by_offset.index(name) for name in fields))
    return lambda data, at=0: reorder(unpack(data, at))


def first_line(error: BaseException) -> str:
    """An error as one line, for one-line messages (debuggers' errors can
    span several lines); its type name when it says nothing.

    >>> first_line(ValueError("cannot read\\nmore")), first_line(KeyError())
    ('cannot read', 'KeyError')
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def require_symbol(target: Target, symbol: str) -> int:
    """The address of ``symbol``; ReadError when the kernel has none."""
    address = target.symbol(symbol)
    if address is None:
        raise ReadError(0, 0, f"the kernel has no symbol {symbol}")
    return address


def require_offset(target: Target, type_name: str, member: str) -> int:
    """The offset of ``member`` in ``type_name``; ReadError when it has none."""
    offset = target.offsetof(type_name, member)
    if offset is None:
        raise ReadError(0, 0, f"{type_name} has no member {member}")
    return offset


def array_length(type_spelling: Optional[str]) -> int:
    """N of a C array type spelled "T [N]".

    >>> array_length("struct node *[1024]")
    1024
    """
    match = re.search(r"\[(\d+)\]$", type_spelling or "")
    if not match:
        raise ReadError(0, 0, f"not an array type: {type_spelling!r}")
    return int(match.group(1))
