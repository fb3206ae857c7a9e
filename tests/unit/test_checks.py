"""Each check on small hand-made models of the test-bed guests (handmade.py)."""

from dataclasses import replace

import pytest

import handmade as h
from drgn_hotplug import checks, report
from drgn_hotplug.checks import (MEMBLOCK_WITHOUT_MEMMAP, MEMMAP_WITHOUT_MEMBLOCK, MISSING_LINK,
                                 NOT_LINEAR_MAPPED, ORPHANED_LINK, PFN_VALID_MISMATCH,
                                 UNREADABLE, WRONG_NODE_LINK)
from drgn_hotplug.model import MemblockType, Unreadable


def serious(findings):
    return [f for f in findings if f.severity in ("error", "warning")]


# ---------------------------------------------------------------- x86_64 6.1

def test_x86_boot_is_clean_and_reports_early_holes_as_info():
    findings = checks.run_checks(h.x86_boot())
    assert serious(findings) == []
    # The first page, the 640K-1M legacy hole and the firmware-reserved top
    # of RAM have struct pages (their sections are early) but no memblock.
    assert h.ranges_of(h.by_kind(findings, MEMMAP_WITHOUT_MEMBLOCK)) == [
        (0x0, 0x1, "early-section-hole"), (0x9f, 0x100, "early-section-hole"),
        (0x3ffe0, 0x40000, "early-section-hole")]
    assert report.exit_status(findings) == 0


def test_x86_hot_added_memory_never_enters_memblock_info():
    findings = checks.run_checks(h.x86_hotplug())
    assert serious(findings) == []
    hot = [f for f in findings if f.facts.get("reason_code") == "hot-added-arch-discards-memblock"]
    assert [(f.start_pfn, f.end_pfn, f.severity) for f in hot] == [(0x100000, 0x110000, "info")]
    assert [s["nr"] for s in hot[0].facts["sections"]] == [32, 33]


def test_x86_orphan_reports_exactly_the_dangling_links():
    findings = checks.run_checks(h.x86_orphan())
    assert [(f.kind, f.severity, f.node, f.block) for f in serious(findings)] == [
        (ORPHANED_LINK, "error", 1, 32), (ORPHANED_LINK, "error", 1, 33)]
    orphan = serious(findings)[0]
    assert orphan.facts["block_exists"] is False
    assert "deactivated" in orphan.reason and "node1/memory32" in orphan.reason
    assert report.exit_status(findings) == 1


def test_link_to_a_block_that_is_gone_while_its_target_looks_live():
    model = h.x86_boot()
    model.links.append(replace(h.link_pair(1, 40)[0]))
    (finding,) = serious(checks.run_checks(model))
    assert (finding.kind, finding.node, finding.block) == (ORPHANED_LINK, 1, 40)
    assert "no longer exists" in finding.reason


def test_x86_pmem_inactive_subsection_is_info_and_no_block_is_missing():
    findings = checks.run_checks(h.x86_pmem())
    assert serious(findings) == []
    (mismatch,) = h.by_kind(findings, PFN_VALID_MISMATCH)
    assert (mismatch.start_pfn, mismatch.end_pfn, mismatch.severity) == (0x3fe00, 0x40000, "info")
    assert mismatch.facts["reason_code"] == "subsection-inactive-zone-device"
    assert mismatch.facts["sections"][0]["subsection_map"] == (1 << 63) - 1
    # The ZONE_DEVICE section has no memory block device and must not be
    # reported as a block problem.
    assert not h.by_kind(findings, MISSING_LINK)


def test_x86_510_pmem_without_taint_flag_is_still_zone_device():
    # SECTION_TAINT_ZONE_DEVICE only exists since v5.12 (1f90a3477df3): on
    # 5.10 a non-early section without a memory block is ZONE_DEVICE.
    model = h.x86_pmem(h.x86_kernel(version=(5, 10, 251)))
    model.sections[7] = h.section(7, frozenset({"MARKED_PRESENT", "HAS_MEM_MAP"}),
                                  subsection_map=(1 << 63) - 1)
    (mismatch,) = h.by_kind(checks.run_checks(model), PFN_VALID_MISMATCH)
    assert mismatch.facts["reason_code"] == "subsection-inactive-zone-device"


def test_partial_hot_add_inactive_subsections_are_info():
    model = h.x86_hotplug()
    model.sections[-1] = h.section(33, h.HOTPLUGGED, subsection_map=(1 << 32) - 1)
    (mismatch,) = h.by_kind(checks.run_checks(model), PFN_VALID_MISMATCH)
    assert (mismatch.start_pfn, mismatch.end_pfn) == (0x108000 + 0x4000, 0x110000)
    assert (mismatch.severity, mismatch.facts["reason_code"]) == ("info", "subsection-inactive")


def test_garbage_subsection_bits_stay_inside_their_section():
    model = h.x86_hotplug()
    model.sections[-1] = h.section(33, h.HOTPLUGGED, subsection_map=((1 << 32) - 1) | 1 << 70)
    (mismatch,) = h.by_kind(checks.run_checks(model), PFN_VALID_MISMATCH)
    assert (mismatch.start_pfn, mismatch.end_pfn) == (0x10c000, 0x110000)


def test_pre_53_generic_pfn_valid_has_no_subsection_mismatch():
    # Before v5.3 generic pfn_valid() is valid_section() alone.
    kernel = h.x86_kernel(version=(4, 19, 0), subsection_shift=None)
    model = h.x86_hotplug(kernel)
    model.sections[-1] = h.section(33, h.HOTPLUGGED, subsection_map=None)
    assert not h.by_kind(checks.run_checks(model), PFN_VALID_MISMATCH)


def test_missing_links_in_each_direction_are_errors():
    model = h.x86_boot()
    model.links = [l for l in model.links
                   if not (l.block == 3) and not (l.block == 5 and l.direction == "block-to-node")]
    findings = serious(checks.run_checks(model))
    assert [(f.kind, f.severity, f.node, f.block, f.facts["missing"]) for f in findings] == [
        (MISSING_LINK, "error", 0, 3, ["node-to-block", "block-to-node"]),
        (MISSING_LINK, "error", 1, 5, ["block-to-node"])]


def test_offline_blocks_are_not_required_to_be_linked():
    model = h.x86_boot()
    model.blocks[3] = h.block(3, 0, state="offline")
    model.links = [l for l in model.links if l.block != 3]
    assert serious(checks.run_checks(model)) == []


def test_link_under_the_wrong_node():
    model = h.x86_boot()
    # memory5 is on node 1 (block nid and memblock nid); add a node0 link.
    model.links += [l for l in h.link_pair(0, 5)]
    findings = serious(checks.run_checks(model))
    assert [(f.kind, f.node, f.block) for f in findings] == [
        (WRONG_NODE_LINK, 0, 5), (WRONG_NODE_LINK, 0, 5)]
    assert "node1" in findings[0].reason


def test_block_spanning_two_nodes_may_be_linked_to_both():
    model = h.x86_boot()
    model.memblock_memory = h.memblock("memory", [(0x100000, 0x1c000000, 0, 0),
                                                  (0x1c000000, 0x3ffe0000, 0, 1)])
    # memory3 holds pfns of node 0 and node 1: the kernel links it to both.
    model.links += h.link_pair(1, 3)
    assert serious(checks.run_checks(model)) == []
    # Without the node1 link that is a missing link.
    model.links = [l for l in model.links if not (l.block == 3 and l.node == 1)]
    findings = serious(checks.run_checks(model))
    assert [(f.kind, f.node, f.block) for f in findings] == [(MISSING_LINK, 1, 3)]


def test_memblock_unavailable_skips_memblock_checks_with_the_reason():
    why = "memblock unavailable after boot: regions is not the static init array (discarded)"
    model = h.x86_hotplug()
    model.memblock_memory = h.memblock("memory", [], available=False, reason=why)
    findings = checks.run_checks(model)
    assert not h.by_kind(findings, MEMMAP_WITHOUT_MEMBLOCK)
    skipped = {s["check"]: s["reason"] for s in checks.skipped_checks(model)}
    assert skipped[MEMMAP_WITHOUT_MEMBLOCK] == why
    assert skipped[MEMBLOCK_WITHOUT_MEMMAP] == why
    assert PFN_VALID_MISMATCH not in skipped     # the generic rule needs no memblock


def test_memblock_without_memmap_is_a_warning():
    model = h.x86_boot()
    model.memblock_memory = h.memblock("memory", h.X86_MEMORY + [(0x50000000, 0x58000000, 0, 1)])
    (finding,) = serious(checks.run_checks(model))
    assert (finding.kind, finding.start_pfn, finding.end_pfn) == (
        MEMBLOCK_WITHOUT_MEMMAP, 0x50000, 0x58000)
    assert finding.facts["memblock_memory"][0]["base"] == 0x50000000


# ---------------------------------------------------------------- arm64 5.10

ARM64_510_MISMATCH = [
    (0x0, 0x4000, "not-in-memblock"),        # hole below the flash
    (0x4000, 0x8000, "memblock-nomap"),       # flash variable store
    (0x8000, 0x40000, "not-in-memblock"),     # hole up to RAM at 1 GiB
    (0x7c440, 0x7c730, "memblock-nomap"),     # UEFI runtime
    (0x7fc00, 0x7ffe0, "memblock-nomap"),     # UEFI runtime
    (0xbfbfc, 0xbfbfd, "memblock-nomap"),     # SRAT override, 244 bytes
]


def test_arm64_510_nomap_and_section0_holes_are_warnings():
    findings = checks.run_checks(h.arm64_510())
    mismatches = h.by_kind(findings, PFN_VALID_MISMATCH)
    assert h.ranges_of(mismatches) == ARM64_510_MISMATCH
    assert {f.severity for f in mismatches} == {"warning"}
    assert mismatches[1].facts["pfn_valid_rule"] == "arm64-memblock-map"
    assert mismatches[1].facts["memblock_memory"][0]["flag_names"] == ["NOMAP"]
    # pfn_valid() is memblock-based before v5.14: no linear-map check.
    assert not h.by_kind(findings, NOT_LINEAR_MAPPED)
    assert report.exit_status(findings) == 1


def test_arm64_510_memory0_missing_link_is_explained_by_pfn_valid():
    (missing,) = h.by_kind(checks.run_checks(h.arm64_510()), MISSING_LINK)
    # memory0's node comes from memblock (the flash region is on node 0):
    # memory_block.nid stayed NUMA_NO_NODE because nothing was linked.
    assert (missing.node, missing.block, missing.severity) == (0, 0, "warning")
    assert "pfn_valid() is false for every pfn" in missing.reason
    assert "get_nid_for_pfn() returns -1" in missing.reason
    assert missing.facts["block_nodes"] == {"0": ["memblock.memory region nid"]}


def test_arm64_510_backported_subsection_rule_changes_only_hot_added_sections():
    # A ZONE_DEVICE section (non-early, no memory block, not in memblock)
    # with its last subsection inactive, on both 5.10 rules.
    def with_pmem(model):
        model.sections.append(h.section(3, h.ZONE_DEVICE, subsection_map=(1 << 511) - 1))
        return model

    plain = h.by_kind(checks.run_checks(with_pmem(h.arm64_510())), PFN_VALID_MISMATCH)
    assert h.ranges_of(plain)[-1] == (0xc0000, 0x100000, "zone-device-not-in-memblock")

    backport = with_pmem(h.arm64_510(inlines=("valid_section", "early_section",
                                              "pfn_section_valid")))
    mismatches = h.by_kind(checks.run_checks(backport), PFN_VALID_MISMATCH)
    assert mismatches[0].facts["pfn_valid_rule"] == "arm64-memblock-map-hotplug"
    assert h.ranges_of(mismatches) == ARM64_510_MISMATCH + [
        (0xffe00, 0x100000, "subsection-inactive-zone-device")]
    assert mismatches[-1].severity == "info"


def test_arm64_514_memblock_is_memory_makes_nomap_valid():
    model = h.arm64_510(version=(5, 14, 21))
    findings = checks.run_checks(model)
    assert h.ranges_of(h.by_kind(findings, PFN_VALID_MISMATCH)) == [
        (0x0, 0x4000, "not-in-memblock"), (0x8000, 0x40000, "not-in-memblock")]
    assert h.ranges_of(h.by_kind(findings, NOT_LINEAR_MAPPED)) == [
        (0x4000, 0x8000, "memblock-nomap"), (0x7c440, 0x7c730, "memblock-nomap"),
        (0x7fc00, 0x7ffe0, "memblock-nomap"), (0xbfbfc, 0xbfbfd, "memblock-nomap")]


def test_arm64_memblock_based_rule_without_memblock_is_skipped():
    model = h.arm64_510()
    model.memblock_memory = MemblockType("memory", 0, 200, 128, (), False,
                                         "memblock unavailable after boot: cnt 200 exceeds max 128")
    findings = checks.run_checks(model)
    assert not h.by_kind(findings, PFN_VALID_MISMATCH)
    skipped = {s["check"]: s["reason"] for s in checks.skipped_checks(model)}
    assert "arm64-memblock-map pfn_valid() needs memblock" in skipped[PFN_VALID_MISMATCH]


# ---------------------------------------------------------------- arm64 6.1

def test_arm64_61_nomap_is_not_linear_mapped_and_nothing_is_serious():
    findings = checks.run_checks(h.arm64_61())
    assert serious(findings) == []
    assert not h.by_kind(findings, PFN_VALID_MISMATCH)
    assert h.ranges_of(h.by_kind(findings, NOT_LINEAR_MAPPED)) == [
        (0x0, 0x4000, "not-in-memblock"), (0x4000, 0x8000, "memblock-nomap"),
        (0x7c440, 0x7c730, "memblock-nomap"), (0x7fc00, 0x7ffe0, "memblock-nomap"),
        (0xbfbfc, 0xbfbfd, "memblock-nomap")]


def test_arm64_61_hot_added_memory_missing_from_memblock_is_a_warning():
    # arm64 keeps memblock and add_memory_resource() adds hot-added memory
    # to it; a hot-added GiB on node 1 absent from memblock is inconsistent.
    model = h.arm64_61()
    added = [h.block(i, 1, zone="Movable") for i in range(24, 32)]
    model.sections += [h.section(i, h.HOTPLUGGED) for i in range(24, 32)]
    model.blocks += added
    model.links += h.links_for(added)
    (finding,) = serious(checks.run_checks(model))
    assert (finding.kind, finding.start_pfn, finding.end_pfn, finding.facts["reason_code"]) == (
        MEMMAP_WITHOUT_MEMBLOCK, 0xc0000, 0x100000, "hot-added-not-in-memblock")
    assert finding.facts["section_count"] == 8
    # Once memblock holds it, as after a real hot-add, all is consistent.
    model.memblock_memory = h.memblock("memory", h.ARM64_MEMORY + [(0xc0000000, 0x100000000,
                                                                    0, 1)])
    assert serious(checks.run_checks(model)) == []


# ---------------------------------------------------------------- explain

def test_explain_a_nomap_pfn_on_arm64_510():
    e = checks.explain(h.arm64_510(), 0x4000)
    assert (e["pfn"], e["phys"]) == (0x4000, 0x4000000)
    assert e["section"]["nr"] == 0 and e["section"]["early"] and e["section"]["valid"]
    assert e["pfn_valid"]["value"] is False
    assert e["pfn_valid"]["rule"] == "arm64-memblock-map"
    assert e["memblock"]["memory"]["regions"][0]["flag_names"] == ["NOMAP"]
    assert e["memory_block"]["id"] == 0 and e["memory_block"]["links"] == []
    assert {f["kind"] for f in e["findings"]} == {PFN_VALID_MISMATCH, MISSING_LINK}


def test_explain_the_inactive_pmem_subsection():
    e = checks.explain(h.x86_pmem(), 0x3fe00)
    assert e["section"]["subsection"] == 63
    assert e["section"]["subsection_active"] is False
    assert e["pfn_valid"]["value"] is False and e["zone_device"] is True
    assert e["memory_block"] == {"id": 7, "exists": False, "links": []}
    assert e["memblock"]["memory"]["regions"] == []


def test_explain_a_pfn_outside_every_section():
    e = checks.explain(h.x86_boot(), 0x200000)
    assert e["section"] == {"nr": 64, "present": False}
    assert e["pfn_valid"]["value"] is False and e["findings"] == []


def test_page_nid_counts_for_memory_but_not_for_a_hole():
    model = h.x86_boot()
    # pfn 0 is a hole (not in memblock.memory): its struct page's nid says
    # nothing about where memory0 lives.
    model.page_nids = {0x0: 1}
    assert serious(checks.run_checks(model)) == []
    # pfn 0x20000 is memory4's first page of RAM: a page on node 0 means the
    # kernel also links memory4 under node0.
    model.page_nids = {0x20000: 0}
    (finding,) = serious(checks.run_checks(model))
    assert (finding.kind, finding.node, finding.block) == (MISSING_LINK, 0, 4)
    assert finding.facts["block_nodes"]["0"] == ["page nid"]


def test_nonsense_kernel_constants_are_a_one_line_error():
    model = h.x86_boot(h.x86_kernel(memory_block_size=0))
    with pytest.raises(ValueError, match="^cannot analyse: memory block size 0x0 is not"):
        checks.run_checks(model)
    model = h.x86_boot(h.x86_kernel(section_size_bits=50))
    with pytest.raises(ValueError, match="SECTION_SIZE_BITS 50 does not fit"):
        checks.explain(model, 0)


def test_links_the_dump_lacks_are_unreadable_not_findings():
    # makedumpfile -d 31 drops slab pages: a link's target kernfs node or a
    # directory listing may be missing from the dump (x86_64 6.12 orphan cell).
    model = h.x86_boot()
    lost = replace(h.dead_link(1, 5), target_dead_reasons=("unreadable",))
    model.links = [l for l in model.links if l.block != 5 or l.direction != "node-to-block"]
    model.links.append(lost)
    model.blocks[6] = replace(model.blocks[6], kn_address=0xffff888010001800)
    model.unreadable.append(Unreadable("kernfs children of memory6", "page excluded",
                                       0xffff888010001800))
    model.links = [l for l in model.links if not (l.block == 6 and l.direction == "block-to-node")]
    # The unread directory is a warning of its own, and the only finding.
    assert [(f.kind, f.severity, f.facts["address"]) for f in serious(checks.run_checks(model))] \
        == [(UNREADABLE, "warning", 0xffff888010001800)]
    # The same absences with readable directories are findings.
    model.unreadable.clear()
    model.links.remove(lost)
    findings = serious(checks.run_checks(model))
    assert [(f.kind, f.block, f.facts["missing"]) for f in findings] == [
        (MISSING_LINK, 5, ["node-to-block"]), (MISSING_LINK, 6, ["block-to-node"])]


def test_a_node_whose_struct_node_is_unreadable_lists_no_missing_link():
    # makedumpfile -d 31 on the x86_64 7.x kmem cell drops node0's struct
    # node: its kernfs directory is unknown, so its links were never listed.
    model = h.x86_boot()
    model.nodes[0] = replace(model.nodes[0], kn_address=None)
    model.links = [l for l in model.links if not (l.node == 0 and l.direction == "node-to-block")]
    model.unreadable.append(Unreadable("struct node", "Excluded page", model.nodes[0].address))
    assert [(f.kind, f.severity) for f in serious(checks.run_checks(model))] == [(UNREADABLE, "warning")]
    # With node0's directory known, the same absences are findings.
    model.nodes[0] = h.nodes(0)[0]
    model.unreadable.clear()
    assert [(f.kind, f.block, f.facts["missing"]) for f in serious(checks.run_checks(model))] == [
        (MISSING_LINK, b, ["node-to-block"]) for b in range(4)]


def test_blocks_the_dump_lacks_prove_no_removal():
    # makedumpfile -d 31 on 7.x drops the bus list's and the xarray's slab
    # pages (x86_64 7.x orphan cell): no block is read, yet every link is.
    model = h.x86_hotplug()
    model.blocks = []
    model.unreadable += [Unreadable("memory bus device list", "Excluded page", 0xffff8a5801299318),
                         Unreadable("memory_blocks xarray", "Excluded page", 0xffff8a5801447488)]
    findings = checks.run_checks(model)
    assert [(f.kind, f.severity) for f in serious(findings)] == [(UNREADABLE, "warning")] * 2
    hot = [f for f in findings if f.start_pfn == 0x100000]
    assert [f.facts["reason_code"] for f in hot] == ["hot-added-arch-discards-memblock"]
    # With the blocks read and memory32 really gone, its links are orphans.
    model = h.x86_hotplug()
    model.blocks = [b for b in model.blocks if b.id != 32]
    assert {(f.kind, f.block) for f in serious(checks.run_checks(model))} == {
        (ORPHANED_LINK, 32)}
