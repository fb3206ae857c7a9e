"""Circular ``list_head`` lists (include/linux/list.h), walked with a bound
and cycle detection so a corrupt list cannot hang the reader."""

from __future__ import annotations

from typing import Iterator

from .target import WORD, ReadError, Target, read_word


def walk_list(target: Target, head: int, limit: int = 1 << 22) -> Iterator[int]:
    """Addresses of the ``list_head`` nodes on a circular list (head excluded).

    Raises ReadError on a broken link, on a loop that never comes back to
    the head and after ``limit`` nodes, so a corrupt list cannot hang the
    reader.

    >>> class Ring:
    ...     next = {0x100: 0x200, 0x200: 0x300, 0x300: 0x100}
    ...     def read(self, address, size):
    ...         return self.next[address].to_bytes(size, "little")
    >>> [hex(node) for node in walk_list(Ring(), 0x100)]
    ['0x200', '0x300']
    """
    seen = set()
    node = read_word(target, head)
    while node != head:
        if node in seen:
            raise ReadError(node, WORD, f"list at {head:#x} loops back to {node:#x}")
        if len(seen) >= limit:
            raise ReadError(head, WORD, f"list at {head:#x} longer than {limit} nodes")
        seen.add(node)
        yield node
        node = read_word(target, node)
