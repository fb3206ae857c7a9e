"""The whole Model of a kernel, composed from the reader modules: facts,
sections, memblock, memory blocks, nodes, their sysfs links and the nodes
their struct pages name."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator, List

from ..model import KernelFacts, Model, Unreadable
from .facts import read_kernel_facts
from .iomem import read_iomem
from .kernfs import KernfsReader, kernfs_layout
from .links import read_links
from .memblock import read_memblock
from .memory import max_memory_blocks, read_memory_blocks
from .memory_group import read_memory_groups, read_offline_runs
from .mmzone import mem_section_roots, read_sections, section_layout
from .node import read_node_spans, read_nodes
from .page import read_page_nids
from .target import PageCache, Target
from .vmemmap import read_self_hosted
from .zone import read_hotplug_settings, read_zones


def read_model(target: Target) -> Model:
    """The Model of the kernel behind ``target``; unreadable parts are listed, not fatal.

    Raises ReadError only when the kernel cannot be identified at all
    (no readable ``vmcoreinfo_data`` or ``init_uts_ns``).
    """
    with collector_paused():
        return _read_model(target)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a model is read.

    Reading a 64 TB machine creates a million objects, none in a cycle; each
    collection would walk all those already made again (a quarter of the
    reading time at 512K sections).

    >>> with collector_paused():
    ...     gc.isenabled()
    False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_model(target: Target) -> Model:
    unreadable: List[Unreadable] = []
    facts = read_kernel_facts(target)
    sections = read_sections(target, mem_section_roots(target), facts.sparsemem_extreme,
                             facts.nr_mem_sections, facts.page_size,
                             section_layout(target, facts), unreadable)
    memory, reserved = read_memblock(target, facts, unreadable)
    # Memory blocks and their sysfs directories may share slab pages.
    pages = PageCache(target, facts.page_size)
    blocks = read_memory_blocks(pages, facts, unreadable)
    nodes = read_nodes(target, facts, unreadable)
    kernfs = KernfsReader(pages, kernfs_layout(target), facts.page_size,
                          kernfs_children_limit(facts))
    links = read_links(kernfs, nodes, blocks, unreadable)
    page_nids = read_page_nids(target, facts, sections, blocks, unreadable)
    groups, block_groups = read_memory_groups(pages, facts, blocks, unreadable)
    return Model(kernel=facts, sections=sections, memblock_memory=memory,
                 memblock_reserved=reserved, blocks=blocks, nodes=nodes, links=links,
                 page_nids=page_nids, unreadable=unreadable,
                 iomem=read_iomem(target, facts, unreadable),
                 self_hosted=read_self_hosted(target, facts, sections, blocks, unreadable),
                 node_spans=read_node_spans(target, facts, nodes, unreadable),
                 zones=read_zones(target, facts, nodes, unreadable),
                 hotplug=read_hotplug_settings(target, unreadable),
                 memory_groups=groups, block_groups=block_groups,
                 offline_runs=read_offline_runs(target, facts, sections, blocks, block_groups,
                                                unreadable))


# CONFIG_NR_CPUS can be at most 8192 (x86 MAXSMP; arm64 allows 4096).
MAX_NR_CPUS = 8192


def kernfs_children_limit(facts: KernelFacts) -> int:
    """The most children a node or memory block directory can have: a
    memoryM link per block, a cpuN link per CPU and a few attributes.

    >>> f = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
    ...                 True, True, False)
    >>> kernfs_children_limit(f)
    532544
    """
    return max_memory_blocks(facts) + MAX_NR_CPUS + 64
