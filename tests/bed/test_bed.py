"""The test bed checked against the guest kernels themselves.

Each cell's truth.json is what the guest kernel said just before its dump;
these tests check that each scenario did to the kernel what it claims
(hotplug, orphaned links, ZONE_DEVICE, NOMAP), and that an independent
reader, crash, sees the same memory blocks in the dump as the guest did.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import vmcores

pytestmark = [pytest.mark.bed, pytest.mark.slow]

# x86_64 SECTION_SIZE_BITS (arch/x86/include/asm/sparsemem.h).
X86_64_SECTION_SIZE = 1 << 27


def cells_of(*scenarios: str) -> list[tuple[str, str, str]]:
    return [c for c in vmcores.matrix() if c[2] in scenarios]


def ids(param) -> str:
    return "-".join(param)


def blocks_by_number(truth: dict) -> dict[int, dict]:
    return {b["block"]: b for b in truth["memory_blocks"]}


def links(truth: dict) -> set[tuple[int, int]]:
    return {(l["node"], l["block"]) for l in truth["node_links"]}


def hot_adds(truth: dict) -> list[dict]:
    return [e for e in truth["events"] if e["op"] == "hot-add"]


def removed_blocks(truth: dict) -> set[int]:
    return {b for e in truth["events"] if e["op"] == "hot-remove" for b in e["blocks"]}


@pytest.mark.parametrize("cell", cells_of("hotplug", "orphan"), indirect=True, ids=ids)
def test_kept_dimm_blocks_are_online_movable_on_their_node(cell):
    truth = cell.truth
    blocks = blocks_by_number(truth)
    kept = [e for e in hot_adds(truth) if not set(e["blocks"]) & removed_blocks(truth)]
    assert kept, "the scenario keeps one hot-added DIMM"
    for dimm in kept:
        for b in dimm["blocks"]:
            assert blocks[b]["state"] == "online"
            assert blocks[b]["node"] == dimm["node"]
            assert blocks[b]["valid_zones"] == "Movable"
            assert (dimm["node"], b) in links(truth)


@pytest.mark.parametrize("cell", cells_of("hotplug", "orphan"), indirect=True, ids=ids)
def test_removed_dimm_blocks_are_gone(cell):
    truth = cell.truth
    removed = removed_blocks(truth)
    assert removed, "the scenario hot-removes a DIMM"
    assert not removed & set(blocks_by_number(truth))
    assert not any(r["start"] <= b * truth["block_size_bytes"] <= r["end"] and r["name"] == "System RAM"
                   for r in truth["iomem"] for b in removed)


@pytest.mark.parametrize("cell", cells_of("hotplug"), indirect=True, ids=ids)
def test_hot_remove_leaves_no_link(cell):
    assert cell.truth["dangling_links"] == []
    assert not {b for _, b in links(cell.truth)} & removed_blocks(cell.truth)


@pytest.mark.parametrize("cell", cells_of("orphan"), indirect=True, ids=ids)
def test_orphan_dangles_exactly_the_patched_away_links(cell):
    truth = cell.truth
    (removed,) = [e for e in truth["events"] if e["op"] == "hot-remove"]
    expected = [{"node": removed["node"], "block": b} for b in removed["blocks"]]
    assert truth["dangling_links"] == expected
    ops = [e["op"] for e in truth["events"]]
    assert ops.index("patch") < ops.index("hot-remove") < ops.index("unpatch")
    patch, unpatch = (next(e for e in truth["events"] if e["op"] == op) for op in ("patch", "unpatch"))
    assert unpatch["restored"] == patch["old"] != patch["new"]


@pytest.mark.parametrize("cell", cells_of("boot"), indirect=True, ids=ids)
def test_boot_links_agree_both_ways(cell):
    truth = cell.truth
    assert truth["dangling_links"] == []
    block_side = {(b["node"], b["block"]) for b in truth["memory_blocks"] if b["node"] is not None}
    assert block_side == links(truth)


@pytest.mark.parametrize("cell", cells_of("pmem"), indirect=True, ids=ids)
def test_pmem_range_is_device_memory_without_memory_block(cell):
    truth = cell.truth
    (pmem,) = [e for e in truth["events"] if e["op"] == "pmem"]
    first = pmem["start"] // truth["block_size_bytes"]
    last = (pmem["start"] + pmem["size"] - 1) // truth["block_size_bytes"]
    assert not set(range(first, last + 1)) & set(blocks_by_number(truth))
    namespaces = [r for r in truth["iomem"] if r["name"] == pmem["namespace"]]
    assert namespaces and namespaces[0]["start"] == pmem["start"]


# mem_section flags (include/linux/mmzone.h): SECTION_MARKED_PRESENT, _HAS_MEM_MAP,
# _IS_ONLINE, _IS_EARLY, and SECTION_TAINT_ZONE_DEVICE since v5.12 ("mm: teach
# pfn_to_online_page() about ZONE_DEVICE section collisions").
PRESENT, HAS_MEM_MAP, ONLINE, EARLY, TAINT_ZONE_DEVICE = (1 << bit for bit in range(5))
SUBSECTIONS_PER_SECTION = 64  # 128 MiB sections of 2 MiB subsections (x86_64)


@pytest.mark.parametrize("cell", cells_of("pmem"), indirect=True, ids=ids)
def test_pmem_section_in_the_dump_is_zone_device_with_last_subsection_inactive(cell):
    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(cell.kdump))
    prog.load_debug_info([str(cell.vmlinux)])
    (pmem,) = [e for e in cell.truth["events"] if e["op"] == "pmem"]
    section = prog["mem_section"][0][pmem["start"] // X86_64_SECTION_SIZE]
    flags = section.section_mem_map.value_() & 0x1F
    device_taint = TAINT_ZONE_DEVICE if cell.meta["kernel"] != "5.10" else 0
    assert flags == PRESENT | HAS_MEM_MAP | device_taint
    assert section.usage.subsection_map[0].value_() == (1 << (SUBSECTIONS_PER_SECTION - 1)) - 1


@pytest.mark.parametrize("cell", cells_of("boot", "hotplug"), indirect=True, ids=ids)
def test_two_numa_nodes_online(cell):
    assert [(n["node"], n["online"]) for n in cell.truth["nodes"]] == [(0, True), (1, True)]
    assert all(n["meminfo_total_kb"] > 0 for n in cell.truth["nodes"])


# --- arm64 NOMAP ------------------------------------------------------------

# arm64 reserve_regions() (drivers/firmware/efi/efi-init.c, 5.10) adds every
# descriptor that is_memory() (WB, WT or WC) to memblock and marks NOMAP those
# that are not is_usable_memory(): these types with WB. Names as efi=debug prints them.
USABLE_EFI_TYPES = {"Loader Code", "Loader Data", "ACPI Reclaim", "Boot Code", "Boot Data",
                    "Conventional", "Persistent"}


def efi_nomap(entry: dict) -> bool:
    """Whether arm64 5.10 makes this UEFI descriptor MEMBLOCK_NOMAP."""
    memory = {"WB", "WT", "WC"} & set(entry["attrs"])
    usable = entry["type"] in USABLE_EFI_TYPES and "WB" in entry["attrs"]
    return bool(memory) and not usable


@pytest.mark.parametrize("cell", [("arm64", "5.10", "boot")], indirect=True, ids=ids)
def test_arm64_nomap_efi_ranges_flagged_in_boot_memblock(cell):
    truth = cell.truth
    nomap = [(r["base"], r["base"] + r["size"]) for r in truth["memblock_boot"]["memory"] if r["flags"] & 0x4]
    expected = [e for e in truth["efi_memmap"] if efi_nomap(e)]
    assert {e["type"] for e in expected} == {"Runtime Code", "Runtime Data", "MMIO"}
    for entry in expected:
        assert any(lo <= entry["start"] and entry["end"] < hi for lo, hi in nomap), entry
    for entry in truth["efi_memmap"]:
        if not efi_nomap(entry):
            assert not any(lo <= entry["start"] < hi for lo, hi in nomap), entry


# --- crash cross-check ------------------------------------------------------

def crash_kmem_n(cell) -> str:
    proc = subprocess.run(["crash", "-s", str(cell.vmlinux), str(cell.kdump)], input="kmem -n\nquit\n",
                          capture_output=True, text=True, timeout=300)
    return proc.stdout + proc.stderr


def crash_memory_blocks(kmem_n: str) -> dict[int, tuple[int, str]]:
    """The memory block list of ``kmem -n``: block -> (node, state), e.g. from
    ``ffff8ba5603fe000   memory34   110000000 - 117ffffff  0    ONLINE  34``."""
    rows = re.finditer(r"^\s*[0-9a-f]+\s+memory(\d+)\s+[0-9a-f]+\s+-\s+[0-9a-f]+\s+(\d+)\s+(\w+)", kmem_n, re.M)
    return {int(m[1]): (int(m[2]), m[3].lower()) for m in rows}


def crash_sections(kmem_n: str) -> set[int]:
    """The section numbers of ``kmem -n``'s section table, e.g. from
    ``34  ffff8ba55ffd4220  fffff76680000000  fffff76684400000   PMO  1114112``."""
    rows = re.finditer(r"^\s*(\d+)\s+[0-9a-f]{16}\s+[0-9a-f]{16}\s+[0-9a-f]{16}\s+[A-Z]+\s+\d+", kmem_n, re.M)
    return {int(m[1]) for m in rows}


@pytest.mark.skipif(not shutil.which("crash"), reason="crash is not installed")
@pytest.mark.parametrize("cell", [c for c in cells_of("boot", "hotplug", "orphan")
                                  if c[0] == "x86_64" and c[1] in ("5.10", "6.1")], indirect=True, ids=ids)
def test_crash_lists_the_same_sections_and_memory_blocks(cell):
    kmem_n = crash_kmem_n(cell)
    truth = cell.truth
    assert crash_memory_blocks(kmem_n) == {b["block"]: (b["node"], b["state"]) for b in truth["memory_blocks"]}
    per_block = truth["block_size_bytes"] // X86_64_SECTION_SIZE
    expected_sections = {b["block"] * per_block + i for b in truth["memory_blocks"] for i in range(per_block)}
    assert crash_sections(kmem_n) == expected_sections


# --- arm64 struct pages of NOMAP memory ---------------------------------------

def nomap_pfn_ranges(truth: dict) -> list[tuple[int, int]]:
    page = truth["page_size"]
    return [(r["base"] // page, -(-(r["base"] + r["size"]) // page))
            for r in truth["memblock_boot"]["memory"] if r["flags"] & 0x4]


def within(rng: tuple[int, int], ranges: list[list[int]]) -> bool:
    return any(lo <= rng[0] and rng[1] <= hi for lo, hi in ranges)


def overlaps(rng: tuple[int, int], ranges: list[list[int]]) -> bool:
    return any(lo < rng[1] and rng[0] < hi for lo, hi in ranges)


@pytest.mark.parametrize("cell", [c for c in cells_of("boot") if c[0] == "arm64"], indirect=True, ids=ids)
def test_arm64_nomap_struct_pages(cell):
    """5.10's arm64 pfn_valid() asks memblock_is_map_memory(), so /proc/kpageflags
    reports NOMAP pfns as no page; since v5.14 ("arm64: decouple check whether pfn
    is in linear map from pfn_valid()") they are valid, reserved pages."""
    truth = cell.truth
    nomap = nomap_pfn_ranges(truth)
    assert nomap
    if truth["kernel"] == "5.10":
        assert all(within(r, truth["no_page_ranges"]) for r in nomap)
    else:
        assert not any(overlaps(r, truth["no_page_ranges"]) for r in nomap)
