"""The physical address space as a picture: ``drgn-hotplug map -o FILE.html|.svg``.

One self-contained page (no network, no external scripts or fonts) from 0 to
the highest pfn anything names, as one band per node (and one for ranges no
memory block or memblock region puts on a node), each band a stack of lanes:
present sections (early, hot-added, ZONE_DEVICE, offline ones paler), the
subsection maps of partial sections, memblock.memory (NOMAP marked),
memblock.reserved, the memory blocks (state, zone) and one lane per finding
kind, where each finding is drawn over the range or block it names (a link
finding beside its block, also when the block is gone). Holes (pfns nothing
names) become fixed-width gap glyphs, so a 64 TB machine fits a screen;
inside the rest, x is linear in the pfn (``Layout.x``).

Every drawn range carries ``data-start-pfn``/``data-end-pfn`` and the
explain facts of its range (sections, pfn_valid(), memblock regions, memory
blocks, findings), shown on hover or click in the HTML page and as a
``<title>`` tooltip in the SVG. Every finding is one ``rect.finding`` with
``data-kind``, ``data-severity`` and its pfn range (link findings also
``data-node`` and ``data-block``), so its DOM can be checked.

Pure: no drgn; the front end passes the (prepared) model and its findings.

>>> from drgn_hotplug import checks
>>> from drgn_hotplug.model import KernelFacts, MemblockType, Model, NodeLink
>>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
...                      1024, True, True, False)
>>> none = MemblockType("memory", 0, 0, 128, (), False, "discarded")
>>> stale = NodeLink("node-to-block", 1, 32, "memory32", 0x10, 0x20, "memory32", False,
...                  ("deactivated",))
>>> model, findings = checks.checked(Model(kernel, [], none, none, [], [], [stale]))
>>> picture = plan(model, findings)
>>> [(b.x, b.width) for b in picture.finding_boxes()]
[(206.0, 1384.0)]
>>> 'data-kind="orphaned-link"' in render_svg(picture)
True
"""

from __future__ import annotations

import bisect
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import checks, kernels, report
from .model import (HAS_MEM_MAP, IS_EARLY, IS_ONLINE, TAINT_ZONE_DEVICE, Finding, Model,
                    SectionTable, valid_section)
from .ranges import RangeSet, bitmap_runs

# Geometry in CSS pixels.
LEFT = 190                # lane labels
PLOT_WIDTH = 1400         # the address axis
RIGHT = 20
HEADER = 140              # title, kernel, counts and skipped lines, legend, axis
GAP_WIDTH = 16            # a compressed hole
MIN_RUN_WIDTH = 40        # a run of named pfns, however small
MIN_MARK_WIDTH = 1.0      # any drawn range
MIN_NOTABLE_WIDTH = 3.0   # NOMAP regions and inactive subsections
MIN_FINDING_WIDTH = 4.0   # a finding stays visible whatever its size
TICK_SPACING = 130        # at least this far apart, address labels
LABEL_CHAR_WIDTH = 6.8    # of the 11px sans-serif labels, an upper bound
BAND_TITLE = 18
BAND_GAP = 10
LANE_GAP = 3
UNPLACED_SIZE = 12        # squares of findings with no pfn (unreadable objects)

SEVERITY_COLOURS = {"error": "#d7191c", "warning": "#fd8d3c", "info": "#2b83ba"}

# (css class, fill, legend text); the finding colours above appear nowhere else.
STYLES = (
    ("sec-early", "#7a9cc6", "early section"),
    ("sec-hot", "#74b27a", "hot-added section"),
    ("sec-zone-device", "#b48ed0", "ZONE_DEVICE section"),
    ("sec-no-memmap", "#bdbdbd", "present, no memmap"),
    ("sub-active", "#9fd39a", "active subsections"),
    ("sub-inactive", "#e4e4e4", "inactive subsections"),
    ("mb-memory", "#9ac1bb", "memblock.memory"),
    ("mb-nomap", "#f4d35e", "NOMAP"),
    ("mb-reserved", "#b09a86", "memblock.reserved"),
    ("blk-normal", "#c6d9ec", "block (Normal, DMA*)"),
    ("blk-movable", "#e6c8e0", "block (Movable)"),
    ("blk-none", "#d9d9d9", "block (no zone)"),
)

LANE_HEIGHTS = {"sections": 18, "subsections": 12, "memblock.memory": 12,
                "memblock.reserved": 12, "memory blocks": 18}
FINDING_LANE_HEIGHT = 14

NO_NODE = None


# ------------------------------------------------------------------ the x axis

@dataclass(frozen=True)
class Span:
    """Pfns [start, end) drawn over [x, x + width): a run of named pfns
    (linear) or a hole (a gap glyph)."""

    start: int
    end: int
    x: float
    width: float
    hole: bool


class Layout:
    """pfn -> x: linear inside each run of named pfns, holes squeezed into
    gap glyphs.

    >>> layout = Layout.of(RangeSet([(0, 100), (1000, 1100)]))
    >>> [(s.start, s.end, s.hole) for s in layout.spans]
    [(0, 100, False), (100, 1000, True), (1000, 1100, False)]
    >>> layout.x(0), layout.x(1000), layout.x(1100)
    (190.0, 898.0, 1590.0)
    """

    def __init__(self, spans: Sequence[Span]):
        self.spans = list(spans)
        self._starts = [s.start for s in self.spans]

    @classmethod
    def of(cls, named: RangeSet, left: float = LEFT, width: float = PLOT_WIDTH) -> "Layout":
        """The layout of the pfns from 0 to the end of ``named``."""
        pieces: List[Tuple[int, int, bool]] = []
        cursor = 0
        for start, end in named:
            if start > cursor:
                pieces.append((cursor, start, True))
            pieces.append((start, end, False))
            cursor = end
        if not pieces:
            pieces = [(0, 1, False)]
        holes = sum(hole for _, _, hole in pieces)
        gap = min(GAP_WIDTH, width / 4 / max(holes, 1))
        widths = proportional([end - start for start, end, hole in pieces if not hole],
                              width - gap * holes, MIN_RUN_WIDTH)
        spans, x = [], float(left)
        for start, end, hole in pieces:
            w = gap if hole else widths.pop(0)
            spans.append(Span(start, end, x, w, hole))
            x += w
        return cls(spans)

    @property
    def end(self) -> int:
        return self.spans[-1].end

    def x(self, pfn: int) -> float:
        """The x of pfn's left edge (pfns past the end: the right edge)."""
        if pfn >= self.end:
            last = self.spans[-1]
            return last.x + last.width
        span = self.spans[max(bisect.bisect_right(self._starts, pfn) - 1, 0)]
        return span.x + span.width * (pfn - span.start) / (span.end - span.start)

    def box(self, start: int, end: int, minimum: float = MIN_MARK_WIDTH) -> Tuple[float, float]:
        """(x, width) of pfns [start, end), at least ``minimum`` wide and
        inside the plot."""
        x0, x1 = self.x(start), self.x(end)
        width = max(x1 - x0, minimum)
        right = self.spans[-1].x + self.spans[-1].width
        return min(x0, right - width), width


def proportional(sizes: Sequence[int], total: float, minimum: float) -> List[float]:
    """Widths proportional to ``sizes`` summing to ``total``, none under
    ``minimum`` (lowered when ``total`` cannot give every size that much).

    >>> proportional([1, 1, 98], 100, 10)
    [10.0, 10.0, 80.0]
    """
    if not sizes:
        return []
    minimum = float(min(minimum, total / len(sizes)))
    floored: set = set()
    while True:
        free = total - minimum * len(floored)
        rest = sum(s for i, s in enumerate(sizes) if i not in floored)
        more = {i for i, s in enumerate(sizes)
                if i not in floored and s * free / rest < minimum}
        if not more:
            break
        floored |= more
    return [minimum if i in floored else s * free / rest for i, s in enumerate(sizes)]


# ------------------------------------------------------------------ what is drawn

@dataclass
class Mark:
    """One drawn range: pfns [start, end) in a lane of a node's band."""

    lane: str
    node: Optional[int]
    start: int
    end: int
    css: str
    label: str
    facts: Dict[str, Any]
    attrs: Dict[str, Any] = field(default_factory=dict)
    finding: Optional[int] = None     # index in the findings list
    minimum: float = MIN_MARK_WIDTH   # drawn width, however few its pfns


@dataclass(frozen=True)
class Box:
    """Where a mark is drawn."""

    x: float
    y: float
    width: float
    height: float
    mark: Mark


@dataclass
class PhysMap:
    """The planned picture: its layout, every mark and where it goes
    (``boxes`` in drawing order)."""

    title: str
    subtitle: List[str]
    layout: Layout
    boxes: List[Box]
    unplaced: List[Box]
    lane_labels: List[Tuple[float, float, str, bool]]     # (y, height, text, band title)
    height: float
    page_shift: int

    @property
    def width(self) -> int:
        return LEFT + PLOT_WIDTH + RIGHT

    def finding_boxes(self) -> List[Box]:
        """The boxes of the findings, in the findings' order (unreadable
        ones, which name no pfn, are in ``unplaced``)."""
        return sorted((b for b in self.boxes + self.unplaced if b.mark.finding is not None),
                      key=lambda b: b.mark.finding)


class _Nodes:
    """The node a pfn is on: its memory block's nid, else the nid of the
    memblock.memory region holding it, else NO_NODE."""

    def __init__(self, model: Model):
        kernel = model.kernel
        self.valid = lambda nid: nid is not None and 0 <= nid < kernel.max_numnodes
        self.per_block = kernel.pages_per_block
        self.block_nid = {b.id: b.nid for b in model.blocks if self.valid(b.nid)}
        regions = sorted((r for r in model.memblock_memory.regions if self.valid(r.nid)),
                         key=lambda r: r.base)
        shift = kernel.page_shift
        self.regions = [(r.base >> shift, -(-r.end >> shift), r.nid) for r in regions]
        self.region_starts = [start for start, _, _ in self.regions]

    def __call__(self, pfn: int) -> Optional[int]:
        nid = self.block_nid.get(pfn // self.per_block)
        if nid is not None:
            return nid
        i = bisect.bisect_right(self.region_starts, pfn) - 1
        if i >= 0 and self.regions[i][0] <= pfn < self.regions[i][1]:
            return self.regions[i][2]
        return NO_NODE

    def or_own(self, nid: Optional[int], pfn: int) -> Optional[int]:
        return nid if self.valid(nid) else self(pfn)


class _Explainer:
    """The explain facts of a pfn range, from the pfn sets computed once
    (``checks.explain`` answers for one pfn and reruns the checks per call)."""

    def __init__(self, model: Model, findings: Sequence[Finding]):
        self.model = model
        self.kernel = model.kernel
        self.sets = checks.pfn_sets(model)
        self.sections = SectionTable.of(model.sections)
        self.blocks = sorted(model.blocks, key=lambda b: b.id)
        self.block_ids = [b.id for b in self.blocks]
        self.indexes = {t.name: checks.RegionIndex(t.regions)
                        for t in (model.memblock_memory, model.memblock_reserved)}
        self.findings = [(f, finding_range(self.kernel, f)) for f in findings]

    def __call__(self, start: int, end: int, node: Optional[int]) -> Dict[str, Any]:
        kernel, sets = self.kernel, self.sets
        shift = kernel.pfn_section_shift
        first, last = start >> shift, (end - 1) >> shift
        # Bisection, not between(): a run of a 64 TB machine holds 512K sections.
        lo = bisect.bisect_left(self.sections.nrs, first)
        hi = bisect.bisect_left(self.sections.nrs, last + 1)
        facts: Dict[str, Any] = {
            "pfns": report.pfn_range(start, end),
            "phys_start": start << kernel.page_shift,
            "phys_end": end << kernel.page_shift,
            "size": report.human_size((end - start) << kernel.page_shift),
            "node": "none" if node is NO_NODE else node,
            "pfn_valid": {"value": _share(sets.pfn_valid, start, end), "rule": sets.rule.name},
            "struct_page_initialised": _share(sets.memmap, start, end),
            "zone_device": _share(sets.zone_device, start, end),
            "sections": {"numbers": f"{first}-{last}" if last > first else first,
                         "present": hi - lo,
                         "listed": [checks.section_facts(kernel, s) for s in
                                    self.sections[lo:min(hi, lo + checks.MAX_LISTED)]]},
            "memblock": self._memblock(start, end),
            "memory_blocks": self._blocks(start, end),
            "findings": [_finding_summary(f) for f, r in self.findings
                         if r is not None and r[0] < end and start < r[1]],
        }
        return facts

    def _memblock(self, start: int, end: int) -> Dict[str, Any]:
        shift = self.kernel.page_shift
        out: Dict[str, Any] = {}
        for mtype in (self.model.memblock_memory, self.model.memblock_reserved):
            if not mtype.available:
                out[mtype.name] = {"available": False, "reason": mtype.reason}
                continue
            hits = self.indexes[mtype.name].overlapping(start << shift, end << shift)
            out[mtype.name] = {"regions": len(hits), "listed": [
                checks.region_facts(r) for r in hits[:checks.MAX_LISTED]]}
        return out

    def _blocks(self, start: int, end: int) -> Dict[str, Any]:
        per_block = self.kernel.pages_per_block
        lo = bisect.bisect_left(self.block_ids, start // per_block)
        hi = bisect.bisect_left(self.block_ids, -(-end // per_block))
        return {"count": hi - lo, "listed": [
            {"id": b.id, "state": b.state, "nid": b.nid, "zone": b.zone, "address": b.address}
            for b in self.blocks[lo:min(hi, lo + checks.MAX_LISTED)]]}


def _share(pfns: Optional[RangeSet], start: int, end: int) -> str:
    """How much of [start, end) lies in ``pfns``: all, none or partly.

    >>> _share(RangeSet([(0, 4)]), 2, 8), _share(None, 0, 1)
    ('partly (2 of 6 pfns)', 'unknown')
    """
    if pfns is None:
        return "unknown"
    inside = sum(e - s for s, e in pfns.overlapping(start, end))
    if inside == end - start:
        return "all"
    return "none" if inside == 0 else f"partly ({inside} of {end - start} pfns)"


def _finding_summary(finding: Finding) -> Dict[str, Any]:
    return {"kind": finding.kind, "severity": finding.severity,
            "where": report.finding_location(finding)}


def finding_range(kernel, finding: Finding) -> Optional[Tuple[int, int]]:
    """The pfns a finding is drawn over: its range, or its block's pfns for
    a link finding; None for an unreadable object.

    >>> from drgn_hotplug.model import KernelFacts
    >>> kernel = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27,
    ...                      1024, True, True, False)
    >>> finding_range(kernel, Finding("orphaned-link", "error", "", node=1, block=32))
    (1048576, 1081344)
    """
    if finding.start_pfn is not None and finding.end_pfn is not None:
        return finding.start_pfn, finding.end_pfn
    if finding.block is not None:
        return checks.block_range(kernel, finding.block)
    return None


# ------------------------------------------------------------------ marks per lane

def _section_css(flags: frozenset) -> str:
    if HAS_MEM_MAP not in flags:
        return "sec-no-memmap"
    if IS_EARLY in flags:
        kind = "sec-early"
    else:
        kind = "sec-zone-device" if TAINT_ZONE_DEVICE in flags else "sec-hot"
    return kind if IS_ONLINE in flags else kind + " offline"


def section_marks(model: Model, sets, node_of: _Nodes) -> List[Mark]:
    """Runs of consecutive present sections with one flag set on one node.

    One pass over the section columns: 512K sections take half a second.
    """
    kernel = model.kernel
    table = SectionTable.of(model.sections)
    shift, per_block = kernel.pfn_section_shift, kernel.sections_per_block
    css_of_kind = [_section_css(flags) for flags in table.flag_sets]
    hot = [css.startswith("sec-hot") for css in css_of_kind]
    block_nid, zone_device = node_of.block_nid, sets.zone_device
    runs: List[List[Any]] = []
    run: Optional[List[Any]] = None
    for nr, kind in zip(table.nrs, table.kinds):
        nid = block_nid.get(nr // per_block)
        if nid is None:
            nid = node_of(nr << shift)
        # ZONE_DEVICE sections untainted (before v5.12) look hot-added: the pfn sets know.
        device = hot[kind] and (nr << shift) in zone_device
        if run and nr == run[1] and kind == run[2] and nid == run[3] and device == run[4]:
            run[1] = nr + 1
        else:
            run = [nr, nr + 1, kind, nid, device]
            runs.append(run)
    marks = []
    for first, end, kind, nid, device in runs:
        css = css_of_kind[kind]
        if device:
            css = css.replace("sec-hot", "sec-zone-device")
        marks.append(Mark("sections", nid, first << shift, end << shift, css,
                          f"sections {first}" + (f"-{end - 1}" if end - first > 1 else "")
                          + f": {' '.join(sorted(table.flag_sets[kind]))}", {}))
    return marks


def subsection_marks(model: Model, node_of: _Nodes) -> List[Mark]:
    """Active and inactive subsection runs of the valid sections whose map
    is partial (early ones too: arm64 5.10's first section maps only the
    flash's subsections, though pfn_valid() asks memblock there)."""
    kernel = model.kernel
    if not kernels.subsections_exist(kernel):
        return []
    per_section = checks.subsections_per_section(kernel)
    full = (1 << per_section) - 1
    shift = kernel.pfn_section_shift
    sub_shift = kernel.subsection_shift - kernel.page_shift
    marks = []
    for nr, bitmap in SectionTable.of(model.sections).maps_where(valid_section):
        if bitmap is None or bitmap & full == full:
            continue
        base = nr << shift
        for active, value in ((True, bitmap & full), (False, ~bitmap & full)):
            for first, end in bitmap_runs(value):
                marks.append(Mark(
                    "subsections", node_of(base), base + (first << sub_shift),
                    base + (end << sub_shift), "sub-active" if active else "sub-inactive",
                    f"section {nr} subsections {first}-{end - 1} of {per_section}: "
                    + ("active" if active else "inactive"), {},
                    minimum=MIN_MARK_WIDTH if active else MIN_NOTABLE_WIDTH))
    return marks


def memblock_marks(model: Model, node_of: _Nodes) -> List[Mark]:
    marks = []
    shift = model.kernel.page_shift
    for mtype in (model.memblock_memory, model.memblock_reserved):
        lane = f"memblock.{mtype.name}"
        for region in mtype.regions:
            start, end = region.base >> shift, max(-(-region.end >> shift), (region.base >> shift) + 1)
            nomap = mtype.name == "memory" and checks.is_nomap(region)
            names = ",".join(region.flag_names) or (f"{region.flags:#x}" if region.flags else "-")
            css = "mb-nomap" if nomap else f"mb-{mtype.name}"
            marks.append(Mark(lane, node_of.or_own(region.nid, start), start, end, css,
                              f"{lane} {region.base:#x}-{region.end - 1:#x} flags {names} "
                              f"nid {region.nid}", {},
                              minimum=MIN_NOTABLE_WIDTH if nomap else MIN_MARK_WIDTH))
    return marks


def block_marks(model: Model, node_of: _Nodes) -> List[Mark]:
    """Runs of consecutive memory blocks of one state, zone and node."""
    per_block = model.kernel.pages_per_block
    runs: List[List[Any]] = []
    for block in sorted(model.blocks, key=lambda b: b.id):
        key = (block.state, block.zone, node_of(block.id * per_block))
        if runs and runs[-1][1] == block.id and runs[-1][2] == key:
            runs[-1][1] = block.id + 1
        else:
            runs.append([block.id, block.id + 1, key])
    marks = []
    for first, end, (state, zone, node) in runs:
        zone_css = {"Movable": "blk-movable", None: "blk-none"}.get(zone, "blk-normal")
        css = zone_css + ("" if state == "online" else " offline")
        name = f"memory{first}" + (f"-{end - 1}" if end - first > 1 else "")
        marks.append(Mark("memory blocks", node, first * per_block, end * per_block, css,
                          f"{name} {state} {zone or '-'}", {}))
    return marks


def finding_marks(model: Model, findings: Sequence[Finding], node_of: _Nodes
                  ) -> Tuple[List[Mark], List[Mark]]:
    """(findings over their ranges or blocks, findings that name no pfn)."""
    placed, unplaced = [], []
    for i, finding in enumerate(findings):
        pfns = finding_range(model.kernel, finding)
        attrs = {"kind": finding.kind, "severity": finding.severity}
        if finding.node is not None:
            attrs["node"] = finding.node
        if finding.block is not None:
            attrs["block"] = finding.block
        label = (f"{finding.severity} {finding.kind} {report.finding_location(finding)}: "
                 f"{finding.reason}")
        facts = finding.to_dict()
        css = f"finding sev-{finding.severity}"
        if pfns is None:
            unplaced.append(Mark("unplaced", NO_NODE, 0, 0, css, label, facts, attrs, i))
        else:
            node = node_of.or_own(finding.node, pfns[0])
            placed.append(Mark(f"finding:{finding.kind}", node, pfns[0], pfns[1], css, label,
                               facts, attrs, i, MIN_FINDING_WIDTH))
    return placed, unplaced


# ------------------------------------------------------------------ planning

def plan(model: Model, findings: Sequence[Finding]) -> PhysMap:
    """The picture of ``model`` (as ``checks.checked`` returns it) with
    ``findings`` drawn over it."""
    model = checks.prepare(model)
    explainer = _Explainer(model, findings)
    node_of = _Nodes(model)
    marks = (section_marks(model, explainer.sets, node_of) + subsection_marks(model, node_of)
             + memblock_marks(model, node_of) + block_marks(model, node_of))
    placed, unplaced = finding_marks(model, findings, node_of)
    marks += placed
    for mark in marks:
        explained = explainer(mark.start, mark.end, mark.node)
        # A finding keeps its own facts, then those of the pfns it is drawn over.
        mark.facts = explained if mark.finding is None else {**mark.facts, "drawn_over": explained}
    layout = Layout.of(RangeSet((m.start, m.end) for m in marks))
    boxes, labels, y = _stack(layout, marks, HEADER)
    # Drawing order: ranges, then findings widest first, so a finding
    # widened to stay visible is never hidden under a wide neighbour.
    boxes.sort(key=lambda box: (box.mark.finding is not None,
                                -box.width if box.mark.finding is not None else 0))
    unplaced_boxes, y = _unplaced(unplaced, y, labels)
    counts = report.summary(findings)
    subtitle = [report.render_kernel(model.kernel),
                ", ".join(f"{counts[s]} {s}" for s in ("error", "warning", "info"))
                + f"; {len(placed)} findings drawn over their ranges or blocks"
                + (f", {len(unplaced)} name no pfn (listed at the bottom)" if unplaced else "")
                + f"; pfns 0-{layout.end - 1:#x}, holes squeezed into gaps"]
    skipped = checks.skipped_checks(model)
    if skipped:
        subtitle.append("skipped: " + "; ".join(f"{s['check']}: {report.escape(s['reason'])}"
                                                 for s in skipped))
    return PhysMap(f"drgn-hotplug map: {report.escape(model.kernel.release)}", subtitle,
                   layout, boxes, unplaced_boxes, labels, y + BAND_GAP, model.kernel.page_shift)


def _lane_order(lane: str) -> Tuple[int, int]:
    fixed = list(LANE_HEIGHTS)
    if lane in fixed:
        return 0, fixed.index(lane)
    return 1, checks.KINDS.index(lane.split(":", 1)[1])


def _stack(layout: Layout, marks: Sequence[Mark], top: float
           ) -> Tuple[List[Box], List[Tuple[float, float, str, bool]], float]:
    """Bands per node (NO_NODE last), lanes in a fixed order, each lane
    present only when it has marks."""
    bands: Dict[Optional[int], Dict[str, List[Mark]]] = {}
    for mark in marks:
        bands.setdefault(mark.node, {}).setdefault(mark.lane, []).append(mark)
    boxes, labels, y = [], [], top
    for node in sorted(bands, key=lambda n: (n is NO_NODE, n or 0)):
        title = "no node (no block or memblock nid)" if node is NO_NODE else f"node {node}"
        labels.append((y, BAND_TITLE, title, True))
        y += BAND_TITLE
        for lane in sorted(bands[node], key=_lane_order):
            height = LANE_HEIGHTS.get(lane, FINDING_LANE_HEIGHT)
            labels.append((y, height, lane.replace("finding:", ""), False))
            for mark in bands[node][lane]:
                x, width = layout.box(mark.start, mark.end, mark.minimum)
                boxes.append(Box(x, y, width, height, mark))
            y += height + LANE_GAP
        y += BAND_GAP
    return boxes, labels, y


def _unplaced(marks: Sequence[Mark], y: float, labels: List[Tuple[float, float, str, bool]]
              ) -> Tuple[List[Box], float]:
    if not marks:
        return [], y
    labels.append((y, BAND_TITLE, "findings naming no pfn", True))
    y += BAND_TITLE
    per_row = int(PLOT_WIDTH // (UNPLACED_SIZE + 2))
    boxes = [Box(LEFT + (i % per_row) * (UNPLACED_SIZE + 2), y + (i // per_row) * (UNPLACED_SIZE + 2),
                 UNPLACED_SIZE, UNPLACED_SIZE, mark) for i, mark in enumerate(marks)]
    return boxes, y + (len(marks) + per_row - 1) // per_row * (UNPLACED_SIZE + 2)


# ------------------------------------------------------------------ rendering

_CSS = "\n".join(
    ["text{font:11px sans-serif;fill:#222}", ".title{font-size:15px;font-weight:bold}",
     ".band{font-weight:bold;font-size:12px}", ".lane{fill:#555}",
     ".hole{fill:url(#hole)}", ".axis{paint-order:stroke;stroke:#fff;stroke-width:3px}", ".offline{fill-opacity:.45}",
     "rect.mark,rect.finding{stroke:#fff;stroke-width:.5}",
     ".sub-inactive{stroke:#888!important;stroke-dasharray:2 1}",
     ".mb-nomap{stroke:#a07800!important}", ".sel{stroke:#000!important;stroke-width:2!important}",
     ".shade{pointer-events:none;fill-opacity:.13}"]
    + [f".{css}{{fill:{fill}}}" for css, fill, _ in STYLES]
    + [f".sev-{sev}{{fill:{colour}}}" for sev, colour in SEVERITY_COLOURS.items()])


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_svg(picture: PhysMap, titles: bool = True) -> str:
    """The picture as one SVG document. Each range carries ``data-facts``
    (its index in ``facts_texts()``); with ``titles`` each also carries a
    ``<title>`` tooltip of its facts (the HTML page shows them in a panel)."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{picture.width}" '
           f'height="{picture.height:.0f}" viewBox="0 0 {picture.width} {picture.height:.0f}">',
           f"<style>{_CSS}</style>",
           '<defs><pattern id="hole" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern></defs>',
           f'<rect width="{picture.width}" height="{picture.height:.0f}" fill="#fff"/>',
           f'<text class="title" x="8" y="20">{_attr(picture.title)}</text>']
    out += [f'<text x="8" y="{38 + 15 * i}">{_attr(line)}</text>'
            for i, line in enumerate(picture.subtitle[:3])]
    out += _legend(88, picture.width)
    out += _axis(picture, HEADER - 8)
    texts = facts_texts(picture) if titles else None
    for i, box in enumerate(picture.boxes):
        if box.mark.finding is not None:
            out.append(_shade(picture, box))
    for i, box in enumerate(picture.boxes + picture.unplaced):
        out.append(_rect(box, i, texts[i] if texts else None))
    for y, height, text, band in picture.lane_labels:
        css = "band" if band else "lane"
        out.append(f'<text class="{css}" x="{8 if band else 16}" y="{y + height - 4:.1f}">'
                   f"{_attr(text)}</text>")
    out.append("</svg>")
    return "\n".join(out)


def facts_texts(picture: PhysMap) -> List[str]:
    """Per drawn range (boxes, then unplaced), its facts as ``explain`` prints them."""
    return [box.mark.label + "\n" + report.render_explain(box.mark.facts)
            for box in picture.boxes + picture.unplaced]


def _legend(y: float, width: float) -> List[str]:
    """Swatches of every fill, wrapped onto as many rows as needed (two at this width)."""
    out, x = [], 8.0
    entries = [(css, text) for css, _, text in STYLES] + [
        ("sec-early offline", "paler: offline")] + [
        (f"sev-{sev}", f"finding: {sev}") for sev in SEVERITY_COLOURS]
    for css, text in entries:
        room = 24 + LABEL_CHAR_WIDTH * len(text)
        if x + room > width:
            x, y = 8.0, y + 16
        out.append(f'<rect class="{css}" x="{x:.0f}" y="{y - 9}" width="10" height="10"/>'
                   f'<text x="{x + 13:.0f}" y="{y}">{_attr(text)}</text>')
        x += room
    return out


def _axis(picture: PhysMap, y: float) -> List[str]:
    """Hole glyphs down the whole height, then (over them, haloed)
    physical addresses along each run: its start, then round addresses
    where there is room."""
    shift = picture.page_shift
    holes, labels = [], []
    label_end = -1e9
    for span in picture.layout.spans:
        if span.hole:
            size = report.human_size((span.end - span.start) << shift)
            holes.append(f'<rect class="hole" x="{span.x:.2f}" y="{y - 10}" width="{span.width:.2f}" '
                         f'height="{picture.height - y + 10:.0f}" data-start-pfn="{span.start}" '
                         f'data-end-pfn="{span.end}"><title>hole: pfns '
                         f"{report.pfn_range(span.start, span.end)} ({size}): no section, memblock "
                         "region, memory block or finding</title></rect>")
            continue
        for pfn in tick_pfns(span):
            x, text = picture.layout.x(pfn), f"{pfn << shift:#x}"
            if label_end < x and x + LABEL_CHAR_WIDTH * len(text) < picture.width:
                labels.append(f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{y + 2}" y2="{y + 8}" '
                              f'stroke="#444"/><text class="axis" x="{x + 2:.2f}" y="{y}">'
                              f"{text}</text>")
                label_end = x + 8 + LABEL_CHAR_WIDTH * len(text)
    return holes + labels


def tick_pfns(span: Span) -> List[int]:
    """The run's first pfn, then multiples of the smallest power of two
    that puts them TICK_SPACING pixels apart.

    >>> tick_pfns(Span(0, 1 << 20, 190.0, 1400.0, False))
    [0, 131072, 262144, 393216, 524288, 655360, 786432, 917504]
    """
    pfns_per_pixel = (span.end - span.start) / span.width
    step = 1 << max(int(pfns_per_pixel * TICK_SPACING) - 1, 0).bit_length()
    first = -(-(span.start + 1) // step) * step
    return [span.start] + list(range(first, span.end, step))


def _shade(picture: PhysMap, box: Box) -> str:
    """A faint column over the finding's band, so its range reads across lanes."""
    top, bottom = _band_extent(picture, box.y)
    return (f'<rect class="shade sev-{box.mark.attrs["severity"]}" x="{box.x:.2f}" '
            f'y="{top:.1f}" width="{box.width:.2f}" height="{bottom - top:.1f}"/>')


def _band_extent(picture: PhysMap, y: float) -> Tuple[float, float]:
    """(top, bottom) of the lanes of the band holding ``y``."""
    titles = [ly for ly, _, _, band in picture.lane_labels if band]
    i = bisect.bisect_right(titles, y) - 1
    below = titles[i + 1] if i + 1 < len(titles) else picture.height
    lanes = [(ly, ly + height) for ly, height, _, band in picture.lane_labels
             if not band and titles[i] < ly < below]
    return lanes[0][0], lanes[-1][1]


def _rect(box: Box, index: int, title: Optional[str]) -> str:
    mark = box.mark
    css = mark.css if mark.finding is not None else "mark " + mark.css
    data = "".join(f' data-{k}="{_attr(v)}"' for k, v in mark.attrs.items())
    if mark.lane != "unplaced":
        data += f' data-start-pfn="{mark.start}" data-end-pfn="{mark.end}"'
    if mark.finding is not None:
        data += f' data-finding="{mark.finding}"'
    head = (f'<rect class="{css}" x="{box.x:.2f}" y="{box.y:.1f}" width="{box.width:.2f}" '
            f'height="{box.height:.1f}"{data} data-facts="{index}"')
    if title is None:
        return head + "/>"
    return f"{head}><title>{_attr(title)}</title></rect>"


_SCRIPT = """
const facts = JSON.parse(document.getElementById('facts').textContent);
const panel = document.getElementById('panel');
const svg = document.querySelector('svg');
let pinned = null;
function show(el) { panel.textContent = facts[+el.getAttribute('data-facts')]; }
function pin(el) {
  if (pinned) pinned.classList.remove('sel');
  pinned = el;
  if (pinned) { pinned.classList.add('sel'); show(pinned); }
}
svg.addEventListener('mouseover', e => {
  const el = e.target.closest('[data-facts]');
  if (el && !pinned) show(el);
});
svg.addEventListener('click', e => pin(e.target.closest('[data-facts]')));
const wanted = location.hash.match(/^#finding=(\\d+)$/);
if (wanted) pin(document.querySelector(`[data-finding="${wanted[1]}"]`));
"""


def render_html(picture: PhysMap) -> str:
    """A self-contained HTML page: the SVG, a facts panel, the facts as
    JSON data and a few lines of script (hover shows a range's facts,
    click pins them; ``PAGE#finding=N`` opens with finding N pinned)."""
    data = json.dumps(facts_texts(picture)).replace("</", "<\\/")
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>{_attr(picture.title)}</title>",
        "<style>body{margin:0;font:12px sans-serif}#panel{margin:8px;padding:8px;"
        "background:#f7f7f7;border:1px solid #ccc;white-space:pre;font:12px monospace;"
        "min-height:6em}</style></head><body>",
        render_svg(picture, titles=False),
        '<pre id="panel">hover over a range for its facts; click to pin them</pre>',
        f'<script type="application/json" id="facts">{data}</script>',
        f"<script>{_SCRIPT}</script>", "</body></html>", ""])


FORMATS = {".html": "html", ".htm": "html", ".svg": "svg"}


def format_of(path: str) -> str:
    """"html" or "svg", by the file name's suffix; ValueError for another.

    >>> format_of("orphan.SVG"), format_of("/tmp/map.html")
    ('svg', 'html')
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path}: name it .html or .svg")
    return FORMATS[suffix]


def write(path: str, model: Model, findings: Sequence[Finding]) -> PhysMap:
    """Write the map of ``model`` to ``path`` as ``format_of(path)`` says."""
    svg = format_of(path) == "svg"
    picture = plan(model, findings)
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n' + render_svg(picture) if svg
            else render_html(picture))
    Path(path).write_text(text, encoding="utf-8")
    return picture
