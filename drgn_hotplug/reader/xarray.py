"""XArrays (include/linux/xarray.h): the pointer entries of an array,
walked with a bound and checks of each node's shift."""

from __future__ import annotations

from typing import Dict

from .target import WORD, ReadError, Target, decode_words, uint_at


XA_CHUNK_SHIFT = 6


def walk_xarray(target: Target, xa_head: int, slots_offset: int,
                max_index: int = 1 << 32) -> Dict[int, int]:
    """index -> entry of every pointer entry in an xarray whose head is ``xa_head``.

    Internal entries (bit 1 set, value > 4096) point to ``struct xa_node``s
    (ptr - 2); value entries (bit 0) are not pointers and are skipped, as
    the kernel's memory_blocks array holds only pointers. A node reached
    twice, a node whose ``shift`` is not its parent's minus XA_CHUNK_SHIFT
    or an index above ``max_index`` raises ReadError: the array is corrupt.

    An array whose only entry is at index 0 keeps it in its head:

    >>> walk_xarray(None, 0x1000, 16)
    {0: 4096}
    """
    entries: Dict[int, int] = {}
    seen = set()
    stack = [(xa_head, 0, None)]
    while stack:
        entry, index, parent_shift = stack.pop()
        if not entry or entry & 1:
            continue
        if index > max_index:
            raise ReadError(entry, WORD, f"xarray index {index} above the limit {max_index}")
        if entry & 3 == 2:
            if entry <= 4096:
                continue  # retry, zero and sibling entries
            node = entry - 2
            if node in seen:
                raise ReadError(node, WORD, f"xarray reaches xa_node {node:#x} twice")
            seen.add(node)
            node_shift = uint_at(target.read(node, 1), 0, 1)
            expected = None if parent_shift is None else parent_shift - XA_CHUNK_SHIFT
            if node_shift % XA_CHUNK_SHIFT or node_shift >= 64 or expected not in (None, node_shift):
                raise ReadError(node, 1, f"xa_node {node:#x} has a corrupt shift {node_shift}")
            slots = decode_words(target.read(node + slots_offset, WORD << XA_CHUNK_SHIFT))
            stack.extend((slot, index + (i << node_shift), node_shift)
                         for i, slot in enumerate(slots))
        else:
            entries[index] = entry
    return entries
