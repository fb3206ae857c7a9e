"""Each memory block's node as its struct pages tell it: the node field of
``page->flags`` (include/linux/page-flags-layout.h), or
``section_to_node_table[]`` where the flags have no room for it."""

from __future__ import annotations

import bisect
from itertools import repeat
from typing import Dict, List, Sequence, Tuple

from ..model import KernelFacts, MemoryBlock, SectionTable, Unreadable, valid_section
from .mmzone import section_map_last_bit
from .target import ReadError, Target, read_word, require_offset, uint_at


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
    flags_offset = require_offset(target, "struct page", "flags")
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
