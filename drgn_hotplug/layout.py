"""Kernel structures decoded from raw bytes: the reader logic shared by every debugger.

A reader front end (gdb, drgn) only has to answer a few questions about the
target, the ``Target`` protocol below: read bytes, the address of a symbol,
the size of a type, the offset of a member, the value of an enumerator.
Everything else (walking mem_section roots, the memory bus, kernfs rbtrees,
xarrays; decoding section words, memblock regions, kernfs liveness) is here,
pure Python, so two front ends on the same kernel build the same model.

Targets are 64-bit little-endian (x86_64, aarch64), as the model assumes.

>>> decode_words(bytes.fromhex("0100000000000000ff00000000000000"))
(1, 255)
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import operator
import re
import struct
import sys
from array import array
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Protocol, Sequence, Tuple

from . import kernels, vmcoreinfo
from .model import (KernelFacts, MemblockRegion, MemblockType, MemoryBlock, Node, NodeLink, Model,
                    SectionTable, Unreadable, valid_section)

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


# ---------------------------------------------------------------- bytes

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


def address_groups(addresses: Sequence[int], size: int,
                   max_span: int = 1 << 16) -> List[Sequence[int]]:
    """Cut sorted ``addresses`` into runs whose reads of ``size`` bytes fit
    in one span of at most ``max_span`` bytes, to be read in one go; each
    run's end is found by bisection, not address by address.

    The kernel allocates the ``mem_section_usage`` of a node's early sections
    in one array, so their subsection maps read together.

    >>> address_groups([0x1000, 0x1010, 0x1020, 0x9000], 16, max_span=0x100)
    [[4096, 4112, 4128], [36864]]
    """
    groups: List[Sequence[int]] = []
    first = 0
    while first < len(addresses):
        end = bisect.bisect_right(addresses, addresses[first] + max_span - size, first + 1)
        groups.append(addresses[first:end])
        first = end
    return groups


# ---------------------------------------------------------------- sections

@dataclass(frozen=True)
class SectionLayout:
    """Where the section words live, from DWARF and VMCOREINFO.

    ``flag_bits`` maps flag names (no ``SECTION_`` prefix) to bit numbers.
    """

    sizeof_section: int
    usage_offset: Optional[int]
    subsection_map_offset: Optional[int]
    subsection_map_bytes: int
    flag_bits: Dict[str, int]


class SectionColumns(NamedTuple):
    """Present sections column by column, as decoded from their roots.

    ``flag_bytes`` is the first byte of each ``section_mem_map``: the word
    is little-endian and the section flags are its low bits.
    """

    nrs: Sequence[int]
    addresses: Sequence[int]
    mem_maps: Sequence[int]
    usages: Sequence[int]
    flag_bytes: bytes


def decode_section_roots(data: bytes, roots: Sequence[Tuple[int, int]], per_root: int,
                         layout: SectionLayout) -> SectionColumns:
    """The present sections (section_mem_map != 0) in the bytes of roots of
    ``per_root`` sections read one after the other; ``roots`` gives the
    number of the first section and the address of each root.

    >>> lay = SectionLayout(16, 8, None, 0, {})
    >>> columns = decode_section_roots(bytes(16) + (3).to_bytes(8, "little") + bytes(8),
    ...                                [(64, 0x1000)], 2, lay)
    >>> [list(column) for column in columns]
    [[65], [4112], [3], [0], [3]]
    """
    size = layout.sizeof_section
    per = size // WORD
    words = array("Q", data)
    if sys.byteorder == "big":
        words.byteswap()
    # Every mem_section's words at once: a strided slice per field.
    mem_maps = words[0::per]
    usages = (array("Q", bytes(WORD * len(mem_maps))) if layout.usage_offset is None
              else words[layout.usage_offset // WORD::per])
    flag_bytes = data[0::size]
    columns = SectionColumns(array("Q"), array("Q"), array("Q"), array("Q"), bytearray())
    for first_nr, address, lo, hi in _root_runs(roots, per_root, size):
        # The present sections (non-zero section_mem_map) of the run: a
        # full run, the common case, is copied whole.
        run_maps = mem_maps[lo:hi]
        keep = bytes(map(bool, run_maps)) if 0 in run_maps else None
        for column, values in zip(columns, (range(first_nr, first_nr + hi - lo),
                                            range(address, address + (hi - lo) * size, size),
                                            run_maps, usages[lo:hi], flag_bytes[lo:hi])):
            column.extend(values if keep is None else compress(values, keep))
    return columns._replace(flag_bytes=bytes(columns.flag_bytes))


def _root_runs(roots: Sequence[Tuple[int, int]], per_root: int,
               size: int) -> Iterator[Tuple[int, int, int, int]]:
    """(first section number, address, first index, end index) of each run
    of roots that follow one another in memory and in numbering: one per
    root with SPARSEMEM_EXTREME, one for the whole static array without.

    >>> list(_root_runs([(0, 0x1000), (1, 0x1010), (5, 0x9000)], 1, 16))
    [(0, 4096, 0, 2), (5, 36864, 2, 3)]
    """
    start = 0
    for i in range(1, len(roots) + 1):
        if i == len(roots) or roots[i] != (roots[i - 1][0] + per_root,
                                           roots[i - 1][1] + per_root * size):
            yield roots[start][0], roots[start][1], start * per_root, i * per_root
            start = i


def read_sections(target: Target, mem_section: int, extreme: bool, nr_mem_sections: int,
                  page_size: int, layout: SectionLayout,
                  unreadable: List[Unreadable]) -> SectionTable:
    """Every present section: one read per root, then the subsection maps in spans.

    With SPARSEMEM_EXTREME ``mem_section`` points to an array of root
    pointers (a pointer to it since v4.15, 83e3c48729d9; an array before);
    without it, the roots are rows of a static two-dimensional array.
    """
    per_root = page_size // layout.sizeof_section if extreme else 1
    nr_roots = -(-nr_mem_sections // per_root)
    roots, datas = [], []
    for root_nr, root in enumerate(_section_roots(target, mem_section, extreme, nr_roots,
                                                  layout, unreadable)):
        if not root:
            continue
        try:
            datas.append(target.read(root, per_root * layout.sizeof_section))
        except ReadError as error:
            unreadable.append(Unreadable(f"mem_section root {root_nr}", error.reason, root))
            continue
        roots.append((root_nr * per_root, root))
    # The roots decode together: a few column operations for the whole machine.
    columns = decode_section_roots(b"".join(datas), roots, per_root, layout)
    kinds, flag_sets = flag_kinds(columns.flag_bytes, layout.flag_bits)
    return SectionTable(columns.nrs, columns.addresses, columns.mem_maps, columns.usages,
                        _subsection_maps(target, columns.usages, layout, unreadable),
                        kinds, flag_sets)


def flag_bits_mask(flag_bits: Dict[str, int]) -> int:
    """The low bits of ``section_mem_map`` that hold the named flags.

    >>> hex(flag_bits_mask({"MARKED_PRESENT": 0, "IS_EARLY": 3}))
    '0xf'
    """
    return (1 << max(flag_bits.values(), default=-1) + 1) - 1


def flag_kinds(flag_bytes: bytes,
               flag_bits: Dict[str, int]) -> Tuple[bytes, Tuple[frozenset, ...]]:
    """Each section's flags as an index into the distinct flag sets (the
    ``kinds`` and ``flag_sets`` of a SectionTable), from the first byte of
    each ``section_mem_map``: the flags the reader names are bits 0-5
    (SECTION_*_BIT, include/linux/mmzone.h). Each distinct set is decoded
    once, and one byte translation indexes every section.

    >>> kinds, sets = flag_kinds(bytes([0x0b, 0x83, 0x0b]),
    ...                          {"MARKED_PRESENT": 0, "HAS_MEM_MAP": 1, "IS_EARLY": 3})
    >>> list(kinds), [sorted(s) for s in sets]
    ([1, 0, 1], [['HAS_MEM_MAP', 'MARKED_PRESENT'], ['HAS_MEM_MAP', 'IS_EARLY', 'MARKED_PRESENT']])
    """
    mask = flag_bits_mask(flag_bits)
    keys = sorted({byte & mask for byte in set(flag_bytes)})
    index = {key: i for i, key in enumerate(keys)}
    table = bytes(index.get(byte & mask, 0) for byte in range(256))
    return (flag_bytes.translate(table),
            tuple(kernels.decode_section_flags(key, flag_bits) for key in keys))


def _section_roots(target: Target, mem_section: int, extreme: bool, nr_roots: int,
                   layout: SectionLayout, unreadable: List[Unreadable]) -> Sequence[int]:
    if not extreme:
        return [mem_section + layout.sizeof_section * i for i in range(nr_roots)]
    try:
        return decode_words(target.read(mem_section, nr_roots * WORD))
    except ReadError as error:
        unreadable.append(Unreadable("mem_section roots", error.reason, mem_section))
        return []


# Below this many sections per ascending run of usage addresses, a run costs
# more (a read and a few calls) than sorting the sections by usage address.
SECTIONS_PER_RUN_TO_SORT = 32


def _subsection_maps(target: Target, usages: Sequence[int], layout: SectionLayout,
                     unreadable: List[Unreadable]) -> List[Optional[int]]:
    """Each section's subsection map, None when the kernel has none, the
    section no usage or the map could not be read.

    sparse_init_nid() allocates the usages of a node's early sections as
    one array, so usage addresses ascend with section numbers, run after
    run, and the maps are read along those runs. Hot-added sections
    kmalloc() theirs, in any order when slab freelists are randomised: when
    runs are short, the sections are read in address order and their maps
    put back in section order.
    """
    if layout.subsection_map_offset is None:
        return [None] * len(usages)
    runs = ascending_runs(usages)
    if len(runs) * SECTIONS_PER_RUN_TO_SORT <= len(usages):
        return _maps_along(target, runs, layout, unreadable)
    order = sorted(range(len(usages)), key=usages.__getitem__)
    by_address = _maps_along(target, [[usages[i] for i in order]], layout, unreadable)
    maps: List[Optional[int]] = [None] * len(usages)
    for i, found in zip(order, by_address):
        maps[i] = found
    return maps


def _maps_along(target: Target, runs: Iterable[Sequence[int]], layout: SectionLayout,
                unreadable: List[Unreadable]) -> List[Optional[int]]:
    """The subsection maps behind runs of ascending usage addresses, in
    their order: each run cut into spans by bisection, one read per span."""
    reach = layout.subsection_map_offset + layout.subsection_map_bytes
    maps: List[Optional[int]] = []
    failed: List[Unreadable] = []
    for run in runs:
        nulls = bisect.bisect_right(run, 0)  # NULL usages lead their run
        maps += [None] * nulls
        for inside in address_groups(run[nulls:], reach):
            maps += _span_maps(target, inside, layout, failed)
    # Each unreadable map listed once, in address order, whatever the section order.
    unreadable += sorted({u.address: u for u in failed}.values(), key=operator.attrgetter("address"))
    return maps


def ascending_runs(values: Sequence[int]) -> List[Sequence[int]]:
    """``values`` cut where they descend.

    >>> ascending_runs([1, 5, 5, 9, 2, 3, 0])
    [[1, 5, 5, 9], [2, 3], [0]]
    """
    cuts = [0, *compress(range(1, len(values)), map(operator.gt, values, values[1:])), len(values)]
    return [values[first:end] for first, end in zip(cuts, cuts[1:]) if end > first]


def _span_maps(target: Target, usages: Sequence[int], layout: SectionLayout,
               unreadable: List[Unreadable]) -> List[Optional[int]]:
    """The subsection maps of ascending usage addresses that fit in one
    span: one read, or one per map when the span cannot be read whole, so
    one bad pointer costs one entry."""
    offset, size = layout.subsection_map_offset, layout.subsection_map_bytes
    start = usages[0]
    try:
        data = target.read(start + offset, usages[-1] - start + size)
    except ReadError:
        return [_read_one_map(target, usage + offset, size, unreadable) for usage in usages]
    stride = usages[1] - start if len(usages) > 1 else size
    if size == WORD and stride % WORD == 0 and stride and _evenly_spaced(usages, stride):
        # An array of usages (a node's early sections): every map is a
        # stride's worth of words apart, one array slice for the span.
        words = array("Q", data)
        if sys.byteorder == "big":
            words.byteswap()
        return words[::stride // WORD].tolist()
    from_bytes = int.from_bytes
    return [from_bytes(data[at:at + size], "little")
            for at in map(operator.sub, usages, repeat(start))]


def _evenly_spaced(values: Sequence[int], step: int) -> bool:
    """Whether ``values`` go up by ``step`` each time.

    >>> _evenly_spaced([8, 24, 40], 16), _evenly_spaced([8, 24, 48], 16)
    (True, False)
    """
    return values[-1] - values[0] == step * (len(values) - 1) \
        and array("Q", values) == array("Q", range(values[0], values[-1] + 1, step))


def _read_one_map(target: Target, address: int, size: int,
                  unreadable: List[Unreadable]) -> Optional[int]:
    try:
        return uint_at(target.read(address, size), 0, size)
    except ReadError as error:
        unreadable.append(Unreadable("mem_section_usage.subsection_map", error.reason, address))
        return None


# ---------------------------------------------------------------- memblock

@dataclass(frozen=True)
class MemblockLayout:
    sizeof_region: int
    base: int
    size: int
    flags: int
    nid: Optional[int]
    cnt: int
    max: int
    regions: int


def decode_memblock_regions(data: bytes, count: int, layout: MemblockLayout,
                            flag_bits: Dict[str, int]) -> Tuple[MemblockRegion, ...]:
    """``count`` regions from the bytes of a ``struct memblock_region`` array.

    >>> lay = MemblockLayout(24, 0, 8, 16, 20, 0, 8, 24)
    >>> data = (0x1000).to_bytes(8, "little") + (0x2000).to_bytes(8, "little") + bytes(8)
    >>> decode_memblock_regions(data, 1, lay, {})[0].end
    12288
    """
    regions = []
    for i in range(count):
        at = i * layout.sizeof_region
        flags = uint_at(data, at + layout.flags)
        regions.append(MemblockRegion(
            base=word_at(data, at + layout.base), size=word_at(data, at + layout.size),
            flags=flags, flag_names=kernels.memblock_flag_names(flags, flag_bits),
            nid=int_at(data, at + layout.nid) if layout.nid is not None else None))
    return tuple(regions)


# ---------------------------------------------------------------- lists, trees, xarrays

def walk_list(target: Target, head: int, limit: int = 1 << 22) -> Iterator[int]:
    """Addresses of the ``list_head`` nodes on a circular list (head excluded).

    Raises ReadError on a broken link, on a loop that never comes back to
    the head and after ``limit`` nodes, so a corrupt list cannot hang the
    reader.
    """
    seen = set()
    node = read_word(target, head)
    while node != head:
        if node in seen:
            raise ReadError(node, WORD, f"list at {head:#x} loops back to {node:#x}")
        if len(seen) >= limit:
            raise ReadError(head, WORD, f"list at {head:#x} longer than {limit} nodes")
        seen.add(node)
        yield node
        node = read_word(target, node)


def walk_rbtree(target: Target, root: int, limit: int = 1 << 22) -> List[int]:
    """Addresses of the ``rb_node``s of an ``rb_root`` in order (left child at +16, right at +8),
    each link read as one word.

    Raises ReadError when a node is reached twice (a corrupt link made a
    cycle) or the tree holds more than ``limit`` nodes.
    """
    return rbtree_inorder(read_word(target, root),
                          lambda node: (read_word(target, node + 16), read_word(target, node + 8)),
                          root, limit)


def rbtree_inorder(first: int, links: Callable[[int], Tuple[int, int]], root: int,
                   limit: int = 1 << 22) -> List[int]:
    """The ``rb_node``s under ``first`` (the ``rb_node`` of the ``rb_root`` at
    ``root``) in order; ``links(node)`` tells its (left, right) children.

    >>> links = {0x20: (0x10, 0x30), 0x10: (0, 0), 0x30: (0, 0)}
    >>> [hex(n) for n in rbtree_inorder(0x20, links.get, 0x100)]
    ['0x10', '0x20', '0x30']
    """
    out: List[int] = []
    stack: List[Tuple[int, int]] = []
    seen = set()
    node = first
    while stack or node:
        while node:
            if node in seen:
                raise ReadError(node, WORD, f"rbtree at {root:#x} reaches {node:#x} twice")
            if len(seen) >= limit:
                raise ReadError(root, WORD, f"rbtree at {root:#x} larger than {limit} nodes")
            seen.add(node)
            left, right = links(node)
            stack.append((node, right))
            node = left
        node, right = stack.pop()
        out.append(node)
        node = right
    return out


XA_CHUNK_SHIFT = 6


def walk_xarray(target: Target, xa_head: int, slots_offset: int,
                max_index: int = 1 << 32) -> Dict[int, int]:
    """index -> entry of every pointer entry in an xarray whose head is ``xa_head``.

    Internal entries (bit 1 set, value > 4096) point to ``struct xa_node``s
    (ptr - 2); value entries (bit 0) are not pointers and are skipped, as
    the kernel's memory_blocks array holds only pointers. A node reached
    twice, a node whose ``shift`` is not its parent's minus XA_CHUNK_SHIFT
    or an index above ``max_index`` raises ReadError: the array is corrupt.
    """
    entries: Dict[int, int] = {}
    seen = set()
    stack = [(xa_head, 0, None)]
    while stack:
        entry, index, parent_shift = stack.pop()
        if not entry or entry & 1:
            continue
        if index > max_index:
            raise ReadError(entry, WORD, f"xarray index {index} above the limit {max_index}")
        if entry & 3 == 2:
            if entry <= 4096:
                continue  # retry, zero and sibling entries
            node = entry - 2
            if node in seen:
                raise ReadError(node, WORD, f"xarray reaches xa_node {node:#x} twice")
            seen.add(node)
            node_shift = uint_at(target.read(node, 1), 0, 1)
            expected = None if parent_shift is None else parent_shift - XA_CHUNK_SHIFT
            if node_shift % XA_CHUNK_SHIFT or node_shift >= 64 or expected not in (None, node_shift):
                raise ReadError(node, 1, f"xa_node {node:#x} has a corrupt shift {node_shift}")
            slots = decode_words(target.read(node + slots_offset, WORD << XA_CHUNK_SHIFT))
            stack.extend((slot, index + (i << node_shift), node_shift)
                         for i, slot in enumerate(slots))
        else:
            entries[index] = entry
    return entries


# ---------------------------------------------------------------- kernfs

@dataclass(frozen=True)
class KernfsLayout:
    sizeof_node: int
    active: int
    parent: int
    name: int
    rb: int
    children: int
    target_kn: int
    flags: int
    type_link: int
    type_mask: int
    removing_flag: Optional[int]


class KernfsNode(NamedTuple):
    """The fields of a ``struct kernfs_node`` the reader uses.

    ``rb_right``/``rb_left`` are its ``rb_node`` links among its siblings and
    ``children`` the first ``rb_node`` of its own children (a directory's).
    Only directories and links are decoded whole (KernfsReader), 130K of
    them at 64 TB: a tuple, not a dataclass.
    """

    address: int
    active: int
    parent: int
    name_address: int
    target_kn: int
    flags: int
    rb_right: int = 0
    rb_left: int = 0
    children: int = 0


def kernfs_fields(layout: KernfsLayout) -> Dict[str, Tuple[int, str]]:
    """Offset and struct format of each KernfsNode field in a ``struct kernfs_node``."""
    return {"active": (layout.active, "i"), "parent": (layout.parent, "Q"),
            "name_address": (layout.name, "Q"), "target_kn": (layout.target_kn, "Q"),
            "flags": (layout.flags, "H"), "rb_right": (layout.rb + 8, "Q"),
            "rb_left": (layout.rb + 16, "Q"), "children": (layout.children, "Q")}


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


def kernfs_node_decoder(layout: KernfsLayout) -> Callable[[bytes, int, int], KernfsNode]:
    """A function making the KernfsNode at ``address`` from a buffer holding
    its ``struct kernfs_node`` at ``offset``: one struct unpack per node.

    >>> lay = KernfsLayout(128, 4, 8, 16, 24, 72, 64, 112, 4, 15, 0x4000)
    >>> decode = kernfs_node_decoder(lay)
    >>> decode(bytes(112) + (4).to_bytes(2, "little") + bytes(14), 0, 0x1000).flags
    4
    """
    unpack = fields_unpacker(kernfs_fields(layout))
    make = KernfsNode._make
    return lambda data, offset, address: make((address, *unpack(data, offset)))


def kernfs_sibling_decoder(layout: KernfsLayout) -> Callable[[bytes, int], Tuple[int, int, int]]:
    """A function decoding (rb_right, rb_left, flags) of the ``struct
    kernfs_node`` at an offset in a buffer: all a directory walk needs of
    a child that is not a link.

    >>> lay = KernfsLayout(128, 4, 8, 16, 24, 72, 64, 112, 4, 15, 0x4000)
    >>> kernfs_sibling_decoder(lay)(bytes(32) + (7).to_bytes(8, "little") + bytes(88), 0)
    (7, 0, 0)
    """
    fields = kernfs_fields(layout)
    return fields_unpacker({name: fields[name] for name in ("rb_right", "rb_left", "flags")})


def kernfs_dead_reasons(kn: KernfsNode, in_parent: bool, layout: KernfsLayout) -> Tuple[str, ...]:
    """Why a kernfs node is no longer a live sysfs entry (empty when it is).

    ``kernfs_drain()`` leaves ``active`` at KN_DEACTIVATED_BIAS (negative);
    ``__kernfs_remove()`` sets KERNFS_REMOVING (v6.1, c25491747b21) and
    ``kernfs_unlink_sibling()`` takes it out of its parent's rbtree.

    >>> lay = KernfsLayout(128, 4, 8, 16, 24, 72, 64, 112, 4, 15, 0x4000)
    >>> kernfs_dead_reasons(KernfsNode(0, -2147483647, 0, 0, 0, 0x4000), False, lay)
    ('deactivated', 'removing', 'unlinked')
    """
    reasons = []
    if kn.active < 0:
        reasons.append("deactivated")
    if layout.removing_flag is not None and kn.flags & layout.removing_flag:
        reasons.append("removing")
    if not in_parent:
        reasons.append("unlinked")
    return tuple(reasons)


# read_cstring()'s default limit: sysfs names are short (NAME_MAX at most for
# a file, a device's name for a directory).
KERNFS_NAME_MAX = 256


class KernfsReader:
    """Reads kernfs nodes, names and directory children, caching what it read.

    A directory walk decodes three fields of a child (its two sibling links
    and its flags) in place in the cached slab page, and decodes only links
    whole: a 64 TB machine has 32K memory block directories of a dozen
    children each, one of them a node link.
    """

    def __init__(self, target: Target, layout: KernfsLayout, page_size: int,
                 max_children: int = 1 << 22):
        self.target = PageCache.of(target, page_size)
        self.layout = layout
        self.page_size = page_size
        self.max_children = max_children
        self._decode = kernfs_node_decoder(layout)
        self._siblings = kernfs_sibling_decoder(layout)
        self._nodes: Dict[int, KernfsNode] = {}
        self._names: Dict[int, str] = {}
        self._dead_reasons: Dict[int, Tuple[str, ...]] = {}
        # parent directory -> the rb_node addresses of its children
        self._children: Dict[int, set] = {}

    def node(self, address: int) -> KernfsNode:
        kn = self._nodes.get(address)
        if kn is None:
            data, offset = self.target.view(address, self.layout.sizeof_node)
            kn = self._nodes[address] = self._decode(data, offset, address)
        return kn

    def name(self, kn: KernfsNode) -> str:
        # Every memoryM/nodeN link of a node targets the same few directories.
        name = self._names.get(kn.name_address)
        if name is None:
            name = self._names[kn.name_address] = self._cstring(kn.name_address)
        return name

    def _cstring(self, address: int) -> str:
        # Names are short: most end in the page they start in.
        offset = address & self.page_size - 1
        page = self.target.pages.get(address - offset)
        end = page.find(0, offset, offset + KERNFS_NAME_MAX) if page is not None else -1
        if end < 0:
            return read_cstring(self.target, address, KERNFS_NAME_MAX, self.page_size)
        return page[offset:end].decode("utf-8", "replace")

    def dead_reasons(self, kn: KernfsNode) -> Tuple[str, ...]:
        """kernfs_dead_reasons() of ``kn``, asked once per link target: the
        32K memoryM/nodeN links of a 64 TB machine share a handful of node
        directories."""
        reasons = self._dead_reasons.get(kn.address)
        if reasons is None:
            reasons = self._dead_reasons[kn.address] = kernfs_dead_reasons(
                kn, self.in_parent(kn), self.layout)
        return reasons

    def children(self, directory: int) -> List[KernfsNode]:
        """Every child of a directory, decoded, in the kernel's name order."""
        rb = self.layout.rb
        return [self.node(node - rb) for node in walk_rbtree(
            self.target, directory + self.layout.children, self.max_children)]

    def links(self, directory: int) -> List[KernfsNode]:
        """The children of a directory that are symlinks, in name order.

        When a read fails the tree is walked again word by word, so the
        error names the very link that could not be read.
        """
        return self._walked(directory)[1]

    def _walked(self, directory: int) -> Tuple[set, List[KernfsNode]]:
        # When a read fails, the word-by-word walk names the failing link.
        try:
            return self._walk(directory)
        except ReadError:
            walk_rbtree(self.target, directory + self.layout.children, self.max_children)
            raise

    def _walk(self, directory: int) -> Tuple[set, List[KernfsNode]]:
        """(rb_node addresses of the children, the links among them in the
        kernel's name order)."""
        layout, view, siblings, decode = self.layout, self.target.view, self._siblings, self._decode
        size, rb, limit = layout.sizeof_node, layout.rb, self.max_children
        mask, link = layout.type_mask, layout.type_link
        # PageCache.view() inlined for whole nodes in cached pages: the
        # walk's cost is per child, 400K children at 64 TB.
        pages, page_size = self.target.pages, self.page_size
        seen: set = set()
        links = []
        # In order: a pushed (right subtree, link or None) pair is taken up
        # once the left subtree is done.
        stack: list = []
        node = self.node(directory).children
        while True:
            while node:
                if node in seen:
                    root = directory + layout.children
                    raise ReadError(node, WORD, f"rbtree at {root:#x} reaches {node:#x} twice")
                seen.add(node)
                if len(seen) > limit:
                    root = directory + layout.children
                    raise ReadError(root, WORD, f"rbtree at {root:#x} larger than {limit} nodes")
                kn = node - rb
                offset = kn % page_size
                data = pages.get(kn - offset)
                if data is None or offset + size > page_size:
                    data, offset = view(kn, size)
                right, node, flags = siblings(data, offset)
                stack.append(decode(data, offset, kn) if flags & mask == link else None)
                stack.append(right)
            if not stack:
                return seen, links
            node = stack.pop()
            found = stack.pop()
            if found is not None:
                links.append(found)

    def in_parent(self, kn: KernfsNode) -> bool:
        """Whether ``kn`` is in its parent's rbtree (link targets have a
        handful of parents: their children are remembered, not every
        directory's)."""
        if not kn.parent:
            return False
        if kn.parent not in self._children:
            self._children[kn.parent] = self._walked(kn.parent)[0]
        return kn.address + self.layout.rb in self._children[kn.parent]


# ---------------------------------------------------------------- memory blocks, nodes, links

# MEM_* states were macros until v6.19 (1a4f70f6851a made them an enum, read
# from DWARF when present): bits as in drgn's _OLD_MEMORY_BLOCK_STATE.
OLD_MEMORY_BLOCK_STATES = {1 << 0: "MEM_ONLINE", 1 << 1: "MEM_GOING_OFFLINE",
                           1 << 2: "MEM_OFFLINE", 1 << 3: "MEM_GOING_ONLINE",
                           1 << 4: "MEM_CANCEL_ONLINE", 1 << 5: "MEM_CANCEL_OFFLINE",
                           1 << 6: "MEM_PREPARE_ONLINE", 1 << 7: "MEM_FINISH_OFFLINE"}


def block_state_name(value: int, enumerators: Dict[str, int]) -> str:
    """The model's spelling of a memory block state.

    >>> block_state_name(2, {})
    'going-offline'
    """
    names = {v: k for k, v in enumerators.items()} or OLD_MEMORY_BLOCK_STATES
    name = names.get(value, f"unknown-{value:#x}")
    return name.removeprefix("MEM_").lower().replace("_", "-")


@dataclass(frozen=True)
class BlockLayout:
    sizeof_block: int
    start_section_nr: int
    state: int
    nid: Optional[int]
    zone: Optional[int]
    online_type: Optional[int]
    dev: int
    dev_id: int
    kn: int
    zone_name: Optional[int]


def memory_block_decoder(layout: BlockLayout, state_enumerators: Dict[str, int],
                         zone_name: Callable[[int], Optional[str]]) -> Callable[..., MemoryBlock]:
    """A function making the MemoryBlock at ``address`` from a buffer holding
    its ``struct memory_block`` at ``offset``: one struct unpack per block
    (a 64 TB machine has 32K blocks). ``zone_name(zone)`` names a
    ``struct zone *``.

    >>> lay = BlockLayout(64, 0, 8, 16, None, None, 24, 0, 8, None)
    >>> decode = memory_block_decoder(lay, {}, lambda zone: None)
    >>> data = (16).to_bytes(8, "little") + (1).to_bytes(8, "little") + bytes(8) + (2).to_bytes(4, "little")
    >>> block = decode(data + bytes(36), 0, 0x1000, True, None)
    >>> block.id, block.start_section_nr, block.state, block.nid
    (2, 16, 'online', 0)
    """
    members = {"id": (layout.dev + layout.dev_id, "I"),
               "start_section_nr": (layout.start_section_nr, "Q"),
               # An unsigned long until the enum (v6.19, 1a4f70f6851a), 4 bytes
               # since: its values fit the low 4 bytes of either (little-endian).
               "state": (layout.state, "I"), "kn": (layout.dev + layout.kn, "Q"),
               "nid": (layout.nid, "i"), "online_type": (layout.online_type, "i"),
               "zone": (layout.zone, "Q")}
    present = {name: spec for name, spec in members.items() if spec[0] is not None}
    unpack = fields_unpacker(present)
    names = tuple(present)
    states = {value: block_state_name(value, state_enumerators)
              for value in set(state_enumerators.values()) or OLD_MEMORY_BLOCK_STATES}

    def decode(data: bytes, offset: int, address: int, in_bus: bool,
               in_xarray: Optional[bool]) -> MemoryBlock:
        fields = dict(zip(names, unpack(data, offset)))
        state = fields["state"]
        return MemoryBlock(
            id=fields["id"], address=address, start_section_nr=fields["start_section_nr"],
            state=states.get(state) or block_state_name(state, state_enumerators),
            nid=fields.get("nid"), zone=zone_name(fields["zone"]) if "zone" in fields else None,
            online_type=fields.get("online_type"), in_bus=in_bus, in_xarray=in_xarray,
            kn_address=fields["kn"] or None)
    return decode


LINK_NAMES = {"node-to-block": re.compile(r"memory(\d+)"), "block-to-node": re.compile(r"node(\d+)")}


def link_from_kernfs(direction: str, owner_number: int, number: int, kn: KernfsNode,
                     name: str, kernfs: KernfsReader, blocks_by_kn: Dict[int, int],
                     nodes_by_kn: Dict[int, int],
                     unreadable: Optional[List[Unreadable]] = None) -> NodeLink:
    """The NodeLink of a kernfs link named memory``number`` (in node
    ``owner_number``) or node``number`` (in memory``owner_number``).

    The target resolves to a block or node only through the kn address of a
    live device, never through its name. A target that cannot be read (a
    filtered dump drops slab pages) is listed in ``unreadable`` and its
    liveness left unknown: "unreadable" is then its only reason.
    """
    node, block = (owner_number, number) if direction == "node-to-block" else (number, owner_number)
    target_name, reasons, live = None, ("unreadable",), False
    if kn.target_kn:
        try:
            target = kernfs.node(kn.target_kn)
            target_name = kernfs.name(target)
            reasons = kernfs.dead_reasons(target)
            live = not reasons
        except ReadError as error:
            if unreadable is not None:
                unreadable.append(Unreadable(f"target of the {name} link of "
                                             f"{link_owner(direction, owner_number)}",
                                             error.reason, kn.target_kn))
    return NodeLink(direction, node, block, name, kn.address, kn.target_kn or None,
                    target_name, live, reasons, blocks_by_kn.get(kn.target_kn),
                    nodes_by_kn.get(kn.target_kn))


def first_line(error: BaseException) -> str:
    """An error as one line, for one-line messages (debuggers' errors can
    span several lines); its type name when it says nothing.

    >>> first_line(ValueError("cannot read\\nmore")), first_line(KeyError())
    ('cannot read', 'KeyError')
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def instruction_addresses(start: int, end: int, arch: str) -> range:
    """Every address an instruction of [start, end) may begin at: arm64
    instructions are 4 bytes, x86 ones of any length, so every byte.

    >>> instruction_addresses(0x1000, 0x1010, "aarch64")
    range(4096, 4112, 4)
    """
    return range(start, end, 4 if arch == "aarch64" else 1)


def pfn_valid_inlines(chains: Iterable[Iterable[Optional[str]]]) -> Tuple[str, ...]:
    """The functions inlined into an arch ``pfn_valid()``, first seen first,
    from the inline chain a debugger gives at each of its instructions: the
    evidence kernels.pfn_valid_rule() wants. Both readers use it, so drgn and
    gdb name the same rule.

    >>> pfn_valid_inlines([["valid_section", "pfn_valid"], ["early_section", "valid_section", None]])
    ('valid_section', 'early_section')
    """
    names: Dict[str, None] = {}
    for chain in chains:
        for name in chain:
            if name and name != "pfn_valid":
                names.setdefault(name)
    return tuple(names)


def link_owner(direction: str, number: int) -> str:
    """The sysfs name of the directory a link lives in, as unreadable
    entries name it: nodeN, or memoryM for a memory block.

    >>> link_owner("node-to-block", 1), link_owner("block-to-node", 32)
    ('node1', 'memory32')
    """
    return f"node{number}" if direction.startswith("node-") else f"memory{number}"


def read_links(kernfs: KernfsReader, nodes: Sequence[Node], blocks: Sequence[MemoryBlock],
               unreadable: List[Unreadable]) -> List[NodeLink]:
    """Both directions of node/block links, from the kernfs directories of each side."""
    blocks_by_kn = {b.kn_address: b.id for b in blocks if b.kn_address}
    nodes_by_kn = {n.kn_address: n.nid for n in nodes if n.kn_address}
    owners = ([("node-to-block", n.nid, n.kn_address) for n in nodes if n.kn_address]
              + [("block-to-node", b.id, b.kn_address) for b in blocks if b.kn_address])
    links: List[NodeLink] = []
    for direction, number, directory in owners:
        try:
            children = kernfs.links(directory)
        except ReadError as error:
            unreadable.append(Unreadable(f"kernfs children of {link_owner(direction, number)}",
                                         error.reason, directory))
            continue
        # Only a link can be a node/block link: attribute names are never read.
        # Other links (subsystem, firmware_node, cpuN) are skipped by name.
        pattern = LINK_NAMES[direction]
        for kn in children:
            try:
                name = kernfs.name(kn)
            except ReadError as error:
                # The directory's listing is incomplete: filed under its kn, so
                # the checks know not to conclude a link is missing there.
                unreadable.append(Unreadable(f"kernfs name of a child of "
                                             f"{link_owner(direction, number)}",
                                             error.reason, directory))
                continue
            match = pattern.fullmatch(name)
            if match:
                links.append(link_from_kernfs(direction, number, int(match.group(1)), kn, name,
                                              kernfs, blocks_by_kn, nodes_by_kn, unreadable))
    return sorted(links, key=operator.attrgetter("direction", "node", "block", "kn_address"))


def bitmap_bits(data: bytes) -> List[int]:
    """Indices of the set bits of a little-endian bitmap.

    >>> bitmap_bits(bytes([0b101, 0, 0, 0, 0, 0, 0, 1]))
    [0, 2, 56]
    """
    value = int.from_bytes(data, "little")
    return [i for i in range(value.bit_length()) if value >> i & 1]


def nodes_from_array(pointers: Sequence[int], kn_of: Callable[[int], Optional[int]],
                     online: Sequence[int]) -> List[Node]:
    """Nodes for the non-NULL ``node_devices[]`` entries."""
    online_set = set(online)
    return [Node(nid=nid, address=ptr, kn_address=kn_of(ptr), online=nid in online_set)
            for nid, ptr in enumerate(pointers) if ptr]


# ---------------------------------------------------------------- the whole model

# SUBSECTION_SHIFT is 21 on every arch since subsections exist (v5.3,
# f46edbd1b151, include/linux/mmzone.h); it is a macro, absent from DWARF.
SUBSECTION_SHIFT = 21


def read_model(target: Target) -> Model:
    """The Model of the kernel behind ``target``; unreadable parts are listed, not fatal.

    Raises ReadError only when the kernel cannot be identified at all
    (no readable ``vmcoreinfo_data`` or ``init_uts_ns``).
    """
    with collector_paused():
        return _read_model(target)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a model is read.

    Reading a 64 TB machine creates a million objects, none in a cycle; each
    collection would walk all those already made again (a quarter of the
    reading time at 512K sections).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_model(target: Target) -> Model:
    unreadable: List[Unreadable] = []
    facts = read_kernel_facts(target)
    sections = read_sections(target, mem_section_roots(target), facts.sparsemem_extreme,
                             facts.nr_mem_sections, facts.page_size,
                             section_layout(target, facts), unreadable)
    memory, reserved = read_memblock(target, facts, unreadable)
    # Memory blocks and their sysfs directories may share slab pages.
    pages = PageCache(target, facts.page_size)
    blocks = read_memory_blocks(pages, facts, unreadable)
    nodes = read_nodes(target, facts, unreadable)
    kernfs = KernfsReader(pages, kernfs_layout(target), facts.page_size,
                          kernfs_children_limit(facts))
    links = read_links(kernfs, nodes, blocks, unreadable)
    page_nids = read_page_nids(target, facts, sections, blocks, unreadable)
    return Model(kernel=facts, sections=sections, memblock_memory=memory,
                 memblock_reserved=reserved, blocks=blocks, nodes=nodes, links=links,
                 page_nids=page_nids, unreadable=unreadable)


# CONFIG_NR_CPUS can be at most 8192 (x86 MAXSMP; arm64 allows 4096).
MAX_NR_CPUS = 8192


def kernfs_children_limit(facts: KernelFacts) -> int:
    """The most children a node or memory block directory can have: a
    memoryM link per block, a cpuN link per CPU and a few attributes."""
    return max_memory_blocks(facts) + MAX_NR_CPUS + 64


def mem_section_roots(target: Target) -> int:
    """Address of the first root: ``mem_section`` itself, or where it points
    when it is a pointer (SPARSEMEM_EXTREME since v4.15, 83e3c48729d9)."""
    address = _require(target, "mem_section")
    if (target.symbol_type("mem_section") or "").endswith("**"):
        return read_word(target, address)
    return address


def _require(target: Target, symbol: str) -> int:
    address = target.symbol(symbol)
    if address is None:
        raise ReadError(0, 0, f"the kernel has no symbol {symbol}")
    return address


def _offset(target: Target, type_name: str, member: str) -> int:
    offset = target.offsetof(type_name, member)
    if offset is None:
        raise ReadError(0, 0, f"{type_name} has no member {member}")
    return offset


def read_vmcoreinfo_text(target: Target) -> str:
    """The kernel's own ``vmcoreinfo_data`` buffer (what a vmcore's note copies)."""
    data = read_word(target, _require(target, "vmcoreinfo_data"))
    size = read_word(target, _require(target, "vmcoreinfo_size"))
    return target.read(data, min(size, 1 << 16)).decode("ascii", "replace")


def read_uts(target: Target) -> Dict[str, str]:
    """sysname, release, version and machine from ``init_uts_ns.name``."""
    name = _require(target, "init_uts_ns") + _offset(target, "struct uts_namespace", "name")
    fields = {}
    for member in ("sysname", "release", "version", "machine"):
        at = name + _offset(target, "struct new_utsname", member)
        fields[member] = target.read(at, 65).split(b"\0", 1)[0].decode("ascii", "replace")
    return fields


def implausible_constant(constants: vmcoreinfo.DerivedConstants,
                         sections_per_block: int) -> Optional[str]:
    """What in the kernel's own VMCOREINFO (read from its memory, which a
    crash may have corrupted) no kernel could have, None when all is plausible.

    >>> c = vmcoreinfo.DerivedConstants(4096, 27, 46, 1 << 19, None, "6.1")
    >>> implausible_constant(c, 1) is None
    True
    >>> implausible_constant(vmcoreinfo.DerivedConstants(4096, 99, 46, 1, None, "6.1"), 1)
    'SECTION_SIZE_BITS 99 with MAX_PHYSMEM_BITS 46'
    """
    page, section, physmem = (constants.page_size, constants.section_size_bits,
                              constants.max_physmem_bits)
    if page not in (4096, 16384, 65536):
        return f"PAGESIZE {page}"
    if section is None or physmem is None or not page.bit_length() - 1 < section < physmem <= 64:
        return f"SECTION_SIZE_BITS {section} with MAX_PHYSMEM_BITS {physmem}"
    if sections_per_block < 1 or sections_per_block & (sections_per_block - 1) \
            or sections_per_block.bit_length() - 1 + section > physmem:
        return f"sections_per_block {sections_per_block}"
    return None


def read_kernel_facts(target: Target) -> KernelFacts:
    """KernelFacts from VMCOREINFO, ``init_uts_ns`` and the types of a few symbols.

    Raises ReadError when those constants are missing or impossible: every
    later read and walk is sized by them.
    """
    info = vmcoreinfo.parse_vmcoreinfo(read_vmcoreinfo_text(target))
    constants = vmcoreinfo.derive_constants(info)
    uts = read_uts(target)
    release = constants.release or uts["release"]
    mem_section_type = target.symbol_type("mem_section") or ""
    has_subsections = target.offsetof("struct mem_section_usage", "subsection_map") is not None
    sections_per_block = int_at(target.read(_require(target, "sections_per_block"), 4), 0)
    problem = implausible_constant(constants, sections_per_block)
    if problem:
        raise ReadError(0, 0, f"the kernel's VMCOREINFO or memory block size is corrupt: {problem}")
    return KernelFacts(
        arch=uts["machine"], release=release,
        version=vmcoreinfo.parse_kernel_version(release, uts["version"]),
        page_size=constants.page_size, section_size_bits=constants.section_size_bits,
        max_physmem_bits=constants.max_physmem_bits, nr_mem_sections=constants.nr_mem_sections,
        subsection_shift=SUBSECTION_SHIFT if has_subsections else None,
        memory_block_size=sections_per_block << constants.section_size_bits,
        # LENGTH(node_data) is MAX_NUMNODES (kernel/crash_core.c, NUMA kernels).
        max_numnodes=info.lengths.get("node_data")
        or _array_length(target.symbol_type("node_devices")),
        # A pointer root (v4.15+) or an array of root pointers: SPARSEMEM_EXTREME.
        sparsemem_extreme="**" in mem_section_type or "*[" in mem_section_type,
        # vmemmap_populate() is built only with CONFIG_SPARSEMEM_VMEMMAP.
        sparsemem_vmemmap=target.symbol("vmemmap_populate") is not None,
        keeps_memblock=kernels.arch_keeps_memblock(uts["machine"]),
        kaslr_offset=constants.kaslr_offset)


def _array_length(type_spelling: Optional[str]) -> int:
    """N of a C array type spelled "T [N]".

    >>> _array_length("struct node *[1024]")
    1024
    """
    match = re.search(r"\[(\d+)\]$", type_spelling or "")
    if not match:
        raise ReadError(0, 0, f"not an array type: {type_spelling!r}")
    return int(match.group(1))


def section_layout(target: Target, facts: KernelFacts) -> SectionLayout:
    """Section word layout; flag bits from the SECTION_*_BIT enumerators (v6.0,
    ed7802dd48f7) or the per-version fallback."""
    bits = {name: target.enumerator(f"SECTION_{name}_BIT")
            for name in ("MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE", "IS_EARLY",
                         "TAINT_ZONE_DEVICE", "IS_VMEMMAP_PREINIT")}
    flag_bits = {name: bit for name, bit in bits.items() if bit is not None}
    if not flag_bits:
        flag_bits, _ = kernels.section_flag_bits(facts.version)
    map_offset = target.offsetof("struct mem_section_usage", "subsection_map")
    subsections = 1 << (facts.section_size_bits - SUBSECTION_SHIFT)
    return SectionLayout(
        sizeof_section=target.sizeof("struct mem_section"),
        usage_offset=target.offsetof("struct mem_section", "usage"),
        subsection_map_offset=map_offset,
        subsection_map_bytes=-(-subsections // 64) * WORD, flag_bits=flag_bits)


def memblock_layout(target: Target) -> MemblockLayout:
    region = "struct memblock_region"
    kind = "struct memblock_type"
    return MemblockLayout(
        sizeof_region=target.sizeof(region), base=_offset(target, region, "base"),
        size=_offset(target, region, "size"), flags=_offset(target, region, "flags"),
        nid=target.offsetof(region, "nid"), cnt=_offset(target, kind, "cnt"),
        max=_offset(target, kind, "max"), regions=_offset(target, kind, "regions"))


def read_memblock(target: Target, facts: KernelFacts,
                  unreadable: List[Unreadable]) -> Tuple[MemblockType, MemblockType]:
    """``memblock.memory`` and ``memblock.reserved``, each array in one read when trusted."""
    layout = memblock_layout(target)
    flag_bits = {name[len("MEMBLOCK_"):]: value
                 for name, value in target.enumerators("enum memblock_flags").items() if value}
    flag_bits = flag_bits or kernels.memblock_flag_bits(facts.version)
    memblock = _require(target, "memblock")
    return tuple(_read_memblock_type(target, name, memblock + _offset(target, "struct memblock", name),
                                     facts, layout, flag_bits, unreadable)
                 for name in ("memory", "reserved"))


def _read_memblock_type(target, name, address, facts, layout, flag_bits, unreadable) -> MemblockType:
    header = target.read(address, layout.regions + WORD)
    cnt, max_, regions = (word_at(header, layout.cnt), word_at(header, layout.max),
                          word_at(header, layout.regions))
    init = f"memblock_{name}_init_regions"
    reason = kernels.memblock_count_problem(cnt, max_, _optional_array_length(target, init))
    if reason is not None:
        unreadable.append(Unreadable(f"memblock.{name}", reason, address))
    else:
        reason = kernels.memblock_trust(facts.keeps_memblock, regions, target.symbol(init), cnt, max_)
    if reason is None:
        try:
            data = target.read(regions, cnt * layout.sizeof_region)
            return MemblockType(name, address, cnt, max_,
                                decode_memblock_regions(data, cnt, layout, flag_bits))
        except ReadError as error:
            unreadable.append(Unreadable(f"memblock.{name}.regions", error.reason, regions))
            reason = f"memblock.{name}.regions unreadable"
    return MemblockType(name, address, cnt, max_, (), available=False, reason=reason)


def _optional_array_length(target: Target, symbol: str) -> Optional[int]:
    try:
        return _array_length(target.symbol_type(symbol))
    except ReadError:
        return None


def block_layout(target: Target) -> BlockLayout:
    block = "struct memory_block"
    return BlockLayout(
        sizeof_block=target.sizeof(block),
        start_section_nr=_offset(target, block, "start_section_nr"),
        state=_offset(target, block, "state"), nid=target.offsetof(block, "nid"),
        zone=target.offsetof(block, "zone"), online_type=target.offsetof(block, "online_type"),
        dev=_offset(target, block, "dev"), dev_id=_offset(target, "struct device", "id"),
        kn=_offset(target, "struct device", "kobj.sd"),
        zone_name=target.offsetof("struct zone", "name"))


def memory_bus_devices(target: Target, limit: int = 1 << 22) -> List[int]:
    """``struct device *`` of every device on the memory bus, in bus order.

    The bus's ``subsys_private`` is ``memory_subsys.p`` before v6.3 and is
    found on ``bus_kset``'s list since (d2bf38c088e0 removed bus_type.p).
    """
    klist = _offset(target, "struct subsys_private", "klist_devices.k_list")
    knode = _offset(target, "struct device_private", "knode_bus.n_node")
    device = _offset(target, "struct device_private", "device")
    subsys = _memory_subsys_private(target)
    return [read_word(target, node - knode + device)
            for node in walk_list(target, subsys + klist, limit)]


def _memory_subsys_private(target: Target) -> int:
    bus = _require(target, "memory_subsys")
    p = target.offsetof("struct bus_type", "p")
    if p is not None:
        return read_word(target, bus + p)
    entry = _offset(target, "struct subsys_private", "subsys.kobj.entry")
    bus_member = _offset(target, "struct subsys_private", "bus")
    kset_list = read_word(target, _require(target, "bus_kset")) + _offset(target, "struct kset", "list")
    for node in walk_list(target, kset_list):
        if read_word(target, node - entry + bus_member) == bus:
            return node - entry
    raise ReadError(bus, 0, "memory_subsys is not registered on bus_kset")


def memory_blocks_xarray(target: Target, max_id: int = 1 << 32) -> Optional[Dict[int, int]]:
    """block id -> ``struct memory_block *`` from the ``memory_blocks`` xarray
    (v5.8, 4fb6eabf1037); None on older kernels."""
    xarray = target.symbol("memory_blocks")
    if xarray is None:
        return None
    head = read_word(target, xarray + _offset(target, "struct xarray", "xa_head"))
    return walk_xarray(target, head, _offset(target, "struct xa_node", "slots"), max_id)


def read_memory_blocks(target: Target, facts: KernelFacts,
                       unreadable: List[Unreadable]) -> List[MemoryBlock]:
    """Memory blocks from the memory bus, cross-checked with the xarray."""
    layout = block_layout(target)
    # Blocks, their bus list nodes and xa_nodes are slab objects sharing pages.
    target = PageCache.of(target, facts.page_size)
    limit = max_memory_blocks(facts)
    try:
        on_bus = [dev - layout.dev for dev in memory_bus_devices(target, limit)]
    except ReadError as error:
        unreadable.append(Unreadable("memory bus device list", error.reason, error.address))
        on_bus = []
    try:
        in_xarray = memory_blocks_xarray(target, limit)
    except ReadError as error:
        unreadable.append(Unreadable("memory_blocks xarray", error.reason, error.address))
        in_xarray = None
    xarray_addresses = set(in_xarray.values()) if in_xarray is not None else None
    decode = memory_block_decoder(layout, target.enumerators("enum memory_block_state"),
                                  functools.lru_cache(maxsize=None)(
                                      lambda zone: _zone_name(target, zone, layout, facts)))
    blocks = []
    bus_set = set(on_bus)  # a list lookup per block is quadratic at 32K blocks
    for address in dict.fromkeys(on_bus + sorted(xarray_addresses or ())):
        try:
            data, offset = target.view(address, layout.sizeof_block)
        except ReadError as error:
            unreadable.append(Unreadable("struct memory_block", error.reason, address))
            continue
        blocks.append(decode(
            data, offset, address, in_bus=address in bus_set,
            in_xarray=None if xarray_addresses is None else address in xarray_addresses))
    return sorted(blocks, key=lambda b: (b.id, b.address))


def max_memory_blocks(facts: KernelFacts) -> int:
    """How many memory blocks the kernel can have: NR_MEM_SECTIONS over the
    sections per block, the bound of every walk over blocks.

    >>> f = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
    ...                 True, True, False)
    >>> max_memory_blocks(f)
    524288
    """
    return -(-facts.nr_mem_sections // max(1, facts.sections_per_block))


def _zone_name(target: Target, zone: int, layout: BlockLayout, facts: KernelFacts) -> Optional[str]:
    if not zone or layout.zone_name is None:
        return None
    try:
        return read_cstring(target, read_word(target, zone + layout.zone_name),
                            page_size=facts.page_size)
    except ReadError:
        return None


def read_nodes(target: Target, facts: KernelFacts, unreadable: List[Unreadable]) -> List[Node]:
    """``node_devices[]`` (one read) and which nodes are online (``node_states[N_ONLINE]``)."""
    array = _require(target, "node_devices")
    pointers = decode_words(target.read(array, facts.max_numnodes * WORD))
    online = _online_nodes(target, unreadable)
    kn = _offset(target, "struct node", "dev.kobj.sd")

    def kn_of(node: int) -> Optional[int]:
        try:
            return read_word(target, node + kn) or None
        except ReadError as error:
            unreadable.append(Unreadable("struct node", error.reason, node))
            return None
    return nodes_from_array(pointers, kn_of, online)


def _online_nodes(target: Target, unreadable: List[Unreadable]) -> List[int]:
    states = _require(target, "node_states")
    n_online = target.enumerator("N_ONLINE")
    size = target.sizeof("nodemask_t")
    try:
        return bitmap_bits(target.read(states + n_online * size, size))
    except ReadError as error:
        unreadable.append(Unreadable("node_states[N_ONLINE]", error.reason, states))
        return []


def kernfs_layout(target: Target) -> KernfsLayout:
    kn = "struct kernfs_node"
    return KernfsLayout(
        sizeof_node=target.sizeof(kn), active=_offset(target, kn, "active"),
        parent=_offset(target, kn, "parent") if target.offsetof(kn, "parent") is not None
        # v6.15 renamed parent to __parent (RCU-protected).
        else _offset(target, kn, "__parent"),
        name=_offset(target, kn, "name"), rb=_offset(target, kn, "rb"),
        children=_offset(target, kn, "dir.children"),
        target_kn=_offset(target, kn, "symlink.target_kn"),
        flags=_offset(target, kn, "flags"), type_link=target.enumerator("KERNFS_LINK"),
        # KERNFS_TYPE_MASK is a macro (0x000f since kernfs began, v3.14).
        type_mask=0xF, removing_flag=target.enumerator("KERNFS_REMOVING"))


# ---------------------------------------------------------------- page nids

def section_map_last_bit(target: Target, facts: KernelFacts) -> int:
    """SECTION_MAP_LAST_BIT: the encoded mem_map pointer starts above it
    (an enumerator since v6.0, ed7802dd48f7; a macro before)."""
    value = target.enumerator("SECTION_MAP_LAST_BIT")
    return value if value is not None else kernels.section_flag_bits(facts.version)[1]


def page_nid_sites(facts: KernelFacts, sections: SectionTable,
                   blocks: Sequence[MemoryBlock]) -> List[Tuple[int, int]]:
    """Where the checks read each memory block's node from its struct
    pages: the first pfn of the block's first valid section, with that
    section's ``section_mem_map``, in pfn order.

    One page per block tells it all: add_memory() adds whole memory blocks
    on one node (check_hotplug_memory_range() requires memory_block_size
    alignment), and ZONE_DEVICE sections have no block.

    >>> f = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 28, 1024,
    ...                 True, True, False)
    >>> from drgn_hotplug.model import Section
    >>> hole = Section(4, 0, 1, frozenset({"MARKED_PRESENT"}), None, None)
    >>> memory = Section(5, 0, 0x1003, frozenset({"MARKED_PRESENT", "HAS_MEM_MAP"}), None, None)
    >>> page_nid_sites(f, SectionTable.of([hole, memory]), [MemoryBlock(2, 0, 4, "online", 0)])
    [(163840, 4099)]
    """
    valid = sections.numbers_where(valid_section)
    starts = sorted({block.start_section_nr for block in blocks})
    # Each block's first valid section, found by bisection in the valid numbers.
    found = zip(starts, map(bisect.bisect_left, repeat(valid), starts))
    firsts = dict.fromkeys(valid[i] for start, i in found
                           if i < len(valid) and valid[i] < start + facts.sections_per_block)
    return [(nr << facts.pfn_section_shift, sections.mem_maps[i])
            for nr, i in zip(firsts, map(bisect.bisect_left, repeat(sections.nrs), firsts))]


def page_flags_nid(flags: int, facts: KernelFacts) -> int:
    """The node field of ``page->flags``, as page_to_nid().

    include/linux/page-flags-layout.h packs from the top bit down the
    section number (SPARSEMEM without VMEMMAP only), then NODES_SHIFT bits
    of node.

    >>> f = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
    ...                 True, True, False)
    >>> page_flags_nid(1 << 54 | 0x17, f)
    1
    """
    nodes_shift = facts.max_numnodes.bit_length() - 1
    sections_width = 0 if facts.sparsemem_vmemmap else facts.max_physmem_bits - facts.section_size_bits
    return flags >> (64 - sections_width - nodes_shift) & (1 << nodes_shift) - 1


def read_page_nids(target: Target, facts: KernelFacts, sections: SectionTable,
                   blocks: Sequence[MemoryBlock], unreadable: List[Unreadable]) -> Dict[int, int]:
    """pfn -> nid at ``page_nid_sites()``, one ``page->flags`` word each.

    Kernels whose page flags have no room for the node
    (NODE_NOT_IN_PAGE_FLAGS) keep ``section_to_node_table[]`` instead.
    """
    shift = facts.pfn_section_shift
    table = target.symbol("section_to_node_table")
    element = _section_node_size(target) if table is not None else 0
    flags_offset = _offset(target, "struct page", "flags")
    sizeof_page = target.sizeof("struct page")
    map_mask = ~((1 << section_map_last_bit(target, facts)) - 1)
    nids = {}
    for pfn, mem_map in page_nid_sites(facts, sections, blocks):
        # section_mem_map encodes mem_map - section_nr_to_pfn(nr)
        page = ((mem_map & map_mask) + pfn * sizeof_page) & (1 << 64) - 1
        try:
            if table is not None:
                nids[pfn] = _section_node(target, table, element, pfn >> shift)
            else:
                nids[pfn] = page_flags_nid(read_word(target, page + flags_offset), facts)
        except ReadError as error:
            unreadable.append(Unreadable(f"struct page of pfn {pfn:#x}", error.reason, page))
    return nids


def _section_node_size(target: Target) -> int:
    # u8 when MAX_NUMNODES <= 256, else u16 (mm/sparse.c)
    return 2 if "short" in (target.symbol_type("section_to_node_table") or "") else 1


def _section_node(target: Target, table: int, element: int, section_nr: int) -> int:
    return uint_at(target.read(table + section_nr * element, element), 0, element)
