"""The plain model every reader produces and every check consumes.

Readers (drgn, gdb) turn kernel memory into these dataclasses; nothing in
this module, nor in the checks and reports built on it, imports drgn or gdb.
Addresses are kernel virtual addresses, sizes are bytes, pfns are integers.

>>> s = Section(nr=8, address=0xffff888000001000, mem_map=0xffffea0000200000,
...             flags=frozenset({"MARKED_PRESENT", "HAS_MEM_MAP", "IS_EARLY"}),
...             usage_address=None, subsection_map=None)
>>> s.valid, s.early
(True, True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# Section flag names, as the kernel spells them without the SECTION_ prefix.
MARKED_PRESENT = "MARKED_PRESENT"
HAS_MEM_MAP = "HAS_MEM_MAP"
IS_ONLINE = "IS_ONLINE"
IS_EARLY = "IS_EARLY"
TAINT_ZONE_DEVICE = "TAINT_ZONE_DEVICE"

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class KernelFacts:
    """Constants of the analysed kernel, from VMCOREINFO and DWARF.

    ``version`` is (major, minor, sublevel) of the kernel source, e.g.
    (5, 10, 216) for Debian's 5.10.0-30-cloud-arm64. ``arch`` uses the
    kernel's UTS machine names: "x86_64" or "aarch64".
    ``arch_pfn_valid_inlines`` names the functions inlined into an arch
    ``pfn_valid()`` symbol (None when the kernel uses the generic inline
    one): it lets the pfn_valid model detect backports instead of assuming.
    """

    arch: str
    release: str
    version: Tuple[int, int, int]
    page_size: int
    section_size_bits: int
    max_physmem_bits: int
    nr_mem_sections: int
    subsection_shift: Optional[int]
    memory_block_size: int
    max_numnodes: int
    sparsemem_extreme: bool
    sparsemem_vmemmap: bool
    keeps_memblock: bool
    kaslr_offset: Optional[int] = None
    arch_pfn_valid_inlines: Optional[Tuple[str, ...]] = None
    config: Dict[str, str] = field(default_factory=dict)

    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @property
    def pfn_section_shift(self) -> int:
        return self.section_size_bits - self.page_shift

    @property
    def pages_per_block(self) -> int:
        return self.memory_block_size >> self.page_shift

    @property
    def sections_per_block(self) -> int:
        return self.memory_block_size >> self.section_size_bits


@dataclass(frozen=True)
class Section:
    """One present ``struct mem_section`` (section_mem_map != 0).

    ``mem_map`` is the raw ``section_mem_map`` word (flags in the low bits);
    ``subsection_map`` has bit i set when subsection i of the section is
    active, None when the kernel has no subsection map or it was unreadable.
    """

    nr: int
    address: int
    mem_map: int
    flags: frozenset
    usage_address: Optional[int]
    subsection_map: Optional[int]

    @property
    def valid(self) -> bool:
        """``valid_section()``: the section has a memmap (struct pages)."""
        return HAS_MEM_MAP in self.flags

    @property
    def early(self) -> bool:
        return IS_EARLY in self.flags

    @property
    def online(self) -> bool:
        return IS_ONLINE in self.flags

    @property
    def zone_device(self) -> bool:
        return TAINT_ZONE_DEVICE in self.flags


@dataclass(frozen=True)
class MemblockRegion:
    """One ``struct memblock_region``; ``flag_names`` decoded from DWARF."""

    base: int
    size: int
    flags: int
    flag_names: Tuple[str, ...] = ()
    nid: Optional[int] = None

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class MemblockType:
    """``memblock.memory`` or ``memblock.reserved``.

    ``available`` is False when the array cannot be trusted (discarded after
    boot, corrupt count); ``reason`` then says why and ``regions`` is empty.
    """

    name: str
    address: int
    cnt: int
    max: int
    regions: Tuple[MemblockRegion, ...]
    available: bool = True
    reason: Optional[str] = None


# The two records a 64 TB machine has tens of thousands of are slotted
# rather than frozen: a frozen dataclass sets each field through
# object.__setattr__, five times the cost of making it (nothing changes a
# record once read).
@dataclass(slots=True)
class MemoryBlock:
    """A memory block device (``struct memory_block``), memoryN in sysfs.

    ``state`` is the kernel's MEM_* name in lower case without the prefix
    ("online", "offline", "going-offline", ...). ``in_bus`` and
    ``in_xarray`` say where the reader found it (xarray is v5.8+; None when
    the kernel has none).
    """

    id: int
    address: int
    start_section_nr: int
    state: str
    nid: Optional[int]
    zone: Optional[str] = None
    online_type: Optional[int] = None
    in_bus: bool = True
    in_xarray: Optional[bool] = None
    kn_address: Optional[int] = None


@dataclass(frozen=True)
class Node:
    """``node_devices[nid]``: a /sys/devices/system/node/nodeN directory."""

    nid: int
    address: int
    kn_address: Optional[int]
    online: bool = True


@dataclass(slots=True)
class NodeLink:
    """A kernfs symlink between a node and a memory block directory.

    ``direction`` is "node-to-block" (nodeN/memoryM) or "block-to-node"
    (memoryM/nodeN). ``node`` and ``block`` come from the two directory
    names. ``target_live`` is False when the target kernfs node was
    deactivated, is being removed or is no longer in its parent's rbtree;
    ``target_dead_reasons`` lists which of those held. ``target_block`` /
    ``target_node`` are what the target directory resolves to, if anything.
    """

    direction: str
    node: int
    block: int
    name: str
    kn_address: int
    target_address: Optional[int]
    target_name: Optional[str]
    target_live: bool
    target_dead_reasons: Tuple[str, ...] = ()
    target_block: Optional[int] = None
    target_node: Optional[int] = None


@dataclass(frozen=True)
class Unreadable:
    """Something a reader could not read, and why."""

    what: str
    reason: str
    address: Optional[int] = None


@dataclass
class Model:
    """Everything the checks need, as read from one kernel."""

    kernel: KernelFacts
    sections: List[Section]
    memblock_memory: MemblockType
    memblock_reserved: MemblockType
    blocks: List[MemoryBlock]
    nodes: List[Node]
    links: List[NodeLink]
    page_nids: Dict[int, int] = field(default_factory=dict)
    unreadable: List[Unreadable] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (frozensets become sorted lists)."""
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class Finding:
    """One inconsistency, with the facts a reader needs to check it by hand.

    Range findings set ``start_pfn``/``end_pfn`` (end exclusive); link
    findings set ``node`` and ``block``.
    """

    kind: str
    severity: str
    reason: str
    start_pfn: Optional[int] = None
    end_pfn: Optional[int] = None
    node: Optional[int] = None
    block: Optional[int] = None
    facts: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in _plain(dataclasses.asdict(self)).items()
                if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(value)
    return value
