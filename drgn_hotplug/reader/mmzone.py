"""SPARSEMEM sections (include/linux/mmzone.h, mm/sparse.c): the
``mem_section`` roots, each present section's words, its flags and its
subsection map, decoded column by column."""

from __future__ import annotations

import bisect
import operator
import sys
from array import array
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from .. import kernels
from ..model import KernelFacts, SectionTable, Unreadable
from .target import WORD, ReadError, Target, decode_words, read_word, require_symbol, uint_at


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


# SUBSECTION_SHIFT is 21 on every arch since subsections exist (v5.3,
# f46edbd1b151, include/linux/mmzone.h); it is a macro, absent from DWARF.
SUBSECTION_SHIFT = 21


def mem_section_roots(target: Target) -> int:
    """Address of the first root: ``mem_section`` itself, or where it points
    when it is a pointer (SPARSEMEM_EXTREME since v4.15, 83e3c48729d9)."""
    address = require_symbol(target, "mem_section")
    if (target.symbol_type("mem_section") or "").endswith("**"):
        return read_word(target, address)
    return address


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


def section_map_last_bit(target: Target, facts: KernelFacts) -> int:
    """SECTION_MAP_LAST_BIT: the encoded mem_map pointer starts above it
    (an enumerator since v6.0, ed7802dd48f7; a macro before)."""
    value = target.enumerator("SECTION_MAP_LAST_BIT")
    return value if value is not None else kernels.section_flag_bits(facts.version)[1]
