"""The drgn reader on real test-bed dumps: what it reads equals what the
guest kernel reported about itself (truth.json) just before the dump.
"""

from __future__ import annotations

import functools

import pytest

import vmcores
from drgn_hotplug import cli
from drgn_hotplug.drgn_reader import DrgnTarget, read_model
from drgn_hotplug.reader.target import ReadError
from drgn_hotplug.model import Model
from drgn_hotplug.ranges import RangeSet

pytest.importorskip("drgn")
pytestmark = pytest.mark.slow

CELLS = [("x86_64", "5.10", "hotplug"), ("x86_64", "6.1", "hotplug"), ("x86_64", "6.12", "hotplug"),
         ("arm64", "5.10", "boot"), ("arm64", "6.1", "hotplug")]


@functools.lru_cache(maxsize=None)
def cell(arch: str, kernel: str, scenario: str) -> vmcores.Cell:
    return vmcores.build_cell(arch, kernel, scenario)


@functools.lru_cache(maxsize=None)
def program(arch: str, kernel: str, scenario: str, dump: str = "kdump"):
    c = cell(arch, kernel, scenario)
    core = c.kdump if dump == "kdump" else c.filtered_kdump
    return cli.open_program(core=str(core), symbols=[str(c.vmlinux)])


@functools.lru_cache(maxsize=None)
def model_of(arch: str, kernel: str, scenario: str, dump: str = "kdump") -> Model:
    return read_model(program(arch, kernel, scenario, dump))


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_kernel_facts_equal_truth(key):
    c, kernel = cell(*key), model_of(*key).kernel
    truth = c.truth
    assert kernel.arch == truth["arch"]
    assert kernel.release == truth["release"]
    # Debian's release says x.y.0; the UTS version carries the package's x.y.z.
    assert ".".join(map(str, kernel.version)) == c.meta["package_version"].split("-")[0]
    assert kernel.page_size == truth["page_size"]
    assert kernel.memory_block_size == truth["block_size_bytes"]
    assert kernel.kaslr_offset == truth["kaslr_offset"]
    assert kernel.nr_mem_sections == 1 << (kernel.max_physmem_bits - kernel.section_size_bits)
    assert model_of(*key).unreadable == []


def test_section_size_follows_the_arm64_change_in_v5_12():
    # f0b13ee23241 (v5.12) shrank arm64 sections from 1 GiB to 128 MiB.
    assert model_of("arm64", "5.10", "boot").kernel.section_size_bits == 30
    assert model_of("arm64", "6.1", "hotplug").kernel.section_size_bits == 27


def test_arm64_5_10_pfn_valid_inlines_the_v5_12_subsection_test():
    """Debian 5.10.y carries eeb0753ba27b: its pfn_valid() inlines
    early_section() and pfn_section_valid(), which the version alone hides."""
    inlines = model_of("arm64", "5.10", "boot").kernel.arch_pfn_valid_inlines
    assert {"valid_section", "early_section", "pfn_section_valid"} <= set(inlines)
    assert model_of("arm64", "6.1", "hotplug").kernel.arch_pfn_valid_inlines is None
    # x86 kernels hold a LOCAL out-of-line copy of the generic inline: not an arch one.
    assert model_of("x86_64", "6.1", "hotplug").kernel.arch_pfn_valid_inlines is None


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_system_ram_has_valid_sections(key):
    model = model_of(*key)
    shift = model.kernel.page_shift
    ram = RangeSet([(r["start"] >> shift, (r["end"] + 1) >> shift)
                    for r in cell(*key).truth["iomem"]
                    if r["name"] == "System RAM" and r["depth"] == 0])
    valid = RangeSet([(s.nr << model.kernel.pfn_section_shift,
                       (s.nr + 1) << model.kernel.pfn_section_shift)
                      for s in model.sections if s.valid])
    assert ram and not (ram - valid)


@pytest.mark.parametrize("key", [("x86_64", "5.10", "hotplug"), ("x86_64", "6.1", "hotplug")],
                         ids="-".join)
def test_section_flags_tell_boot_from_hot_added(key):
    """5.10 has no SECTION_*_BIT enumerators (v6.0): the fallback bits decode
    the same flags as 6.1's DWARF."""
    model = model_of(*key)
    hot_added = {b for e in cell(*key).truth["events"] if e["op"] == "hot-add"
                 for b in e["blocks"]} & {b.id for b in model.blocks}
    per_block = model.kernel.sections_per_block
    for section in model.sections:
        expected = {"MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE"}
        if section.nr // per_block not in hot_added:
            expected.add("IS_EARLY")
        assert section.flags == expected, section


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_memblock_equals_the_kernel_own_view(key):
    truth = cell(*key).truth
    memory = model_of(*key).memblock_memory
    assert memory.available
    regions = [(r.base, r.size) for r in memory.regions]
    if truth["memblock_debugfs"]:
        # arm64 keeps memblock and its debugfs shows it at dump time.
        assert regions == [(r["base"], r["size"]) for r in truth["memblock_debugfs"]["memory"]]
    else:
        # x86 keeps the static array but never updates it after boot.
        assert regions == [(r["base"], r["size"]) for r in truth["memblock_boot"]["memory"]]
    boot = {(r["base"], r["size"]): r["flags"] for r in truth["memblock_boot"]["memory"]}
    for region in memory.regions:
        if (region.base, region.size) in boot:
            assert region.flags == boot[(region.base, region.size)]
            assert ("NOMAP" in region.flag_names) == bool(region.flags & 0x4)


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_page_nids_equal_the_block_nodes(key):
    model = model_of(*key)
    shift = model.kernel.pfn_section_shift
    for block in cell(*key).truth["memory_blocks"]:
        if block["node"] is not None:
            first_pfn = block["block"] * model.kernel.sections_per_block << shift
            assert model.page_nids[first_pfn] == block["node"], block


@pytest.mark.parametrize("kernel", ("5.10", "6.1"))
def test_filtered_dump_reads_the_same(kernel):
    """makedumpfile -d 31 drops free and user pages, never the structures read here."""
    full = model_of("x86_64", kernel, "hotplug")
    filtered = model_of("x86_64", kernel, "hotplug", "filtered")
    for part in ("kernel", "sections", "memblock_memory", "blocks", "nodes", "links", "page_nids"):
        assert getattr(filtered, part) == getattr(full, part), part


def test_drgn_target_answers_the_layout_questions():
    target = DrgnTarget(program("x86_64", "6.1", "hotplug"))
    assert target.sizeof("nodemask_t") == 128  # a typedef, 1024 nodes
    assert target.offsetof("struct kernfs_node", "symlink.target_kn") is not None
    assert target.offsetof("struct kernfs_node", "__parent") is None  # v6.15
    assert target.enumerator("KERNFS_REMOVING") is not None  # v6.1
    assert target.symbol("no_such_symbol") is None
    assert target.symbol_type("mem_section") == "struct mem_section **"
    assert target.enumerators("enum memblock_flags")["MEMBLOCK_NOMAP"] == 0x4
    with pytest.raises(ReadError):
        target.read(0xdead000000000000, 8)


@pytest.mark.parametrize("kernel", ("5.10", "6.1"))
def test_discarded_memblock_is_reported_unavailable(kernel):
    """130 e820 holes make memblock.memory outgrow its 128 static regions; x86
    (no ARCH_KEEP_MEMBLOCK) frees the resized array after boot
    (memblock_discard(), v4.13): the reader must not decode freed memory."""
    holes = cell("x86_64", kernel, "discard").meta["cmdline"].count("4K$")
    model = model_of("x86_64", kernel, "discard")
    # Each hole splits a region: more regions than INIT_MEMBLOCK_REGIONS (128).
    assert model.memblock_memory.cnt > holes > 128
    assert model.memblock_memory.max > 128
    for mtype in (model.memblock_memory, model.memblock_reserved):
        assert not mtype.available and mtype.regions == ()
        assert mtype.reason.startswith("memblock unavailable after boot")
