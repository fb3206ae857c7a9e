"""The memmap_on_memory and System RAM rules (checks.check_self_hosted_memmaps,
checks.check_sysram_blocks) on hand-made x86_64 6.1 models: each fires on the
break it names and on nothing else. The bed proves them on real kernels
(tests/test_flavours.py, tests/test_matrix.py: memmap_on_memory_bad)."""

from __future__ import annotations

from dataclasses import replace

from handmade import x86_hotplug

from drgn_hotplug import checks
from drgn_hotplug.model import IomemResource, SelfHostedMemmap, Unreadable

SYSRAM = ("MEM", "SYSRAM", "BUSY")
FIRST = 32 << 15  # memory32's first pfn


def self_hosting(nr: int = 512, runs=((FIRST, FIRST + 512),)):
    """x86_hotplug with memory32 hosting its memmap in ``nr`` pages, ``runs`` marked."""
    model = x86_hotplug()
    model.blocks = [replace(b, nr_vmemmap_pages=nr) if b.id == 32 else b for b in model.blocks]
    model.self_hosted = {32: SelfHostedMemmap(32, 512, runs)}
    return model


def kinds(model) -> list:
    return [(f.kind, f.block, f.start_pfn, f.end_pfn) for f in checks.run_checks(model)
            if f.kind in (checks.VMEMMAP_PAGES_MISCOUNTED, checks.VMEMMAP_SELF_HOSTED_MISMATCH,
                          checks.SYSRAM_WITHOUT_MEMORY_BLOCK)]


def test_a_healthy_self_hosting_block_draws_nothing():
    assert kinds(self_hosting()) == []


def test_a_count_other_than_the_memmap_needs_is_miscounted():
    model = self_hosting(nr=256, runs=None)
    assert kinds(model) == [(checks.VMEMMAP_PAGES_MISCOUNTED, 32, FIRST, FIRST + 256)]


def test_an_unmarked_self_hosted_page_is_a_mismatch():
    model = self_hosting(runs=((FIRST + 1, FIRST + 512),))
    assert kinds(model) == [(checks.VMEMMAP_SELF_HOSTED_MISMATCH, 32, FIRST, FIRST + 512)]
    assert checks.run_checks(model)[-1].facts["memmap_on_memory"]["self_hosted_pages"] == 511


def test_system_ram_over_a_removed_block_is_reported_once():
    model = x86_hotplug()
    model.iomem = [IomemResource(0x100000, 0x3fffffff, "System RAM", 0x81000200, 0, 0x10, SYSRAM),
                   IomemResource(0x100000000, 0x10fffffff, "System RAM", 0x81000200, 0, 0x20, SYSRAM),
                   IomemResource(0x110000000, 0x117ffffff, "System RAM", 0x81000200, 0, 0x30, SYSRAM)]
    assert kinds(model) == [(checks.SYSRAM_WITHOUT_MEMORY_BLOCK, None, 0x110000, 0x118000)]


def test_system_ram_is_not_judged_when_blocks_could_not_all_be_read():
    model = x86_hotplug()
    model.iomem = [IomemResource(0x110000000, 0x117ffffff, "System RAM", 0x81000200, 0, 0x30, SYSRAM)]
    assert kinds(model) != []
    model.unreadable = [Unreadable("memory bus device list", "Excluded page", 0x40)]
    assert kinds(model) == []
