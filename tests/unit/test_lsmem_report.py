"""lsmem from hand-made models of the test-bed machines (tests/unit/handmade.py).

The expected texts are what the bed guests' util-linux 2.38.1 lsmem printed
in the same situations (tests/test_lsmem.py compares the two on live guests);
here each rule is pinned on its own: merging, splitting, the sysfs facts of
offline blocks, the kernels before v5.18 and v5.7, and option errors.
"""

from __future__ import annotations

import dataclasses

import pytest

from drgn_hotplug import lsmem
from drgn_hotplug.model import HotplugSettings, Zone

from handmade import HOTPLUGGED, arm64_510, block, links_for, section, x86_boot, x86_kernel

CONTIG = HotplugSettings(hotremove=True, movable_node=False, online_policy="contig-zones")


def x86_zones(movable_node1=(0, 0)):
    """The zones of the bed's x86_64 guest: DMA and DMA32 on node 0, DMA32 on node 1,
    empty Normal zones, node 1's Movable zone as given (start, spanned)."""
    spans = {(0, "DMA"): (0x1, 0xfff), (0, "DMA32"): (0x1000, 0x1f000), (0, "Normal"): (0, 0),
             (0, "Movable"): (0, 0), (1, "DMA"): (0, 0), (1, "DMA32"): (0x20000, 0x1ffe0),
             (1, "Normal"): (0, 0), (1, "Movable"): movable_node1}
    index = {"DMA": 0, "DMA32": 1, "Normal": 2, "Movable": 3}
    return [Zone(nid, index[name], name, start, spanned) for (nid, name), (start, spanned) in spans.items()]


def x86_with_dimm(settings=CONTIG, version=(6, 1, 115)):
    """x86_boot plus a DIMM on node 1: memory32 online movable, memory33 offline."""
    model = x86_boot(x86_kernel(version))
    model.blocks[0].zone = None                           # spans DMA and DMA32: "none"
    for b in model.blocks[1:]:
        b.zone = "DMA32"
    added = [block(32, 1, zone="Movable"), block(33, 1, state="offline", zone=None)]
    model.blocks += added
    model.sections += [section(32, HOTPLUGGED), section(33, HOTPLUGGED)]
    model.links += links_for(added)
    model.zones = x86_zones(movable_node1=(0x100000, 0x8000))
    model.hotplug = settings
    return model


def render(model, options=""):
    return lsmem.render_model(model, lsmem.parse_options(options.split()))


def test_default_merges_adjacent_blocks_of_one_state():
    assert render(x86_with_dimm()) == (
        "RANGE                                  SIZE   STATE REMOVABLE BLOCK\n"
        "0x0000000000000000-0x000000003fffffff    1G  online       yes   0-7\n"
        "0x0000000100000000-0x0000000107ffffff  128M  online       yes    32\n"
        "0x0000000108000000-0x000000010fffffff  128M offline              33\n"
        "\n"
        "Memory block size:       128M\n"
        "Total online memory:     1.1G\n"
        "Total offline memory:    128M\n")


def test_node_and_zones_columns_split_where_they_change():
    assert render(x86_with_dimm(), "-o RANGE,NODE,ZONES --summary=never") == (
        "RANGE                                 NODE          ZONES\n"
        "0x0000000000000000-0x0000000007ffffff    0           None\n"
        "0x0000000008000000-0x000000001fffffff    0          DMA32\n"
        "0x0000000020000000-0x000000003fffffff    1          DMA32\n"
        "0x0000000100000000-0x0000000107ffffff    1        Movable\n"
        "0x0000000108000000-0x000000010fffffff    1 Normal/Movable\n")


def test_split_follows_the_split_option_not_the_columns():
    text = render(x86_with_dimm(), "-o RANGE,NODE --split=STATE -n --summary=never")
    assert text.splitlines() == ["0x0000000000000000-0x000000003fffffff    0",
                                 "0x0000000100000000-0x0000000107ffffff    1",
                                 "0x0000000108000000-0x000000010fffffff    1"]


def test_offline_zones_prefer_movable_with_movable_node():
    model = x86_with_dimm(dataclasses.replace(CONTIG, movable_node=True))
    assert render(model, "-o ZONES -n --summary=never").splitlines()[-1] == "Movable/Normal"


def test_auto_movable_policy_is_refused_for_offline_blocks():
    with pytest.raises(lsmem.LsmemError, match="auto-movable"):
        render(x86_with_dimm(dataclasses.replace(CONTIG, online_policy="auto-movable")))


def test_before_v5_18_an_online_blocks_zone_comes_from_its_pages():
    model = x86_with_dimm(version=(5, 10, 251))
    for b in model.blocks:
        b.zone = None                                     # struct memory_block has no zone
    zones = [b.zones for b in lsmem.sysfs_memory(model).blocks]
    assert zones[:2] == [("None",), ("DMA32",)] and zones[-2:] == [("Movable",), ("Normal", "Movable")]


def test_before_v5_7_removable_is_refused_only_where_it_is_shown():
    model = x86_with_dimm(version=(5, 4, 0))
    with pytest.raises(lsmem.LsmemError, match="REMOVABLE"):
        render(model)
    assert render(model, "-o RANGE,STATE --summary=never").count("\n") == 4


def test_json_shape_types_and_a_first_block_without_node_link():
    model = arm64_510()
    model.zones = [Zone(0, 0, "DMA", 0x40000, 0x40000), Zone(1, 0, "DMA", 0x80000, 0x40000),
                   Zone(0, 1, "Normal", 0, 0), Zone(0, 2, "Movable", 0, 0)]
    model.hotplug = HotplugSettings(hotremove=True, movable_node=False)
    assert render(model, "-J -b -o RANGE,SIZE,REMOVABLE,NODE,ZONES") == (
        '{\n   "memory": [\n'
        '      {\n'
        '         "range": "0x0000000000000000-0x000000003fffffff",\n'
        '         "size": 1073741824,\n'
        '         "removable": true,\n'
        '         "node": null,\n'
        '         "zones": "None"\n'
        '      },{\n'
        '         "range": "0x0000000040000000-0x00000000bfffffff",\n'
        '         "size": 2147483648,\n'
        '         "removable": true,\n'
        '         "node": null,\n'
        '         "zones": "DMA"\n'
        '      }\n'
        '   ]\n}\n')


def test_a_block_no_longer_on_the_memory_bus_is_not_listed():
    model = x86_with_dimm()
    model.blocks[-1].in_bus = False
    assert [b.index for b in lsmem.sysfs_memory(model).blocks][-1] == 32


@pytest.mark.parametrize("options, message", [
    ("-J -r", "mutually exclusive"), ("-a -S STATE", "mutually exclusive"),
    ("-J --summary=only", "--summary=only"), ("-o RANGE,COLOR", "unknown column: COLOR"),
    ("-o " + ",".join(["SIZE"] * 15), "too many columns")])
def test_option_errors_are_one_line(options, message):
    with pytest.raises(lsmem.LsmemError, match=message):
        lsmem.parse_options(options.split())


def test_pairs_and_raw_escape_as_libsmartcols():
    memory = lsmem.SysfsMemory(1 << 27, [lsmem.SysfsBlock(0, "offline", True, 0, ("Normal", "Movable"))],
                               True, True)
    assert lsmem.render(memory, lsmem.parse_options(["-P", "-o", "RANGE,REMOVABLE,ZONES"])) == (
        'RANGE="0x0000000000000000-0x0000000007ffffff" REMOVABLE="" ZONES="Normal/Movable"\n')
    assert lsmem.render(memory, lsmem.parse_options(["-r", "-o", "STATE,REMOVABLE,BLOCK"])) == (
        "STATE REMOVABLE BLOCK\noffline  0\n")
