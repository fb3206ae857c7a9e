"""Read a kernel (vmcore, /proc/kcore or QEMU guest) into the plain model.

The drgn front end's reader. drgn answers the questions of
:class:`drgn_hotplug.layout.Target` (bytes, symbols, sizes, offsets,
enumerators) through :class:`DrgnTarget`, and layout.py walks and decodes
the kernel structures, the same code the gdb front end runs, so both build
the same model. drgn-only knowledge stays here: the VMCOREINFO note, the
embedded kernel config, the memory bus and xarray helpers, and the source
locations of the functions inlined into an arch ``pfn_valid()``.

Whatever cannot be read becomes a :class:`~drgn_hotplug.model.Unreadable`
entry instead of an exception.

>>> import drgn                                        # doctest: +SKIP
>>> prog = drgn.Program(); prog.set_core_dump("vmcore.kdump")
>>> prog.load_debug_info(["vmlinux"])
>>> model = read_model(prog)
>>> model.kernel.release, len(model.blocks)
('6.1.0-56-cloud-amd64', 8)
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import drgn
from drgn import FaultError, Program, TypeKind
from drgn.helpers.linux.kconfig import get_kconfig
from drgn.helpers.linux.mm import for_each_memory_block
from drgn.helpers.linux.nodemask import for_each_online_node
from drgn.helpers.linux.xarray import xa_for_each

from . import kernels, layout
from .layout import ReadError
from .model import (KernelFacts, MemblockType, MemoryBlock, Model, Node, NodeLink,
                    Section, Unreadable)
from .vmcoreinfo import derive_constants, parse_kernel_version, parse_vmcoreinfo

# Errors meaning "this part of the kernel could not be read": memory missing
# from the dump, types or symbols missing from the debug info, nonsense
# values. Anything else is a bug and must surface.
READ_ERRORS = (FaultError, ReadError, LookupError, ValueError, OverflowError,
               drgn.ObjectAbsentError)

# Kernel config options shown with the kernel facts (when the kernel embeds
# its config: CONFIG_IKCONFIG; Debian kernels do not).
_INTERESTING_CONFIG = re.compile(
    r"^CONFIG_(SPARSEMEM\w*|MEMORY_HOTPLUG\w*|MEMORY_HOTREMOVE|ZONE_DEVICE|"
    r"ARCH_KEEP_MEMBLOCK|NUMA|NODES_SHIFT|HAVE_ARCH_PFN_VALID|ARM64_\w*PAGES|"
    r"PGTABLE_LEVELS|RANDOMIZE_BASE|FLATMEM)$")

# SUBSECTION_SHIFT, include/linux/mmzone.h since v5.3 (f46edbd1b151): 2 MiB
# on every arch and page size.
SUBSECTION_SHIFT = 21


def read_model(prog: Program) -> Model:
    """Everything the checks need, read from ``prog``.

    Raises only when the kernel facts cannot be read (no VMCOREINFO nor
    debug info): nothing else can be decoded without them.
    """
    target = DrgnTarget(prog)
    unreadable: List[Unreadable] = []
    kernel = read_kernel_facts(prog)

    def guarded(what: str, empty: Callable, read: Callable):
        try:
            return read()
        except READ_ERRORS as error:
            unreadable.append(_unreadable(what, error))
            return empty()

    sections = guarded("mem_section", list, lambda: read_sections(target, kernel, unreadable))
    memory, reserved = read_memblock(target, kernel, unreadable)
    blocks = guarded("memory blocks", list, lambda: read_memory_blocks(prog, target, unreadable))
    nodes = guarded("node_devices", list, lambda: read_nodes(prog, target))
    links = guarded("node links", list, lambda: read_node_links(target, kernel, nodes, blocks,
                                                                unreadable))
    page_nids = guarded("page nids", dict, lambda: read_page_nids(
        prog, target, kernel, sections, blocks, unreadable))
    return Model(kernel=kernel, sections=sections, memblock_memory=memory,
                 memblock_reserved=reserved, blocks=blocks, nodes=nodes, links=links,
                 page_nids=page_nids, unreadable=unreadable)


def _unreadable(what: str, error: BaseException) -> Unreadable:
    address = getattr(error, "address", None)
    return Unreadable(what=what, reason=f"{type(error).__name__}: {error}",
                      address=address if isinstance(address, int) else None)


class DrgnTarget:
    """:class:`drgn_hotplug.layout.Target` answered by a drgn Program.

    >>> t = DrgnTarget(prog)                               # doctest: +SKIP
    >>> t.offsetof("struct kernfs_node", "symlink.target_kn"), t.enumerator("KERNFS_LINK")
    (64, 4)
    """

    def __init__(self, prog: Program):
        self.prog = prog

    def read(self, address: int, size: int) -> bytes:
        try:
            return self.prog.read(address, size)
        except FaultError as error:
            raise ReadError(address, size, str(error)) from None
        except (ValueError, OverflowError) as error:
            raise ReadError(address & (1 << 64) - 1, size, str(error)) from None

    def symbol(self, name: str) -> Optional[int]:
        try:
            return self.prog[name].address_
        except LookupError:
            return None

    def sizeof(self, type_name: str) -> Optional[int]:
        try:
            return self.prog.type(type_name).size
        except LookupError:
            return None

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        try:
            return drgn.offsetof(self.prog.type(type_name), member)
        except LookupError:
            return None

    def enumerator(self, name: str) -> Optional[int]:
        try:
            return self.prog.constant(name).value_()
        except LookupError:
            return None

    def enumerators(self, type_name: str) -> Dict[str, int]:
        try:
            return {e.name: e.value for e in self.prog.type(type_name).enumerators}
        except LookupError:
            return {}

    def symbol_type(self, name: str) -> Optional[str]:
        try:
            return str(self.prog[name].type_)
        except LookupError:
            return None


# ---------------------------------------------------------------- kernel facts

def read_vmcoreinfo_text(prog: Program) -> str:
    """The VMCOREINFO text: drgn's copy (the dump's note, or
    /sys/kernel/vmcoreinfo), else the kernel's own ``vmcoreinfo_data``."""
    try:
        return prog["VMCOREINFO"].string_().decode(errors="replace")
    except READ_ERRORS:
        data = prog["vmcoreinfo_data"].value_()
        return prog.read(data, prog["vmcoreinfo_size"].value_()).decode(errors="replace")


def read_kernel_facts(prog: Program) -> KernelFacts:
    """The constants of the analysed kernel, from VMCOREINFO and DWARF.

    >>> facts = read_kernel_facts(prog)                    # doctest: +SKIP
    >>> facts.arch, facts.version, facts.section_size_bits, facts.max_numnodes
    ('x86_64', (6, 1, 192), 27, 1024)
    """
    derived = derive_constants(parse_vmcoreinfo(read_vmcoreinfo_text(prog)))
    uts = prog["init_uts_ns"].name
    arch = uts.machine.string_().decode()
    release = derived.release or uts.release.string_().decode()
    section_size_bits = derived.section_size_bits or prog["SECTION_SIZE_BITS"].value_()
    max_physmem_bits = derived.max_physmem_bits or prog["MAX_PHYSMEM_BITS"].value_()
    config = _read_config(prog)
    return KernelFacts(
        arch=arch,
        release=release,
        version=parse_kernel_version(release, uts.version.string_().decode()),
        page_size=derived.page_size or prog["PAGE_SIZE"].value_(),
        section_size_bits=section_size_bits,
        max_physmem_bits=max_physmem_bits,
        nr_mem_sections=1 << (max_physmem_bits - section_size_bits),
        subsection_shift=subsection_shift(prog, section_size_bits),
        # memory_block_size_bytes(): sections_per_block sections (v3.3+).
        memory_block_size=prog["sections_per_block"].value_() << section_size_bits,
        max_numnodes=prog["node_devices"].type_.unaliased().length,
        # SPARSEMEM_EXTREME makes mem_section a pointer to root pointers
        # (v4.15, 83e3c48729d9); the static layout is a 2-D array.
        sparsemem_extreme=prog["mem_section"].type_.unaliased_kind() == TypeKind.POINTER,
        sparsemem_vmemmap=_sparsemem_vmemmap(prog, config),
        keeps_memblock=kernels.arch_keeps_memblock(arch, config),
        kaslr_offset=derived.kaslr_offset,
        arch_pfn_valid_inlines=arch_pfn_valid_inlines(prog),
        config=config,
    )


def _read_config(prog: Program) -> Dict[str, str]:
    try:
        config = get_kconfig(prog)
    except READ_ERRORS:
        return {}
    return {k: v for k, v in config.items() if _INTERESTING_CONFIG.match(k)}


def subsection_shift(prog: Program, section_size_bits: int) -> Optional[int]:
    """SUBSECTION_SHIFT; None before subsections (v5.3, f46edbd1b151) and
    without SPARSEMEM_VMEMMAP, where ``subsection_map`` does not exist.

    The map is ``DECLARE_BITMAP(subsection_map, SUBSECTIONS_PER_SECTION)``:
    a map longer than one word gives the shift exactly; a one-word map
    (4K pages: 64 subsections or fewer) only bounds it.
    """
    try:
        map_type = prog.type("struct mem_section_usage").member("subsection_map").type.unaliased()
    except LookupError:
        return None
    word_bits = map_type.type.size * 8
    bits = map_type.length * word_bits
    if bits > word_bits:
        return section_size_bits - (bits.bit_length() - 1)
    if section_size_bits - SUBSECTION_SHIFT > word_bits.bit_length() - 1:
        raise ValueError(f"subsection_map of {bits} bits cannot hold "
                         f"2^{section_size_bits - SUBSECTION_SHIFT} subsections")
    return SUBSECTION_SHIFT


def _sparsemem_vmemmap(prog: Program, config: Dict[str, str]) -> bool:
    """From the config if embedded, else from the arch's
    ``vmemmap_populate()``, built only with SPARSEMEM_VMEMMAP."""
    if "CONFIG_SPARSEMEM_VMEMMAP" in config:
        return config["CONFIG_SPARSEMEM_VMEMMAP"] == "y"
    try:
        prog.symbol("vmemmap_populate")
    except LookupError:
        return False
    return True


def arch_pfn_valid_inlines(prog: Program) -> Optional[Tuple[str, ...]]:
    """Names of the functions inlined into the kernel's own GLOBAL
    ``pfn_valid`` function, None when it has none.

    arm64 exported its own pfn_valid() until v5.16 (3de360c3fdb3); what it
    inlines tells which rule it implements (5.10 stable kernels carry
    ``pfn_section_valid()`` from v5.12's eeb0753ba27b). x86 kernels may
    hold a LOCAL out-of-line copy of the generic inline: that one is not an
    arch pfn_valid. Every instruction address of the function is asked for
    its inline chain (arm64 instructions are 4 bytes).
    """
    symbols = [s for s in prog.symbols("pfn_valid")
               if s.binding == drgn.SymbolBinding.GLOBAL and s.kind == drgn.SymbolKind.FUNC]
    if not symbols:
        return None
    step = 4 if prog.platform.arch == drgn.Architecture.AARCH64 else 1
    names: List[str] = []
    for address in range(symbols[0].address, symbols[0].address + symbols[0].size, step):
        try:
            locations = prog.source_location(address)
        except LookupError:
            continue
        for location in locations:
            name = location.name()
            if name and name != "pfn_valid" and name not in names:
                names.append(name)
    return tuple(names)


# ---------------------------------------------------------------- sections

def section_flag_bits(target: DrgnTarget, kernel: KernelFacts) -> Dict[str, int]:
    """Section flag name (no SECTION_ prefix, no _BIT suffix) -> bit number.

    Since v6.0 (ed7802dd48f7) the flags are enumerators ``SECTION_*_BIT``
    whose numbering above bit 3 depends on the config: read from DWARF;
    before, the per-version macros of kernels.py.
    """
    try:
        enum_type = target.prog["SECTION_MARKED_PRESENT_BIT"].type_.unaliased()
    except LookupError:
        return kernels.section_flag_bits(kernel.version)[0]
    return {e.name[len("SECTION_"):-len("_BIT")]: e.value for e in enum_type.enumerators
            if e.name.endswith("_BIT") and e.name != "SECTION_MAP_LAST_BIT"}


def section_map_last_bit(target: DrgnTarget, kernel: KernelFacts) -> int:
    """SECTION_MAP_LAST_BIT: the encoded mem_map starts above it."""
    value = target.enumerator("SECTION_MAP_LAST_BIT")
    return value if value is not None else kernels.section_flag_bits(kernel.version)[1]


def section_layout(target: DrgnTarget, kernel: KernelFacts) -> layout.SectionLayout:
    usage_map = target.offsetof("struct mem_section_usage", "subsection_map")
    map_bytes = drgn.sizeof(target.prog.type("struct mem_section_usage").member(
        "subsection_map").type) if usage_map is not None else 0
    return layout.SectionLayout(
        sizeof_section=target.sizeof("struct mem_section"),
        usage_offset=target.offsetof("struct mem_section", "usage"),
        subsection_map_offset=usage_map,
        subsection_map_bytes=map_bytes,
        flag_bits=section_flag_bits(target, kernel))


def read_sections(target: DrgnTarget, kernel: KernelFacts,
                  unreadable: List[Unreadable]) -> List[Section]:
    """Every present section: one read per root, usage structs in spans."""
    mem_section = target.prog["mem_section"]
    roots = mem_section.value_() if kernel.sparsemem_extreme else mem_section.address_
    if not roots:
        raise ValueError("mem_section is NULL")
    return layout.read_sections(target, roots, kernel.sparsemem_extreme, kernel.nr_mem_sections,
                                kernel.page_size, section_layout(target, kernel), unreadable)


# ---------------------------------------------------------------- memblock

def read_memblock(target: DrgnTarget, kernel: KernelFacts,
                  unreadable: List[Unreadable]) -> Tuple[MemblockType, MemblockType]:
    """``memblock.memory`` and ``memblock.reserved``, each region array in
    one read, trusted only as kernels.memblock_trust() allows."""
    try:
        memblock = target.prog["memblock"]
        region_layout = memblock_layout(target)
        flag_bits = memblock_flag_bits(target, kernel)
    except READ_ERRORS as error:
        unreadable.append(_unreadable("memblock", error))
        return tuple(MemblockType(name=name, address=0, cnt=0, max=0, regions=(),
                                  available=False, reason=f"memblock unreadable: {error}")
                     for name in ("memory", "reserved"))
    return tuple(_memblock_type(target, kernel, memblock.member_(name), name, region_layout,
                                flag_bits, unreadable)
                 for name in ("memory", "reserved"))


def memblock_layout(target: DrgnTarget) -> layout.MemblockLayout:
    region = "struct memblock_region"
    return layout.MemblockLayout(
        sizeof_region=target.sizeof(region),
        base=target.offsetof(region, "base"), size=target.offsetof(region, "size"),
        flags=target.offsetof(region, "flags"),
        # memblock_region::nid needs CONFIG_NUMA (HAVE_MEMBLOCK_NODE_MAP before v5.8)
        nid=target.offsetof(region, "nid"),
        cnt=target.offsetof("struct memblock_type", "cnt"),
        max=target.offsetof("struct memblock_type", "max"),
        regions=target.offsetof("struct memblock_type", "regions"))


def memblock_flag_bits(target: DrgnTarget, kernel: KernelFacts) -> Dict[str, int]:
    """``enum memblock_flags`` single-bit values without the MEMBLOCK_ prefix."""
    enumerators = target.enumerators("enum memblock_flags")
    if not enumerators:
        return kernels.memblock_flag_bits(kernel.version)
    return {name[len("MEMBLOCK_"):]: value for name, value in enumerators.items()
            if value and value & (value - 1) == 0}


def _memblock_type(target: DrgnTarget, kernel: KernelFacts, mtype, name: str,
                   region_layout: layout.MemblockLayout, flag_bits: Dict[str, int],
                   unreadable: List[Unreadable]) -> MemblockType:
    cnt, max_ = mtype.cnt.value_(), mtype.max.value_()
    regions_address = mtype.regions.value_()
    reason = kernels.memblock_trust(kernel.keeps_memblock, regions_address,
                                    target.symbol(f"memblock_{name}_init_regions"), cnt, max_)
    regions: tuple = ()
    if reason is None:
        try:
            data = target.read(regions_address, cnt * region_layout.sizeof_region)
            regions = layout.decode_memblock_regions(data, cnt, region_layout, flag_bits)
        except ReadError as error:
            unreadable.append(Unreadable(f"memblock.{name}.regions", error.reason,
                                         regions_address))
            reason = f"memblock.{name}.regions unreadable"
    return MemblockType(name=name, address=mtype.address_, cnt=cnt, max=max_,
                        regions=regions, available=reason is None, reason=reason)


# ---------------------------------------------------------------- memory blocks

def block_layout(target: DrgnTarget) -> layout.BlockLayout:
    block = "struct memory_block"
    return layout.BlockLayout(
        sizeof_block=target.sizeof(block),
        start_section_nr=target.offsetof(block, "start_section_nr"),
        state=target.offsetof(block, "state"),
        # memory_block::nid v4.17 (d0dc12e86b31), ::zone v5.15 (395f6081bad4),
        # ::online_type v4.15 (4f7c6b49c2d6)
        nid=target.offsetof(block, "nid"),
        zone=target.offsetof(block, "zone"),
        online_type=target.offsetof(block, "online_type"),
        dev=target.offsetof(block, "dev"),
        dev_id=target.offsetof("struct device", "id"),
        kn=target.offsetof("struct device", "kobj.sd"),
        zone_name=target.offsetof("struct zone", "name"))


def read_memory_blocks(prog: Program, target: DrgnTarget,
                       unreadable: List[Unreadable]) -> List[MemoryBlock]:
    """Memory block devices on the memory bus (all versions), cross-checked
    with the ``memory_blocks`` xarray (v5.8, 4fb6eabf1037)."""
    lay = block_layout(target)
    bus = {block.value_() for block in for_each_memory_block(prog)}
    xarray = _xarray_blocks(prog, unreadable)
    states = target.enumerators("enum memory_block_state")
    zone_names: Dict[int, Optional[str]] = {}
    blocks = []
    for address in sorted(bus | (xarray or set())):
        try:
            data = target.read(address, lay.sizeof_block)
            zone = layout.word_at(data, lay.zone) if lay.zone is not None else 0
            blocks.append(layout.decode_memory_block(
                data, address, lay, states, _zone_name(target, lay, zone, zone_names),
                in_bus=address in bus, in_xarray=None if xarray is None else address in xarray))
        except ReadError as error:
            unreadable.append(Unreadable("struct memory_block", error.reason, address))
    return sorted(blocks, key=lambda b: b.id)


def _xarray_blocks(prog: Program, unreadable: List[Unreadable]) -> Optional[Set[int]]:
    """Addresses in the ``memory_blocks`` xarray; None before v5.8."""
    try:
        xa = prog["memory_blocks"].address_of_()
    except LookupError:
        return None
    try:
        return {entry.value_() for _, entry in xa_for_each(xa)}
    except FaultError as error:
        unreadable.append(_unreadable("memory_blocks xarray", error))
        return None


def _zone_name(target: DrgnTarget, lay: layout.BlockLayout, zone: int,
               cache: Dict[int, Optional[str]]) -> Optional[str]:
    if not zone or lay.zone_name is None:
        return None
    if zone not in cache:
        try:
            cache[zone] = layout.read_cstring(target, layout.read_word(target, zone + lay.zone_name),
                                              limit=32)
        except ReadError:
            cache[zone] = None
    return cache[zone]


# ---------------------------------------------------------------- nodes and links

def read_nodes(prog: Program, target: DrgnTarget) -> List[Node]:
    """The registered ``node_devices[]``, the array in one read."""
    node_devices = prog["node_devices"]
    count = node_devices.type_.unaliased().length
    pointers = layout.decode_words(target.read(node_devices.address_, count * layout.WORD))
    sd = target.offsetof("struct node", "dev.kobj.sd")
    return layout.nodes_from_array(pointers, lambda node: layout.read_word(target, node + sd) or None,
                                   list(for_each_online_node(prog)))


def kernfs_layout(target: DrgnTarget) -> layout.KernfsLayout:
    kn = "struct kernfs_node"
    # kernfs_node::parent became __parent in v6.15 (633488947ef6)
    parent = target.offsetof(kn, "__parent")
    return layout.KernfsLayout(
        sizeof_node=target.sizeof(kn),
        active=target.offsetof(kn, "active"),
        parent=parent if parent is not None else target.offsetof(kn, "parent"),
        name=target.offsetof(kn, "name"),
        rb=target.offsetof(kn, "rb"),
        children=target.offsetof(kn, "dir.children"),
        target_kn=target.offsetof(kn, "symlink.target_kn"),
        priv=target.offsetof(kn, "priv"),
        flags=target.offsetof(kn, "flags"),
        type_link=target.enumerator("KERNFS_LINK"),
        # KERNFS_TYPE_MASK is a macro: 0x000f since v3.14 (df23fc39bce0)
        type_mask=0xF,
        # KERNFS_REMOVING v6.1 (c25491747b21)
        removing_flag=target.enumerator("KERNFS_REMOVING"))


def read_node_links(target: DrgnTarget, kernel: KernelFacts, nodes: Sequence[Node],
                    blocks: Sequence[MemoryBlock], unreadable: List[Unreadable]) -> List[NodeLink]:
    """nodeN/memoryM and memoryM/nodeN symlinks with their targets' liveness."""
    kernfs = layout.KernfsReader(target, kernfs_layout(target), kernel.page_size)
    return layout.read_links(kernfs, nodes, blocks, unreadable)


# ---------------------------------------------------------------- page nids

def read_page_nids(prog: Program, target: DrgnTarget, kernel: KernelFacts,
                   sections: Sequence[Section], blocks: Sequence[MemoryBlock],
                   unreadable: List[Unreadable]) -> Dict[int, int]:
    """pfn -> nid from ``page->flags`` (as pfn_to_nid()) for the first pfn
    of each memory block and of each non-early (hot-added) valid section."""
    by_nr = {s.nr: s for s in sections}
    shift = kernel.pfn_section_shift
    pfns = {b.start_section_nr << shift for b in blocks}
    pfns |= {s.nr << shift for s in sections if s.valid and not s.early}
    nid_of = page_nid_decoder(prog, kernel)
    flags_offset = target.offsetof("struct page", "flags")
    sizeof_page = target.sizeof("struct page")
    map_mask = ~((1 << section_map_last_bit(target, kernel)) - 1)
    nids = {}
    for pfn in sorted(pfns):
        section = by_nr.get(pfn >> shift)
        if section is None or not section.valid:
            continue
        # section_mem_map encodes mem_map - section_nr_to_pfn(nr)
        page = ((section.mem_map & map_mask) + pfn * sizeof_page) & (1 << 64) - 1
        try:
            nids[pfn] = nid_of(pfn, layout.read_word(target, page + flags_offset))
        except ReadError as error:
            unreadable.append(Unreadable(f"struct page of pfn {pfn:#x}", error.reason, page))
    return nids


def page_nid_decoder(prog: Program, kernel: KernelFacts) -> Callable[[int, int], int]:
    """(pfn, page->flags) -> nid, as the kernel's page_to_nid().

    include/linux/page-flags-layout.h packs from the top bit down the
    section number (SPARSEMEM without VMEMMAP only), then NODES_SHIFT bits
    of node. When those do not fit (NODE_NOT_IN_PAGE_FLAGS) the kernel
    keeps ``section_to_node_table[]`` instead.
    """
    try:
        table = prog["section_to_node_table"]
    except LookupError:
        pass
    else:
        return lambda pfn, flags: table[pfn >> kernel.pfn_section_shift].value_()
    nodes_shift = kernel.max_numnodes.bit_length() - 1
    sections_width = 0 if kernel.sparsemem_vmemmap else kernel.max_physmem_bits - kernel.section_size_bits
    nodes_pgshift = 64 - sections_width - nodes_shift
    return lambda pfn, flags: flags >> nodes_pgshift & (1 << nodes_shift) - 1
