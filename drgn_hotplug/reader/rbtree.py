"""Red-black trees (include/linux/rbtree.h) walked in order, with a bound
and cycle detection."""

from __future__ import annotations

from typing import Callable, List, Tuple

from .target import WORD, ReadError, Target, read_word


def walk_rbtree(target: Target, root: int, limit: int = 1 << 22) -> List[int]:
    """Addresses of the ``rb_node``s of an ``rb_root`` in order (left child at +16, right at +8),
    each link read as one word.

    Raises ReadError when a node is reached twice (a corrupt link made a
    cycle) or the tree holds more than ``limit`` nodes.
    """
    return rbtree_inorder(read_word(target, root),
                          lambda node: (read_word(target, node + 16), read_word(target, node + 8)),
                          root, limit)


def rbtree_inorder(first: int, links: Callable[[int], Tuple[int, int]], root: int,
                   limit: int = 1 << 22) -> List[int]:
    """The ``rb_node``s under ``first`` (the ``rb_node`` of the ``rb_root`` at
    ``root``) in order; ``links(node)`` tells its (left, right) children.

    >>> links = {0x20: (0x10, 0x30), 0x10: (0, 0), 0x30: (0, 0)}
    >>> [hex(n) for n in rbtree_inorder(0x20, links.get, 0x100)]
    ['0x10', '0x20', '0x30']
    """
    out: List[int] = []
    stack: List[Tuple[int, int]] = []
    seen = set()
    node = first
    while stack or node:
        while node:
            if node in seen:
                raise ReadError(node, WORD, f"rbtree at {root:#x} reaches {node:#x} twice")
            if len(seen) >= limit:
                raise ReadError(root, WORD, f"rbtree at {root:#x} larger than {limit} nodes")
            seen.add(node)
            left, right = links(node)
            stack.append((node, right))
            node = left
        node, right = stack.pop()
        out.append(node)
        node = right
    return out
