"""The checks: pure functions from a Model to Findings, on pfn ranges.

Every check turns the model into pfn sets (ranges.RangeSet) once and
combines them with interval algebra, so its cost grows with the number of
sections, regions and blocks, never with the number of pfns.

Severities follow what a kernel developer would do with the finding:
- error: sysfs state that is simply wrong (a link to a removed block, an
  online block missing its node link for no reason the kernel's own rules
  explain, a link to the wrong node);
- warning: the kernel followed its rules but the result is the known
  inconsistency class (struct pages that the arch pfn_valid() denies, the
  2019 class; memblock disagreeing with the memmap where hotplug keeps them
  in sync; a missing node link explained by pfn_valid() being false for
  every pfn of the block, which userspace still sees as a broken topology);
- info: by design (inactive subsections of ZONE_DEVICE or partial hot-add
  sections since v5.3, NOMAP memory outside the linear map, holes inside
  early sections, hot-added memory on arches that never put it in memblock).

What the reader could not read is a finding of its own (kind unreadable,
a warning per object): a partial analysis is not a clean bill of health.
Before any check, selfcheck.cross_check() compares the facts the kernel
keeps twice; a field found misread for this kernel is unreadable too, and
no finding is drawn from it.

docs/FINDINGS.md tabulates every kind, cause and severity; tests/unit/handmade.py
builds the small models the checks are tested on.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import kernels, selfcheck
from .model import (TAINT_ZONE_DEVICE, Finding, FlagTest, KernelFacts, MemblockRegion,
                    MemblockType, MemoryBlock, MemoryGroup, Model, NodeLink, Section, SectionTable,
                    early_section, valid_section)
from .ranges import (RangeSet, consecutive_runs, from_ascending_section_numbers, from_byte_regions,
                     labelled_runs, subsection_ranges)

PFN_VALID_MISMATCH = "pfn-valid-mismatch"
NOT_LINEAR_MAPPED = "not-linear-mapped"
MEMBLOCK_WITHOUT_MEMMAP = "memblock-without-memmap"
MEMMAP_WITHOUT_MEMBLOCK = "memmap-without-memblock"
ORPHANED_LINK = "orphaned-link"
MISSING_LINK = "missing-link"
WRONG_NODE_LINK = "wrong-node-link"
UNREADABLE = "unreadable"
MEMORY_GROUP_MISMATCH = "memory-group-mismatch"
VMEMMAP_PAGES_MISCOUNTED = "vmemmap-pages-miscounted"
VMEMMAP_SELF_HOSTED_MISMATCH = "vmemmap-self-hosted-mismatch"
SYSRAM_WITHOUT_MEMORY_BLOCK = "sysram-without-memory-block"

KINDS = (PFN_VALID_MISMATCH, NOT_LINEAR_MAPPED, MEMBLOCK_WITHOUT_MEMMAP,
         MEMMAP_WITHOUT_MEMBLOCK, ORPHANED_LINK, MISSING_LINK, WRONG_NODE_LINK, UNREADABLE,
         MEMORY_GROUP_MISMATCH, VMEMMAP_PAGES_MISCOUNTED, VMEMMAP_SELF_HOSTED_MISMATCH,
         SYSRAM_WITHOUT_MEMORY_BLOCK)
# The kinds drawn from the sections alone: none when their decoding is misread.
RANGE_KINDS = KINDS[:4]

NODE_TO_BLOCK = "node-to-block"
BLOCK_TO_NODE = "block-to-node"
NUMA_NO_NODE = -1

# Facts list at most this many sections or regions per finding, plus a count.
MAX_LISTED = 16

_EVERYTHING = RangeSet([(0, 1 << 64)])


@dataclass(frozen=True)
class Reason:
    """Why a range is reported: a stable code, a severity and a sentence."""

    code: str
    severity: str
    text: str


@dataclass
class PfnSets:
    """The model as pfn sets, computed once per check run.

    ``memmap`` holds the pfns whose struct pages the kernel initialised:
    whole early sections, and the active subsections of the others.
    ``memblock_memory``/``nomap`` are None when memblock is unavailable.
    """

    valid: RangeSet
    early: RangeSet
    nonearly: RangeSet
    zone_device: RangeSet
    active: RangeSet
    memmap: RangeSet
    blocks: RangeSet
    memblock_memory: Optional[RangeSet]
    nomap: Optional[RangeSet]
    pfn_valid: Optional[RangeSet]
    pfn_is_map_memory: Optional[RangeSet]
    rule: kernels.PfnValidRule

    @functools.cached_property
    def page_nid_pfns(self) -> RangeSet:
        """Pfns whose page->flags nid says which node the memory is on:
        valid, and memory rather than a hole (struct pages of holes get
        whatever node memmap initialisation chose for the hole)."""
        if self.pfn_valid is None:
            return RangeSet()
        if self.memblock_memory is None:
            return self.pfn_valid
        return self.pfn_valid & (self.memblock_memory | self.active)


# ------------------------------------------------------------------ pfn sets

def section_range(kernel: KernelFacts, nr: int) -> Tuple[int, int]:
    """[start, end) pfns of section ``nr``.

    >>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> section_range(kernel, 2)
    (65536, 98304)
    """
    return nr << kernel.pfn_section_shift, (nr + 1) << kernel.pfn_section_shift


def block_range(kernel: KernelFacts, block_id: int) -> Tuple[int, int]:
    """[start, end) pfns of memory block ``block_id``.

    >>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> block_range(kernel, 3)
    (98304, 131072)
    """
    return block_id * kernel.pages_per_block, (block_id + 1) * kernel.pages_per_block


def valid_early(flags: frozenset) -> bool:
    """A valid section present since boot."""
    return valid_section(flags) and early_section(flags)


def valid_not_early(flags: frozenset) -> bool:
    """A valid section added later: hot-added memory or ZONE_DEVICE."""
    return valid_section(flags) and not early_section(flags)


def _sections_where(kernel: KernelFacts, sections: SectionTable, test: FlagTest) -> RangeSet:
    return from_ascending_section_numbers(sections.numbers_where(test), kernel.pfn_section_shift)


def _blocks_set(kernel: KernelFacts, blocks: Iterable[MemoryBlock]) -> RangeSet:
    """The pfns of the memory blocks, one range per run of consecutive ids."""
    per_block = kernel.pages_per_block
    return RangeSet((first * per_block, end * per_block)
                    for first, end in consecutive_runs(sorted({b.id for b in blocks})))


def _active_subsections(kernel: KernelFacts, maps: List[Tuple[int, Optional[int]]]) -> RangeSet:
    """Active subsection pfns of the non-early valid sections, from their
    (number, subsection map); a section whose map is absent counts as
    wholly active (no subsection maps before v5.3 or without
    SPARSEMEM_VMEMMAP, where pfn_section_valid() is 1; an unreadable map was
    reported by the reader and must not invent findings). Whole sections
    merge by number: only partial maps are cut into subsection ranges."""
    section_shift = kernel.pfn_section_shift
    if not kernels.subsections_exist(kernel):
        return from_ascending_section_numbers([nr for nr, _ in maps], section_shift)
    sub_shift = kernel.subsection_shift - kernel.page_shift
    # Bits past SUBSECTIONS_PER_SECTION would be garbage from a bad read.
    full = (1 << subsections_per_section(kernel)) - 1
    whole: List[int] = []
    pieces: List[Tuple[int, int]] = []
    for nr, bitmap in maps:
        if bitmap is None or bitmap & full == full:
            whole.append(nr)
        else:
            pieces.extend(subsection_ranges(nr, bitmap & full, section_shift, sub_shift))
    return from_ascending_section_numbers(whole, section_shift) | RangeSet(pieces)


def _memblock_sets(kernel: KernelFacts, memory: MemblockType
                   ) -> Tuple[Optional[RangeSet], Optional[RangeSet]]:
    if not memory.available:
        return None, None
    regions = [(r.base, r.end) for r in memory.regions]
    nomap = [(r.base, r.end) for r in memory.regions if is_nomap(r)]
    return (from_byte_regions(regions, kernel.page_shift),
            from_byte_regions(nomap, kernel.page_shift))


def is_nomap(region: MemblockRegion) -> bool:
    """MEMBLOCK_NOMAP, by DWARF name when the reader decoded names."""
    if region.flag_names:
        return kernels.MEMBLOCK_NOMAP in region.flag_names
    return bool(region.flags & kernels.memblock_flag_bits((4, 5, 0))[kernels.MEMBLOCK_NOMAP])


def modelled_pfn_valid(rule: kernels.PfnValidRule, valid: RangeSet, early: RangeSet,
                       active: RangeSet, memblock_memory: Optional[RangeSet],
                       nomap: Optional[RangeSet]) -> Optional[RangeSet]:
    """The pfns the kernel's pfn_valid() accepts, or None when the rule
    needs memblock and memblock is unavailable.

    >>> r = modelled_pfn_valid(kernels.GENERIC_SUBSECTION, RangeSet([(0, 16)]),
    ...     RangeSet([(0, 8)]), RangeSet([(8, 12)]), None, None)
    >>> r.ranges
    ((0, 12),)
    """
    memblock = None
    if rule.memblock_test is not None:
        if memblock_memory is None:
            return None
        memblock = memblock_memory
        if rule.memblock_test == kernels.MAP_MEMORY:
            memblock = memblock_memory - nomap
    base = valid if rule.requires_valid_section else _EVERYTHING
    if not rule.nonearly_from_subsections:
        return base & memblock if memblock is not None else base
    early_part = base & early
    if memblock is not None:
        early_part = early_part & memblock
    return early_part | (base & active)


def pfn_sets(model: Model) -> PfnSets:
    """Build every pfn set the checks use; ValueError (one line) when the
    kernel constants are nonsense."""
    kernel = model.kernel
    problem = kernels.facts_problem(kernel)
    if problem:
        raise ValueError(f"cannot analyse: {problem}")
    sections = SectionTable.of(model.sections)
    early = _sections_where(kernel, sections, valid_early)
    nonearly = _sections_where(kernel, sections, valid_not_early)
    valid = early | nonearly
    active = _active_subsections(kernel, sections.maps_where(valid_not_early))
    blocks = _blocks_set(kernel, model.blocks)
    memory, nomap = _memblock_sets(kernel, model.memblock_memory)
    rule = kernels.rule_for(kernel)
    pfn_valid = modelled_pfn_valid(rule, valid, early, active, memory, nomap)
    map_memory = None
    if kernels.has_pfn_is_map_memory(kernel.arch, kernel.version) and memory is not None:
        map_memory = memory - nomap
    return PfnSets(
        valid=valid, early=early, nonearly=nonearly,
        zone_device=_zone_device_set(kernel, sections, nonearly,
                                     None if selfcheck.blocks_incomplete(model) else blocks),
        active=active, memmap=early | active, blocks=blocks,
        memblock_memory=memory, nomap=nomap, pfn_valid=pfn_valid,
        pfn_is_map_memory=map_memory, rule=rule)


def _zone_device_set(kernel: KernelFacts, sections: SectionTable, nonearly: RangeSet,
                     blocks: Optional[RangeSet]) -> RangeSet:
    """Non-early sections that are ZONE_DEVICE: tainted (v5.12, 1f90a3477df3)
    or, before the taint existed, covered by no memory block (only
    add_memory() creates blocks; memremap_pages() never does). ``blocks``
    is None when the memory blocks could not all be read: a section
    without a block then proves nothing, and only the taint counts."""
    tainted = _sections_where(
        kernel, sections, lambda flags: valid_not_early(flags) and TAINT_ZONE_DEVICE in flags)
    if blocks is None:
        return tainted
    return tainted | (nonearly - tainted - blocks)


# ------------------------------------------------------------------ helpers

class _Context:
    """Lookups shared by the checks: sections and regions by pfn."""

    def __init__(self, model: Model, sets: PfnSets):
        self.model = model
        self.kernel = model.kernel
        self.sets = sets
        self.sections = SectionTable.of(model.sections)
        self.blocks = {b.id: b for b in model.blocks}
        self.nodes = {n.nid: n for n in model.nodes}
        self.region_index = {t.name: RegionIndex(t.regions)
                             for t in (model.memblock_memory, model.memblock_reserved)}

    def sections_facts(self, start: int, end: int) -> Dict[str, Any]:
        shift = self.kernel.pfn_section_shift
        first, last = start >> shift, (end - 1) >> shift
        present = self.sections.between(first, min(last, first + MAX_LISTED - 1) + 1)
        return {"sections": [section_facts(self.kernel, s) for s in present],
                "section_count": last - first + 1}

    def regions_facts(self, start: int, end: int) -> Dict[str, Any]:
        facts: Dict[str, Any] = {}
        for mtype in (self.model.memblock_memory, self.model.memblock_reserved):
            if not mtype.available:
                continue
            hits = self.region_index[mtype.name].overlapping(
                start << self.kernel.page_shift, end << self.kernel.page_shift)
            facts[f"memblock_{mtype.name}"] = [region_facts(r) for r in hits[:MAX_LISTED]]
            if len(hits) > MAX_LISTED:
                facts[f"memblock_{mtype.name}_count"] = len(hits)
        return facts

    def range_facts(self, start: int, end: int) -> Dict[str, Any]:
        facts = {"phys_start": start << self.kernel.page_shift,
                 "phys_end": end << self.kernel.page_shift}
        facts.update(self.sections_facts(start, end))
        facts.update(self.regions_facts(start, end))
        return facts


def section_facts(kernel: KernelFacts, section: Section) -> Dict[str, Any]:
    """The kernel facts of one section, JSON-ready."""
    facts = {"nr": section.nr, "address": section.address,
             "section_mem_map": section.mem_map, "flags": sorted(section.flags),
             "usage": section.usage_address}
    if section.subsection_map is not None and kernel.subsection_shift:
        facts["subsection_map"] = section.subsection_map
        facts["subsections_per_section"] = subsections_per_section(kernel)
    return facts


def subsections_per_section(kernel: KernelFacts) -> int:
    """SUBSECTIONS_PER_SECTION: bits in a section's subsection map (for a
    kernel with a subsection_shift).

    >>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> subsections_per_section(kernel)
    64
    """
    return 1 << (kernel.section_size_bits - kernel.subsection_shift)


def region_facts(region: MemblockRegion) -> Dict[str, Any]:
    return {"base": region.base, "size": region.size, "flags": region.flags,
            "flag_names": list(region.flag_names), "nid": region.nid}


class RegionIndex:
    """memblock regions found by bisection instead of a scan per finding.

    >>> idx = RegionIndex([MemblockRegion(0x2000, 0x1000, 0), MemblockRegion(0, 0x1000, 0)])
    >>> [hex(r.base) for r in idx.overlapping(0x800, 0x2001)]
    ['0x0', '0x2000']
    """

    def __init__(self, regions: Iterable[MemblockRegion]):
        self.regions = sorted(regions, key=lambda r: r.base)
        # Running maximum of region ends: monotonic even if regions overlap.
        self.max_ends: List[int] = []
        for region in self.regions:
            self.max_ends.append(max(region.end, self.max_ends[-1] if self.max_ends else 0))

    def overlapping(self, lo: int, hi: int) -> List[MemblockRegion]:
        """Regions with a byte in [lo, hi)."""
        hits = []
        for region in self.regions[bisect.bisect_right(self.max_ends, lo):]:
            if region.base >= hi:
                break
            if region.end > lo:
                hits.append(region)
        return hits


def _range_findings(ctx: _Context, kind: str, pieces: Iterable[Tuple[int, int, Reason]],
                    extra: Optional[Dict[str, Any]] = None) -> List[Finding]:
    findings = []
    for start, end, reason in labelled_runs(pieces):
        facts = {"reason_code": reason.code}
        facts.update(extra or {})
        facts.update(ctx.range_facts(start, end))
        findings.append(Finding(kind=kind, severity=reason.severity, reason=reason.text,
                                start_pfn=start, end_pfn=end, facts=facts))
    return findings


def _label(ranges: RangeSet, reason: Reason) -> List[Tuple[int, int, Reason]]:
    return [(s, e, reason) for s, e in ranges]


# ------------------------------------------------------------------ checks

def check_pfn_valid_mismatch(ctx: _Context) -> List[Finding]:
    """Pfns of valid sections (struct pages exist) that the kernel's own
    pfn_valid() rejects, split by the cause."""
    sets = ctx.sets
    if sets.pfn_valid is None:
        return []
    mismatch = sets.valid - sets.pfn_valid
    rule = sets.rule
    pieces = []
    inactive = (mismatch & sets.nonearly) - sets.active if rule.nonearly_from_subsections \
        else RangeSet()
    pieces += _label(inactive & sets.zone_device, Reason(
        "subsection-inactive-zone-device", "info",
        "subsection not active in a ZONE_DEVICE section: pfn_valid() answers from "
        "the subsection map (by design since v5.3)"))
    pieces += _label(inactive - sets.zone_device, Reason(
        "subsection-inactive", "info",
        "subsection not active in a hot-added section (partial hot-add): pfn_valid() "
        "answers from the subsection map (by design since v5.3)"))
    rest = mismatch - inactive
    if rule.memblock_based:
        pieces += _memblock_mismatch_pieces(ctx, rest)
    else:
        pieces += _label(rest, Reason("unexplained", "warning",
                                      "pfn_valid() false for a valid section (unexplained)"))
    return _range_findings(ctx, PFN_VALID_MISMATCH, pieces,
                           {"pfn_valid_rule": rule.name, "pfn_valid_source": rule.source})


def _memblock_mismatch_pieces(ctx: _Context, rest: RangeSet) -> List[Tuple[int, int, Reason]]:
    sets = ctx.sets
    test = sets.rule.memblock_test
    nomap = (rest & sets.nomap) if test == kernels.MAP_MEMORY else RangeSet()
    absent = rest - sets.memblock_memory
    zone_device_absent = absent & sets.zone_device
    pieces = _label(nomap, Reason(
        "memblock-nomap", "warning",
        f"memblock NOMAP region: the arch pfn_valid() asks {test}(), so these struct "
        "pages exist but pfn_valid() is false (the 2019 class)"))
    pieces += _label(zone_device_absent, Reason(
        "zone-device-not-in-memblock", "warning",
        f"ZONE_DEVICE memory is never in memblock.memory and the arch pfn_valid() asks "
        f"{test}() (fixed in v5.12 by eeb0753ba27b)"))
    pieces += _label(absent - zone_device_absent, Reason(
        "not-in-memblock", "warning",
        f"not in memblock.memory (hole or removed memory): the arch pfn_valid() asks "
        f"{test}(), so these struct pages exist but pfn_valid() is false (the 2019 class)"))
    explained = nomap | absent
    pieces += _label(rest - explained, Reason(
        "unexplained", "warning", "pfn_valid() false for a valid section (unexplained)"))
    return pieces


def check_not_linear_mapped(ctx: _Context) -> List[Finding]:
    """arm64 v5.14+: struct page and pfn_valid() true, pfn_is_map_memory() false."""
    sets = ctx.sets
    if sets.pfn_is_map_memory is None or sets.pfn_valid is None:
        return []
    unmapped = sets.pfn_valid - sets.pfn_is_map_memory
    nomap = unmapped & sets.nomap
    absent = unmapped - sets.memblock_memory
    pieces = _label(nomap, Reason(
        "memblock-nomap", "info",
        "memblock NOMAP region: pfn_valid() true (struct pages exist) but "
        "pfn_is_map_memory() false: not in the linear map"))
    pieces += _label(absent & sets.zone_device, Reason(
        "zone-device", "info",
        "ZONE_DEVICE memory is not in memblock.memory: pfn_is_map_memory() false"))
    pieces += _label((absent - sets.zone_device), Reason(
        "not-in-memblock", "info",
        "hole inside an early section: pfn_valid() true (struct pages exist) but "
        "not in memblock.memory, so pfn_is_map_memory() false"))
    return _range_findings(ctx, NOT_LINEAR_MAPPED, pieces)


def check_memblock_without_memmap(ctx: _Context) -> List[Finding]:
    """memblock.memory pfns whose section has no memmap."""
    sets = ctx.sets
    if sets.memblock_memory is None:
        return []
    missing = sets.memblock_memory - sets.valid
    return _range_findings(ctx, MEMBLOCK_WITHOUT_MEMMAP, _label(missing, Reason(
        "no-memmap", "warning",
        "in memblock.memory but its section has no memmap (no struct pages)")))


def check_memmap_without_memblock(ctx: _Context) -> List[Finding]:
    """Pfns with struct pages that memblock.memory does not hold, split by
    whether the kernel ever puts such memory in memblock."""
    sets = ctx.sets
    if sets.memblock_memory is None:
        return []
    missing = sets.memmap - sets.memblock_memory
    early_holes = missing & sets.early
    zone_device = (missing - early_holes) & sets.zone_device
    hot_added = missing - early_holes - zone_device
    pieces = _label(early_holes, Reason(
        "early-section-hole", "info",
        "hole inside an early section: the whole section has struct pages by design"))
    pieces += _label(zone_device, Reason(
        "zone-device", "info",
        "ZONE_DEVICE memory: memremap_pages() never adds it to memblock"))
    if kernels.hotplug_updates_memblock(ctx.kernel):
        pieces += _label(hot_added, Reason(
            "hot-added-not-in-memblock", "warning",
            "hot-added memory missing from memblock.memory although this kernel "
            "(ARCH_KEEP_MEMBLOCK) adds hot-added memory to memblock"))
    else:
        pieces += _label(hot_added, Reason(
            "hot-added-arch-discards-memblock", "info",
            "hot-added memory: this arch has no ARCH_KEEP_MEMBLOCK, so hotplug never "
            "updates memblock"))
    return _range_findings(ctx, MEMMAP_WITHOUT_MEMBLOCK, pieces)


# ------------------------------------------------------------------ links

class _Links:
    """The links of each block, which (direction, node, block) triples have
    a link counting as present, and the nodes each block belongs to."""

    def __init__(self, ctx: _Context):
        self.by_block: Dict[int, List[NodeLink]] = defaultdict(list)
        self.present: set = set()
        for link in ctx.model.links:
            self.by_block[link.block].append(link)
            if _counts_as_present(link):
                self.present.add((link.direction, link.node, link.block))
        self.block_nodes = _block_nodes(ctx)

    def has(self, direction: str, node: int, block: int) -> bool:
        return (direction, node, block) in self.present


# NodeLink.target_dead_reasons of a link whose target the dump lacks
# (makedumpfile -d 31 drops slab pages): the reader files it as unreadable.
TARGET_UNREADABLE = ("unreadable",)


def _target_unreadable(link: NodeLink) -> bool:
    return link.target_dead_reasons == TARGET_UNREADABLE


def _counts_as_present(link: NodeLink) -> bool:
    """A live link, or one whose target could not be read: absent from
    neither the kernel's view nor ours, so never a missing link."""
    return link.target_live or _target_unreadable(link)


def _valid_nid(nid: Optional[int], kernel: KernelFacts) -> bool:
    # memblock used MAX_NUMNODES for "any node" before NUMA_NO_NODE (v5.1).
    return nid is not None and 0 <= nid < kernel.max_numnodes


def _block_nodes(ctx: _Context) -> Dict[int, Dict[int, List[str]]]:
    """block id -> node -> evidence ("block nid", "memblock", "page nid")."""
    kernel = ctx.kernel
    nodes: Dict[int, Dict[int, List[str]]] = defaultdict(lambda: defaultdict(list))
    for block in ctx.model.blocks:
        if _valid_nid(block.nid, kernel):
            nodes[block.id][block.nid].append("memory_block.nid")
    if ctx.model.memblock_memory.available:
        # Only the blocks that exist: a corrupt region size (2^64 - 1) spans
        # more block ids than could ever be counted one by one.
        block_ids = sorted(ctx.blocks)
        for region in ctx.model.memblock_memory.regions:
            if not _valid_nid(region.nid, kernel) or region.size <= 0:
                continue
            first = (region.base >> kernel.page_shift) // kernel.pages_per_block
            last = ((region.end - 1) >> kernel.page_shift) // kernel.pages_per_block
            for block_id in block_ids[bisect.bisect_left(block_ids, first):
                                      bisect.bisect_right(block_ids, last)]:
                nodes[block_id][region.nid].append("memblock.memory region nid")
    trusted = ctx.sets.page_nid_pfns
    pages_per_block = kernel.pages_per_block
    for pfn, nid in ctx.model.page_nids.items():
        block_id = pfn // pages_per_block
        if _valid_nid(nid, kernel) and block_id in ctx.blocks and pfn in trusted \
                and "page nid" not in nodes[block_id][nid]:
            nodes[block_id][nid].append("page nid")
    return {block_id: dict(by_node) for block_id, by_node in nodes.items()}


def _link_facts(link: NodeLink) -> Dict[str, Any]:
    return {"direction": link.direction, "name": link.name, "kn": link.kn_address,
            "target": link.target_address, "target_name": link.target_name,
            "target_live": link.target_live,
            "target_dead_reasons": list(link.target_dead_reasons),
            "target_block": link.target_block, "target_node": link.target_node}


def check_orphaned_links(ctx: _Context) -> List[Finding]:
    """Links whose target kernfs node is dead, or whose block/node is gone."""
    findings = []
    for link in ctx.model.links:
        reason = _orphan_reason(ctx, link)
        if reason is None:
            continue
        findings.append(Finding(
            kind=ORPHANED_LINK, severity="error", reason=f"{link_path(link)}: {reason}",
            node=link.node, block=link.block,
            facts={"link": _link_facts(link),
                   "block_exists": link.block in ctx.blocks,
                   "node_exists": link.node in ctx.nodes}))
    return findings


def link_path(link: NodeLink) -> str:
    """Where the link sits, relative to /sys/devices/system: under its
    node's directory or under its block's.

    >>> link_path(NodeLink("block-to-node", 1, 32, "node1", 0, 0, "node1", True, ()))
    'memory32/node1'
    """
    if link.direction == NODE_TO_BLOCK:
        return f"node{link.node}/{link.name}"
    return f"memory{link.block}/{link.name}"


def _orphan_reason(ctx: _Context, link: NodeLink) -> Optional[str]:
    if _target_unreadable(link):
        return None  # listed as unreadable; its liveness is unknown
    if not link.target_live:
        dead = ", ".join(link.target_dead_reasons) or "not live"
        return f"target {link.target_name or 'kernfs node'} removed ({dead})"
    if link.direction == NODE_TO_BLOCK and link.block not in ctx.blocks \
            and not selfcheck.blocks_incomplete(ctx.model):
        return f"memory block {link.block} no longer exists"
    if link.direction == BLOCK_TO_NODE and link.node not in ctx.nodes:
        return f"node {link.node} does not exist"
    return None


def check_wrong_node_links(ctx: _Context, links: _Links) -> List[Finding]:
    """Live links naming a node the block's memory is not on."""
    findings = []
    for link in ctx.model.links:
        evidence = links.block_nodes.get(link.block)
        if not link.target_live or link.block not in ctx.blocks or not evidence \
                or link.node in evidence:
            continue
        on = ", ".join(f"node{nid} ({'; '.join(why)})" for nid, why in sorted(evidence.items()))
        findings.append(Finding(
            kind=WRONG_NODE_LINK, severity="error",
            reason=f"{link.direction} link node{link.node} <-> memory{link.block}, "
                   f"but the block is on {on}",
            node=link.node, block=link.block,
            facts={"link": _link_facts(link),
                   "block_nodes": {str(k): v for k, v in sorted(evidence.items())}}))
    return findings


def check_missing_links(ctx: _Context, links: _Links) -> List[Finding]:
    """Online blocks without a live link to (and from) each node they are on."""
    findings = []
    unread = _unread_directories(ctx.model)
    for block in ctx.model.blocks:
        if block.state != "online":
            continue
        nodes = sorted(links.block_nodes.get(block.id, {})) or [NUMA_NO_NODE]
        for nid in nodes:
            missing = _missing_directions(links, nid, block.id)
            if not missing:
                continue
            directory = {NODE_TO_BLOCK: ctx.nodes[nid].kn_address if nid in ctx.nodes else None,
                         BLOCK_TO_NODE: block.kn_address}
            missing = [d for d in missing if directory[d] not in unread]
            if nid in ctx.nodes and directory[NODE_TO_BLOCK] is None:
                # The node device exists but its struct node could not be
                # read (an unreadable finding): its directory was never listed.
                missing = [d for d in missing if d != NODE_TO_BLOCK]
            if missing:
                findings.append(_missing_link_finding(ctx, links, block, nid, missing))
    return findings


def _unread_directories(model: Model) -> set:
    """kn addresses of the directories whose listing the reader could not
    read whole (filed as unreadable under the directory's address): a link
    absent from them may just be unread."""
    return {u.address for u in model.unreadable if u.address is not None}


def _missing_directions(links: _Links, nid: int, block_id: int) -> List[str]:
    if nid == NUMA_NO_NODE:
        # No node known: any live link of the block counts.
        has_any = any(_counts_as_present(l) for l in links.by_block.get(block_id, ()))
        return [] if has_any else [NODE_TO_BLOCK, BLOCK_TO_NODE]
    return [direction for direction in (NODE_TO_BLOCK, BLOCK_TO_NODE)
            if not links.has(direction, nid, block_id)]


def _missing_link_finding(ctx: _Context, links: _Links, block, nid: int,
                          missing: List[str]) -> Finding:
    start, end = block_range(ctx.kernel, block.id)
    names = {NODE_TO_BLOCK: f"node{nid}/memory{block.id}",
             BLOCK_TO_NODE: f"memory{block.id}/node{nid}"}
    absent = " and ".join(names[d] for d in missing)
    facts: Dict[str, Any] = {
        "missing": missing, "block_state": block.state, "block_nid": block.nid,
        "block_address": block.address, "start_section_nr": block.start_section_nr,
        "block_nodes": {str(k): v for k, v in sorted(links.block_nodes.get(block.id, {}).items())},
        "links": [_link_facts(l) for l in links.by_block.get(block.id, ())],
        "block_start_pfn": start, "block_end_pfn": end}
    severity, reason = "error", f"online memory{block.id} has no {absent}"
    if nid == NUMA_NO_NODE:
        reason = f"online memory{block.id} has no node link at all and no known node"
    valid = None if _sections_misread(ctx.model) else ctx.sets.pfn_valid
    if valid is not None and not valid.intersects(start, end):
        severity = "warning"
        reason += (f": pfn_valid() is false for every pfn of the block "
                   f"({ctx.sets.rule.name}), so get_nid_for_pfn() returns -1 and "
                   "registering the block under its node links nothing (the 2019 mechanism)")
        facts["pfn_valid_rule"] = ctx.sets.rule.name
        facts["pfn_valid_pfns_in_block"] = 0
    return Finding(kind=MISSING_LINK, severity=severity, reason=reason,
                   node=nid, block=block.id, facts=facts)


# ------------------------------------------------------------------ memory groups

def check_memory_groups(ctx: _Context) -> List[Finding]:
    """Blocks against their memory groups (v5.15, 028fc57a1c36): a block
    added for a group (virtio-mem, dax_kmem: add_memory_driver_managed()
    with MHP_NID_IS_MGID, so on the group's node) points
    ``memory_block.group`` at it and is on its ``memory_blocks`` list
    (init_memory_block()); remove_memory_block() undoes both. A block on one
    side only, a list entry that is no memory block, or a block on another
    node than its group breaks that rule."""
    model = ctx.model
    groups = {g.address: g for g in model.memory_groups}
    listed = {block_id: g for g in model.memory_groups for block_id in g.blocks}
    findings = []
    for block in model.blocks:
        address = model.block_groups.get(block.id)
        group = groups.get(address) if address is not None else None
        problems = []
        if group is not None and block.id not in group.blocks:
            problems.append(f"memory_block.group is {address:#x}, but the block is not on that "
                            "group's memory_blocks list")
        other = listed.get(block.id)
        if other is not None and other.address != address:
            problems.append(f"on the memory_blocks list of group {other.address:#x}, but "
                            f"memory_block.group is {_hex_or_null(address)}")
        if group is not None and _valid_nid(block.nid, ctx.kernel) and block.nid != group.nid:
            problems.append(f"the block is on node{block.nid}, its memory group on "
                            f"node{group.nid} (the node add_memory_driver_managed() used)")
        if problems:
            findings.append(_group_finding(block.id, block.nid, "; ".join(problems),
                                           {"block": _block_facts(block), "memory_block_group": address,
                                            "memory_group": group_facts(group or other)}))
    if not selfcheck.blocks_incomplete(model):
        for group in model.memory_groups:
            for stranger in group.strangers:
                findings.append(_group_finding(
                    None, group.nid, f"memory group {group.address:#x} lists {stranger:#x}, which "
                    "is no registered memory block (removed without remove_memory_block()'s list_del?)",
                    {"memory_block": stranger, "memory_group": group_facts(group)}))
    return findings


def _group_finding(block: Optional[int], nid: Optional[int], reason: str,
                   facts: Dict[str, Any]) -> Finding:
    return Finding(kind=MEMORY_GROUP_MISMATCH, severity="error", reason=reason,
                   node=nid, block=block, facts=facts)


def _hex_or_null(address: Optional[int]) -> str:
    return "NULL" if not address else f"{address:#x}"


def _block_facts(block: MemoryBlock) -> Dict[str, Any]:
    return {"id": block.id, "address": block.address, "nid": block.nid, "state": block.state,
            "zone": block.zone}


def group_facts(group: Optional[MemoryGroup]) -> Optional[Dict[str, Any]]:
    """A memory group's fields, JSON-ready (None for no group)."""
    if group is None:
        return None
    return {"address": group.address, "nid": group.nid,
            "kind": "dynamic" if group.is_dynamic else "static",
            "unit_pages": group.unit_pages, "max_pages": group.max_pages,
            "present_kernel_pages": group.present_kernel_pages,
            "present_movable_pages": group.present_movable_pages,
            "blocks": list(group.blocks), "strangers": list(group.strangers)}


def block_flavour(model: Model, block_id: int) -> Optional[Dict[str, Any]]:
    """How a block was hot-plugged beyond a plain DIMM, None for a plain
    one: the driver managing it (the driver-managed "System RAM (driver)"
    resource of /proc/iomem covering it, e.g. virtio_mem or kmem), its
    memory group, and for an online block of a group its PageOffline pages
    (virtio-mem's unplugged sub-blocks) against the rest (plugged).

    >>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> discarded = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    >>> m = Model(kernel, [], discarded, discarded, [MemoryBlock(33, 0x10, 264, "online", 1)], [], [],
    ...           memory_groups=[MemoryGroup(0x20, 1, True, 32768, None, 0, 18432, (33,))],
    ...           block_groups={33: 0x20}, offline_runs={33: ((0x10c800, 0x110000),)})
    >>> f = block_flavour(m, 33); f["managed_by"], f["plugged_pages"], f["page_offline_pages"]
    ('dynamic memory group (virtio-mem)', 18432, 14336)
    """
    group_address = model.block_groups.get(block_id)
    groups = {g.address: g for g in model.memory_groups}
    resource = _driver_resource(model, block_id)
    if group_address is None and resource is None:
        return None
    group = groups.get(group_address)
    out: Dict[str, Any] = {"managed_by": _driver_name(resource, group), "iomem": None,
                           "memory_group": group_facts(group)}
    if resource is not None:
        out["iomem"] = {"name": resource.name, "range": f"{resource.start:#x}-{resource.end:#x}",
                        "flags": list(resource.flag_names)}
    runs = model.offline_runs.get(block_id)
    if runs is not None:
        offline = sum(end - start for start, end in runs)
        out.update(plugged_pages=model.kernel.pages_per_block - offline,
                   page_offline_pages=offline,
                   page_offline_pfns=[f"{start:#x}-{end - 1:#x}" for start, end in runs[:MAX_LISTED]])
    return out


def _driver_resource(model: Model, block_id: int):
    """The innermost driver-managed System RAM resource holding the block's first byte."""
    first = block_id * model.kernel.memory_block_size
    hits = [r for r in model.iomem if r.system_ram and r.driver_managed and r.start <= first <= r.end]
    return max(hits, key=lambda r: r.depth) if hits else None


def _driver_name(resource, group: Optional[MemoryGroup]) -> str:
    if resource is not None:
        inner = re.search(r"\(([^()]*)\)\s*$", resource.name)
        return inner[1] if inner else resource.name
    if group is not None and group.is_dynamic:
        # Only virtio-mem registers dynamic groups (memory_group_register_dynamic()).
        return "dynamic memory group (virtio-mem)"
    return "static memory group"


# ------------------------------------------------------------------ memmap_on_memory, System RAM

def block_memmap(model: Model, block_id: int) -> Optional[Dict[str, Any]]:
    """Where a block's memmap lives when it hosts its own (memmap_on_memory),
    None otherwise: the pfns at its start that hold it, how many pages the
    memmap needs, the altmap (v6.6+) and, for an online block, the
    PG_vmemmap_self_hosted struct pages found there.

    >>> from drgn_hotplug.model import SelfHostedMemmap
    >>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> discarded = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    >>> block = MemoryBlock(33, 0x10, 33, "online", 1, nr_vmemmap_pages=512)
    >>> m = Model(kernel, [], discarded, discarded, [block], [], [],
    ...           self_hosted={33: SelfHostedMemmap(33, 512, ((0x108000, 0x108200),))})
    >>> f = block_memmap(m, 33); f["pfns"], f["self_hosted_pages"]
    ([1081344, 1081856], 512)
    """
    # Only self-hosting blocks are looked up: a scan of the blocks for each
    # of 32K blocks made check quadratic on the 64 TB scale target.
    hosted = model.self_hosted.get(block_id)
    if hosted is None:
        return None
    block = next((b for b in model.blocks if b.id == block_id), None)
    if block is None:
        return None
    first = block.start_section_nr << model.kernel.pfn_section_shift
    out: Dict[str, Any] = {"nr_vmemmap_pages": block.nr_vmemmap_pages,
                           "pfns": [first, first + block.nr_vmemmap_pages],
                           "needed_pages": hosted.needed_pages, "altmap": block.altmap}
    if hosted.marked_runs is not None:
        out["self_hosted_pages"] = sum(end - start for start, end in hosted.marked_runs)
        out["self_hosted_runs"] = [[start, end] for start, end in hosted.marked_runs[:MAX_LISTED]]
    return out


def check_self_hosted_memmaps(ctx: _Context) -> List[Finding]:
    """Blocks that host their memmap (memmap_on_memory, v5.13 a08a2ae34613):
    the kernel counts exactly the pages the block's memmap needs in
    ``nr_vmemmap_pages`` (altmap->free since v6.6), takes them from the
    block's start, and on onlining marks each of their struct pages
    PG_vmemmap_self_hosted (mhp_init_memmap_on_memory(), v6.0 66361095129b)
    and no other. A count that differs, or marks elsewhere, break that."""
    findings = []
    for block in ctx.model.blocks:
        facts = block_memmap(ctx.model, block.id)
        if facts is None:
            continue
        first, end = facts["pfns"]
        evidence = {"block": _block_facts(block), "memmap_on_memory": facts}
        if facts["nr_vmemmap_pages"] != facts["needed_pages"]:
            findings.append(Finding(
                kind=VMEMMAP_PAGES_MISCOUNTED, severity="error", start_pfn=first, end_pfn=end,
                node=block.nid, block=block.id, facts=evidence,
                reason=f"memory{block.id} hosts its memmap in {facts['nr_vmemmap_pages']} pages, "
                       f"but the memmap of a block takes {facts['needed_pages']}"))
        runs = ctx.model.self_hosted[block.id].marked_runs
        if runs is not None and runs != ((first, end),):
            findings.append(Finding(
                kind=VMEMMAP_SELF_HOSTED_MISMATCH, severity="error", start_pfn=first, end_pfn=end,
                node=block.nid, block=block.id, facts=evidence,
                reason=f"online memory{block.id} hosts its memmap in pfns "
                       f"{first:#x}-{end - 1:#x}, but {facts['self_hosted_pages']} struct pages "
                       f"there and after are PG_vmemmap_self_hosted, not exactly those "
                       f"{end - first}"))
    return findings


def check_sysram_blocks(ctx: _Context) -> List[Finding]:
    """Every block of memory /proc/iomem calls System RAM exists: boot
    memory has blocks for all its present sections, and add_memory() /
    add_memory_driver_managed() register the resource and create the
    blocks together; try_remove_memory() removes the blocks and releases
    the resource (release_mem_region_adjustable()). A System RAM resource
    with blocks missing is memory the kernel lost track of."""
    model = ctx.model
    if not model.blocks or selfcheck.blocks_incomplete(model):
        return []
    size = model.kernel.memory_block_size
    findings = []
    for resource in model.iomem:
        # The memory itself is named "System RAM" or "System RAM (driver)"
        # (add_memory_driver_managed() requires that name), at any depth; a
        # driver's container of it is not: virtio-mem reserves its whole
        # device region as "virtio0" with IORESOURCE_SYSTEM_RAM
        # (virtio_mem_create_resource()), blocks added as it plugs, and
        # dax_kmem marks its "dax0.0" the same way.
        if not resource.system_ram or not resource.name.startswith("System RAM") \
                or resource.end < resource.start:
            continue
        missing = [b for b in range(resource.start // size, resource.end // size + 1)
                   if b not in ctx.blocks]
        if not missing:
            continue
        shift = model.kernel.page_shift
        findings.append(Finding(
            kind=SYSRAM_WITHOUT_MEMORY_BLOCK, severity="error",
            start_pfn=resource.start >> shift, end_pfn=(resource.end + 1) >> shift,
            reason=f"\"{resource.name}\" {resource.start:#x}-{resource.end:#x} in /proc/iomem, "
                   f"but memory{missing[0]}" + (f" and {len(missing) - 1} more blocks" if len(missing) > 1 else "")
                   + " of it do not exist (hot-removed without releasing the resource?)",
            facts={"iomem": {"name": resource.name, "start": resource.start, "end": resource.end,
                             "flags": list(resource.flag_names), "address": resource.address},
                   "missing_blocks": missing[:MAX_LISTED], "missing_count": len(missing)}))
    return findings


# ------------------------------------------------------------------ unreadable

def check_unreadable(model: Model) -> List[Finding]:
    """One warning per object the reader could not read, or field it found
    misread: findings about it may be missing, so the run is not clean.

    >>> from drgn_hotplug.model import Unreadable
    >>> kernel = KernelFacts("x86_64", "6.12", (6, 12, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> discarded = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    >>> lost = Unreadable("kernfs children of node1", "Excluded page", 0xffff8c562015e908)
    >>> [(f.kind, f.severity, f.reason) for f in check_unreadable(Model(
    ...  kernel, [], discarded, discarded, [], [], [], unreadable=[lost]))]
    [('unreadable', 'warning', 'kernfs children of node1: Excluded page')]
    """
    return [Finding(kind=UNREADABLE, severity="warning", reason=f"{u.what}: {u.reason}",
                    facts={"what": u.what, "address": u.address, "reason": u.reason})
            for u in model.unreadable]


# ------------------------------------------------------------------ entry points

def run_checks(model: Model) -> List[Finding]:
    """Every check on one model, findings sorted by kind order then position.

    >>> from drgn_hotplug.model import KernelFacts, MemblockType
    >>> kernel = KernelFacts("x86_64", "6.1.0-27-cloud-amd64", (6, 1, 115), 4096, 27, 46,
    ...                      1 << 19, 21, 1 << 27, 1024, True, True, False)
    >>> no_memblock = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    >>> stale = NodeLink("node-to-block", 1, 32, "memory32", 0xffff888004c50600,
    ...                  0xffff888021171480, "memory32", False, ("deactivated",))
    >>> [(f.kind, f.node, f.block) for f in run_checks(Model(kernel, [], no_memblock,
    ...  no_memblock, [], [], [stale]))]
    [('orphaned-link', 1, 32)]
    """
    return checked(model)[1]


def checked(model: Model) -> Tuple[Model, List[Finding]]:
    """(``prepare(model)``, its findings), from one pass over the model."""
    model, sets = _prepared(model)
    return model, _run_all(_Context(model, sets))


def prepare(model: Model) -> Model:
    """``model`` as the checks see it: its sections tabled once, and
    cross-checked (selfcheck.cross_check()): fields found misread for
    this kernel are listed in ``unreadable`` and dropped as evidence.
    Reports list the unreadable objects and skipped checks of this model."""
    if model.cross_checked:
        return with_section_table(model)
    return _prepared(model)[0]


def _prepared(model: Model) -> Tuple[Model, PfnSets]:
    model = with_section_table(model)
    sets = pfn_sets(model)
    return selfcheck.cross_check(model, sets), sets


def with_section_table(model: Model) -> Model:
    """``model`` with its sections as a SectionTable, so a model built from
    a list of Sections (tests) is tabled once per run, not per lookup."""
    if isinstance(model.sections, SectionTable):
        return model
    return dataclasses.replace(model, sections=SectionTable.of(model.sections))


def _run_all(ctx: _Context) -> List[Finding]:
    links = _Links(ctx)
    findings = [] if _sections_misread(ctx.model) else (
        check_pfn_valid_mismatch(ctx) + check_not_linear_mapped(ctx)
        + check_memblock_without_memmap(ctx) + check_memmap_without_memblock(ctx))
    findings += (check_orphaned_links(ctx) + check_missing_links(ctx, links)
                 + check_wrong_node_links(ctx, links) + check_unreadable(ctx.model)
                 + check_memory_groups(ctx) + check_self_hosted_memmaps(ctx)
                 + check_sysram_blocks(ctx))
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.kind], f.start_pfn or 0,
                                           f.node or 0, f.block or 0))


def _sections_misread(model: Model) -> bool:
    return selfcheck.SECTION_PRESENCE in model.misread


def skipped_checks(model: Model) -> List[Dict[str, str]]:
    """Checks that could not run on this model, each with why: all the
    range checks when ``prepare()`` found the sections misread.

    >>> kernel = KernelFacts("x86_64", "6.1.0-27-cloud-amd64", (6, 1, 115), 4096, 27, 46,
    ...                      1 << 19, 21, 1 << 27, 1024, True, True, False)
    >>> discarded = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    >>> [(s["check"], s["reason"]) for s in skipped_checks(Model(kernel, [], discarded,
    ...  discarded, [], [], []))][:2]
    [('memblock-without-memmap', 'discarded'), ('memmap-without-memblock', 'discarded')]
    """
    if _sections_misread(model):
        return [{"check": kind, "reason": f"{selfcheck.SECTION_PRESENCE} misread for "
                                          f"{model.kernel.release} (see unreadable)"}
                for kind in RANGE_KINDS]
    skipped = []
    memory = model.memblock_memory
    rule = kernels.rule_for(model.kernel)
    why = memory.reason or "memblock.memory unavailable"
    if not memory.available:
        for kind in (MEMBLOCK_WITHOUT_MEMMAP, MEMMAP_WITHOUT_MEMBLOCK):
            skipped.append({"check": kind, "reason": why})
        if rule.memblock_based:
            skipped.append({"check": PFN_VALID_MISMATCH,
                            "reason": f"{rule.name} pfn_valid() needs memblock: {why}"})
    if not kernels.has_pfn_is_map_memory(model.kernel.arch, model.kernel.version):
        skipped.append({"check": NOT_LINEAR_MAPPED,
                        "reason": "the kernel has no pfn_is_map_memory() (arm64 v5.14+ only)"})
    elif not memory.available:
        skipped.append({"check": NOT_LINEAR_MAPPED, "reason": why})
    return skipped


def explain(model: Model, pfn: int) -> Dict[str, Any]:
    """Every predicate for one pfn, with the kernel objects behind it.

    >>> kernel = KernelFacts("x86_64", "6.1.0-27-cloud-amd64", (6, 1, 115), 4096, 27, 46,
    ...                      1 << 19, 21, 1 << 27, 1024, True, True, False)
    >>> discarded = MemblockType("memory", 0, 0, 128, (), False, "discarded")
    >>> facts = explain(Model(kernel, [], discarded, discarded, [], [], []), 0x40000)
    >>> facts["section"], facts["pfn_valid"]["value"], facts["pfn_valid"]["rule"]
    ({'nr': 8, 'present': False}, False, 'generic-subsection')
    """
    model, sets = _prepared(model)
    ctx = _Context(model, sets)
    kernel = model.kernel
    section_nr = pfn >> kernel.pfn_section_shift
    return {
        "pfn": pfn,
        "phys": pfn << kernel.page_shift,
        "section": _explain_section(kernel, ctx.sections.find(section_nr), section_nr, pfn),
        "pfn_valid": _explain_pfn_valid(kernel, sets, pfn),
        "pfn_is_map_memory": (None if sets.pfn_is_map_memory is None
                              else pfn in sets.pfn_is_map_memory),
        "struct_page_initialised": pfn in sets.memmap,
        "zone_device": pfn in sets.zone_device,
        "memblock": _explain_memblock(model, pfn),
        "memory_block": _explain_block(ctx, pfn),
        "page_nid": model.page_nids.get(pfn),
        "findings": [_finding_summary(f) for f in _run_all(ctx) if _finding_covers(ctx, f, pfn)],
    }


def _explain_section(kernel: KernelFacts, section: Optional[Section], nr: int,
                     pfn: int) -> Dict[str, Any]:
    facts: Dict[str, Any] = {"nr": nr, "present": section is not None}
    if nr >= kernel.nr_mem_sections:
        facts["beyond_nr_mem_sections"] = True
    if section is None:
        return facts
    facts.update(section_facts(kernel, section))
    facts.update(valid=section.valid, early=section.early, online=section.online,
                 zone_device_taint=section.zone_device)
    if section.subsection_map is not None and kernel.subsection_shift:
        index = (pfn - (nr << kernel.pfn_section_shift)) >> (
            kernel.subsection_shift - kernel.page_shift)
        facts["subsection"] = index
        facts["subsection_active"] = bool(section.subsection_map >> index & 1)
    return facts


def _explain_pfn_valid(kernel: KernelFacts, sets: PfnSets, pfn: int) -> Dict[str, Any]:
    inlines = kernel.arch_pfn_valid_inlines
    return {"value": None if sets.pfn_valid is None else pfn in sets.pfn_valid,
            "rule": sets.rule.name, "source": sets.rule.source,
            "arch_pfn_valid_inlines": None if inlines is None else list(inlines),
            "valid_section": pfn in sets.valid,
            "early_section": pfn in sets.early,
            "subsection_active": pfn in sets.active if pfn in sets.nonearly else None}


def _explain_memblock(model: Model, pfn: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    shift = model.kernel.page_shift
    for mtype in (model.memblock_memory, model.memblock_reserved):
        if not mtype.available:
            out[mtype.name] = {"available": False, "reason": mtype.reason}
            continue
        hits = [r for r in mtype.regions if r.base <= pfn << shift < r.end]
        out[mtype.name] = {"available": True, "regions": [region_facts(r) for r in hits]}
    return out


def _explain_block(ctx: _Context, pfn: int) -> Optional[Dict[str, Any]]:
    block_id = pfn // ctx.kernel.pages_per_block
    block = ctx.blocks.get(block_id)
    links = [_link_facts(l) for l in ctx.model.links if l.block == block_id]
    if block is None:
        return {"id": block_id, "exists": False, "links": links}
    out = {"id": block.id, "exists": True, "address": block.address, "state": block.state,
           "nid": block.nid, "zone": block.zone, "start_section_nr": block.start_section_nr,
           "links": links}
    flavour = block_flavour(ctx.model, block_id)
    if flavour is not None:
        out["hotplugged_by"] = flavour
    memmap = block_memmap(ctx.model, block_id)
    if memmap is not None:
        out["memmap_on_memory"] = memmap
    return out


def _finding_summary(finding: Finding) -> Dict[str, Any]:
    """A finding without its facts: explain() lists those facts itself."""
    out = finding.to_dict()
    out.pop("facts", None)
    return out


def _finding_covers(ctx: _Context, finding: Finding, pfn: int) -> bool:
    if finding.kind == UNREADABLE:
        return True  # what could not be read may bear on any pfn
    if finding.start_pfn is not None:
        return finding.start_pfn <= pfn < finding.end_pfn
    return finding.block == pfn // ctx.kernel.pages_per_block
