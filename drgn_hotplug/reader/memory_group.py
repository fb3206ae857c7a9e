"""Memory groups (drivers/base/memory.c, v5.15 028fc57a1c36) and the
PageOffline pages of their online blocks: the memory virtio-mem (a dynamic
group per device) and dax_kmem (a static group per dax device) add, and
virtio-mem's unplugged sub-blocks inside online blocks (PageOffline, never
given to the buddy: drivers/virtio/virtio_mem.c's fake-offline pages).

A group's ``memory_blocks`` list and each block's ``group`` pointer are the
two copies the kernel keeps of which blocks a group holds
(``init_memory_block()`` links both, ``remove_memory_block()`` unlinks both).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import compress
from typing import Dict, List, Optional, Sequence, Tuple

from .. import kernels
from ..model import KernelFacts, MemoryBlock, MemoryGroup, SectionTable, Unreadable
from .list import walk_list
from .mmzone import section_map_last_bit
from .target import (ReadError, Target, fields_unpacker, read_word, require_offset,
                     require_symbol)
from .xarray import walk_xarray

# Groups are ids of an xarray limited to INT_MAX (memory_group_register()).
MAX_GROUP_ID = (1 << 31) - 1


@dataclass(frozen=True)
class GroupLayout:
    block_group: int
    block_group_next: int
    size: int
    nid: int
    memory_blocks: int
    present_kernel_pages: int
    present_movable_pages: int
    is_dynamic: int
    unit_pages: int
    max_pages: int


def group_layout(target: Target) -> Optional[GroupLayout]:
    """Offsets of ``struct memory_group`` and ``memory_block.group``; None
    before v5.15 (no memory groups)."""
    if target.offsetof("struct memory_block", "group") is None:
        return None
    group = "struct memory_group"
    return GroupLayout(
        require_offset(target, "struct memory_block", "group"),
        require_offset(target, "struct memory_block", "group_next"), target.sizeof(group),
        *(require_offset(target, group, member) for member in (
            "nid", "memory_blocks", "present_kernel_pages", "present_movable_pages",
            "is_dynamic", "d.unit_pages", "s.max_pages")))


def read_memory_groups(target: Target, facts: KernelFacts, blocks: Sequence[MemoryBlock],
                       unreadable: List[Unreadable]
                       ) -> Tuple[List[MemoryGroup], Dict[int, int]]:
    """(the memory groups, block id -> ``memory_block.group`` of the blocks
    that have one); ([], {}) on kernels without memory groups.

    Groups come from the ``memory_groups`` xarray and from the blocks'
    pointers (a group only a block names is read too).
    """
    layout = group_layout(target)
    if layout is None:
        return [], {}
    try:
        registered = list(_registered_groups(target).values())
    except ReadError as error:
        unreadable.append(Unreadable("memory_groups xarray", error.reason, error.address))
        registered = None
    if registered == []:
        # No group registered, so no block names one (memory_group_unregister()
        # refuses a group with blocks): skip a read per block (32K on 64 TB).
        return [], {}
    block_groups = {}
    for block in blocks:
        try:
            group = read_word(target, block.address + layout.block_group)
        except ReadError as error:
            unreadable.append(Unreadable(f"memory_block.group of memory{block.id}", error.reason,
                                         block.address))
            continue
        if group:
            block_groups[block.id] = group
    by_address = {block.address: block.id for block in blocks}
    groups = []
    for address in dict.fromkeys((registered or []) + sorted(set(block_groups.values()))):
        try:
            groups.append(_group(target, address, layout, by_address, len(blocks)))
        except ReadError as error:
            unreadable.append(Unreadable("struct memory_group", error.reason, address))
    return groups, block_groups


def _registered_groups(target: Target) -> Dict[int, int]:
    xarray = require_symbol(target, "memory_groups")
    head = read_word(target, xarray + require_offset(target, "struct xarray", "xa_head"))
    return walk_xarray(target, head, require_offset(target, "struct xa_node", "slots"), MAX_GROUP_ID)


def _group(target: Target, address: int, layout: GroupLayout, by_address: Dict[int, int],
           block_count: int) -> MemoryGroup:
    unpack = fields_unpacker({"nid": (layout.nid, "i"), "kernel": (layout.present_kernel_pages, "Q"),
                              "movable": (layout.present_movable_pages, "Q"),
                              "dynamic": (layout.is_dynamic, "B"), "unit": (layout.unit_pages, "Q")})
    nid, kernel, movable, dynamic, unit = unpack(target.read(address, layout.size))
    members = [node - layout.block_group_next
               for node in walk_list(target, address + layout.memory_blocks, block_count + 1)]
    return MemoryGroup(address=address, nid=nid, is_dynamic=bool(dynamic),
                       unit_pages=unit if dynamic else None, max_pages=None if dynamic else unit,
                       present_kernel_pages=kernel, present_movable_pages=movable,
                       blocks=tuple(by_address[m] for m in members if m in by_address),
                       strangers=tuple(m for m in members if m not in by_address))


def read_offline_runs(target: Target, facts: KernelFacts, sections: SectionTable,
                      blocks: Sequence[MemoryBlock], block_groups: Dict[int, int],
                      unreadable: List[Unreadable]) -> Dict[int, Tuple[Tuple[int, int], ...]]:
    """block id -> the PageOffline pfn runs (end exclusive) of each online
    block of a memory group, read a section of struct pages at a time
    (``page->page_type``, decoded by kernels.page_offline_test()).

    Only grouped blocks are read: that is where virtio-mem unplugs sub-blocks,
    and it keeps the cost at 2 MiB of memmap per 128 MiB block of them.
    """
    grouped = [b for b in blocks if b.id in block_groups and b.state == "online"]
    if not grouped:
        return {}
    test = kernels.page_offline_test(target.enumerators("enum pagetype"))
    sizeof_page = target.sizeof("struct page")
    page_type = require_offset(target, "struct page", "page_type")
    map_mask = ~((1 << section_map_last_bit(target, facts)) - 1)
    per_section = 1 << facts.pfn_section_shift
    runs: Dict[int, Tuple[Tuple[int, int], ...]] = {}
    for block in grouped:
        found: List[Tuple[int, int]] = []
        for nr in range(block.start_section_nr, block.start_section_nr + facts.sections_per_block):
            section = sections.find(nr)
            if section is None or not section.valid:
                continue
            first = nr * per_section
            start = ((section.mem_map & map_mask) + first * sizeof_page) & (1 << 64) - 1
            try:
                data = target.read(start, per_section * sizeof_page)
            except ReadError as error:
                unreadable.append(Unreadable(f"struct pages of section {nr}", error.reason, start))
                continue
            types = page_types(data, sizeof_page, page_type)
            found = merge_runs(found, offline_runs(types, test, first))
        runs[block.id] = tuple(found)
    return runs


def page_types(memmap: bytes, sizeof_page: int, offset: int) -> Sequence[int]:
    """``page->page_type`` of each struct page in a memmap slice.

    >>> list(page_types(bytes(4) + (7).to_bytes(4, "little") + bytes(8), 8, 4))
    [7, 0]
    """
    words = array("I", memmap)
    return words[offset // 4::sizeof_page // 4]


def offline_runs(types: Sequence[int], test: kernels.PageOfflineTest,
                 first_pfn: int) -> List[Tuple[int, int]]:
    """Runs of consecutive PageOffline pfns, the first of ``types`` being ``first_pfn``.

    >>> offline_runs([0xffffffff, 0xfffffeff, 0xfffffeff, 0xffffffff, 0xfffffeff],
    ...              kernels.page_offline_test({}), 100)
    [(101, 103), (104, 105)]
    """
    flags = [test.offline(t) for t in types]
    runs: List[Tuple[int, int]] = []
    for pfn in compress(range(first_pfn, first_pfn + len(flags)), flags):
        if runs and runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], pfn + 1)
        else:
            runs.append((pfn, pfn + 1))
    return runs


def merge_runs(earlier: List[Tuple[int, int]], later: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Two ascending run lists as one, joining a run that crosses between them.

    >>> merge_runs([(0, 4)], [(4, 6), (8, 9)])
    [(0, 6), (8, 9)]
    """
    if earlier and later and earlier[-1][1] == later[0][0]:
        return earlier[:-1] + [(earlier[-1][0], later[0][1])] + later[1:]
    return earlier + later
