"""The ``iomem_resource`` tree (kernel/resource.c): what /proc/iomem prints,
walked depth first with a bound and cycle detection, so a corrupt tree
cannot hang the reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

from .. import kernels
from ..model import IomemResource, KernelFacts, Unreadable
from .target import ReadError, Target, fields_unpacker, read_cstring, require_offset, require_symbol

# A machine has a few hundred resources; PCI-heavy hosts a few thousand.
MAX_RESOURCES = 1 << 16
# Real trees nest a handful of levels (bus, device, driver, "Kernel code").
MAX_DEPTH = 64


@dataclass(frozen=True)
class ResourceLayout:
    size: int
    start: int
    end: int
    name: int
    flags: int
    sibling: int
    child: int


def resource_layout(target: Target) -> ResourceLayout:
    kind = "struct resource"
    return ResourceLayout(target.sizeof(kind), *(require_offset(target, kind, member) for member in
                                                 ("start", "end", "name", "flags", "sibling", "child")))


def walk_resources(first: int, links: Callable[[int], Tuple[int, int]],
                   limit: int = MAX_RESOURCES) -> List[Tuple[int, int]]:
    """(address, depth) of the resources under a root whose first child is
    ``first``, in /proc/iomem order (a resource, then its children, then its
    next sibling); ``links(res)`` tells its (child, sibling).

    Raises ReadError when a resource is reached twice (a loop) or the tree
    holds more than ``limit`` resources or nests deeper than MAX_DEPTH.

    >>> tree = {0x10: (0x20, 0x30), 0x20: (0, 0), 0x30: (0, 0)}
    >>> walk_resources(0x10, tree.get)
    [(16, 0), (32, 1), (48, 0)]
    >>> walk_resources(0x10, {0x10: (0, 0x10)}.get)
    Traceback (most recent call last):
    ...
    drgn_hotplug.reader.target.ReadError: cannot read 8 bytes at 0x10: resource tree reaches 0x10 twice
    """
    out: List[Tuple[int, int]] = []
    seen = set()
    stack = [(first, 0)]
    while stack:
        res, depth = stack.pop()
        if not res:
            continue
        if res in seen:
            raise ReadError(res, 8, f"resource tree reaches {res:#x} twice")
        if len(seen) >= limit or depth > MAX_DEPTH:
            raise ReadError(res, 8, f"resource tree larger than {limit} resources or deeper than {MAX_DEPTH}")
        seen.add(res)
        out.append((res, depth))
        child, sibling = links(res)
        stack.append((sibling, depth))
        stack.append((child, depth + 1))
    return out


def read_iomem(target: Target, facts: KernelFacts, unreadable: List[Unreadable]) -> List[IomemResource]:
    """The resources under ``iomem_resource``, as /proc/iomem lists them.

    A tree that cannot be walked is one ``unreadable`` entry and an empty
    list; a resource whose name cannot be read is named "?" and listed as
    unreadable.
    """
    layout = resource_layout(target)
    root = require_symbol(target, "iomem_resource")
    unpack = fields_unpacker({"start": (layout.start, "Q"), "end": (layout.end, "Q"),
                              "name": (layout.name, "Q"), "flags": (layout.flags, "Q"),
                              "child": (layout.child, "Q"), "sibling": (layout.sibling, "Q")})
    decoded = {}

    def links(res: int) -> Tuple[int, int]:
        decoded[res] = unpack(target.read(res, layout.size))
        return decoded[res][4], decoded[res][5]
    try:
        first = links(root)[0]
        order = walk_resources(first, links)
    except ReadError as error:
        unreadable.append(Unreadable("iomem_resource tree", error.reason, error.address))
        return []
    bits = kernels.iomem_flag_bits(facts.version)
    return [_resource(target, res, depth, decoded[res], bits, facts.page_size, unreadable)
            for res, depth in order]


def _resource(target: Target, address: int, depth: int, fields: Tuple[int, ...],
              bits: dict, page_size: int, unreadable: List[Unreadable]) -> IomemResource:
    start, end, name, flags = fields[:4]
    try:
        text = read_cstring(target, name, page_size=page_size) if name else ""
    except ReadError as error:
        unreadable.append(Unreadable("struct resource name", error.reason, address))
        text = "?"
    return IomemResource(start=start, end=end, name=text, flags=flags, depth=depth, address=address,
                         flag_names=kernels.iomem_flag_names(flags, bits))
