"""NUMA node devices (drivers/base/node.c) and which nodes are online."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..model import KernelFacts, Node, Unreadable
from .target import (WORD, ReadError, Target, decode_words, read_word, require_offset, require_symbol,
                     word_at)


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


def read_node_spans(target: Target, facts: KernelFacts, nodes: Sequence[Node],
                    unreadable: List[Unreadable]) -> Dict[int, Tuple[int, int]]:
    """nid -> (``node_start_pfn``, ``node_spanned_pages``) of each online
    node's ``pglist_data``: ``node_data[nid]`` (one read of the array), or
    ``contig_page_data`` on a kernel without NUMA. The kernel keeps a node's
    span apart from its memory blocks (online_pages() grows it), so the
    cross-checks can hold one against the other.
    """
    start = target.offsetof("struct pglist_data", "node_start_pfn")
    spanned = target.offsetof("struct pglist_data", "node_spanned_pages")
    if start is None or spanned is None:
        return {}
    online = [node.nid for node in nodes if node.online]
    pgdats = _pgdat_addresses(target, facts, online, unreadable)
    low, high = min(start, spanned), max(start, spanned) + WORD
    spans = {}
    for nid, pgdat in pgdats.items():
        try:
            data = target.read(pgdat + low, high - low)
        except ReadError as error:
            unreadable.append(Unreadable(f"pglist_data of node {nid}", error.reason, pgdat))
            continue
        spans[nid] = (word_at(data, start - low), word_at(data, spanned - low))
    return spans


def _pgdat_addresses(target: Target, facts: KernelFacts, online: Sequence[int],
                     unreadable: List[Unreadable]) -> Dict[int, int]:
    array = target.symbol("node_data")
    if array is None:
        contig = target.symbol("contig_page_data")
        return {0: contig} if contig is not None else {}
    try:
        pointers = decode_words(target.read(array, facts.max_numnodes * WORD))
    except ReadError as error:
        unreadable.append(Unreadable("node_data", error.reason, array))
        return {}
    return {nid: pointers[nid] for nid in online if nid < len(pointers) and pointers[nid]}
