"""kernfs, the nodes behind sysfs (fs/kernfs/, include/linux/kernfs.h):
the layout of ``struct kernfs_node``, its decoding, its liveness and the
walk of a directory's children."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from .rbtree import walk_rbtree
from .target import (WORD, PageCache, ReadError, Target, fields_unpacker, read_cstring,
                     require_offset)


@dataclass(frozen=True)
class KernfsLayout:
    sizeof_node: int
    active: int
    parent: int
    name: int
    rb: int
    children: int
    target_kn: int
    flags: int
    type_link: int
    type_mask: int
    removing_flag: Optional[int]


class KernfsNode(NamedTuple):
    """The fields of a ``struct kernfs_node`` the reader uses.

    ``rb_right``/``rb_left`` are its ``rb_node`` links among its siblings and
    ``children`` the first ``rb_node`` of its own children (a directory's).
    Only directories and links are decoded whole (KernfsReader), 130K of
    them at 64 TB: a tuple, not a dataclass.
    """

    address: int
    active: int
    parent: int
    name_address: int
    target_kn: int
    flags: int
    rb_right: int = 0
    rb_left: int = 0
    children: int = 0


def kernfs_fields(layout: KernfsLayout) -> Dict[str, Tuple[int, str]]:
    """Offset and struct format of each KernfsNode field in a ``struct kernfs_node``."""
    return {"active": (layout.active, "i"), "parent": (layout.parent, "Q"),
            "name_address": (layout.name, "Q"), "target_kn": (layout.target_kn, "Q"),
            "flags": (layout.flags, "H"), "rb_right": (layout.rb + 8, "Q"),
            "rb_left": (layout.rb + 16, "Q"), "children": (layout.children, "Q")}


def kernfs_node_decoder(layout: KernfsLayout) -> Callable[[bytes, int, int], KernfsNode]:
    """A function making the KernfsNode at ``address`` from a buffer holding
    its ``struct kernfs_node`` at ``offset``: one struct unpack per node.

    >>> lay = KernfsLayout(128, 4, 8, 16, 24, 72, 64, 112, 4, 15, 0x4000)
    >>> decode = kernfs_node_decoder(lay)
    >>> decode(bytes(112) + (4).to_bytes(2, "little") + bytes(14), 0, 0x1000).flags
    4
    """
    unpack = fields_unpacker(kernfs_fields(layout))
    make = KernfsNode._make
    return lambda data, offset, address: make((address, *unpack(data, offset)))


def kernfs_sibling_decoder(layout: KernfsLayout) -> Callable[[bytes, int], Tuple[int, int, int]]:
    """A function decoding (rb_right, rb_left, flags) of the ``struct
    kernfs_node`` at an offset in a buffer: all a directory walk needs of
    a child that is not a link.

    >>> lay = KernfsLayout(128, 4, 8, 16, 24, 72, 64, 112, 4, 15, 0x4000)
    >>> kernfs_sibling_decoder(lay)(bytes(32) + (7).to_bytes(8, "little") + bytes(88), 0)
    (7, 0, 0)
    """
    fields = kernfs_fields(layout)
    return fields_unpacker({name: fields[name] for name in ("rb_right", "rb_left", "flags")})


def kernfs_dead_reasons(kn: KernfsNode, in_parent: bool, layout: KernfsLayout) -> Tuple[str, ...]:
    """Why a kernfs node is no longer a live sysfs entry (empty when it is).

    ``kernfs_drain()`` leaves ``active`` at KN_DEACTIVATED_BIAS (negative);
    ``__kernfs_remove()`` sets KERNFS_REMOVING (v6.1, c25491747b21) and
    ``kernfs_unlink_sibling()`` takes it out of its parent's rbtree.

    >>> lay = KernfsLayout(128, 4, 8, 16, 24, 72, 64, 112, 4, 15, 0x4000)
    >>> kernfs_dead_reasons(KernfsNode(0, -2147483647, 0, 0, 0, 0x4000), False, lay)
    ('deactivated', 'removing', 'unlinked')
    """
    reasons = []
    if kn.active < 0:
        reasons.append("deactivated")
    if layout.removing_flag is not None and kn.flags & layout.removing_flag:
        reasons.append("removing")
    if not in_parent:
        reasons.append("unlinked")
    return tuple(reasons)


# read_cstring()'s default limit: sysfs names are short (NAME_MAX at most for
# a file, a device's name for a directory).
KERNFS_NAME_MAX = 256


class KernfsReader:
    """Reads kernfs nodes, names and directory children, caching what it read.

    A directory walk decodes three fields of a child (its two sibling links
    and its flags) in place in the cached slab page, and decodes only links
    whole: a 64 TB machine has 32K memory block directories of a dozen
    children each, one of them a node link.
    """

    def __init__(self, target: Target, layout: KernfsLayout, page_size: int,
                 max_children: int = 1 << 22):
        self.target = PageCache.of(target, page_size)
        self.layout = layout
        self.page_size = page_size
        self.max_children = max_children
        self._decode = kernfs_node_decoder(layout)
        self._siblings = kernfs_sibling_decoder(layout)
        self._nodes: Dict[int, KernfsNode] = {}
        self._names: Dict[int, str] = {}
        self._dead_reasons: Dict[int, Tuple[str, ...]] = {}
        # parent directory -> the rb_node addresses of its children
        self._children: Dict[int, set] = {}

    def node(self, address: int) -> KernfsNode:
        kn = self._nodes.get(address)
        if kn is None:
            data, offset = self.target.view(address, self.layout.sizeof_node)
            kn = self._nodes[address] = self._decode(data, offset, address)
        return kn

    def name(self, kn: KernfsNode) -> str:
        # Every memoryM/nodeN link of a node targets the same few directories.
        name = self._names.get(kn.name_address)
        if name is None:
            name = self._names[kn.name_address] = self._cstring(kn.name_address)
        return name

    def _cstring(self, address: int) -> str:
        # Names are short: most end in the page they start in.
        offset = address & self.page_size - 1
        page = self.target.pages.get(address - offset)
        end = page.find(0, offset, offset + KERNFS_NAME_MAX) if page is not None else -1
        if end < 0:
            return read_cstring(self.target, address, KERNFS_NAME_MAX, self.page_size)
        return page[offset:end].decode("utf-8", "replace")

    def dead_reasons(self, kn: KernfsNode) -> Tuple[str, ...]:
        """kernfs_dead_reasons() of ``kn``, asked once per link target: the
        32K memoryM/nodeN links of a 64 TB machine share a handful of node
        directories."""
        reasons = self._dead_reasons.get(kn.address)
        if reasons is None:
            reasons = self._dead_reasons[kn.address] = kernfs_dead_reasons(
                kn, self.in_parent(kn), self.layout)
        return reasons

    def children(self, directory: int) -> List[KernfsNode]:
        """Every child of a directory, decoded, in the kernel's name order."""
        rb = self.layout.rb
        return [self.node(node - rb) for node in walk_rbtree(
            self.target, directory + self.layout.children, self.max_children)]

    def links(self, directory: int) -> List[KernfsNode]:
        """The children of a directory that are symlinks, in name order.

        When a read fails the tree is walked again word by word, so the
        error names the very link that could not be read.
        """
        return self._walked(directory)[1]

    def _walked(self, directory: int) -> Tuple[set, List[KernfsNode]]:
        # When a read fails, the word-by-word walk names the failing link.
        try:
            return self._walk(directory)
        except ReadError:
            walk_rbtree(self.target, directory + self.layout.children, self.max_children)
            raise

    def _walk(self, directory: int) -> Tuple[set, List[KernfsNode]]:
        """(rb_node addresses of the children, the links among them in the
        kernel's name order)."""
        layout, view, siblings, decode = self.layout, self.target.view, self._siblings, self._decode
        size, rb, limit = layout.sizeof_node, layout.rb, self.max_children
        mask, link = layout.type_mask, layout.type_link
        # PageCache.view() inlined for whole nodes in cached pages: the
        # walk's cost is per child, 400K children at 64 TB.
        pages, page_size = self.target.pages, self.page_size
        seen: set = set()
        links = []
        # In order: a pushed (right subtree, link or None) pair is taken up
        # once the left subtree is done.
        stack: list = []
        node = self.node(directory).children
        while True:
            while node:
                if node in seen:
                    root = directory + layout.children
                    raise ReadError(node, WORD, f"rbtree at {root:#x} reaches {node:#x} twice")
                seen.add(node)
                if len(seen) > limit:
                    root = directory + layout.children
                    raise ReadError(root, WORD, f"rbtree at {root:#x} larger than {limit} nodes")
                kn = node - rb
                offset = kn % page_size
                data = pages.get(kn - offset)
                if data is None or offset + size > page_size:
                    data, offset = view(kn, size)
                right, node, flags = siblings(data, offset)
                stack.append(decode(data, offset, kn) if flags & mask == link else None)
                stack.append(right)
            if not stack:
                return seen, links
            node = stack.pop()
            found = stack.pop()
            if found is not None:
                links.append(found)

    def in_parent(self, kn: KernfsNode) -> bool:
        """Whether ``kn`` is in its parent's rbtree (link targets have a
        handful of parents: their children are remembered, not every
        directory's)."""
        if not kn.parent:
            return False
        if kn.parent not in self._children:
            self._children[kn.parent] = self._walked(kn.parent)[0]
        return kn.address + self.layout.rb in self._children[kn.parent]


def kernfs_layout(target: Target) -> KernfsLayout:
    kn = "struct kernfs_node"
    return KernfsLayout(
        sizeof_node=target.sizeof(kn), active=require_offset(target, kn, "active"),
        parent=require_offset(target, kn, "parent") if target.offsetof(kn, "parent") is not None
        # v6.15 renamed parent to __parent (RCU-protected).
        else require_offset(target, kn, "__parent"),
        name=require_offset(target, kn, "name"), rb=require_offset(target, kn, "rb"),
        children=require_offset(target, kn, "dir.children"),
        target_kn=require_offset(target, kn, "symlink.target_kn"),
        flags=require_offset(target, kn, "flags"), type_link=target.enumerator("KERNFS_LINK"),
        # KERNFS_TYPE_MASK is a macro (0x000f since kernfs began, v3.14).
        type_mask=0xF, removing_flag=target.enumerator("KERNFS_REMOVING"))
