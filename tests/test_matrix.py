"""Every cell of the bed's matrix (``vmcores.matrix()``: each Debian series
on each arch, each scenario): drgn-hotplug's findings equal what the guest
kernel said about itself, gdb builds the model drgn builds, and crash
``kmem -n`` agrees wherever crash can read the kernel.

The outcomes of this module are the bed's own results: ``tests/conftest.py``
records them and ``python -m vmcores.proven`` turns them into the README's
table of kernels proven.
"""

from __future__ import annotations

import functools
import re
import subprocess
from typing import Dict, List, Set, Tuple

import pytest

import vmcores
from drgn_hotplug import checks, cli, report
from drgn_hotplug.model import Finding, Model
from drgn_hotplug.ranges import RangeSet

drgn = pytest.importorskip("drgn")
pexpect = pytest.importorskip("pexpect")
from drgn_hotplug.drgn_reader import DrgnTarget, read_model  # noqa: E402
from drgn_hotplug.reader.mmzone import section_map_last_bit  # noqa: E402
from test_gdb import MEMHP, Gdb, plain  # noqa: E402

pytestmark = [pytest.mark.bed, pytest.mark.slow]

CELLS = vmcores.matrix()
SERIOUS = ("error", "warning")


@functools.lru_cache(maxsize=None)
def cell(key: Tuple[str, str, str]) -> vmcores.Cell:
    return vmcores.build_cell(*key)


@functools.lru_cache(maxsize=None)
def model_of(key: Tuple[str, str, str]) -> Model:
    c = cell(key)
    return read_model(cli.open_program(core=str(c.kdump), symbols=[str(c.vmlinux)]))


def serious_of_kind(findings: List[Finding], kind: str) -> List[Finding]:
    return [f for f in findings if f.kind == kind and f.severity in SERIOUS]


def truth_links(truth: dict) -> Set[Tuple[str, int, int]]:
    """(direction, node, block) of the live links the guest's sysfs had:
    ``nodeN/memoryM`` from the node directories, ``memoryM/nodeN`` from the
    block directories (the node a block names is the one it links to)."""
    links = {("node-to-block", l["node"], l["block"]) for l in truth["node_links"] if l["target_exists"]}
    links |= {("block-to-node", b["node"], b["block"]) for b in truth["memory_blocks"]
              if b["node"] is not None}
    return links


def truly_missing_blocks(truth: dict) -> Set[int]:
    """Online blocks the guest shows without a node link in one direction or
    the other: the missing-link findings the check owes."""
    links = truth_links(truth)
    linked_nodes: Dict[int, Set[Tuple[str, int]]] = {}
    for direction, node, block in links:
        linked_nodes.setdefault(block, set()).add((direction, node))
    missing = set()
    for b in truth["memory_blocks"]:
        if b["state"] != "online":
            continue
        have = linked_nodes.get(b["block"], set())
        nodes = {node for _, node in have}
        if not nodes or any({("node-to-block", n), ("block-to-node", n)} - have for n in nodes):
            missing.add(b["block"])
    return missing


def no_page_in_valid_sections(truth: dict, model: Model) -> RangeSet | None:
    """The guest's /proc/kpageflags "no page" pfns inside valid, online sections.

    None where the bed did not read kpageflags (x86_64), or where the kernel
    no longer says KPF_NOPAGE at all: Debian's 7.3 gives 0, not KPF_NOPAGE,
    even for the pfns of absent sections below 1 GiB that every arm64 guest
    of the bed has (seen live: pfn 0x8000 reads 0 on 7.3.4, NOPAGE on 6.12).
    """
    if not truth.get("no_page_ranges"):
        return None
    # kpageflags looks pages up with pfn_to_online_page(): the pfns of an
    # offline section (the offline flavour's blocks) are "no page" by design.
    valid = RangeSet([checks.section_range(model.kernel, s.nr) for s in model.sections
                      if s.valid and s.online])
    return RangeSet([tuple(r) for r in truth["no_page_ranges"]]) & valid


def inactive_subsections(model: Model) -> RangeSet:
    """Pfns of valid sections whose subsection_map bit is clear, early
    sections included (their maps cover only what memblock had at boot)."""
    kernel = model.kernel
    per_subsection = 1 << (kernel.subsection_shift - kernel.page_shift)
    count = 1 << (kernel.section_size_bits - kernel.subsection_shift)
    ranges = []
    for s in model.sections:
        if s.valid and s.subsection_map is not None:
            first = s.nr << kernel.pfn_section_shift
            ranges += [(first + i * per_subsection, first + (i + 1) * per_subsection)
                       for i in range(count) if not s.subsection_map >> i & 1]
    return RangeSet(ranges)


def poked_group_blocks(truth: dict) -> Set[int]:
    """The blocks of the flavour's memory group when the bed poked the
    group's nid (vmcores.virtio_mem_bed.virtio_mem_bad_steps), else none."""
    if not any(e["op"] == "poke" and e.get("what") == "memory_group.nid" for e in truth["events"]):
        return set()
    return {b["block"] for b in truth["flavour"]["blocks"] if b["state"] != "absent"}


def broken_blocks(truth: dict) -> Dict[str, Set[int]]:
    """finding kind -> the blocks the bed broke its rule on
    (vmcores.flavours.memmap_on_memory_bad_steps): blocks hot-removed while
    release_mem_region_adjustable() returned at once keep their System RAM
    resource; a poked page->flags or nr_vmemmap_pages names its block."""
    broken: Dict[str, Set[int]] = {checks.SYSRAM_WITHOUT_MEMORY_BLOCK: set(),
                                   checks.VMEMMAP_SELF_HOSTED_MISMATCH: set(),
                                   checks.VMEMMAP_PAGES_MISCOUNTED: set()}
    patched = set()
    for e in truth["events"]:
        if e["op"] in ("patch", "unpatch"):
            (patched.add if e["op"] == "patch" else patched.discard)(e["symbol"])
        elif e["op"] == "hot-remove" and "release_mem_region_adjustable" in patched:
            broken[checks.SYSRAM_WITHOUT_MEMORY_BLOCK].update(e["blocks"])
        elif e["op"] == "poke" and e.get("what") == "page->flags":
            broken[checks.VMEMMAP_SELF_HOSTED_MISMATCH].add(e["block"])
        elif e["op"] == "poke" and e.get("what") == "memory_block.nr_vmemmap_pages":
            broken[checks.VMEMMAP_PAGES_MISCOUNTED].add(e["block"])
    return broken


def found_blocks(model: Model, finding: Finding) -> Set[int]:
    """The blocks a finding is about: its block, else those of its pfn range."""
    if finding.block is not None:
        return {finding.block}
    per_block = model.kernel.pages_per_block
    return set(range(finding.start_pfn // per_block, -(-finding.end_pfn // per_block)))


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_findings_equal_the_guest_truth(key):
    truth, model = cell(key).truth, model_of(key)
    findings = checks.run_checks(model)
    orphaned = {(f.node, f.block) for f in findings if f.kind == checks.ORPHANED_LINK}
    assert orphaned == {(d["node"], d["block"]) for d in truth["dangling_links"]}
    assert {f.block for f in serious_of_kind(findings, checks.MISSING_LINK)} == truly_missing_blocks(truth)
    assert serious_of_kind(findings, checks.WRONG_NODE_LINK) == []
    # A pfn-valid-mismatch warning: the kernel's pfn_valid() denies a struct
    # page that exists. The guest's kpageflags (pfn_to_online_page()) says
    # "no page" exactly where an arch pfn_valid() denies one or the pfn's
    # subsection is inactive, early sections included.
    warned = RangeSet([(f.start_pfn, f.end_pfn) for f in serious_of_kind(findings, checks.PFN_VALID_MISMATCH)])
    no_page = no_page_in_valid_sections(truth, model)
    if no_page is None:
        assert warned == RangeSet()
    else:
        assert no_page == warned | inactive_subsections(model)
    # A memory group made to name another node than its blocks (the bed's
    # virtio_mem_bad flavour pokes memory_group.nid): each of its blocks.
    mismatched = {f.block for f in findings if f.kind == checks.MEMORY_GROUP_MISMATCH}
    assert mismatched == poked_group_blocks(truth)
    # memmap_on_memory and System RAM rules the bed broke (memmap_on_memory_bad).
    for kind, blocks in broken_blocks(truth).items():
        assert set().union(*(found_blocks(model, f) for f in findings if f.kind == kind)) == blocks, kind
    accounted = {checks.ORPHANED_LINK, checks.MISSING_LINK, checks.PFN_VALID_MISMATCH,
                 checks.MEMORY_GROUP_MISMATCH, *broken_blocks(truth)}
    assert [f.reason for f in findings if f.severity in SERIOUS and f.kind not in accounted] == []
    assert model.unreadable == []


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_blocks_and_links_equal_the_guest_truth(key):
    truth, model = cell(key).truth, model_of(key)
    assert {(b.id, b.state) for b in model.blocks} == {(t["block"], t["state"]) for t in truth["memory_blocks"]}
    # A block's node as its sysfs directory names it (memoryM/nodeN); a
    # block without that link names none (arm64 5.10's memory0).
    linked = {t["block"]: t["node"] for t in truth["memory_blocks"] if t["node"] is not None}
    assert {b.id: b.nid for b in model.blocks if b.id in linked} == linked
    live = {(l.direction, l.node, l.block) for l in model.links if l.target_live}
    assert live == truth_links(truth)
    dead = {(l.node, l.block) for l in model.links if not l.target_live}
    assert dead == {(d["node"], d["block"]) for d in truth["dangling_links"]}


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_gdb_builds_the_model_drgn_builds(key):
    c = cell(key)
    gdb = Gdb(key[0], c.vmlinux)
    try:
        gdb.run(f"symbol-file -o {c.meta['kaslr_offset']:#x} {c.vmlinux}")
        gdb.run(f"core-file {c.kvaddr_elf}")
        assert gdb.run(f"source {MEMHP}").strip() == ""
        assert gdb.model() == plain(model_of(key).to_dict())
    finally:
        gdb.close()


KMEM_SECTION = re.compile(r"^\s*(\d+)\s+([0-9a-f]{16})\s+([0-9a-f]{16})\s+([0-9a-f]{16})\s+([PMOED]+)\s+(\d+)\s*$")
KMEM_BLOCK = re.compile(r"^\s*([0-9a-f]{16})\s+memory(\d+)\s+([0-9a-f]+)\s+-\s+([0-9a-f]+)\s+(\d+)\s+(\S+)\s+(\d+)\s*$")


@functools.lru_cache(maxsize=None)
def crash_kmem_n(key: Tuple[str, str, str]) -> Tuple[Set[tuple], Set[tuple], str]:
    """Sections and blocks of crash's ``kmem -n`` on the cell's kdump, and
    crash's own words (empty sets where crash cannot read the kernel)."""
    c = cell(key)
    # crash 8.0.2 finds the KASLR offset of a 6.12 x86_64 dump only when told (testbed-notes).
    kaslr = ["--kaslr", hex(c.meta["kaslr_offset"])] if key[0] == "x86_64" else []
    result = subprocess.run(["crash", "-s", *kaslr, str(c.vmlinux), str(c.kdump)],
                            input="kmem -n\nq\n", capture_output=True, text=True, timeout=300)
    lines = result.stdout.splitlines()
    sections = {(int(m[1]), int(m[2], 16), int(m[3], 16), m[5], int(m[6]))
                for m in map(KMEM_SECTION.match, lines) if m}
    blocks = {(int(m[1], 16), int(m[2]), int(m[5]), m[6].lower(), int(m[7]))
              for m in map(KMEM_BLOCK.match, lines) if m}
    said = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.startswith("crash:")]
    return sections, blocks, said[0] if said else (result.stderr + result.stdout)[-300:]


# (arch, series) -> why crash could not read a cell of it: the other cells of
# that kernel are skipped at once (crash takes up to a minute to give up on a
# 7.3 dump, and it is the kernel it cannot read, not the scenario).
CRASH_CANNOT_READ: Dict[Tuple[str, str], str] = {}


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_sections_and_blocks_equal_crash_kmem_n(key):
    if key[:2] in CRASH_CANNOT_READ:
        pytest.skip(f"crash cannot read this kernel: {CRASH_CANNOT_READ[key[:2]]}")
    crash_sections, crash_blocks, said = crash_kmem_n(key)
    if not crash_sections:
        CRASH_CANNOT_READ[key[:2]] = said
        pytest.skip(f"crash cannot read this kernel: {said}")
    c, model = cell(key), model_of(key)
    target = DrgnTarget(cli.open_program(core=str(c.kdump), symbols=[str(c.vmlinux)]))
    map_mask = ~((1 << section_map_last_bit(target, model.kernel)) - 1)
    ours = {(s.nr, s.address, s.mem_map & map_mask, report.section_state(s.flags),
             s.nr << model.kernel.pfn_section_shift)
            for s in model.sections if s.valid}
    assert ours == crash_sections
    assert {(b.address, b.id, b.nid, b.state, b.start_section_nr) for b in model.blocks} == crash_blocks
