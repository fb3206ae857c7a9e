"""drgn_hotplug.physmap on the hand-made models of the test-bed machines:
what is drawn where, and that the page stands alone (tests/test_map.py
renders real dumps in Chromium)."""

from __future__ import annotations

import doctest
import json
import re
import xml.etree.ElementTree as ET

import pytest

from drgn_hotplug import checks, physmap
from drgn_hotplug.model import Unreadable

import handmade

MODELS = {"x86_orphan": handmade.x86_orphan, "x86_pmem": handmade.x86_pmem,
          "x86_hotplug": handmade.x86_hotplug, "arm64_510": handmade.arm64_510}


def planned(name: str):
    model, findings = checks.checked(MODELS[name]())
    return physmap.plan(model, findings), findings


def finding_rects(svg: str) -> list:
    root = ET.fromstring(svg)
    return [e.attrib for e in root.iter("{http://www.w3.org/2000/svg}rect")
            if "finding" in e.get("class", "").split()]


def test_docstring_examples():
    result = doctest.testmod(physmap)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("name", MODELS)
def test_one_element_per_finding_with_kind_severity_and_range(name):
    picture, findings = planned(name)
    rects = finding_rects(physmap.render_svg(picture))
    assert len(rects) == len(findings) > 0
    kernel = MODELS[name]().kernel
    for rect in rects:
        finding = findings[int(rect["data-finding"])]
        start, end = physmap.finding_range(kernel, finding)
        assert (rect["data-kind"], rect["data-severity"]) == (finding.kind, finding.severity)
        assert (int(rect["data-start-pfn"]), int(rect["data-end-pfn"])) == (start, end)
        if finding.block is not None:
            assert (int(rect["data-node"]), int(rect["data-block"])) == (finding.node, finding.block)


def test_orphaned_links_are_drawn_beside_their_removed_blocks():
    """node1/memory32 and 33 dangle: their blocks are gone, but the links
    are drawn in node 1's band where the blocks were, not squeezed away."""
    picture, _ = planned("x86_orphan")
    orphans = [b for b in picture.finding_boxes() if b.mark.attrs["kind"] == "orphaned-link"]
    assert [(b.mark.node, b.mark.start, b.mark.end) for b in orphans] == [
        (1, 32 << 15, 33 << 15), (1, 33 << 15, 34 << 15)]
    assert all(b.width > 100 for b in orphans)
    assert not any(span.hole and span.start <= 32 << 15 < span.end
                   for span in picture.layout.spans)


def test_holes_are_gap_glyphs_and_the_axis_ends_at_the_highest_pfn():
    """x86_hotplug: 1 GiB at 0, nothing up to the DIMM at 4 GiB."""
    picture, _ = planned("x86_hotplug")
    spans = picture.layout.spans
    assert [(s.start, s.end, s.hole) for s in spans] == [
        (0, 0x40000, False), (0x40000, 0x100000, True), (0x100000, 0x110000, False)]
    assert spans[1].width == physmap.GAP_WIDTH
    assert picture.layout.x(0) == physmap.LEFT
    assert picture.layout.x(0x110000) == physmap.LEFT + physmap.PLOT_WIDTH
    # Linear inside a run: the first GiB is 4 times the DIMM's 256 MiB.
    assert spans[0].width == pytest.approx(4 * spans[2].width)


def test_64_tib_fits_the_plot():
    """Sections at 0 and at the 64 TiB mark: one gap glyph between them."""
    model = handmade.x86_boot()
    model.sections.append(handmade.section((64 << 40) >> 27, handmade.HOTPLUGGED))
    picture = physmap.plan(*checks.checked(model))
    assert picture.layout.end == ((64 << 40) >> 12) + (1 << 15)
    assert [s.hole for s in picture.layout.spans] == [False, True, False]
    assert all(physmap.LEFT <= b.x and b.x + b.width <= physmap.LEFT + physmap.PLOT_WIDTH
               for b in picture.boxes)


def test_nomap_regions_and_partial_subsections_are_marked():
    arm64, _ = planned("arm64_510")
    nomap = [(b.mark.start, b.mark.end) for b in arm64.boxes if b.mark.css == "mb-nomap"]
    assert nomap == [(0x4000, 0x8000), (0x7c440, 0x7c730), (0x7fc00, 0x7ffe0), (0xbfbfc, 0xbfbfd)]
    assert all(b.width >= physmap.MIN_NOTABLE_WIDTH for b in arm64.boxes
               if b.mark.css == "mb-nomap")
    pmem, _ = planned("x86_pmem")
    assert [(b.mark.css, b.mark.start, b.mark.end) for b in pmem.boxes
            if b.mark.lane == "subsections"] == [("sub-active", 0x38000, 0x3fe00),
                                                  ("sub-inactive", 0x3fe00, 0x40000)]
    assert {b.mark.css for b in pmem.boxes if b.mark.lane == "sections"} == {
        "sec-early", "sec-zone-device offline"}


def test_bands_follow_the_nodes():
    """arm64 5.10: memory0 has no node (its block's nid is none and no
    memblock region covers pfn 0); the NOMAP flash region is node 0's."""
    picture, _ = planned("arm64_510")
    sections = {(b.mark.start, b.mark.node) for b in picture.boxes if b.mark.lane == "sections"}
    assert sections == {(0, None), (0x40000, 0), (0x80000, 1)}
    titles = [text for _, _, text, band in picture.lane_labels if band]
    assert titles == ["node 0", "node 1", "no node (no block or memblock nid)"]


def test_range_facts_are_the_explain_predicates_of_the_range():
    picture, _ = planned("arm64_510")
    flash = next(b.mark for b in picture.boxes if b.mark.css == "mb-nomap")
    facts = flash.facts
    assert facts["pfn_valid"] == {"value": "none", "rule": "arm64-memblock-map"}
    assert facts["struct_page_initialised"] == "all"
    assert facts["memblock"]["memory"]["listed"][0]["flag_names"] == ["NOMAP"]
    # In memblock (NOMAP), so not memmap-without-memblock as the holes around it.
    assert [f["kind"] for f in facts["findings"]] == ["pfn-valid-mismatch", "missing-link"]


def test_finding_colours_are_used_by_nothing_else():
    fills = {fill for _, fill, _ in physmap.STYLES}
    assert not fills & set(physmap.SEVERITY_COLOURS.values())


def test_html_page_stands_alone_and_carries_facts_per_range():
    picture, findings = planned("x86_orphan")
    page = physmap.render_html(picture)
    assert not re.search(r"\b(src|href)=|@import|url\((?!#)", page)
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    data = re.search(r'<script type="application/json" id="facts">(.*?)</script>', page, re.S)
    facts = json.loads(data.group(1))
    indexes = {int(i) for i in re.findall(r'data-facts="(\d+)"', page)}
    assert indexes == set(range(len(facts))) and len(facts) == len(picture.boxes)
    orphan = next(f for f in facts if f.startswith("error orphaned-link node1/memory32"))
    assert "target memory32 removed" in orphan


def test_unreadable_findings_are_listed_apart():
    model = handmade.x86_boot()
    model.unreadable.append(Unreadable("kernfs children of node1", "Excluded page",
                                       0xffff8c562015e908))
    picture = physmap.plan(*checks.checked(model))
    assert [(b.mark.attrs["kind"], b.mark.lane) for b in picture.unplaced] == [
        ("unreadable", "unplaced")]
    rect = finding_rects(physmap.render_svg(picture))[-1]
    assert rect["data-kind"] == "unreadable" and "data-start-pfn" not in rect


def test_format_from_the_suffix():
    assert physmap.format_of("a.htm") == "html"
    with pytest.raises(ValueError, match="name it .html or .svg"):
        physmap.format_of("map.png")
