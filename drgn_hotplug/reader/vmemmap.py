"""Self-hosted memmaps (memory_hotplug.memmap_on_memory): how many pages a
block's memmap needs, and which struct pages at the start of a block that
hosts its own memmap carry PG_vmemmap_self_hosted (mm/memory_hotplug.c
mhp_init_memmap_on_memory())."""

from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

from .. import kernels
from ..model import KernelFacts, MemoryBlock, SectionTable, SelfHostedMemmap, Unreadable
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


def read_self_hosted(target: Target, facts: KernelFacts, sections: SectionTable,
                     blocks: Sequence[MemoryBlock],
                     unreadable: List[Unreadable]) -> Dict[int, SelfHostedMemmap]:
    """block id -> SelfHostedMemmap of each block with ``nr_vmemmap_pages``:
    the pages its memmap needs, and for an online one the
    PG_vmemmap_self_hosted runs among its first pages (twice its
    ``nr_vmemmap_pages``, at most the block, so a count too small or too
    large shows)."""
    hosting = [b for b in blocks if b.nr_vmemmap_pages]
    if not hosting:
        return {}
    sizeof_page = target.sizeof("struct page")
    needed = kernels.memmap_pages_needed(facts.pages_per_block, sizeof_page, facts.page_size,
                                         kernels.pageblock_pages(facts.page_size))
    bit = kernels.vmemmap_self_hosted_bit(target.enumerators("enum pageflags"))
    flags_offset = require_offset(target, "struct page", "flags")
    map_mask = ~((1 << section_map_last_bit(target, facts)) - 1)
    out = {}
    for block in hosting:
        runs = None
        if bit is not None and block.state == "online":
            runs = _block_runs(target, facts, sections, block, bit, flags_offset, sizeof_page,
                               map_mask, unreadable)
        out[block.id] = SelfHostedMemmap(block.id, needed, runs)
    return out


def _block_runs(target, facts, sections, block, bit, flags_offset, sizeof_page, map_mask,
                unreadable) -> Optional[Tuple[Tuple[int, int], ...]]:
    first = block.start_section_nr << facts.pfn_section_shift
    count = min(2 * block.nr_vmemmap_pages, facts.pages_per_block)
    i = bisect.bisect_left(sections.nrs, block.start_section_nr)
    if i == len(sections.nrs) or sections.nrs[i] != block.start_section_nr:
        return None
    # section_mem_map encodes mem_map - section_nr_to_pfn(nr); a block's
    # sections share one virtually contiguous vmemmap.
    page = ((sections.mem_maps[i] & map_mask) + first * sizeof_page) & (1 << 64) - 1
    try:
        memmap = target.read(page, count * sizeof_page)
    except ReadError as error:
        unreadable.append(Unreadable(f"struct pages of memory{block.id}", error.reason, page))
        return None
    words = [int.from_bytes(memmap[at + flags_offset:at + flags_offset + 8], "little")
             for at in range(0, len(memmap), sizeof_page)]
    return marked_runs(words, bit, first)
