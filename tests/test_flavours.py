"""The ways memory is hot-plugged besides ACPI DIMMs (issue 14), on the
bed's real kernels: the ``iomem_resource`` tree the readers build equals
the guest's /proc/iomem on every cell, flavour cells included (a
driver-managed "System RAM (kmem)" is what names dax_kmem's memory).
"""

from __future__ import annotations

import pytest

from drgn_hotplug import checks, report
from test_matrix import CELLS, broken_blocks, cell, model_of

pytestmark = [pytest.mark.bed, pytest.mark.slow]


def truth_tree(truth: dict) -> list:
    return [(r["start"], r["end"], r["name"], r["depth"]) for r in truth["iomem"]]


def truth_system_ram(truth: dict) -> set:
    """/proc/iomem's "System RAM" lines: boot memory, hot-added DIMMs, and
    "System RAM (driver)" for memory a driver added (add_memory_driver_managed()
    requires that name)."""
    return {(r["start"], r["end"], r["name"]) for r in truth["iomem"] if r["name"].startswith("System RAM")}


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_iomem_equals_proc_iomem(key):
    truth, model = cell(key).truth, model_of(key)
    assert [(r.start, r.end, r.name, r.depth) for r in model.iomem] == truth_tree(truth)
    system_ram = {(r.start, r.end, r.name) for r in model.iomem
                  if r.system_ram and r.name.startswith("System RAM")}
    assert system_ram == truth_system_ram(truth)
    assert {(r.start, r.end, r.name) for r in model.iomem if r.driver_managed} == \
        {(s, e, name) for s, e, name in truth_system_ram(truth) if name != "System RAM"}


MEMMAP_CELLS = [k for k in CELLS if k[2].startswith("memmap_on_memory")]
KMEM_CELLS = [k for k in CELLS if k[2] == "kmem"]
# /proc/kpageflags run keys of vmcores.flavours.PAGE_RUNS_SCRIPT: "<reserved><owner_private>".
OWNER_PRIVATE = 1


def owner_private_runs(page_runs: str, first_pfn: int, pages: int) -> tuple:
    """The guest's PG_owner_priv_1 (PG_vmemmap_self_hosted) pfn runs among a
    block's first ``pages`` pfns, from its "key:count ..." page runs.

    >>> owner_private_runs("11:512 00:1536", 0x108000, 1024)
    ((1081344, 1081856),)
    """
    runs, pfn = [], first_pfn
    for item in page_runs.split():
        key, count = item.split(":")
        end = min(pfn + int(count), first_pfn + pages)
        if key[OWNER_PRIVATE] == "1" and end > pfn:
            runs.append((pfn, end))
        pfn += int(count)
    return tuple(runs)


@pytest.mark.parametrize("key", MEMMAP_CELLS, ids="-".join)
def test_memmap_on_memory_equals_the_guest(key):
    """memmap_on_memory took effect; each online hot-added block's
    self-hosted memmap pages, as the dump's struct pages mark them, are the
    ones the guest's /proc/kpageflags marks; the count the block keeps is
    theirs, except where the bed wrote another."""
    truth, model = cell(key).truth, model_of(key)
    flavour = truth["flavour"]
    assert flavour["parameter"] == "Y"
    blocks = {b.id: b for b in model.blocks}
    poked_counts = broken_blocks(truth)[checks.VMEMMAP_PAGES_MISCOUNTED]
    hosting = 0
    for entry in flavour["blocks"]:
        if entry["state"] == "absent":
            assert entry["block"] not in blocks
            continue
        block = blocks[entry["block"]]
        first = block.start_section_nr << model.kernel.pfn_section_shift
        if block.nr_vmemmap_pages and block.id not in poked_counts:
            assert block.nr_vmemmap_pages == flavour["expected_vmemmap_pages"]
            hosting += 1
        if "page_runs" in entry:
            shown = owner_private_runs(entry["page_runs"], first, 2 * (block.nr_vmemmap_pages or 0))
            assert (model.self_hosted[block.id].marked_runs if block.nr_vmemmap_pages else ()) == shown
            if block.id not in broken_blocks(truth)[checks.VMEMMAP_SELF_HOSTED_MISMATCH]:
                assert shown == (((first, first + block.nr_vmemmap_pages),) if block.nr_vmemmap_pages else ())
    assert hosting
    text = report.render_blocks(model)
    assert f"in block: {flavour['expected_vmemmap_pages']} pages" in text
    explained = checks.explain(model, next(b for b in model.blocks if b.nr_vmemmap_pages).id
                               * model.kernel.pages_per_block)
    assert explained["memory_block"]["memmap_on_memory"]["needed_pages"] == flavour["expected_vmemmap_pages"]


@pytest.mark.parametrize("key", KMEM_CELLS, ids="-".join)
def test_kmem_equals_the_guest(key):
    """The dax device ends bound to kmem; its blocks (one online, one
    offline after a first add, online, offline and removal) have the guest's
    states and are named driver-managed by kmem in blocks and explain."""
    truth, model = cell(key).truth, model_of(key)
    flavour = truth["flavour"]
    assert flavour["dax"]["driver"] == "kmem"
    ops = [e["op"] for e in truth["events"]]
    assert ops.index("kmem-remove") < len(ops) - 1 - ops[::-1].index("kmem-add")
    states = {b["block"]: b["state"] for b in flavour["blocks"]}
    assert sorted(states.values()) == ["offline", "online"]
    assert {b.id: b.state for b in model.blocks if b.id in states} == states
    kmem = [r for r in model.iomem if r.name == "System RAM (kmem)"]
    assert kmem and all(r.driver_managed and r.system_ram for r in kmem)
    for block_id in states:
        assert checks.block_flavour(model, block_id)["managed_by"] == "kmem"
        explained = checks.explain(model, block_id * model.kernel.pages_per_block)
        assert explained["memory_block"]["hotplugged_by"]["iomem"]["name"] == "System RAM (kmem)"
    assert "kmem" in report.render_blocks(model)
