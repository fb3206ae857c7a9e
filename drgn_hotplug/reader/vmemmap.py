"""Self-hosted memmaps (memory_hotplug.memmap_on_memory): which struct pages
at the start of a block that hosts its own memmap carry
PG_vmemmap_self_hosted (mm/memory_hotplug.c mhp_init_memmap_on_memory())."""

from __future__ import annotations

import bisect
from typing import Dict, List, Sequence, Tuple

from .. import kernels
from ..model import KernelFacts, MemoryBlock, SectionTable, Unreadable
from .mmzone import section_map_last_bit
from .target import ReadError, Target, require_offset


def marked_runs(flags: Sequence[int], bit: int, first_pfn: int) -> Tuple[Tuple[int, int], ...]:
    """Runs (end exclusive) of consecutive pfns whose flags word has ``bit``
    set, the first word being ``first_pfn``'s.

    >>> marked_runs([1 << 10, 1 << 10, 0, 1 << 10], 10, 0x100)
    ((256, 258), (259, 260))
    """
    runs: List[Tuple[int, int]] = []
    for i, word in enumerate(flags):
        if word >> bit & 1:
            pfn = first_pfn + i
            if runs and runs[-1][1] == pfn:
                runs[-1] = (runs[-1][0], pfn + 1)
            else:
                runs.append((pfn, pfn + 1))
    return tuple(runs)


def read_self_hosted_runs(target: Target, facts: KernelFacts, sections: SectionTable,
                          blocks: Sequence[MemoryBlock],
                          unreadable: List[Unreadable]) -> Dict[int, Tuple[Tuple[int, int], ...]]:
    """block id -> the PG_vmemmap_self_hosted pfn runs among the first pages
    of each online block that hosts its memmap (twice its
    ``nr_vmemmap_pages``, at most the block), so a count that is too small
    or too large shows. Empty on kernels without the flag (before v6.0).
    """
    bit = kernels.vmemmap_self_hosted_bit(target.enumerators("enum pageflags"))
    hosting = [b for b in blocks if b.nr_vmemmap_pages and b.state == "online"]
    if bit is None or not hosting:
        return {}
    flags_offset = require_offset(target, "struct page", "flags")
    sizeof_page = target.sizeof("struct page")
    map_mask = ~((1 << section_map_last_bit(target, facts)) - 1)
    runs = {}
    for block in hosting:
        first = block.start_section_nr << facts.pfn_section_shift
        count = min(2 * block.nr_vmemmap_pages, facts.pages_per_block)
        i = bisect.bisect_left(sections.nrs, block.start_section_nr)
        if i == len(sections.nrs) or sections.nrs[i] != block.start_section_nr:
            continue
        # section_mem_map encodes mem_map - section_nr_to_pfn(nr); a block's
        # sections share one virtually contiguous vmemmap.
        page = ((sections.mem_maps[i] & map_mask) + first * sizeof_page) & (1 << 64) - 1
        try:
            memmap = target.read(page, count * sizeof_page)
        except ReadError as error:
            unreadable.append(Unreadable(f"struct pages of memory{block.id}", error.reason, page))
            continue
        words = [int.from_bytes(memmap[at + flags_offset:at + flags_offset + 8], "little")
                 for at in range(0, len(memmap), sizeof_page)]
        runs[block.id] = marked_runs(words, bit, first)
    return runs
