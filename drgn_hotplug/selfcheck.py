"""A reader that notices when it misreads: facts the kernel keeps twice,
compared on the Model before any check uses them.

Each comparison pits a decoded field against a second copy of the same fact:

- the node of a memory block, from ``page->flags`` (bits packed at a place
  that moves between kernels) against ``memory_block.nid`` (a plain member
  whose offset comes from DWARF);
- the presence of sections (``section_mem_map``) against the memory blocks
  (every block holds a present section; every boot section has a block);
- a node's pfn span (``node_start_pfn``, ``node_spanned_pages``) against the
  online blocks of that node.

A few disagreements are the kernel's own inconsistency, and the checks
report them as ever. When most objects disagree (more than half of at least
MIN_COMPARISONS), the decoder is wrong for this kernel, not the kernel: the
model gets one ``Unreadable`` entry naming the field and the release, the
field's name in ``Model.misread``, and no check draws a finding from it.

>>> c = Comparison("page->flags node field", "memory_block.nid", "blocks", 10, 9)
>>> c.misread, c.unreadable("7.3.4+deb13-cloud-amd64").reason
(True, 'does not match memory_block.nid on 9 of 10 blocks: layout of 7.3.4+deb13-cloud-amd64 not understood')
>>> Comparison("page->flags node field", "memory_block.nid", "blocks", 3, 3).misread
False
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, List, Optional, Sequence

from .model import (KernelFacts, MemblockType, MemoryBlock, Model, Section, SectionTable,
                    Unreadable)
from .ranges import RangeSet, from_ascending_section_numbers

if TYPE_CHECKING:
    from .checks import PfnSets

PAGE_NID = "page->flags node field"
SECTION_PRESENCE = "mem_section presence"
NODE_SPAN = "pglist_data node span"

# Fewer comparisons than this never count as a misread: on a machine with
# two or three blocks, two disagreeing blocks are as likely the kernel's.
MIN_COMPARISONS = 4

# What the readers file as unreadable when the memory block devices could
# not all be read (reader/memory.py, read_memory_blocks): blocks may be missing,
# and sections without a block prove nothing about the section decoder.
_BLOCK_LISTS = ("memory bus device list", "memory_blocks xarray", "struct memory_block")


@dataclass(frozen=True)
class Comparison:
    """How often a decoded ``field`` disagrees with the kernel's second
    copy of the same fact (``witness``) over ``compared`` ``objects``."""

    field: str
    witness: str
    objects: str
    compared: int
    disagreeing: int

    @property
    def misread(self) -> bool:
        """Most of enough objects disagree: the decoder, not the kernel."""
        return self.compared >= MIN_COMPARISONS and 2 * self.disagreeing > self.compared

    def unreadable(self, release: str) -> Unreadable:
        return Unreadable(self.field, f"does not match {self.witness} on {self.disagreeing} of "
                                      f"{self.compared} {self.objects}: layout of {release} "
                                      "not understood")


def compare_page_nids(model: Model, meaningful: RangeSet) -> Comparison:
    """Each block's ``memory_block.nid`` against the node ``page->flags``
    names at its page nid site, where that page is memory (``meaningful``:
    the pfns whose nid the checks would use as evidence).

    >>> model = _example([MemoryBlock(1, 0, 1, "online", 0)], page_nids={0x8000: 1023})
    >>> compare_page_nids(model, RangeSet([(0, 1 << 20)])).disagreeing
    1
    """
    per_block = model.kernel.pages_per_block
    nid_of = {b.id: b.nid for b in model.blocks if b.nid is not None and b.nid >= 0}
    pairs = [(nid, nid_of[pfn // per_block]) for pfn, nid in model.page_nids.items()
             if pfn // per_block in nid_of and pfn in meaningful]
    return Comparison(PAGE_NID, "memory_block.nid", "blocks", len(pairs),
                      sum(page != block for page, block in pairs))


def compare_sections_with_blocks(model: Model, early: RangeSet,
                                 blocks: RangeSet) -> Optional[Comparison]:
    """Present sections against the memory blocks, both ways: a block none
    of whose sections is present, a boot section no block covers.
    ``early`` and ``blocks`` are the pfns of the boot sections and of the
    blocks (checks.PfnSets).

    Boot blocks need one present section (add_boot_memory_block() counts
    them; holes and x86 low memory leave the others absent; arm64 5.10's
    1 GiB blocks hold holes), hot-added ones have all; only boot sections
    must have a block: ZONE_DEVICE sections never do. None when there is
    nothing to compare, or the blocks could not all be read.

    >>> boot = frozenset({"MARKED_PRESENT", "HAS_MEM_MAP", "IS_EARLY"})
    >>> model = _example([MemoryBlock(0, 0, 0, "online", 0), MemoryBlock(5, 0, 5, "online", 0)],
    ...                  sections=[Section(0, 0, 3, boot, None, None),
    ...                            Section(1, 0, 3, boot, None, None)])
    >>> c = compare_sections_with_blocks(model, RangeSet([(0, 0x10000)]),
    ...                                  RangeSet([(0, 0x8000), (0x28000, 0x30000)]))
    >>> c.compared, c.disagreeing
    (4, 2)
    """
    if not model.blocks or blocks_incomplete(model):
        return None
    kernel = model.kernel
    shift = kernel.pfn_section_shift
    present = from_ascending_section_numbers(SectionTable.of(model.sections).nrs, shift)
    block_count = _size(blocks) // kernel.pages_per_block
    empty = block_count - _blocks_touched(blocks & present, kernel.pages_per_block)
    boot = _size(early) >> shift
    blockless = boot - (_shared(early, blocks) >> shift)
    return Comparison(SECTION_PRESENCE, "the memory blocks", "blocks and boot sections",
                      block_count + boot, empty + blockless)


def blocks_incomplete(model: Model) -> bool:
    """Whether the reader could not read every memory block device (then
    an absent block proves nothing)."""
    return any(u.what.startswith(_BLOCK_LISTS) for u in model.unreadable)


def _size(pfns: RangeSet) -> int:
    return sum(end - start for start, end in pfns)


def _shared(many: RangeSet, few: RangeSet) -> int:
    """How many pfns two sets share, by bisecting ``many`` once per range of
    ``few`` (boot sections split by hot-added ones against runs of blocks).

    >>> _shared(RangeSet([(0, 4), (6, 10), (12, 20)]), RangeSet([(2, 7), (9, 13)]))
    5
    """
    starts = [start for start, _ in many]
    sums = list(accumulate((end - start for start, end in many), initial=0))
    shared = 0
    for low, high in few:
        first = max(bisect.bisect_right(starts, low) - 1, 0)
        stop = bisect.bisect_left(starts, high)
        if stop <= first:
            continue
        shared += sums[stop] - sums[first]
        shared -= max(0, min(many.ranges[first][1], low) - starts[first])
        shared -= max(0, many.ranges[stop - 1][1] - high)
    return shared


def _blocks_touched(pfns: RangeSet, pages_per_block: int) -> int:
    """How many memory blocks hold a pfn of ``pfns``.

    >>> _blocks_touched(RangeSet([(0, 1), (5, 6), (7, 17)]), 8)
    3
    """
    count, last = 0, -1
    for start, end in pfns:
        first, stop = max(start // pages_per_block, last + 1), (end - 1) // pages_per_block + 1
        if stop > first:
            count, last = count + stop - first, stop - 1
    return count


def compare_node_spans(model: Model) -> Comparison:
    """Each online block's range against the span of the node its
    ``memory_block.nid`` names: the block's memory lies in the node's span
    (online_pages() grows it; an offline block may lie outside).

    >>> model = _example([MemoryBlock(2, 0, 2, "online", 1)], node_spans={1: (0x20000, 0x20000)})
    >>> compare_node_spans(model).disagreeing
    1
    """
    per_block = model.kernel.pages_per_block
    spans = {nid: RangeSet([(start, start + spanned)])
             for nid, (start, spanned) in model.node_spans.items()}
    compared = [b for b in model.blocks if b.state == "online" and b.nid in spans]
    return Comparison(NODE_SPAN, "the online memory blocks", "blocks", len(compared),
                      sum(not spans[b.nid].intersects(b.id * per_block, (b.id + 1) * per_block)
                          for b in compared))


def comparisons(model: Model, sets: "PfnSets") -> List[Comparison]:
    """Every comparison of a field not already found misread."""
    found = [compare_page_nids(model, sets.page_nid_pfns),
             compare_sections_with_blocks(model, sets.early, sets.blocks),
             compare_node_spans(model)]
    return [c for c in found if c is not None and c.field not in model.misread]


def cross_check(model: Model, sets: "PfnSets") -> Model:
    """``model`` with the fields found misread named, listed as unreadable
    and dropped as evidence: page nids when the page->flags node field or
    the sections are misread (their block comes from both), node spans when
    those are. ``sets`` are the model's pfn sets (checks.pfn_sets()).
    Runs once per model."""
    if model.cross_checked:
        return model
    misread = [c for c in comparisons(model, sets) if c.misread]
    names = {c.field for c in misread} | set(model.misread)
    return dataclasses.replace(
        model, cross_checked=True, misread=tuple(sorted(names)),
        unreadable=model.unreadable + [c.unreadable(model.kernel.release) for c in misread],
        page_nids={} if names & {PAGE_NID, SECTION_PRESENCE} else model.page_nids,
        node_spans={} if NODE_SPAN in names else model.node_spans)


def _example(blocks: List[MemoryBlock], sections: Sequence[Section] = (), **fields) -> Model:
    """A model of an x86_64 6.1 kernel (128 MiB sections and blocks) for
    the examples above."""
    kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
                         True, True, False)
    memblock = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    return Model(kernel, list(sections), memblock, memblock, blocks, [], [], **fields)
