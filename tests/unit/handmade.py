"""Small hand-made models of the test-bed guests, from what those kernels
showed about themselves (docs: /work/shared/testbed-notes.md):

- x86_64 6.1: q35, two 512 MiB NUMA nodes, 128 MiB sections
  (SECTION_SIZE_BITS 27) and blocks; a 256 MiB pc-dimm hot-added on node 1
  lands at 0x100000000 (memory32, memory33); pmem through
  ``memmap=0x7fe0000!0x38000000`` makes section 7 a ZONE_DEVICE section whose
  last 2 MiB subsection stays inactive.
- arm64 5.10: SECTION_SIZE_BITS 30, 1 GiB blocks, RAM from 0x40000000, the
  flash at 0x04000000-0x07ffffff and UEFI runtime regions near the top of
  the first RAM GiB are NOMAP; memory0 has no node link.
- arm64 6.1: same machine, SECTION_SIZE_BITS 27, 128 MiB blocks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, List, Optional, Sequence, Tuple

from drgn_hotplug.model import (KernelFacts, MemblockRegion, MemblockType, MemoryBlock,
                                Model, Node, NodeLink, Section)

MiB = 1 << 20
GiB = 1 << 30
NOMAP = 0x4
FULL_MAP = (1 << 64) - 1          # 64 subsections of 2 MiB in a 128 MiB section
EARLY = frozenset({"MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE", "IS_EARLY"})
HOTPLUGGED = frozenset({"MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE"})
ZONE_DEVICE = frozenset({"MARKED_PRESENT", "HAS_MEM_MAP", "TAINT_ZONE_DEVICE"})


def x86_kernel(version=(6, 1, 115), **overrides) -> KernelFacts:
    facts = KernelFacts(
        arch="x86_64", release="6.1.0-27-cloud-amd64", version=version, page_size=4096,
        section_size_bits=27, max_physmem_bits=46, nr_mem_sections=1 << 19,
        subsection_shift=21, memory_block_size=128 * MiB, max_numnodes=1024,
        sparsemem_extreme=True, sparsemem_vmemmap=True, keeps_memblock=False)
    return replace(facts, **overrides)


def arm64_kernel(version, section_size_bits, block_size, inlines=None, **overrides):
    facts = KernelFacts(
        arch="aarch64", release=f"{version[0]}.{version[1]}.0-cloud-arm64", version=version,
        page_size=4096, section_size_bits=section_size_bits, max_physmem_bits=48,
        nr_mem_sections=1 << (48 - section_size_bits), subsection_shift=21,
        memory_block_size=block_size, max_numnodes=64, sparsemem_extreme=True,
        sparsemem_vmemmap=True, keeps_memblock=True, arch_pfn_valid_inlines=inlines)
    return replace(facts, **overrides)


def section(nr: int, flags=EARLY, subsection_map: Optional[int] = FULL_MAP) -> Section:
    return Section(nr=nr, address=0xffff888003e20000 + 16 * nr,
                   mem_map=0xffffea0000000000 + (nr << 21) | 0b1011, flags=flags,
                   usage_address=0xffff888004000000 + 64 * nr, subsection_map=subsection_map)


def memblock(name: str, regions: Iterable[Tuple[int, int, int, Optional[int]]],
             available: bool = True, reason: Optional[str] = None) -> MemblockType:
    regs = tuple(MemblockRegion(base=b, size=e - b, flags=f,
                                flag_names=("NOMAP",) if f & NOMAP else (), nid=n)
                 for b, e, f, n in regions)
    if not available:
        regs = ()
    return MemblockType(name=name, address=0xffffffff82a00000, cnt=len(regs), max=128,
                        regions=regs, available=available, reason=reason)


def block(block_id: int, nid: Optional[int], state="online", zone="Normal",
          sections_per_block=1) -> MemoryBlock:
    return MemoryBlock(id=block_id, address=0xffff888010000000 + 0x400 * block_id,
                       start_section_nr=block_id * sections_per_block, state=state, nid=nid,
                       zone=zone, in_bus=True, in_xarray=True)


def link_pair(node: int, block_id: int) -> List[NodeLink]:
    """node{node}/memory{block} and memory{block}/node{node}, both live."""
    return [
        NodeLink(direction="node-to-block", node=node, block=block_id, name=f"memory{block_id}",
                 kn_address=0xffff888020000000 + 0x100 * block_id,
                 target_address=0xffff888030000000 + 0x100 * block_id,
                 target_name=f"memory{block_id}", target_live=True, target_block=block_id),
        NodeLink(direction="block-to-node", node=node, block=block_id, name=f"node{node}",
                 kn_address=0xffff888040000000 + 0x100 * block_id,
                 target_address=0xffff888050000000 + node, target_name=f"node{node}",
                 target_live=True, target_node=node),
    ]


def dead_link(node: int, block_id: int, reasons=("deactivated", "removing", "not-in-parent")):
    return NodeLink(direction="node-to-block", node=node, block=block_id,
                    name=f"memory{block_id}", kn_address=0xffff888060000000 + 0x100 * block_id,
                    target_address=0xffff888070000000 + 0x100 * block_id,
                    target_name=f"memory{block_id}", target_live=False,
                    target_dead_reasons=tuple(reasons), target_block=None)


def nodes(*nids: int) -> List[Node]:
    return [Node(nid=n, address=0xffff888080000000 + 0x1000 * n,
                 kn_address=0xffff888090000000 + 0x100 * n) for n in nids]


def links_for(blocks: Sequence[MemoryBlock]) -> List[NodeLink]:
    return [l for b in blocks if b.nid is not None and b.nid >= 0 for l in link_pair(b.nid, b.id)]


# ---------------------------------------------------------------- x86_64 6.1

X86_MEMORY = [(0x1000, 0x9f000, 0, 0), (0x100000, 0x20000000, 0, 0),
              (0x20000000, 0x3ffe0000, 0, 1)]


def x86_boot(kernel: Optional[KernelFacts] = None) -> Model:
    """1 GiB in two 512 MiB nodes: sections 0-7 early, blocks 0-3 on node 0,
    4-7 on node 1, all linked."""
    blocks = [block(i, 0 if i < 4 else 1) for i in range(8)]
    return Model(kernel=kernel or x86_kernel(), sections=[section(i) for i in range(8)],
                 memblock_memory=memblock("memory", X86_MEMORY),
                 memblock_reserved=memblock("reserved", [(0x0, 0x1000, 0, None),
                                                         (0x1000000, 0x3000000, 0, None)]),
                 blocks=blocks, nodes=nodes(0, 1), links=links_for(blocks))


def x86_hotplug(kernel: Optional[KernelFacts] = None) -> Model:
    """x86_boot plus the 256 MiB DIMM on node 1 at 0x100000000, online movable."""
    model = x86_boot(kernel)
    added = [block(32, 1, zone="Movable"), block(33, 1, zone="Movable")]
    model.sections += [section(32, HOTPLUGGED), section(33, HOTPLUGGED)]
    model.blocks += added
    model.links += links_for(added)
    return model


def x86_orphan(kernel: Optional[KernelFacts] = None) -> Model:
    """The DIMM removed while unregister_memory_block_under_nodes() was
    patched out: node1/memory32 and node1/memory33 dangle."""
    model = x86_boot(kernel)
    model.links += [dead_link(1, 32), dead_link(1, 33)]
    return model


def x86_pmem(kernel: Optional[KernelFacts] = None) -> Model:
    """memmap=0x7fe0000!0x38000000 as fsdax: section 7 is ZONE_DEVICE with its
    last subsection inactive; memblock and blocks stop below it."""
    model = x86_boot(kernel)
    model.sections[7] = section(7, ZONE_DEVICE, subsection_map=FULL_MAP >> 1)
    model.memblock_memory = memblock("memory", [(0x1000, 0x9f000, 0, 0),
                                                (0x100000, 0x20000000, 0, 0),
                                                (0x20000000, 0x38000000, 0, 1)])
    model.blocks = [b for b in model.blocks if b.id != 7]
    model.links = links_for(model.blocks)
    return model


# ---------------------------------------------------------------- arm64

ARM64_MEMORY = [(0x04000000, 0x08000000, NOMAP, 0),       # flash variable store
                (0x40000000, 0x7c440000, 0, 0),
                (0x7c440000, 0x7c730000, NOMAP, 0),       # UEFI runtime
                (0x7c730000, 0x7fc00000, 0, 0),
                (0x7fc00000, 0x7ffe0000, NOMAP, 0),       # UEFI runtime
                (0x7ffe0000, 0x80000000, 0, 0),
                (0x80000000, 0xbfbfc000, 0, 1),
                (0xbfbfc000, 0xbfbfc0f4, NOMAP, 1),       # the SRAT override table
                (0xbfbfc0f4, 0xc0000000, 0, 1)]


def arm64_510(inlines=("valid_section",), version=(5, 10, 223)) -> Model:
    """2 GiB at 0x40000000 on two nodes; sections/blocks of 1 GiB: memory0 holds
    only the NOMAP flash and holes, and has no node link."""
    kernel = arm64_kernel(version, 30, GiB, inlines)
    # A 1 GiB section has 512 subsections.
    full = (1 << 512) - 1
    blocks = [block(0, None), block(1, 0), block(2, 1)]
    return Model(kernel=kernel, sections=[section(i, subsection_map=full) for i in range(3)],
                 memblock_memory=memblock("memory", ARM64_MEMORY),
                 memblock_reserved=memblock("reserved", [(0x40000000, 0x41000000, 0, None)]),
                 blocks=blocks, nodes=nodes(0, 1), links=links_for(blocks))


def arm64_61() -> Model:
    """The same machine on 6.1: 128 MiB sections and blocks, every block linked."""
    kernel = arm64_kernel((6, 1, 115), 27, 128 * MiB)
    numbers = [0] + list(range(8, 24))
    blocks = [block(0, 0)] + [block(i, 0 if i < 16 else 1) for i in range(8, 24)]
    return Model(kernel=kernel, sections=[section(i) for i in numbers],
                 memblock_memory=memblock("memory", ARM64_MEMORY),
                 memblock_reserved=memblock("reserved", [(0x40000000, 0x41000000, 0, None)]),
                 blocks=blocks, nodes=nodes(0, 1), links=links_for(blocks))


def pfns(start_phys: int, end_phys: int) -> Tuple[int, int]:
    return start_phys >> 12, end_phys >> 12


def by_kind(findings, kind: str):
    return [f for f in findings if f.kind == kind]


def ranges_of(findings) -> List[Tuple[int, int, str]]:
    return [(f.start_pfn, f.end_pfn, f.facts["reason_code"]) for f in findings]
