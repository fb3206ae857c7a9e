"""Every kernel-version and architecture rule drgn-hotplug depends on.

Each fork names the kernel commit (or release) that introduced the
behaviour, so a reader can check it against the kernel history. Readers
prefer what the analysed kernel says about itself (DWARF enumerators,
config, the functions inlined into its pfn_valid()); the version tables here
are fallbacks and the choice of the pfn_valid() model.

>>> rule = pfn_valid_rule("x86_64", (6, 1, 115))
>>> rule.name, rule.nonearly_from_subsections, rule.memblock_test
('generic-subsection', True, None)
>>> pfn_valid_rule("aarch64", (5, 10, 223), ("valid_section",)).name
'arm64-memblock-map'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from .model import KernelFacts

Version = Tuple[int, int, int]

ARM64 = "aarch64"

# memblock_is_map_memory(): in memblock.memory and not MEMBLOCK_NOMAP.
MAP_MEMORY = "memblock_is_map_memory"
# memblock_is_memory(): in memblock.memory, whatever the flags.
MEMORY = "memblock_is_memory"


@dataclass(frozen=True)
class PfnValidRule:
    """How one kernel's ``pfn_valid()`` decides, as three ingredients.

    - ``requires_valid_section``: false pfns outside a section with a memmap.
    - ``nonearly_from_subsections``: sections not marked IS_EARLY answer from
      their subsection map (``pfn_section_valid()``); early sections are
      valid as a whole unless ``memblock_test`` says otherwise.
    - ``memblock_test``: the memblock predicate the answer ends with, for
      early sections (or for every section when non-early ones do not
      answer from the subsection map): MAP_MEMORY, MEMORY or None.

    ``source`` is the kernel code the rule transcribes, with its commit.
    """

    name: str
    requires_valid_section: bool
    nonearly_from_subsections: bool
    memblock_test: Optional[str]
    source: str

    @property
    def memblock_based(self) -> bool:
        return self.memblock_test is not None


GENERIC_SECTION = PfnValidRule(
    "generic-section", True, False, None,
    "include/linux/mmzone.h before v5.3: valid_section(__nr_to_section(nr))")
GENERIC_SUBSECTION = PfnValidRule(
    "generic-subsection", True, True, None,
    "include/linux/mmzone.h since v5.3 (subsection map: f46edbd1b151 'mm/sparsemem: "
    "add helpers track active portions of a section at boot'; early sections: "
    "326e1b8f83a4 'mm/sparsemem: introduce a SECTION_IS_EARLY flag'): "
    "valid_section(ms) && (early_section(ms) || pfn_section_valid(ms, pfn))")
ARM64_MEMBLOCK_MEMORY_ONLY = PfnValidRule(
    "arm64-memblock-memory-only", False, False, MEMORY,
    "arch/arm64/mm/init.c before v4.5: memblock_is_memory(pfn << PAGE_SHIFT)")
ARM64_MAP_MEMORY_ONLY = PfnValidRule(
    "arm64-memblock-map-only", False, False, MAP_MEMORY,
    "arch/arm64/mm/init.c v4.5 (68709f45385a 'arm64: only consider memblocks "
    "with NOMAP cleared for linear mapping') to v5.6: memblock_is_map_memory(addr)")
ARM64_MAP_MEMORY = PfnValidRule(
    "arm64-memblock-map", True, False, MAP_MEMORY,
    "arch/arm64/mm/init.c v5.7 (bbd6ec605c0f 'arm64/mm: Enable memory hot "
    "remove') to v5.11: valid_section() then memblock_is_map_memory(addr)")
ARM64_MAP_MEMORY_HOTPLUG = PfnValidRule(
    "arm64-memblock-map-hotplug", True, True, MAP_MEMORY,
    "arch/arm64/mm/init.c v5.12 (eeb0753ba27b 'arm64/mm: Fix pfn_valid() for "
    "ZONE_DEVICE based memory') to v5.13: non-early sections answer from "
    "pfn_section_valid(), early ones from memblock_is_map_memory(addr)")
ARM64_MEMORY_HOTPLUG = PfnValidRule(
    "arm64-memblock-memory", True, True, MEMORY,
    "arch/arm64/mm/init.c v5.14 (3eb9cdffb397 'Partially revert \"arm64/mm: "
    "drop HAVE_ARCH_PFN_VALID\"') and 5.15: non-early sections answer from "
    "pfn_section_valid(), early ones from memblock_is_memory(addr)")


def pfn_valid_rule(arch: str, version: Version,
                   arch_pfn_valid_inlines: Optional[Iterable[str]] = None) -> PfnValidRule:
    """The ``pfn_valid()`` model of one kernel.

    ``arch_pfn_valid_inlines`` are the functions the reader found inlined
    into (or called from) the kernel's out-of-line ``pfn_valid`` symbol;
    None when there is no such symbol (the generic static inline is used).
    That evidence wins over the version because stable trees may carry a
    later rule without the version bump (eeb0753ba27b on 5.10.y).

    >>> pfn_valid_rule("x86_64", (5, 2, 0)).name
    'generic-section'
    >>> pfn_valid_rule("aarch64", (5, 10, 0), ("valid_section", "early_section",
    ...                "pfn_section_valid")).name
    'arm64-memblock-map-hotplug'
    >>> pfn_valid_rule("aarch64", (5, 15, 100)).name, pfn_valid_rule("aarch64", (6, 1, 0)).name
    ('generic-subsection', 'generic-subsection')
    """
    if arch == ARM64 and _arm64_has_arch_pfn_valid(version, arch_pfn_valid_inlines):
        return _arm64_rule(version, frozenset(arch_pfn_valid_inlines or ()))
    # v5.3: f46edbd1b151 made generic pfn_valid() consult the subsection map.
    if version < (5, 3, 0):
        return GENERIC_SECTION
    return GENERIC_SUBSECTION


def _arm64_has_arch_pfn_valid(version: Version,
                              inlines: Optional[Iterable[str]]) -> bool:
    # v5.16: 3de360c3fdb3 'arm64/mm: drop HAVE_ARCH_PFN_VALID' switched arm64
    # to the generic pfn_valid(); 5.15.y received it as a backport, so on
    # 5.15 only the presence of an arch pfn_valid symbol tells.
    if version >= (5, 16, 0):
        return False
    if version[:2] == (5, 15):
        return inlines is not None
    return True


def _arm64_rule(version: Version, evidence: frozenset) -> PfnValidRule:
    if version >= (5, 14, 0):
        return ARM64_MEMORY_HOTPLUG
    # eeb0753ba27b (v5.12); stable trees carry it without the version bump.
    if version >= (5, 12, 0) or evidence & {"pfn_section_valid", "early_section"}:
        return ARM64_MAP_MEMORY_HOTPLUG
    if version >= (5, 7, 0) or "valid_section" in evidence:
        return ARM64_MAP_MEMORY
    # v4.5: 68709f45385a introduced MEMBLOCK_NOMAP and memblock_is_map_memory().
    if version >= (4, 5, 0):
        return ARM64_MAP_MEMORY_ONLY
    return ARM64_MEMBLOCK_MEMORY_ONLY


def rule_for(kernel: KernelFacts) -> PfnValidRule:
    """``pfn_valid_rule()`` for a model's kernel facts."""
    return pfn_valid_rule(kernel.arch, kernel.version, kernel.arch_pfn_valid_inlines)


def has_pfn_is_map_memory(arch: str, version: Version) -> bool:
    """Whether the kernel has arm64's ``pfn_is_map_memory()``, the linear-map
    question split off from pfn_valid(): 873ba463914c (v5.14-rc1), kept by
    the v5.14 partial revert 3eb9cdffb397.

    >>> has_pfn_is_map_memory("aarch64", (5, 14, 0)), has_pfn_is_map_memory("aarch64", (5, 13, 0))
    (True, False)
    """
    return arch == ARM64 and version >= (5, 14, 0)


def facts_problem(kernel: KernelFacts) -> Optional[str]:
    """Why the kernel constants cannot describe a SPARSEMEM kernel, or None.

    Readers turn a problem into a one-line "cannot analyse" error; the
    checks refuse such facts rather than divide by zero on them.

    >>> facts_problem(KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21,
    ...                           1 << 27, 1024, True, True, False)) is None
    True
    >>> facts_problem(KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21,
    ...                           0, 1024, True, True, False))
    'memory block size 0x0 is not a power-of-two multiple of the 0x8000000-byte section'
    """
    page, bits = kernel.page_size, kernel.section_size_bits
    if page < 512 or page & (page - 1):
        return f"page size {page} is not a power of two"
    if not kernel.page_shift < bits <= kernel.max_physmem_bits <= 64:
        return (f"SECTION_SIZE_BITS {bits} does not fit between the page shift "
                f"{kernel.page_shift} and MAX_PHYSMEM_BITS {kernel.max_physmem_bits}")
    block = kernel.memory_block_size
    if block < 1 << bits or block & (block - 1):
        return (f"memory block size {block:#x} is not a power-of-two multiple of the "
                f"{1 << bits:#x}-byte section")
    sub = kernel.subsection_shift
    if sub is not None and not kernel.page_shift <= sub <= bits:
        return f"subsection shift {sub} does not fit between page and section"
    if kernel.max_numnodes <= 0 or kernel.nr_mem_sections <= 0:
        return "MAX_NUMNODES and NR_MEM_SECTIONS must be positive"
    return None


def subsections_exist(kernel: KernelFacts) -> bool:
    """Subsection maps exist since v5.3 (f46edbd1b151) and only with
    SPARSEMEM_VMEMMAP; otherwise ``pfn_section_valid()`` returns 1."""
    return (kernel.version >= (5, 3, 0) and kernel.sparsemem_vmemmap
            and kernel.subsection_shift is not None)


# ---------------------------------------------------------------- memblock

# Arches selecting ARCH_KEEP_MEMBLOCK (opt-in since v5.1, 350e88bad496 'mm:
# memblock: make keeping memblock memory opt-in rather than opt-out'; before
# it x86 opted out with ARCH_DISCARD_MEMBLOCK). Used only when the reader
# has no kernel config.
_KEEP_MEMBLOCK_ARCHES = frozenset({ARM64, "ppc64", "ppc64le", "s390x", "s390"})


def arch_keeps_memblock(arch: str, config: Optional[Dict[str, str]] = None) -> bool:
    """Whether memblock survives boot (CONFIG_ARCH_KEEP_MEMBLOCK).

    >>> arch_keeps_memblock("x86_64"), arch_keeps_memblock("aarch64")
    (False, True)
    >>> arch_keeps_memblock("x86_64", {"CONFIG_ARCH_KEEP_MEMBLOCK": "y"})
    True
    """
    if config and "CONFIG_ARCH_KEEP_MEMBLOCK" in config:
        return config["CONFIG_ARCH_KEEP_MEMBLOCK"] == "y"
    return arch in _KEEP_MEMBLOCK_ARCHES


def hotplug_updates_memblock(kernel: KernelFacts) -> bool:
    """Whether hot-add/remove add and remove memblock.memory regions:
    ``add_memory_resource()`` calls memblock_add_node() and
    ``try_remove_memory()`` memblock_remove() only under
    IS_ENABLED(CONFIG_ARCH_KEEP_MEMBLOCK) (since v5.1, 350e88bad496)."""
    return kernel.keeps_memblock


def memblock_trust(keeps_memblock: bool, regions_address: int,
                   init_regions_address: Optional[int], cnt: int, max_: int) -> Optional[str]:
    """None when a memblock_type array can be trusted, else why not.

    Without ARCH_KEEP_MEMBLOCK, memblock_discard() (v4.13, 3010f876500f)
    frees resized arrays and leaves ``regions`` dangling; only the static
    ``memblock_*_init_regions`` array (kept with MEMORY_HOTPLUG's meminit
    data) stays meaningful. ``cnt <= max`` guards against garbage.

    >>> memblock_trust(False, 0x1000, 0x1000, 3, 128) is None
    True
    >>> memblock_trust(False, 0x2000, 0x1000, 3, 128)
    'memblock unavailable after boot: regions is not the static init array (discarded)'
    """
    if not 0 <= cnt <= max_ or max_ <= 0:
        return f"memblock unavailable after boot: cnt {cnt} exceeds max {max_}"
    if keeps_memblock:
        return None
    if init_regions_address is None:
        return "memblock unavailable after boot: no static init array symbol to compare with"
    if regions_address != init_regions_address:
        return ("memblock unavailable after boot: regions is not the static "
                "init array (discarded)")
    return None


# memblock_double_array() doubles a full array, starting from the static
# one; 2^16 doublings (8M regions from 128) is far beyond any machine and
# keeps the one read of a corrupt-but-consistent array bounded.
MAX_MEMBLOCK_DOUBLINGS = 16


def memblock_count_problem(cnt: int, max_: int, init_length: Optional[int]) -> Optional[str]:
    """Why a memblock_type's ``cnt``/``max`` cannot be real, None when they can.

    ``max`` starts as the length of the static ``memblock_*_init_regions``
    array and only ever doubles; ``cnt`` never exceeds it.

    >>> memblock_count_problem(3, 128, 128) is None, memblock_count_problem(133, 256, 128) is None
    (True, True)
    >>> memblock_count_problem(1 << 31, 128, 128)
    'corrupt count: cnt 2147483648 exceeds max 128'
    >>> memblock_count_problem(3, 1 << 31, 128)
    'corrupt count: max 2147483648 is not the static array length 128 doubled at most 16 times'
    """
    if not 0 <= cnt <= max_:
        return f"corrupt count: cnt {cnt} exceeds max {max_}"
    if init_length and not any(max_ == init_length << k for k in range(MAX_MEMBLOCK_DOUBLINGS + 1)):
        return (f"corrupt count: max {max_} is not the static array length {init_length} "
                f"doubled at most {MAX_MEMBLOCK_DOUBLINGS} times")
    return None


# Fallback bits of enum memblock_flags when DWARF lacks the enumerators.
# MEMBLOCK_HOTPLUG v3.13 (66b16edf9eaf), MEMBLOCK_MIRROR v4.3 (a3f5bafcc04a),
# MEMBLOCK_NOMAP v4.5 (bf3d3cc580f9), MEMBLOCK_DRIVER_MANAGED v5.16
# (952eea9b01e4). Later flags vary between trees: DWARF only.
_MEMBLOCK_FLAGS = (("HOTPLUG", 0x1, (3, 13, 0)), ("MIRROR", 0x2, (4, 3, 0)),
                   ("NOMAP", 0x4, (4, 5, 0)), ("DRIVER_MANAGED", 0x8, (5, 16, 0)))
MEMBLOCK_NOMAP = "NOMAP"


def memblock_flag_bits(version: Version) -> Dict[str, int]:
    """Fallback ``enum memblock_flags`` values (without MEMBLOCK_ prefix).

    >>> memblock_flag_bits((5, 10, 0))
    {'HOTPLUG': 1, 'MIRROR': 2, 'NOMAP': 4}
    """
    return {name: bit for name, bit, since in _MEMBLOCK_FLAGS if version >= since}


def memblock_flag_names(flags: int, bits: Dict[str, int]) -> Tuple[str, ...]:
    """Names of the set flags; unknown bits as hex.

    >>> memblock_flag_names(0x104, {'NOMAP': 4})
    ('NOMAP', '0x100')
    """
    names = [name for name, bit in sorted(bits.items(), key=lambda kv: kv[1])
             if flags & bit]
    rest = flags & ~sum(bits.values())
    if rest:
        names.append(hex(rest))
    return tuple(names)


# ---------------------------------------------------------------- sections

def section_flag_bits(version: Version) -> Tuple[Dict[str, int], int]:
    """Fallback section flag bit numbers and SECTION_MAP_LAST_BIT's number,
    for kernels older than v6.0 (ed7802dd48f7 turned them into enumerators
    whose numbering depends on the config: read those from DWARF).

    MARKED_PRESENT/HAS_MEM_MAP since 2.6.13; IS_ONLINE v4.13 (2d070eab2e82);
    IS_EARLY v5.3 (326e1b8f83a4); TAINT_ZONE_DEVICE v5.12 (1f90a3477df3).

    >>> section_flag_bits((5, 10, 0))
    ({'MARKED_PRESENT': 0, 'HAS_MEM_MAP': 1, 'IS_ONLINE': 2, 'IS_EARLY': 3}, 4)
    """
    names = ["MARKED_PRESENT", "HAS_MEM_MAP"]
    if version >= (4, 13, 0):
        names.append("IS_ONLINE")
    if version >= (5, 3, 0):
        names.append("IS_EARLY")
    if version >= (5, 12, 0):
        names.append("TAINT_ZONE_DEVICE")
    return {name: bit for bit, name in enumerate(names)}, len(names)


def decode_section_flags(section_mem_map: int, bits: Dict[str, int]) -> frozenset:
    """The flag names set in a raw ``section_mem_map`` word.

    >>> sorted(decode_section_flags(0xffffea0000000000 | 0b1011,
    ...        section_flag_bits((5, 10, 0))[0]))
    ['HAS_MEM_MAP', 'IS_EARLY', 'MARKED_PRESENT']
    """
    return frozenset(name for name, bit in bits.items() if section_mem_map >> bit & 1)


# What sysfs shows of a memory block (drivers/base/memory.c), for ``lsmem``.

def sysfs_removable(version: Version, hotremove: bool) -> Optional[bool]:
    """``memoryN/removable``: since v5.7 (53cdc1cb29e8 "drivers/base/memory.c:
    indicate all memory blocks as removable") ``IS_ENABLED(CONFIG_MEMORY_HOTREMOVE)``
    for every block; before, ``is_mem_section_removable()`` of the block's
    pages, which the model does not read (None).

    >>> sysfs_removable((6, 1, 0), True), sysfs_removable((5, 4, 0), True)
    (True, None)
    """
    return hotremove if version >= (5, 7, 0) else None


def has_valid_zones(hotremove: bool) -> bool:
    """Whether memory blocks have ``valid_zones`` (v3.18, "memory-hotplug:
    add sysfs valid_zones attribute"): it is built only
    with CONFIG_MEMORY_HOTREMOVE (an #ifdef in drivers/base/memory.c)."""
    return hotremove


def block_keeps_zone(version: Version) -> bool:
    """Whether an online block's ``valid_zones`` is ``mem->zone`` (its single
    zone, NULL for "none"): v5.18, 395f6081bad4 "drivers/base/memory:
    determine and store zone for single-zone memory blocks". Before, it was
    ``test_pages_in_a_zone()``: the one zone of the block's pages, or none.

    >>> block_keeps_zone((5, 18, 0)), block_keeps_zone((5, 10, 0))
    (True, False)
    """
    return version >= (5, 18, 0)


# memory_hotplug.online_policy=auto-movable (v5.15, e83a437faa62
# "mm/memory_hotplug: introduce "auto-movable" online policy") picks the zone
# of an offline block from memory groups and the movable/kernel ratio.
AUTO_MOVABLE_POLICY = "auto-movable"


# ---------------------------------------------------------------- iomem resources

def iomem_flag_bits(version: Version) -> Dict[str, int]:
    """The ``struct resource`` flag bits (include/linux/ioport.h macros, not in
    DWARF) drgn-hotplug reads: IORESOURCE_MEM, IORESOURCE_BUSY,
    IORESOURCE_SYSRAM (v4.6, 9babd5c8caa6 'resource: Add System RAM resource
    type') and the driver-managed bit: IORESOURCE_MEM_DRIVER_MANAGED (1<<7)
    from v5.8 (7b7b27214bba 'mm/memory_hotplug: introduce
    add_memory_driver_managed()'), moved to IORESOURCE_SYSRAM_DRIVER_MANAGED
    0x02000000 in v5.10 (7cf603d17d1c 'kernel/resource: move and rename
    IORESOURCE_MEM_DRIVER_MANAGED').

    >>> iomem_flag_bits((6, 1, 0))["DRIVER_MANAGED"], iomem_flag_bits((5, 9, 0))["DRIVER_MANAGED"]
    (33554432, 128)
    >>> "SYSRAM" in iomem_flag_bits((4, 4, 0))
    False
    """
    bits = {"MEM": 0x200, "BUSY": 0x80000000}
    if version >= (4, 6, 0):
        bits["SYSRAM"] = 0x01000000
    if version >= (5, 10, 0):
        bits["DRIVER_MANAGED"] = 0x02000000
    elif version >= (5, 8, 0):
        bits["DRIVER_MANAGED"] = 1 << 7
    return bits


def iomem_flag_names(flags: int, bits: Dict[str, int]) -> Tuple[str, ...]:
    """The names of ``bits`` set in a resource's ``flags``, low bit first.

    >>> iomem_flag_names(0x83000200, iomem_flag_bits((6, 1, 0)))
    ('MEM', 'SYSRAM', 'DRIVER_MANAGED', 'BUSY')
    """
    return tuple(name for name, bit in sorted(bits.items(), key=lambda kv: kv[1]) if flags & bit)


# ---------------------------------------------------------------- PageOffline

@dataclass(frozen=True)
class PageOfflineTest:
    """How ``PageOffline()`` reads ``page->page_type`` (virtio-mem's
    unplugged sub-blocks and balloon pages are PageOffline).

    ``type_byte`` set: the type is the top byte (``page_type >> 24 ==
    PGTY_offline``); else the inverted bits (``page_type & (base | flag)
    == base``). ``source`` names the kernel code with its commit.
    """

    base: int
    flag: int
    type_byte: Optional[int]
    source: str

    def offline(self, page_type: int) -> bool:
        """Whether a ``page_type`` word says PageOffline.

        >>> page_offline_test({}).offline(0xfffffeff), page_offline_test({}).offline(0xffffffff)
        (True, False)
        """
        if self.type_byte is not None:
            return page_type >> 24 == self.type_byte
        return page_type & (self.base | self.flag) == self.base


def page_offline_test(pagetype_enumerators: Dict[str, int]) -> PageOfflineTest:
    """The PageOffline() of a kernel, from its ``enum pagetype`` (DWARF; {}
    when it has none).

    - v5.0 (ca215086b14b 'mm: convert PG_balloon to PG_offline') to v6.10:
      macros, not in DWARF: PAGE_TYPE_BASE 0xf0000000, PG_offline 0x100,
      a type is a cleared bit.
    - v6.11 ('mm: allow reuse of the lower 16 bit of the page type with an
      actual type' moved the bits to the top; 'mm: convert page type macros
      to enum' made them ``enum pagetype``): PG_offline and PAGE_TYPE_BASE
      read from DWARF, still inverted.
    - v6.12 (4ffca5a96678 'mm: support only one page_type per page'): the
      type is the top byte, ``PGTY_offline`` (0xf1 on 6.12 and 7.3).

    >>> page_offline_test({"PGTY_offline": 0xf1}).offline(0xf1000000)
    True
    >>> page_offline_test({"PG_offline": 0x20000000, "PAGE_TYPE_BASE": 0x80000000}).offline(0xdfffffff)
    True
    """
    if "PGTY_offline" in pagetype_enumerators:
        return PageOfflineTest(0, 0, pagetype_enumerators["PGTY_offline"],
                               "v6.12 4ffca5a96678: page_type >> 24 == PGTY_offline")
    if "PG_offline" in pagetype_enumerators and "PAGE_TYPE_BASE" in pagetype_enumerators:
        base, flag = pagetype_enumerators["PAGE_TYPE_BASE"], pagetype_enumerators["PG_offline"]
        return PageOfflineTest(base & 0xffffffff, flag, None,
                               "v6.11 enum pagetype: (page_type & (PAGE_TYPE_BASE | PG_offline)) == PAGE_TYPE_BASE")
    return PageOfflineTest(0xF0000000, 0x100, None,
                           "v5.0 ca215086b14b: (page_type & (0xf0000000 | 0x100)) == 0xf0000000")


def has_memory_groups(version: Version) -> bool:
    """``struct memory_group`` and ``memory_block.group``: v5.15,
    028fc57a1c36 'drivers/base/memory: introduce "memory groups" to
    logically group memory blocks' (virtio-mem registers a dynamic group per
    device, dax_kmem a static one per dax device). The reader asks DWARF;
    this is for reports on models without groups.

    >>> has_memory_groups((5, 15, 0)), has_memory_groups((5, 10, 0))
    (True, False)
    """
    return version >= (5, 15, 0)


# ---------------------------------------------------------------- memmap_on_memory

def memmap_on_memory_members(nr_vmemmap_pages: Optional[int], altmap: Optional[int]) -> Dict[str, Optional[int]]:
    """Where ``struct memory_block`` says how many of its pages hold its own
    memmap, given the offsets DWARF has of its two spellings:
    ``nr_vmemmap_pages`` from v5.13 (a08a2ae34613 'mm,memory_hotplug: allocate
    memmap from the added memory range') to v6.5, then a ``struct
    vmem_altmap *altmap`` whose ``free`` is the count (v6.6, 1a8c64e11043
    'mm/memory_hotplug: embed vmem_altmap details in memory block').
    Neither: the kernel cannot self-host a memmap.

    >>> memmap_on_memory_members(None, 168)
    {'nr_vmemmap_pages': None, 'altmap': 168}
    """
    return {"nr_vmemmap_pages": nr_vmemmap_pages if altmap is None else None, "altmap": altmap}


def vmemmap_self_hosted_bit(enumerators: Dict[str, int]) -> Optional[int]:
    """The ``page->flags`` bit of PG_vmemmap_self_hosted (an alias of
    PG_owner_priv_1), which mhp_init_memmap_on_memory() sets on every
    self-hosted memmap page since v6.0 (66361095129b 'mm: memory_hotplug: make
    hugetlb_optimize_vmemmap compatible with memmap_on_memory'); None before
    (v5.13-v5.19 marked them only PG_reserved). From DWARF's enum pageflags.

    >>> vmemmap_self_hosted_bit({"PG_owner_priv_1": 10, "PG_vmemmap_self_hosted": 10})
    10
    """
    return enumerators.get("PG_vmemmap_self_hosted")


def memmap_pages_needed(pages_per_block: int, sizeof_page: int, page_size: int,
                        pageblock_pages: int) -> int:
    """The pages a memory block's own memmap takes: its struct pages rounded
    up to whole pages, then to whole pageblocks (up to v6.5
    mhp_supports_memmap_on_memory() refused a memmap that is not pageblock
    aligned; v6.6 2d1f649c7c08 'mm/memory_hotplug: support memmap_on_memory
    when memmap is not aligned to pageblocks' pads it in 'force' mode).

    >>> memmap_pages_needed(32768, 64, 4096, 512)
    512
    """
    pages = -(-pages_per_block * sizeof_page // page_size)
    return -(-pages // pageblock_pages) * pageblock_pages


def pageblock_pages(page_size: int) -> int:
    """pageblock_nr_pages on x86_64 and arm64: pageblock_order is
    HUGETLB_PAGE_ORDER, a PMD's worth of pages (a page table page of 8-byte
    entries).

    >>> pageblock_pages(4096)
    512
    """
    return page_size // 8
