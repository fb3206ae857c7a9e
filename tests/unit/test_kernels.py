"""Kernel-version and arch rules, each tied to the release that introduced it."""

import pytest

from drgn_hotplug import kernels
from drgn_hotplug.kernels import (ARM64_MAP_MEMORY, ARM64_MAP_MEMORY_HOTPLUG,
                                  ARM64_MAP_MEMORY_ONLY, ARM64_MEMBLOCK_MEMORY_ONLY,
                                  ARM64_MEMORY_HOTPLUG, GENERIC_SECTION, GENERIC_SUBSECTION,
                                  pfn_valid_rule)


@pytest.mark.parametrize("arch, version, inlines, rule", [
    # Generic SPARSEMEM: subsection map consulted since v5.3 (f46edbd1b151).
    ("x86_64", (5, 2, 21), None, GENERIC_SECTION),
    ("x86_64", (5, 3, 0), None, GENERIC_SUBSECTION),
    ("x86_64", (5, 10, 251), None, GENERIC_SUBSECTION),
    # arm64 before NOMAP existed (v4.5, 68709f45385a).
    ("aarch64", (4, 4, 0), (), ARM64_MEMBLOCK_MEMORY_ONLY),
    ("aarch64", (4, 19, 0), (), ARM64_MAP_MEMORY_ONLY),
    # valid_section() in front since arm64 hot-remove (v5.7, bbd6ec605c0f).
    ("aarch64", (5, 7, 0), (), ARM64_MAP_MEMORY),
    ("aarch64", (5, 10, 223), ("valid_section",), ARM64_MAP_MEMORY),
    # A 5.10.y that carries eeb0753ba27b shows pfn_section_valid inlined.
    ("aarch64", (5, 10, 223), ("valid_section", "early_section", "pfn_section_valid"),
     ARM64_MAP_MEMORY_HOTPLUG),
    ("aarch64", (5, 4, 200), ("pfn_section_valid",), ARM64_MAP_MEMORY_HOTPLUG),
    ("aarch64", (5, 12, 0), (), ARM64_MAP_MEMORY_HOTPLUG),
    # v5.14 final (3eb9cdffb397): memblock_is_memory(), NOMAP pfns valid.
    ("aarch64", (5, 14, 0), (), ARM64_MEMORY_HOTPLUG),
    # 5.15: the arch symbol decides (3de360c3fdb3 was backported to 5.15.y).
    ("aarch64", (5, 15, 0), ("early_section",), ARM64_MEMORY_HOTPLUG),
    ("aarch64", (5, 15, 100), None, GENERIC_SUBSECTION),
    # v5.16 (3de360c3fdb3): generic, whatever a stray symbol says.
    ("aarch64", (5, 16, 0), ("memblock_is_map_memory",), GENERIC_SUBSECTION),
    ("aarch64", (6, 1, 192), None, GENERIC_SUBSECTION),
])
def test_pfn_valid_rule(arch, version, inlines, rule):
    assert pfn_valid_rule(arch, version, inlines) is rule


def test_rules_ingredients():
    # Before v5.12 arm64 asks memblock for every section, hot-added ones too.
    assert not ARM64_MAP_MEMORY.nonearly_from_subsections
    assert ARM64_MAP_MEMORY.memblock_test == kernels.MAP_MEMORY
    assert ARM64_MEMORY_HOTPLUG.memblock_test == kernels.MEMORY
    assert not GENERIC_SUBSECTION.memblock_based
    # Before v5.7 arm64 pfn_valid() did not look at sections at all.
    assert not ARM64_MAP_MEMORY_ONLY.requires_valid_section
    assert all(r.source for r in (GENERIC_SECTION, GENERIC_SUBSECTION, ARM64_MAP_MEMORY,
                                  ARM64_MAP_MEMORY_HOTPLUG, ARM64_MEMORY_HOTPLUG))


@pytest.mark.parametrize("arch, version, expected", [
    ("aarch64", (5, 13, 19), False),
    ("aarch64", (5, 14, 0), True),      # 873ba463914c, kept by 3eb9cdffb397
    ("aarch64", (6, 1, 192), True),
    ("x86_64", (6, 1, 192), False),
])
def test_pfn_is_map_memory_exists(arch, version, expected):
    assert kernels.has_pfn_is_map_memory(arch, version) is expected


def test_memblock_trust_rule():
    init = 0xffffffff82c05900
    # x86 (no ARCH_KEEP_MEMBLOCK): only the static init array is trusted.
    assert kernels.memblock_trust(False, init, init, 3, 128) is None
    assert "discarded" in kernels.memblock_trust(False, 0xffff888012340000, init, 3, 128)
    assert "no static init array" in kernels.memblock_trust(False, init, None, 3, 128)
    # arm64 keeps memblock: a resized array is fine.
    assert kernels.memblock_trust(True, 0xffff00007c000000, init, 9, 1024) is None
    # Garbage counts are never trusted.
    assert "exceeds max" in kernels.memblock_trust(True, init, init, 129, 128)
    assert "exceeds max" in kernels.memblock_trust(True, init, init, -1, 128)


def test_keep_memblock_and_hotplug_updates():
    assert not kernels.arch_keeps_memblock("x86_64")
    assert kernels.arch_keeps_memblock("aarch64")
    # The kernel's own config wins over the arch table.
    assert not kernels.arch_keeps_memblock("aarch64", {"CONFIG_ARCH_KEEP_MEMBLOCK": "n"})


@pytest.mark.parametrize("version, bits, last", [
    ((4, 12, 0), {"MARKED_PRESENT": 0, "HAS_MEM_MAP": 1}, 2),
    ((4, 13, 0), {"MARKED_PRESENT": 0, "HAS_MEM_MAP": 1, "IS_ONLINE": 2}, 3),
    ((5, 3, 0), {"MARKED_PRESENT": 0, "HAS_MEM_MAP": 1, "IS_ONLINE": 2, "IS_EARLY": 3}, 4),
    ((5, 12, 0), {"MARKED_PRESENT": 0, "HAS_MEM_MAP": 1, "IS_ONLINE": 2, "IS_EARLY": 3,
                  "TAINT_ZONE_DEVICE": 4}, 5),
])
def test_section_flag_fallbacks(version, bits, last):
    assert kernels.section_flag_bits(version) == (bits, last)


def test_real_section_mem_map_words_decode():
    # From the x86_64 6.1.192 hotplug dump: an early boot section and a
    # hot-added one (no IS_EARLY).
    bits, _ = kernels.section_flag_bits((5, 12, 0))
    assert kernels.decode_section_flags(0xffffea000000000f, bits) == {
        "MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE", "IS_EARLY"}
    assert kernels.decode_section_flags(0xffffea0000000007, bits) == {
        "MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE"}


def test_memblock_flag_fallbacks():
    assert kernels.memblock_flag_bits((4, 4, 0)) == {"HOTPLUG": 1, "MIRROR": 2}
    assert kernels.memblock_flag_bits((5, 16, 0))["DRIVER_MANAGED"] == 8
    assert kernels.memblock_flag_names(0x4, kernels.memblock_flag_bits((5, 10, 0))) == ("NOMAP",)
    assert kernels.memblock_flag_names(0, {"NOMAP": 4}) == ()
