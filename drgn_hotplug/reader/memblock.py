"""``memblock.memory`` and ``memblock.reserved`` (include/linux/memblock.h),
read only where the kernel still keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .. import kernels
from ..model import KernelFacts, MemblockRegion, MemblockType, Unreadable
from .target import (WORD, ReadError, Target, array_length, int_at, require_offset,
                     require_symbol, uint_at, word_at)


@dataclass(frozen=True)
class MemblockLayout:
    sizeof_region: int
    base: int
    size: int
    flags: int
    nid: Optional[int]
    cnt: int
    max: int
    regions: int


def decode_memblock_regions(data: bytes, count: int, layout: MemblockLayout,
                            flag_bits: Dict[str, int]) -> Tuple[MemblockRegion, ...]:
    """``count`` regions from the bytes of a ``struct memblock_region`` array.

    >>> lay = MemblockLayout(24, 0, 8, 16, 20, 0, 8, 24)
    >>> data = (0x1000).to_bytes(8, "little") + (0x2000).to_bytes(8, "little") + bytes(8)
    >>> decode_memblock_regions(data, 1, lay, {})[0].end
    12288
    """
    regions = []
    for i in range(count):
        at = i * layout.sizeof_region
        flags = uint_at(data, at + layout.flags)
        regions.append(MemblockRegion(
            base=word_at(data, at + layout.base), size=word_at(data, at + layout.size),
            flags=flags, flag_names=kernels.memblock_flag_names(flags, flag_bits),
            nid=int_at(data, at + layout.nid) if layout.nid is not None else None))
    return tuple(regions)


def memblock_layout(target: Target) -> MemblockLayout:
    region = "struct memblock_region"
    kind = "struct memblock_type"
    return MemblockLayout(
        sizeof_region=target.sizeof(region), base=require_offset(target, region, "base"),
        size=require_offset(target, region, "size"), flags=require_offset(target, region, "flags"),
        nid=target.offsetof(region, "nid"), cnt=require_offset(target, kind, "cnt"),
        max=require_offset(target, kind, "max"), regions=require_offset(target, kind, "regions"))


def read_memblock(target: Target, facts: KernelFacts,
                  unreadable: List[Unreadable]) -> Tuple[MemblockType, MemblockType]:
    """``memblock.memory`` and ``memblock.reserved``, each array in one read when trusted."""
    layout = memblock_layout(target)
    flag_bits = {name[len("MEMBLOCK_"):]: value
                 for name, value in target.enumerators("enum memblock_flags").items() if value}
    flag_bits = flag_bits or kernels.memblock_flag_bits(facts.version)
    memblock = require_symbol(target, "memblock")
    return tuple(_read_memblock_type(target, name,
                                     memblock + require_offset(target, "struct memblock", name),
                                     facts, layout, flag_bits, unreadable)
                 for name in ("memory", "reserved"))


def _read_memblock_type(target, name, address, facts, layout, flag_bits, unreadable) -> MemblockType:
    header = target.read(address, layout.regions + WORD)
    cnt, max_, regions = (word_at(header, layout.cnt), word_at(header, layout.max),
                          word_at(header, layout.regions))
    init = f"memblock_{name}_init_regions"
    reason = kernels.memblock_count_problem(cnt, max_, _optional_array_length(target, init))
    if reason is not None:
        unreadable.append(Unreadable(f"memblock.{name}", reason, address))
    else:
        reason = kernels.memblock_trust(facts.keeps_memblock, regions, target.symbol(init), cnt, max_)
    if reason is None:
        try:
            data = target.read(regions, cnt * layout.sizeof_region)
            return MemblockType(name, address, cnt, max_,
                                decode_memblock_regions(data, cnt, layout, flag_bits))
        except ReadError as error:
            unreadable.append(Unreadable(f"memblock.{name}.regions", error.reason, regions))
            reason = f"memblock.{name}.regions unreadable"
    return MemblockType(name, address, cnt, max_, (), available=False, reason=reason)


def _optional_array_length(target: Target, symbol: str) -> Optional[int]:
    try:
        return array_length(target.symbol_type(symbol))
    except ReadError:
        return None
