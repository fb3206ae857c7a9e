"""Memory block devices (drivers/base/memory.c): the memory bus's devices,
the ``memory_blocks`` xarray and each ``struct memory_block`` with its zone."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from .. import kernels
from ..model import KernelFacts, MemoryBlock, Unreadable
from .list import walk_list
from .target import (PageCache, ReadError, Target, fields_unpacker, read_cstring, read_word,
                     require_offset, require_symbol)
from .xarray import walk_xarray


# MEM_* states were macros until v6.19 (1a4f70f6851a made them an enum, read
# from DWARF when present): bits as in drgn's _OLD_MEMORY_BLOCK_STATE.
OLD_MEMORY_BLOCK_STATES = {1 << 0: "MEM_ONLINE", 1 << 1: "MEM_GOING_OFFLINE",
                           1 << 2: "MEM_OFFLINE", 1 << 3: "MEM_GOING_ONLINE",
                           1 << 4: "MEM_CANCEL_ONLINE", 1 << 5: "MEM_CANCEL_OFFLINE",
                           1 << 6: "MEM_PREPARE_ONLINE", 1 << 7: "MEM_FINISH_OFFLINE"}


def block_state_name(value: int, enumerators: Dict[str, int]) -> str:
    """The model's spelling of a memory block state.

    >>> block_state_name(2, {})
    'going-offline'
    """
    names = {v: k for k, v in enumerators.items()} or OLD_MEMORY_BLOCK_STATES
    name = names.get(value, f"unknown-{value:#x}")
    return name.removeprefix("MEM_").lower().replace("_", "-")


@dataclass(frozen=True)
class BlockLayout:
    sizeof_block: int
    start_section_nr: int
    state: int
    nid: Optional[int]
    zone: Optional[int]
    online_type: Optional[int]
    dev: int
    dev_id: int
    kn: int
    zone_name: Optional[int]
    nr_vmemmap_pages: Optional[int] = None
    altmap: Optional[int] = None


def memory_block_decoder(layout: BlockLayout, state_enumerators: Dict[str, int],
                         zone_name: Callable[[int], Optional[str]]) -> Callable[..., MemoryBlock]:
    """A function making the MemoryBlock at ``address`` from a buffer holding
    its ``struct memory_block`` at ``offset``: one struct unpack per block
    (a 64 TB machine has 32K blocks). ``zone_name(zone)`` names a
    ``struct zone *``.

    >>> lay = BlockLayout(64, 0, 8, 16, None, None, 24, 0, 8, None)
    >>> decode = memory_block_decoder(lay, {}, lambda zone: None)
    >>> data = (16).to_bytes(8, "little") + (1).to_bytes(8, "little") + bytes(8) + (2).to_bytes(4, "little")
    >>> block = decode(data + bytes(36), 0, 0x1000, True, None)
    >>> block.id, block.start_section_nr, block.state, block.nid
    (2, 16, 'online', 0)
    """
    members = {"id": (layout.dev + layout.dev_id, "I"),
               "start_section_nr": (layout.start_section_nr, "Q"),
               # An unsigned long until the enum (v6.19, 1a4f70f6851a), 4 bytes
               # since: its values fit the low 4 bytes of either (little-endian).
               "state": (layout.state, "I"), "kn": (layout.dev + layout.kn, "Q"),
               "nid": (layout.nid, "i"), "online_type": (layout.online_type, "i"),
               "zone": (layout.zone, "Q"),
               "nr_vmemmap_pages": (layout.nr_vmemmap_pages, "Q"), "altmap": (layout.altmap, "Q")}
    present = {name: spec for name, spec in members.items() if spec[0] is not None}
    unpack = fields_unpacker(present)
    names = tuple(present)
    states = {value: block_state_name(value, state_enumerators)
              for value in set(state_enumerators.values()) or OLD_MEMORY_BLOCK_STATES}

    def decode(data: bytes, offset: int, address: int, in_bus: bool,
               in_xarray: Optional[bool]) -> MemoryBlock:
        fields = dict(zip(names, unpack(data, offset)))
        state = fields["state"]
        return MemoryBlock(
            id=fields["id"], address=address, start_section_nr=fields["start_section_nr"],
            state=states.get(state) or block_state_name(state, state_enumerators),
            nid=fields.get("nid"), zone=zone_name(fields["zone"]) if "zone" in fields else None,
            online_type=fields.get("online_type"), in_bus=in_bus, in_xarray=in_xarray,
            kn_address=fields["kn"] or None, nr_vmemmap_pages=fields.get("nr_vmemmap_pages"),
            altmap=fields.get("altmap"))
    return decode


def block_layout(target: Target) -> BlockLayout:
    block = "struct memory_block"
    return BlockLayout(
        sizeof_block=target.sizeof(block),
        start_section_nr=require_offset(target, block, "start_section_nr"),
        state=require_offset(target, block, "state"), nid=target.offsetof(block, "nid"),
        zone=target.offsetof(block, "zone"), online_type=target.offsetof(block, "online_type"),
        dev=require_offset(target, block, "dev"),
        dev_id=require_offset(target, "struct device", "id"),
        kn=require_offset(target, "struct device", "kobj.sd"),
        zone_name=target.offsetof("struct zone", "name"),
        **kernels.memmap_on_memory_members(target.offsetof(block, "nr_vmemmap_pages"),
                                           target.offsetof(block, "altmap")))


def memory_bus_devices(target: Target, limit: int = 1 << 22) -> List[int]:
    """``struct device *`` of every device on the memory bus, in bus order.

    The bus's ``subsys_private`` is ``memory_subsys.p`` before v6.3 and is
    found on ``bus_kset``'s list since (d2bf38c088e0 removed bus_type.p).
    """
    klist = require_offset(target, "struct subsys_private", "klist_devices.k_list")
    knode = require_offset(target, "struct device_private", "knode_bus.n_node")
    device = require_offset(target, "struct device_private", "device")
    subsys = _memory_subsys_private(target)
    return [read_word(target, node - knode + device)
            for node in walk_list(target, subsys + klist, limit)]


def _memory_subsys_private(target: Target) -> int:
    bus = require_symbol(target, "memory_subsys")
    p = target.offsetof("struct bus_type", "p")
    if p is not None:
        return read_word(target, bus + p)
    entry = require_offset(target, "struct subsys_private", "subsys.kobj.entry")
    bus_member = require_offset(target, "struct subsys_private", "bus")
    kset_list = (read_word(target, require_symbol(target, "bus_kset"))
                 + require_offset(target, "struct kset", "list"))
    for node in walk_list(target, kset_list):
        if read_word(target, node - entry + bus_member) == bus:
            return node - entry
    raise ReadError(bus, 0, "memory_subsys is not registered on bus_kset")


def memory_blocks_xarray(target: Target, max_id: int = 1 << 32) -> Optional[Dict[int, int]]:
    """block id -> ``struct memory_block *`` from the ``memory_blocks`` xarray
    (v5.8, 4fb6eabf1037); None on older kernels."""
    xarray = target.symbol("memory_blocks")
    if xarray is None:
        return None
    head = read_word(target, xarray + require_offset(target, "struct xarray", "xa_head"))
    return walk_xarray(target, head, require_offset(target, "struct xa_node", "slots"), max_id)


def read_memory_blocks(target: Target, facts: KernelFacts,
                       unreadable: List[Unreadable]) -> List[MemoryBlock]:
    """Memory blocks from the memory bus, cross-checked with the xarray."""
    layout = block_layout(target)
    # Blocks, their bus list nodes and xa_nodes are slab objects sharing pages.
    target = PageCache.of(target, facts.page_size)
    limit = max_memory_blocks(facts)
    try:
        on_bus = [dev - layout.dev for dev in memory_bus_devices(target, limit)]
    except ReadError as error:
        unreadable.append(Unreadable("memory bus device list", error.reason, error.address))
        on_bus = []
    try:
        in_xarray = memory_blocks_xarray(target, limit)
    except ReadError as error:
        unreadable.append(Unreadable("memory_blocks xarray", error.reason, error.address))
        in_xarray = None
    xarray_addresses = set(in_xarray.values()) if in_xarray is not None else None
    decode = memory_block_decoder(layout, target.enumerators("enum memory_block_state"),
                                  functools.lru_cache(maxsize=None)(
                                      lambda zone: _zone_name(target, zone, layout, facts)))
    blocks = []
    bus_set = set(on_bus)  # a list lookup per block is quadratic at 32K blocks
    for address in dict.fromkeys(on_bus + sorted(xarray_addresses or ())):
        try:
            data, offset = target.view(address, layout.sizeof_block)
        except ReadError as error:
            unreadable.append(Unreadable("struct memory_block", error.reason, address))
            continue
        blocks.append(decode(
            data, offset, address, in_bus=address in bus_set,
            in_xarray=None if xarray_addresses is None else address in xarray_addresses))
    _read_altmaps(target, blocks, unreadable)
    return sorted(blocks, key=lambda b: (b.id, b.address))


def _read_altmaps(target: Target, blocks: List[MemoryBlock], unreadable: List[Unreadable]) -> None:
    """Each self-hosting block's ``nr_vmemmap_pages`` from its altmap (v6.6+:
    ``altmap->free``, what memory_block_online() hands mhp_init_memmap_on_memory());
    0 for a block without one."""
    free = target.offsetof("struct vmem_altmap", "free")
    for block in blocks:
        if block.altmap is None or free is None:
            continue
        try:
            block.nr_vmemmap_pages = read_word(target, block.altmap + free) if block.altmap else 0
        except ReadError as error:
            unreadable.append(Unreadable("struct vmem_altmap", error.reason, block.altmap))


def max_memory_blocks(facts: KernelFacts) -> int:
    """How many memory blocks the kernel can have: NR_MEM_SECTIONS over the
    sections per block, the bound of every walk over blocks.

    >>> f = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
    ...                 True, True, False)
    >>> max_memory_blocks(f)
    524288
    """
    return -(-facts.nr_mem_sections // max(1, facts.sections_per_block))


def _zone_name(target: Target, zone: int, layout: BlockLayout, facts: KernelFacts) -> Optional[str]:
    if not zone or layout.zone_name is None:
        return None
    try:
        return read_cstring(target, read_word(target, zone + layout.zone_name),
                            page_size=facts.page_size)
    except ReadError:
        return None
