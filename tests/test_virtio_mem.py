"""virtio-mem on the bed's real kernels (issue 14): a virtio-mem-pci device
on node 1 grown and shrunk over QMP (vmcores.flavours). What drgn-hotplug
reads of it equals what QEMU and the guest said: the device's blocks are
in one dynamic memory group on the device's node, managed by virtio_mem
(its driver-managed /proc/iomem resource), and each online block's
PageOffline pages are exactly the sub-blocks the guest's /proc/kpageflags
showed KPF_OFFLINE (unplugged); ``blocks`` and ``explain`` say so.
"""

from __future__ import annotations

import pytest

from drgn_hotplug import checks, report
from test_matrix import CELLS, cell, model_of

pytestmark = [pytest.mark.bed, pytest.mark.slow]

VIRTIO_MEM_CELLS = [key for key in CELLS if key[2].startswith("virtio_mem")]


def unplugged_runs(first_pfn: int, subblocks: str, per_subblock: int) -> list:
    """The pfn runs of the "U" (all pages KPF_OFFLINE) characters of the bed's
    per-sub-block string, consecutive ones joined.

    >>> unplugged_runs(100, "PUUP", 2)
    [(102, 106)]
    """
    runs: list = []
    for i, state in enumerate(subblocks):
        if state == "U":
            start = first_pfn + i * per_subblock
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], start + per_subblock)
            else:
                runs.append((start, start + per_subblock))
    return runs


@pytest.mark.parametrize("key", VIRTIO_MEM_CELLS, ids="-".join)
def test_page_offline_equals_kpageflags(key):
    truth, model = cell(key).truth, model_of(key)
    flavour = truth["flavour"]
    per_subblock = flavour["qemu"]["block-size"] // truth["page_size"]
    online = [b for b in flavour["blocks"] if b["state"] == "online"]
    assert online, "the scenario leaves online virtio-mem blocks"
    assert any("U" in b["subblocks"] for b in online), "and some hold unplugged sub-blocks"
    for b in online:
        assert "M" not in b["subblocks"]
        first = b["block"] * model.kernel.pages_per_block
        assert list(model.offline_runs[b["block"]]) == unplugged_runs(first, b["subblocks"], per_subblock)
    plugged = sum(b["subblocks"].count("P") for b in online) * per_subblock * truth["page_size"]
    assert plugged == flavour["qemu"]["size"]


@pytest.mark.parametrize("key", VIRTIO_MEM_CELLS, ids="-".join)
def test_blocks_name_virtio_mem_and_its_group(key):
    truth, model = cell(key).truth, model_of(key)
    flavour = truth["flavour"]
    present = {b["block"] for b in flavour["blocks"] if b["state"] != "absent"}
    (group,) = [g for g in model.memory_groups if g.is_dynamic]
    assert set(group.blocks) == present
    assert {b for b, address in model.block_groups.items() if address == group.address} == present
    assert group.unit_pages == model.kernel.pages_per_block  # virtio-mem's SBM adds a block at a time
    poked = [e for e in truth["events"] if e["op"] == "poke" and e["what"] == "memory_group.nid"]
    assert group.nid == (0 if poked else flavour["qemu"]["node"])
    assert any(r.name == "System RAM (virtio_mem)" and r.driver_managed for r in model.iomem)
    table = report.render_blocks(model)
    for b in flavour["blocks"]:
        if b["state"] == "online":
            line = next(l for l in table.splitlines() if l.startswith(f"memory{b['block']} "))
            unplugged = b["subblocks"].count("U") * flavour["qemu"]["block-size"]
            assert f"virtio_mem (dynamic group, node{group.nid})" in line
            assert f"{report.human_size(unplugged)} unplugged (PageOffline)" in line
            explained = checks.explain(model, b["block"] * model.kernel.pages_per_block)
            assert explained["memory_block"]["hotplugged_by"]["managed_by"] == "virtio_mem"


@pytest.mark.parametrize("key", VIRTIO_MEM_CELLS, ids="-".join)
def test_memory_group_mismatch_only_where_poked(key):
    truth, model = cell(key).truth, model_of(key)
    findings = checks.run_checks(model)
    mismatched = {f.block for f in findings if f.kind == checks.MEMORY_GROUP_MISMATCH}
    poked = any(e["op"] == "poke" and e["what"] == "memory_group.nid" for e in truth["events"])
    present = {b["block"] for b in truth["flavour"]["blocks"] if b["state"] != "absent"}
    assert mismatched == (present if poked else set())
