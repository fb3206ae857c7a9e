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

import bisect
import collections.abc
import dataclasses
import functools
import operator
from array import array
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
    # The dump's format (drgn_hotplug.dumps.describe, e.g. "flattened
    # kdump-zlib"); None for a live kernel.
    dump_format: Optional[str] = None

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


FlagTest = Callable[[frozenset], bool]


def valid_section(flags: frozenset) -> bool:
    """The kernel's ``valid_section()`` on a section's flags: it has a memmap."""
    return HAS_MEM_MAP in flags


def early_section(flags: frozenset) -> bool:
    """The kernel's ``early_section()`` on a section's flags: present at boot."""
    return IS_EARLY in flags


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
        return valid_section(self.flags)

    @property
    def early(self) -> bool:
        return early_section(self.flags)

    @property
    def online(self) -> bool:
        return IS_ONLINE in self.flags

    @property
    def zone_device(self) -> bool:
        return TAINT_ZONE_DEVICE in self.flags


class SectionTable(collections.abc.Sequence):
    """The present sections column by column, in ascending section number.

    A 64 TB machine has 512K sections but a handful of distinct flag
    combinations: each section keeps one byte, the index of its flag set in
    ``flag_sets``, so a question about flags is asked once per distinct set
    and answered for every section by one pass over that byte column.
    Section objects are made only when asked for (listings, explain, tests).
    ``usages`` holds 0 for a section without a ``mem_section_usage``.

    >>> hot = frozenset({MARKED_PRESENT, HAS_MEM_MAP})
    >>> table = SectionTable.of([Section(9, 0x90, 0x1003, hot, 0x48, 7),
    ...                          Section(8, 0x80, 0x100b, hot | {IS_EARLY}, None, None)])
    >>> [s.nr for s in table], table.find(9).subsection_map, table.find(7)
    ([8, 9], 7, None)
    >>> table.numbers_where(lambda flags: IS_EARLY not in flags)
    [9]
    """

    def __init__(self, nrs: Sequence[int], addresses: Sequence[int], mem_maps: Sequence[int],
                 usages: Sequence[int], subsection_maps: Sequence[Optional[int]], kinds: bytes,
                 flag_sets: Sequence[frozenset]):
        if len({len(nrs), len(addresses), len(mem_maps), len(usages), len(subsection_maps),
                len(kinds)}) > 1:
            raise ValueError("section columns of different lengths")
        self.nrs = nrs
        self.addresses = addresses
        self.mem_maps = mem_maps
        self.usages = usages
        self.subsection_maps = subsection_maps
        self.kinds = kinds
        self.flag_sets = tuple(flag_sets)

    @classmethod
    def of(cls, sections: Sequence[Section]) -> "SectionTable":
        """``sections`` as a table: itself when it is one already, else a
        table of the Sections (in any order, as tests build them).

        Raises ValueError when two sections have the same number.
        """
        if isinstance(sections, SectionTable):
            return sections
        ordered = sorted(sections, key=operator.attrgetter("nr"))
        if any(a.nr == b.nr for a, b in zip(ordered, ordered[1:])):
            raise ValueError("two sections with the same number")
        flag_sets = tuple(dict.fromkeys(s.flags for s in ordered))
        kind = {flags: i for i, flags in enumerate(flag_sets)}
        return cls(array("Q", [s.nr for s in ordered]), array("Q", [s.address for s in ordered]),
                   array("Q", [s.mem_map for s in ordered]),
                   array("Q", [s.usage_address or 0 for s in ordered]),
                   [s.subsection_map for s in ordered], bytes(kind[s.flags] for s in ordered),
                   flag_sets)

    def __len__(self) -> int:
        return len(self.nrs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Section(self.nrs[index], self.addresses[index], self.mem_maps[index],
                       self.flag_sets[self.kinds[index]], self.usages[index] or None,
                       self.subsection_maps[index])

    def __iter__(self) -> Iterator[Section]:
        return map(Section, self.nrs, self.addresses, self.mem_maps,
                   map(self.flag_sets.__getitem__, self.kinds),
                   (usage or None for usage in self.usages), self.subsection_maps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (SectionTable, list)):
            return NotImplemented
        return self._columns() == SectionTable.of(other)._columns()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<SectionTable of {len(self)} sections>"

    def _columns(self) -> Tuple[Any, ...]:
        return (self.nrs, self.addresses, self.mem_maps, self.usages, list(self.subsection_maps),
                list(map(self.flag_sets.__getitem__, self.kinds)))

    def find(self, nr: int) -> Optional[Section]:
        """Section ``nr``, or None when it is not present."""
        i = bisect.bisect_left(self.nrs, nr)
        return self[i] if i < len(self.nrs) and self.nrs[i] == nr else None

    def between(self, first: int, end: int) -> List[Section]:
        """The present sections numbered ``first`` <= nr < ``end``."""
        return self[bisect.bisect_left(self.nrs, first):bisect.bisect_left(self.nrs, end)]

    def numbers_where(self, test: FlagTest) -> List[int]:
        """Numbers of the sections whose flags pass ``test``, ascending."""
        return list(compress(self.nrs, self._passing(test)))

    def maps_where(self, test: FlagTest) -> List[Tuple[int, Optional[int]]]:
        """(number, subsection map) of the sections whose flags pass ``test``.

        >>> SectionTable.of([Section(3, 0, 3, frozenset({HAS_MEM_MAP}), 0x40, 0xff)]
        ...                 ).maps_where(lambda flags: HAS_MEM_MAP in flags)
        [(3, 255)]
        """
        return list(compress(zip(self.nrs, self.subsection_maps), self._passing(test)))

    def _passing(self, test: FlagTest) -> bytes:
        # One byte per section, non-zero where its flag set passes: the
        # translation table maps each kind to its answer.
        answers = bytearray(256)
        for kind, flags in enumerate(self.flag_sets):
            answers[kind] = bool(test(flags))
        return self.kinds.translate(answers)

    def to_dicts(self) -> List[Dict[str, Any]]:
        """Each section as the JSON-ready dict of ``dataclasses.asdict()``
        with sorted flag lists, made from the columns (asdict of 512K
        Sections takes seconds).

        >>> s = Section(3, 0x30, 3, frozenset({HAS_MEM_MAP, MARKED_PRESENT}), None, 1)
        >>> SectionTable.of([s]).to_dicts() == [_plain(dataclasses.asdict(s))]
        True
        """
        names = [sorted(flags) for flags in self.flag_sets]
        return [{"nr": nr, "address": address, "mem_map": mem_map, "flags": list(names[kind]),
                 "usage_address": usage or None, "subsection_map": subsection_map}
                for nr, address, mem_map, kind, usage, subsection_map
                in zip(self.nrs, self.addresses, self.mem_maps, self.kinds, self.usages,
                       self.subsection_maps)]


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
    # memmap_on_memory: how many pages at the block's start hold its own
    # memmap (0: none; None: the kernel cannot self-host, before v5.13), and
    # the ``struct vmem_altmap`` they come from (v6.6+; kernels.py).
    nr_vmemmap_pages: Optional[int] = None
    altmap: Optional[int] = None


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
class Zone:
    """One ``struct zone`` of a node's ``node_zones[]``: ``index`` is its
    ``enum zone_type`` value, ``name`` the kernel's (``"DMA32"``, ``"Movable"``).
    A zone is empty when ``spanned_pages`` is 0."""

    nid: int
    index: int
    name: str
    start_pfn: int
    spanned_pages: int

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.spanned_pages


@dataclass(frozen=True)
class HotplugSettings:
    """How the kernel decides memory hotplug questions sysfs answers
    (``removable``, ``valid_zones``): CONFIG_MEMORY_HOTREMOVE, the
    ``movable_node`` boot option and ``memory_hotplug.online_policy``
    (None before v5.15, which had only the contiguous-zones policy)."""

    hotremove: bool
    movable_node: bool
    online_policy: Optional[str] = None


@dataclass(frozen=True)
class IomemResource:
    """One ``struct resource`` of the ``iomem_resource`` tree, a /proc/iomem line.

    ``end`` is inclusive, as the kernel and /proc/iomem keep it; ``depth``
    is the nesting level (0 for the root's children); ``flag_names`` are
    the IORESOURCE_* bits drgn-hotplug looks at (kernels.iomem_flag_names),
    e.g. ("MEM", "SYSRAM", "DRIVER_MANAGED", "BUSY") for memory dax_kmem added.
    """

    start: int
    end: int
    name: str
    flags: int
    depth: int
    address: int
    flag_names: Tuple[str, ...] = ()

    @property
    def system_ram(self) -> bool:
        return "SYSRAM" in self.flag_names

    @property
    def driver_managed(self) -> bool:
        return "DRIVER_MANAGED" in self.flag_names


@dataclass(frozen=True)
class MemoryGroup:
    """A ``struct memory_group`` (v5.15, 028fc57a1c36): the memory blocks a
    driver added as one unit. virtio-mem registers a dynamic group per
    device (``unit_pages``: what it adds at once), dax_kmem a static one per
    dax device (``max_pages``). ``blocks`` are the ids of the memory blocks
    on its ``memory_blocks`` list, in list order; ``strangers`` the
    addresses on that list that are no registered memory block."""

    address: int
    nid: int
    is_dynamic: bool
    unit_pages: Optional[int]
    max_pages: Optional[int]
    present_kernel_pages: int
    present_movable_pages: int
    blocks: Tuple[int, ...] = ()
    strangers: Tuple[int, ...] = ()


@dataclass(frozen=True)
class SelfHostedMemmap:
    """A memory block that hosts its own memmap (memmap_on_memory): the
    pages that memmap needs (its struct pages in whole pageblocks), and for
    an online block the pfn runs (end exclusive) of PG_vmemmap_self_hosted
    struct pages among its first pages (None when the block is offline or
    the kernel has no such flag, before v6.0)."""

    block: int
    needed_pages: int
    marked_runs: Optional[Tuple[Tuple[int, int], ...]] = None


@dataclass(frozen=True)
class Unreadable:
    """Something a reader could not read, and why."""

    what: str
    reason: str
    address: Optional[int] = None


@dataclass
class Model:
    """Everything the checks need, as read from one kernel.

    Readers give ``sections`` as a SectionTable; a list of Sections in any
    order works as well (tests build and edit those). ``page_nids`` maps the
    first pfn of each memory block's first valid section to the node its
    ``struct page`` names. ``node_spans`` maps a node to its
    (``node_start_pfn``, ``node_spanned_pages``) from ``node_data[nid]``,
    for the readers that read them (empty otherwise).

    ``misread`` names the decoded fields that ``selfcheck.cross_check()``
    found misread for this kernel (most objects disagree with the copy the
    kernel keeps elsewhere): no check draws a finding from them.
    ``cross_checked`` is True once that comparison ran.
    ``iomem`` is the ``iomem_resource`` tree in /proc/iomem order (empty
    when a reader does not read it).
    """

    kernel: KernelFacts
    sections: Sequence[Section]
    memblock_memory: MemblockType
    memblock_reserved: MemblockType
    blocks: List[MemoryBlock]
    nodes: List[Node]
    links: List[NodeLink]
    page_nids: Dict[int, int] = field(default_factory=dict)
    unreadable: List[Unreadable] = field(default_factory=list)
    node_spans: Dict[int, Tuple[int, int]] = field(default_factory=dict)
    misread: Tuple[str, ...] = ()
    cross_checked: bool = False
    iomem: List[IomemResource] = field(default_factory=list)
    # memmap_on_memory: block id -> SelfHostedMemmap of each block that
    # hosts its memmap (reader/vmemmap.py).
    self_hosted: Dict[int, SelfHostedMemmap] = field(default_factory=dict)
    # Zones of the online nodes and the hotplug settings, for what sysfs
    # shows of memory blocks (``lsmem``); empty / None from readers that skip them.
    zones: List[Zone] = field(default_factory=list)
    hotplug: Optional[HotplugSettings] = None
    # Memory groups (v5.15+), each block's ``memory_block.group`` (block id
    # -> group address, blocks of a group only), and the PageOffline pfn
    # runs (end exclusive) of the online blocks of groups: virtio-mem's
    # unplugged sub-blocks. Empty from readers that skip them.
    memory_groups: List[MemoryGroup] = field(default_factory=list)
    block_groups: Dict[int, int] = field(default_factory=dict)
    offline_runs: Dict[int, Tuple[Tuple[int, int], ...]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (frozensets become sorted lists), the one
        ``dataclasses.asdict()`` would give, without its deep copies: those
        take seconds on a 64 TB machine's sections, blocks and links."""
        return {name: SectionTable.of(self.sections).to_dicts() if name == "sections"
                else _plain(getattr(self, name)) for name in _field_names(Model)}


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
    if dataclasses.is_dataclass(value):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(value)
    return value


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))
