"""memory-group-mismatch on hand-made models of the bed's x86_64 6.1
virtio_mem guest: blocks 32 and 33 of a dynamic memory group on node 1
(what the virtio_mem cell's dump holds); each break of the rule
init_memory_block()/remove_memory_block() keep is reported, with the
objects behind it, and nothing else is."""

from __future__ import annotations

from dataclasses import replace

from drgn_hotplug import checks
from drgn_hotplug.model import MemoryGroup
from handmade import by_kind, x86_hotplug

GROUP = 0xffff8880053c5d80


def virtio_mem_model(group_nid=1, listed=(32, 33), strangers=(), pointers=None):
    model = x86_hotplug()
    model.memory_groups = [MemoryGroup(GROUP, group_nid, True, 32768, None, 0, 51200,
                                       tuple(listed), tuple(strangers))]
    model.block_groups = {32: GROUP, 33: GROUP} if pointers is None else pointers
    model.offline_runs = {32: (), 33: ((0x10c800, 0x110000),)}
    return model


def mismatches(model):
    return [(f.node, f.block, f.reason) for f in by_kind(checks.run_checks(model),
                                                         checks.MEMORY_GROUP_MISMATCH)]


def test_a_healthy_group_draws_nothing():
    assert checks.run_checks(virtio_mem_model()) == checks.run_checks(x86_hotplug())


def test_a_group_on_another_node_names_each_block():
    found = by_kind(checks.run_checks(virtio_mem_model(group_nid=0)), checks.MEMORY_GROUP_MISMATCH)
    assert [(f.node, f.block) for f in found] == [(1, 32), (1, 33)]
    assert "the block is on node1, its memory group on node0" in found[0].reason
    assert found[0].facts["memory_group"]["address"] == GROUP
    assert found[0].facts["memory_block_group"] == GROUP


def test_a_block_missing_from_the_list_and_a_removed_block_left_on_it():
    model = virtio_mem_model(listed=(32,), strangers=(0xffff888012345000,))
    assert mismatches(model) == [
        (1, None, f"memory group {GROUP:#x} lists 0xffff888012345000, which is no registered "
                  "memory block (removed without remove_memory_block()'s list_del?)"),
        (1, 33, f"memory_block.group is {GROUP:#x}, but the block is not on that group's "
                "memory_blocks list")]


def test_a_listed_block_that_names_no_group():
    assert mismatches(virtio_mem_model(pointers={32: GROUP})) == [
        (1, 33, f"on the memory_blocks list of group {GROUP:#x}, but memory_block.group is NULL")]


def test_blocks_and_explain_name_the_flavour():
    model = virtio_mem_model()
    assert checks.block_flavour(model, 32)["plugged_pages"] == 32768
    flavour = checks.explain(model, 0x10c800)["memory_block"]["hotplugged_by"]
    assert (flavour["managed_by"], flavour["page_offline_pages"]) == \
        ("dynamic memory group (virtio-mem)", 0x3800)
    assert checks.explain(replace(model, block_groups={}), 0x10c800)["memory_block"].get(
        "hotplugged_by") is None
