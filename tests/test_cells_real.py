"""End-to-end proofs on the real test bed: drgn-hotplug's findings on each
cell's vmcore equal what the guest kernel said about itself (truth.json)
and what a live guest shows (crash `kmem -n` is compared in
tests/test_matrix.py, on every cell).

Cells are built on first use (vmcores.build_cell caches them); building one
boots a Debian kernel under QEMU, so every test here is ``slow``.
"""

from __future__ import annotations

import functools
import json
import subprocess
from typing import Dict, List, Set, Tuple

import pytest

import vmcores
from drgn_hotplug import checks, cli
from drgn_hotplug.drgn_reader import read_model
from drgn_hotplug.model import Finding, Model
from drgn_hotplug.ranges import RangeSet

pytest.importorskip("drgn")
pytestmark = pytest.mark.slow

X86_KERNELS = vmcores.KERNELS["x86_64"]
MEMBLOCK_NOMAP = 0x4


@functools.lru_cache(maxsize=None)
def cell(arch: str, kernel: str, scenario: str) -> vmcores.Cell:
    return vmcores.build_cell(arch, kernel, scenario)


@functools.lru_cache(maxsize=None)
def model_of(arch: str, kernel: str, scenario: str) -> Model:
    c = cell(arch, kernel, scenario)
    return read_model(cli.open_program(core=str(c.kdump), symbols=[str(c.vmlinux)]))


def findings_of(arch: str, kernel: str, scenario: str) -> List[Finding]:
    return checks.run_checks(model_of(arch, kernel, scenario))


def serious(findings: List[Finding]) -> List[Finding]:
    return [f for f in findings if f.severity in ("error", "warning")]


def ranges_of(findings: List[Finding], kind: str, severity: str) -> RangeSet:
    return RangeSet([(f.start_pfn, f.end_pfn) for f in findings
                     if f.kind == kind and f.severity == severity])


def pfns_of_bytes(start: int, end_exclusive: int, page_shift: int) -> Tuple[int, int]:
    return start >> page_shift, end_exclusive >> page_shift


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["drgn-hotplug", *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- x86_64: links and blocks

@pytest.mark.parametrize("kernel", X86_KERNELS)
def test_orphan_finds_exactly_the_dangling_links(kernel):
    c = cell("x86_64", kernel, "orphan")
    dangling = {(d["node"], d["block"]) for d in c.truth["dangling_links"]}
    assert dangling, "the orphan scenario must leave dangling links"
    findings = findings_of("x86_64", kernel, "orphan")
    orphaned = {(f.node, f.block) for f in findings if f.kind == "orphaned-link"}
    assert orphaned == dangling
    assert all(f.severity == "error" for f in findings if f.kind == "orphaned-link")
    assert [f.kind for f in serious(findings) if f.kind != "orphaned-link"] == []
    result = run_cli("-c", str(c.kdump), "-s", str(c.vmlinux), "check")
    assert result.returncode == 1, result.stderr
    for node, block in dangling:
        assert f"node{node}/memory{block}" in result.stdout


@pytest.mark.parametrize("kernel", X86_KERNELS)
@pytest.mark.parametrize("scenario", ("boot", "hotplug"))
def test_x86_64_clean_cells_exit_0(kernel, scenario):
    c = cell("x86_64", kernel, scenario)
    assert serious(findings_of("x86_64", kernel, scenario)) == []
    result = run_cli("-c", str(c.kdump), "-s", str(c.vmlinux), "check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kernel", X86_KERNELS)
@pytest.mark.parametrize("scenario", ("boot", "hotplug", "orphan"))
def test_blocks_equal_truth(kernel, scenario):
    truth = cell("x86_64", kernel, scenario).truth
    model = model_of("x86_64", kernel, scenario)
    assert {(b.id, b.state, b.nid) for b in model.blocks} == {
        (t["block"], t["state"], t["node"]) for t in truth["memory_blocks"]}
    assert all(b.in_bus and b.in_xarray for b in model.blocks)
    # valid_zones of an online block names the zone it is in; "none" when it
    # spans zones, where memory_block::zone is NULL (v5.15, 395f6081bad4).
    zones = {t["block"]: t["valid_zones"] for t in truth["memory_blocks"]}
    for block in model.blocks:
        if block.zone is not None or zones[block.id] == "none":
            assert (block.zone or "none") == zones[block.id], block


@pytest.mark.parametrize("kernel", X86_KERNELS)
@pytest.mark.parametrize("scenario", ("boot", "hotplug", "orphan"))
def test_node_links_equal_truth(kernel, scenario):
    truth = cell("x86_64", kernel, scenario).truth
    model = model_of("x86_64", kernel, scenario)
    node_to_block = {(l.node, l.block, l.target_live) for l in model.links
                     if l.direction == "node-to-block"}
    assert node_to_block == {(t["node"], t["block"], t["target_exists"])
                             for t in truth["node_links"]}
    # Every existing block links back to its node, and only there.
    block_to_node = {(l.node, l.block) for l in model.links if l.direction == "block-to-node"}
    assert block_to_node == {(t["node"], t["block"]) for t in truth["memory_blocks"]}


def test_hotplug_page_nids_name_the_dimm_node():
    """The hot-added DIMM's struct pages carry the node it was plugged into."""
    truth = cell("x86_64", "6.1", "hotplug").truth
    model = model_of("x86_64", "6.1", "hotplug")
    shift = model.kernel.page_shift
    live_dimms = [e for e in truth["events"] if e["op"] == "hot-add"
                  and not any(r["op"] == "hot-remove" and r["dimm"] == e["dimm"]
                              for r in truth["events"])]
    assert live_dimms
    for dimm in live_dimms:
        assert model.page_nids[dimm["addr"] >> shift] == dimm["node"]


# ---------------------------------------------------------------- x86_64: pmem

@pytest.mark.parametrize("kernel", X86_KERNELS)
def test_pmem_inactive_subsection_is_an_info_mismatch(kernel):
    model = model_of("x86_64", kernel, "pmem")
    pmem = next(e for e in cell("x86_64", kernel, "pmem").truth["events"] if e["op"] == "pmem")
    shift = model.kernel.page_shift
    section_end = ((pmem["start"] >> model.kernel.section_size_bits) + 1) \
        << model.kernel.section_size_bits
    subsection = 1 << model.kernel.subsection_shift
    last_subsection = RangeSet([pfns_of_bytes(section_end - subsection, section_end, shift)])
    findings = checks.run_checks(model)
    info = ranges_of(findings, "pfn-valid-mismatch", "info")
    assert not (last_subsection - info)
    assert not ranges_of(findings, "pfn-valid-mismatch", "warning")
    # The fsdax namespace's memory has struct pages but no memory block device.
    device_block = pmem["start"] // model.kernel.memory_block_size
    assert device_block not in {b.id for b in model.blocks}
    assert not [f for f in findings if f.kind == "missing-link" and f.block == device_block]
    assert serious(findings) == []


# ---------------------------------------------------------------- arm64

def nomap_ranges(truth: dict, page_shift: int) -> RangeSet:
    """NOMAP memblock regions of the boot log, in pfns."""
    return RangeSet([pfns_of_bytes(r["base"], r["base"] + r["size"], page_shift)
                     for r in truth["memblock_boot"]["memory"] if r["flags"] & MEMBLOCK_NOMAP])


def efi_nomap_ranges(truth: dict, page_shift: int) -> RangeSet:
    """EFI map entries the kernel marks NOMAP: runtime services and MMIO
    (reserve_regions() in drivers/firmware/efi/efi-init.c)."""
    return RangeSet([pfns_of_bytes(e["start"], e["end"] + 1, page_shift)
                     for e in truth["efi_memmap"]
                     if "RUN" in e["attrs"] or e["type"].startswith("MMIO")])


def test_arm64_5_10_nomap_and_section_0_holes_are_pfn_valid_mismatches():
    truth = cell("arm64", "5.10", "boot").truth
    model = model_of("arm64", "5.10", "boot")
    shift = model.kernel.page_shift
    findings = checks.run_checks(model)
    warned = ranges_of(findings, "pfn-valid-mismatch", "warning")
    nomap = nomap_ranges(truth, shift)
    assert nomap and not (nomap - warned)
    # The kernel's own answer: /proc/kpageflags "no page" pfns inside
    # sections with a memmap are exactly the pfn_valid() mismatches.
    valid = RangeSet([checks.section_range(model.kernel, s.nr) for s in model.sections if s.valid])
    no_page = RangeSet([tuple(r) for r in truth["no_page_ranges"]]) & valid
    assert warned == no_page
    section0 = RangeSet([checks.section_range(model.kernel, 0)])
    memory = RangeSet([pfns_of_bytes(r["base"], r["base"] + r["size"], shift)
                       for r in truth["memblock_boot"]["memory"]])
    assert not ((section0 - memory) - warned)


def test_arm64_5_10_memory0_missing_link_names_its_cause():
    truth = cell("arm64", "5.10", "boot").truth
    assert not [l for l in truth["node_links"] if l["block"] == 0]
    findings = findings_of("arm64", "5.10", "boot")
    missing = [f for f in findings if f.kind == "missing-link" and f.block == 0]
    assert len(missing) == 1
    assert "pfn_valid() is false for every pfn" in missing[0].reason
    assert missing[0].facts["pfn_valid_rule"] == "arm64-memblock-map-hotplug"
    assert model_of("arm64", "5.10", "boot").kernel.arch_pfn_valid_inlines


@pytest.mark.parametrize("scenario", ("boot", "hotplug"))
def test_arm64_6_1_nomap_is_not_linear_mapped_only(scenario):
    truth = cell("arm64", "6.1", scenario).truth
    model = model_of("arm64", "6.1", scenario)
    findings = checks.run_checks(model)
    assert not ranges_of(findings, "pfn-valid-mismatch", "warning")
    not_mapped = ranges_of(findings, "not-linear-mapped", "info")
    nomap = nomap_ranges(truth, model.kernel.page_shift)
    assert nomap and not (nomap - not_mapped)
    assert model.kernel.arch_pfn_valid_inlines is None


# ---------------------------------------------------------------- the reader's cross-checks

def unchecked_findings(model: Model) -> List[Finding]:
    """The findings without the cross-check: every field taken as read."""
    model = checks.with_section_table(model)
    return checks._run_all(checks._Context(model, checks.pfn_sets(model)))


@pytest.mark.parametrize("key", vmcores.matrix(), ids="-".join)
def test_the_cross_checks_are_silent_where_the_reader_reads_right(key):
    """On every cell of the matrix, full and filtered dump, each fact the
    kernel keeps twice reads the same both ways: the cross-check names no
    field and changes no finding. (A failure names a field the reader
    misreads on that kernel.)"""
    c = cell(*key)
    for dump in filter(None, (c.kdump, c.filtered_kdump)):
        model = read_model(cli.open_program(core=str(dump), symbols=[str(c.vmlinux)]))
        prepared, findings = checks.checked(model)
        assert prepared.misread == (), (dump.name, [u.reason for u in prepared.unreadable[len(model.unreadable):]])
        assert prepared.unreadable == model.unreadable, dump.name
        assert findings == unchecked_findings(model), dump.name


def shifted_page_nids(prog, model: Model) -> Dict[int, int]:
    """The page nids a kernel that packs a 10-bit field of ones above the
    node would give the reader's decoder: each real page->flags word at a
    page nid site, its bits moved down by NODES_SHIFT under the new field."""
    from drgn import TypeKind
    from drgn.helpers.linux.mm import pfn_to_page

    from drgn_hotplug.reader.page import page_flags_nid

    nodes_shift = model.kernel.max_numnodes.bit_length() - 1
    shifted = {}
    for pfn in model.page_nids:
        flags = pfn_to_page(prog, pfn).flags
        if flags.type_.kind == TypeKind.STRUCT:    # memdesc_flags_t (7.x)
            flags = flags.f
        word = ((1 << nodes_shift) - 1) << (64 - nodes_shift) | flags.value_() >> nodes_shift
        shifted[pfn] = page_flags_nid(word, model.kernel)
    return shifted


@pytest.mark.parametrize("arch, kernel", [("x86_64", "6.1"), ("arm64", "6.1")])
def test_a_page_node_field_moved_by_a_future_kernel_draws_no_finding(arch, kernel):
    """The orphan cell's real struct pages, decoded as if the node field had
    moved: one unreadable entry names the field and the release, no link
    finding comes from the page nids, the orphans are still found exactly,
    and the check exits 1."""
    c = cell(arch, kernel, "orphan")
    prog = cli.open_program(core=str(c.kdump), symbols=[str(c.vmlinux)])
    model = read_model(prog)
    model.page_nids = shifted_page_nids(prog, model)
    assert set(model.page_nids.values()) == {model.kernel.max_numnodes - 1}
    assert {f.kind for f in unchecked_findings(model) if f.node == model.kernel.max_numnodes - 1} \
        == {"missing-link"}, "the moved field must mislead the checks without the cross-check"
    prepared, findings = checks.checked(model)
    (entry,) = prepared.unreadable
    assert entry.what == "page->flags node field"
    assert entry.reason.endswith(f"layout of {c.truth['release']} not understood")
    assert [f for f in findings if f.kind in ("missing-link", "wrong-node-link")] == []
    dangling = {(d["node"], d["block"]) for d in c.truth["dangling_links"]}
    assert {(f.node, f.block) for f in findings if f.kind == "orphaned-link"} == dangling
    text, status = cli.render_command(model, "check")
    assert status == 1 and "page->flags node field: does not match memory_block.nid" in text


# ---------------------------------------------------------------- live guests

def finding_keys(findings) -> Set[tuple]:
    return {(f["kind"], f["severity"], f.get("start_pfn"), f.get("end_pfn"), f.get("node"),
             f.get("block")) for f in findings}


def test_live_qemu_matches_the_dump_and_sees_a_hot_add():
    c = cell("x86_64", "6.1", "orphan")
    from_dump = json.loads(run_cli("-c", str(c.kdump), "-s", str(c.vmlinux), "--json",
                                   "check").stdout)
    with vmcores.start_live(c) as guest:
        socket = str(guest.drgn_qmp_socket)
        live = run_cli("--qemu", socket, "-s", str(c.vmlinux), "--json", "check")
        assert live.returncode == 1, live.stderr
        assert finding_keys(json.loads(live.stdout)["findings"]) == \
            finding_keys(from_dump["findings"])
        # One attached Program, read again after each guest change: nothing cached.
        prog = cli.open_program(qemu=socket, symbols=[str(c.vmlinux)])
        before = {b.id for b in read_model(prog).blocks}
        added = guest.hot_add(0, 256)
        after = read_model(prog)
        blocks = {b.id: b for b in after.blocks}
        assert set(blocks) - before == set(added["blocks"])
        assert all(blocks[block].state == "offline" for block in added["blocks"])
        # Hot-add registers the new blocks under their node at once (both directions).
        live_links = {(l.direction, l.node, l.block) for l in after.links if l.target_live}
        for block in added["blocks"]:
            assert ("node-to-block", 0, block) in live_links
            assert ("block-to-node", 0, block) in live_links
        for block in added["blocks"]:
            guest.online(block, "online_movable")
        online = read_model(prog)
        assert {b.id: b.zone for b in online.blocks if b.id in added["blocks"]} == \
            {block: "Movable" for block in added["blocks"]}
        assert finding_keys(f.to_dict() for f in serious(checks.run_checks(online))) == \
            finding_keys(f for f in from_dump["findings"] if f["severity"] != "info")
