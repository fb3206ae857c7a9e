"""NUMA node devices (drivers/base/node.c) and which nodes are online."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from ..model import KernelFacts, Node, Unreadable
from .target import WORD, ReadError, Target, decode_words, read_word, require_offset, require_symbol


def bitmap_bits(data: bytes) -> List[int]:
    """Indices of the set bits of a little-endian bitmap.

    >>> bitmap_bits(bytes([0b101, 0, 0, 0, 0, 0, 0, 1]))
    [0, 2, 56]
    """
    value = int.from_bytes(data, "little")
    return [i for i in range(value.bit_length()) if value >> i & 1]


def nodes_from_array(pointers: Sequence[int], kn_of: Callable[[int], Optional[int]],
                     online: Sequence[int]) -> List[Node]:
    """Nodes for the non-NULL ``node_devices[]`` entries."""
    online_set = set(online)
    return [Node(nid=nid, address=ptr, kn_address=kn_of(ptr), online=nid in online_set)
            for nid, ptr in enumerate(pointers) if ptr]


def read_nodes(target: Target, facts: KernelFacts, unreadable: List[Unreadable]) -> List[Node]:
    """``node_devices[]`` (one read) and which nodes are online (``node_states[N_ONLINE]``)."""
    array = require_symbol(target, "node_devices")
    pointers = decode_words(target.read(array, facts.max_numnodes * WORD))
    online = _online_nodes(target, unreadable)
    kn = require_offset(target, "struct node", "dev.kobj.sd")

    def kn_of(node: int) -> Optional[int]:
        try:
            return read_word(target, node + kn) or None
        except ReadError as error:
            unreadable.append(Unreadable("struct node", error.reason, node))
            return None
    return nodes_from_array(pointers, kn_of, online)


def _online_nodes(target: Target, unreadable: List[Unreadable]) -> List[int]:
    states = require_symbol(target, "node_states")
    n_online = target.enumerator("N_ONLINE")
    size = target.sizeof("nodemask_t")
    try:
        return bitmap_bits(target.read(states + n_online * size, size))
    except ReadError as error:
        unreadable.append(Unreadable("node_states[N_ONLINE]", error.reason, states))
        return []
