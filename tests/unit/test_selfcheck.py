"""The cross-checks of facts the kernel keeps twice (selfcheck.py), on the
hand-made test-bed models: a field moved the way a future kernel might move
it is found misread, named once and drawn no finding from; a few
disagreeing objects are the kernel's and reported as ever."""

import doctest
from dataclasses import replace

import handmade as h
from drgn_hotplug import checks, report, selfcheck
from drgn_hotplug.checks import MISSING_LINK, RANGE_KINDS, UNREADABLE, WRONG_NODE_LINK
from drgn_hotplug.reader.page import page_flags_nid

NODES_SHIFT = 10           # CONFIG_NODES_SHIFT of Debian's x86_64 kernels
ZONES_SHIFT = 2
LAST_CPUPID_SHIFT = 21     # reset to all ones (page_cpupid_reset_last())
PAGE_FLAGS_LOW = 0x17      # PG_locked | PG_referenced | PG_uptodate | PG_lru


def page_flags(nid: int, above_node: int = 0, width: int = 0, zone: int = 2) -> int:
    """A page->flags word of a 64-bit SPARSEMEM_VMEMMAP kernel laid out as
    page-flags-layout.h does, from the top bit down: node, zone, last
    cpupid, then the page flags; a kernel that packs a new ``width``-bit
    field above the node puts ``above_node`` there and the rest below it."""
    node_at = 64 - width - NODES_SHIFT
    zone_at = node_at - ZONES_SHIFT
    cpupid_at = zone_at - LAST_CPUPID_SHIFT
    return (above_node << (64 - width) | nid << node_at | zone << zone_at
            | ((1 << LAST_CPUPID_SHIFT) - 1) << cpupid_at | PAGE_FLAGS_LOW)


def x86_with_page_nids(above_node: int = 0, width: int = 0):
    """x86_boot with one page->flags word per block decoded as the reader
    does (page_flags_nid), at the first pfn of each block."""
    model = h.x86_boot()
    per_block = model.kernel.pages_per_block
    model.page_nids = {
        b.id * per_block + (0x100 if b.id == 0 else 0):     # memory0's first page is a hole
        page_flags_nid(page_flags(b.nid, above_node, width), model.kernel)
        for b in model.blocks}
    return model


def serious(findings):
    return [f for f in findings if f.severity in ("error", "warning")]


def test_docstring_examples():
    result = doctest.testmod(selfcheck)
    assert result.failed == 0 and result.attempted > 0


def test_page_nids_decoded_where_the_kernel_puts_them_are_silent():
    model = x86_with_page_nids()
    assert set(model.page_nids.values()) == {0, 1}
    prepared, findings = checks.checked(model)
    assert prepared.misread == () and prepared.unreadable == []
    assert serious(findings) == []
    assert report.exit_status(findings) == report.EXIT_CLEAN


def test_a_field_packed_above_the_node_makes_every_page_nid_misread():
    # A future kernel packs a 10-bit field of ones (a tag reset to its
    # match-all value) above the node: the reader's unchanged decoder reads
    # node 1023 on every page, as it did on Debian's x86_64 7.3.4.
    model = x86_with_page_nids(above_node=(1 << NODES_SHIFT) - 1, width=NODES_SHIFT)
    assert set(model.page_nids.values()) == {1023}
    # Without the cross-check, every block would lack a link to that node.
    raw = checks._run_all(checks._Context(checks.with_section_table(model),
                                          checks.pfn_sets(checks.with_section_table(model))))
    assert {(f.kind, f.node) for f in serious(raw)} == {(MISSING_LINK, 1023)}
    assert len(serious(raw)) == 8
    prepared, findings = checks.checked(model)
    assert prepared.misread == (selfcheck.PAGE_NID,) and prepared.page_nids == {}
    (entry,) = prepared.unreadable
    assert (entry.what, entry.reason) == (
        "page->flags node field", "does not match memory_block.nid on 8 of 8 blocks: "
        "layout of 6.1.0-27-cloud-amd64 not understood")
    assert [f.kind for f in findings if f.kind in (MISSING_LINK, WRONG_NODE_LINK)] == []
    assert [(f.kind, f.severity) for f in serious(findings)] == [(UNREADABLE, "warning")]
    assert report.exit_status(findings) == report.EXIT_FINDINGS
    # The report lists it once, in findings and in unreadable.
    doc = report.document(model)
    assert [u["what"] for u in doc["unreadable"]] == ["page->flags node field"]
    assert [f["kind"] for f in doc["findings"] if f["severity"] == "warning"] == [UNREADABLE]


def test_a_garbage_node_field_is_misread_too():
    # A decoder that believes a section field (classic SPARSEMEM, 19 bits)
    # sits above the node reads the last cpupid's bits: garbage nids.
    model = h.x86_boot()
    sparse = replace(model.kernel, sparsemem_vmemmap=False)
    per_block = model.kernel.pages_per_block
    model.page_nids = {b.id * per_block + 0x100: page_flags_nid(page_flags(b.nid), sparse)
                       for b in model.blocks}
    assert set(model.page_nids.values()) == {1023}
    prepared = checks.prepare(model)
    assert prepared.misread == (selfcheck.PAGE_NID,)


def test_one_block_on_another_node_is_the_kernel_s_inconsistency():
    # memory4's first page says node 0 while memory_block.nid says 1: a real
    # disagreement of 1 in 7, reported by the link checks as before.
    model = x86_with_page_nids()
    model.page_nids[4 * model.kernel.pages_per_block] = 0
    prepared, findings = checks.checked(model)
    assert prepared.misread == () and prepared.unreadable == []
    assert [(f.kind, f.node, f.block) for f in serious(findings)] == [(MISSING_LINK, 0, 4)]
    assert findings[-1].facts["block_nodes"]["0"] == ["page nid"]


def test_too_few_comparisons_never_count_as_a_misread():
    model = x86_with_page_nids(above_node=(1 << NODES_SHIFT) - 1, width=NODES_SHIFT)
    kept = sorted(model.page_nids)[:selfcheck.MIN_COMPARISONS - 1]
    model.page_nids = {pfn: model.page_nids[pfn] for pfn in kept}
    prepared, findings = checks.checked(model)
    assert prepared.misread == ()
    assert {f.kind for f in serious(findings)} == {MISSING_LINK}


def test_sections_read_at_the_wrong_place_skip_the_range_checks():
    # A decoder that reads each mem_section root one root (256 sections)
    # too far: no block finds its sections, no boot section its block.
    model = h.x86_orphan()
    model.sections = [replace(s, nr=s.nr + 256) for s in model.sections]
    prepared, findings = checks.checked(model)
    assert prepared.misread == (selfcheck.SECTION_PRESENCE,)
    (entry,) = prepared.unreadable
    assert entry.reason == ("does not match the memory blocks on 16 of 16 blocks and boot "
                            "sections: layout of 6.1.0-27-cloud-amd64 not understood")
    assert [f for f in findings if f.kind in RANGE_KINDS] == []
    assert {s["check"] for s in checks.skipped_checks(prepared)} == set(RANGE_KINDS)
    # The link findings do not come from the sections: still reported.
    assert [(f.kind, f.block) for f in serious(findings)] == [
        ("orphaned-link", 32), ("orphaned-link", 33), (UNREADABLE, None)]


def test_a_removed_block_with_its_section_left_is_not_a_misread():
    model = h.x86_boot()
    model.blocks = [b for b in model.blocks if b.id != 5]
    prepared = checks.prepare(model)
    assert prepared.misread == () and prepared.unreadable == []


def test_zone_device_sections_and_arm64_holes_have_no_block_by_design():
    for model in (h.x86_pmem(), h.arm64_510(), h.arm64_61(), h.x86_hotplug()):
        sets = checks.pfn_sets(checks.with_section_table(model))
        comparison = selfcheck.compare_sections_with_blocks(model, sets.early, sets.blocks)
        assert comparison.compared > 0 and comparison.disagreeing == 0, model.kernel


def test_node_spans_are_compared_once_the_reader_fills_them():
    model = h.x86_boot()
    per_block = model.kernel.pages_per_block
    model.node_spans = {0: (0, 4 * per_block), 1: (4 * per_block, 4 * per_block)}
    assert checks.prepare(model).misread == ()
    # node_spanned_pages read from a slot that holds 0: every span empty.
    model.node_spans = {0: (0, 0), 1: (4 * per_block, 0)}
    prepared, findings = checks.checked(model)
    assert prepared.misread == (selfcheck.NODE_SPAN,) and prepared.node_spans == {}
    assert [f.reason for f in findings if f.kind == UNREADABLE] == [
        "pglist_data node span: does not match the online memory blocks on 8 of 8 blocks: "
        "layout of 6.1.0-27-cloud-amd64 not understood"]
    # An offline block outside its node's span is the kernel's rule (the
    # span grows when memory goes online).
    model.node_spans = {0: (0, 4 * per_block), 1: (4 * per_block, 4 * per_block)}
    model.blocks.append(h.block(40, 1, state="offline"))
    assert checks.prepare(model).misread == ()


def test_cross_checking_twice_adds_nothing():
    model = x86_with_page_nids(above_node=(1 << NODES_SHIFT) - 1, width=NODES_SHIFT)
    once = checks.prepare(model)
    assert len(once.unreadable) == 1
    assert checks.prepare(once).unreadable == once.unreadable
    # Even compared again, a field found misread is not compared twice.
    again = selfcheck.cross_check(replace(once, cross_checked=False),
                                  checks.pfn_sets(checks.with_section_table(once)))
    assert again.unreadable == once.unreadable
    assert checks.run_checks(once) == checks.run_checks(model)


def test_misread_sections_do_not_explain_a_missing_link():
    # arm64 5.10's memory0 lacks its node link because pfn_valid() is false
    # on the whole block: a reason read from the sections. Misread, the
    # sections explain nothing and the missing link is an error again.
    model = h.arm64_510()
    (before,) = [f for f in checks.run_checks(model) if f.kind == MISSING_LINK]
    assert before.severity == "warning"
    model.sections = [replace(s, nr=s.nr + 256) for s in model.sections]
    prepared, findings = checks.checked(model)
    assert prepared.misread == (selfcheck.SECTION_PRESENCE,)
    (after,) = [f for f in findings if f.kind == MISSING_LINK]
    assert (after.severity, after.block) == ("error", 0)
