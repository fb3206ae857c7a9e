"""The sysfs links between NUMA nodes and memory blocks
(/sys/devices/system/node/nodeN/memoryM and memoryM/nodeN,
drivers/base/node.c), read from the kernfs directories of each side."""

from __future__ import annotations

import operator
import re
from typing import Dict, List, Optional, Sequence

from ..model import MemoryBlock, Node, NodeLink, Unreadable
from .kernfs import KernfsNode, KernfsReader
from .target import ReadError


LINK_NAMES = {"node-to-block": re.compile(r"memory(\d+)"), "block-to-node": re.compile(r"node(\d+)")}


def link_from_kernfs(direction: str, owner_number: int, number: int, kn: KernfsNode,
                     name: str, kernfs: KernfsReader, blocks_by_kn: Dict[int, int],
                     nodes_by_kn: Dict[int, int],
                     unreadable: Optional[List[Unreadable]] = None) -> NodeLink:
    """The NodeLink of a kernfs link named memory``number`` (in node
    ``owner_number``) or node``number`` (in memory``owner_number``).

    The target resolves to a block or node only through the kn address of a
    live device, never through its name. A target that cannot be read (a
    filtered dump drops slab pages) is listed in ``unreadable`` and its
    liveness left unknown: "unreadable" is then its only reason.
    """
    node, block = (owner_number, number) if direction == "node-to-block" else (number, owner_number)
    target_name, reasons, live = None, ("unreadable",), False
    if kn.target_kn:
        try:
            target = kernfs.node(kn.target_kn)
            target_name = kernfs.name(target)
            reasons = kernfs.dead_reasons(target)
            live = not reasons
        except ReadError as error:
            if unreadable is not None:
                unreadable.append(Unreadable(f"target of the {name} link of "
                                             f"{link_owner(direction, owner_number)}",
                                             error.reason, kn.target_kn))
    return NodeLink(direction, node, block, name, kn.address, kn.target_kn or None,
                    target_name, live, reasons, blocks_by_kn.get(kn.target_kn),
                    nodes_by_kn.get(kn.target_kn))


def link_owner(direction: str, number: int) -> str:
    """The sysfs name of the directory a link lives in, as unreadable
    entries name it: nodeN, or memoryM for a memory block.

    >>> link_owner("node-to-block", 1), link_owner("block-to-node", 32)
    ('node1', 'memory32')
    """
    return f"node{number}" if direction.startswith("node-") else f"memory{number}"


def read_links(kernfs: KernfsReader, nodes: Sequence[Node], blocks: Sequence[MemoryBlock],
               unreadable: List[Unreadable]) -> List[NodeLink]:
    """Both directions of node/block links, from the kernfs directories of each side."""
    blocks_by_kn = {b.kn_address: b.id for b in blocks if b.kn_address}
    nodes_by_kn = {n.kn_address: n.nid for n in nodes if n.kn_address}
    owners = ([("node-to-block", n.nid, n.kn_address) for n in nodes if n.kn_address]
              + [("block-to-node", b.id, b.kn_address) for b in blocks if b.kn_address])
    links: List[NodeLink] = []
    for direction, number, directory in owners:
        try:
            children = kernfs.links(directory)
        except ReadError as error:
            unreadable.append(Unreadable(f"kernfs children of {link_owner(direction, number)}",
                                         error.reason, directory))
            continue
        # Only a link can be a node/block link: attribute names are never read.
        # Other links (subsystem, firmware_node, cpuN) are skipped by name.
        pattern = LINK_NAMES[direction]
        for kn in children:
            try:
                name = kernfs.name(kn)
            except ReadError as error:
                # The directory's listing is incomplete: filed under its kn, so
                # the checks know not to conclude a link is missing there.
                unreadable.append(Unreadable(f"kernfs name of a child of "
                                             f"{link_owner(direction, number)}",
                                             error.reason, directory))
                continue
            match = pattern.fullmatch(name)
            if match:
                links.append(link_from_kernfs(direction, number, int(match.group(1)), kn, name,
                                              kernfs, blocks_by_kn, nodes_by_kn, unreadable))
    return sorted(links, key=operator.attrgetter("direction", "node", "block", "kn_address"))
