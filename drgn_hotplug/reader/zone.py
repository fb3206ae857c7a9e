"""Zones of each online node (``pglist_data.node_zones[]``) and the memory
hotplug settings (mm/memory_hotplug.c): what the kernel's ``valid_zones``
and ``removable`` sysfs attributes of a memory block are computed from."""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence

from ..model import HotplugSettings, KernelFacts, Node, Unreadable, Zone
from .node import _pgdat_addresses
from .target import ReadError, Target, int_at, read_cstring, word_at


def read_zones(target: Target, facts: KernelFacts, nodes: Sequence[Node],
               unreadable: List[Unreadable]) -> List[Zone]:
    """Every zone of every online node, one read of each node's ``node_zones[]``."""
    layout = _zone_layout(target)
    if layout is None:
        return []
    node_zones, sizeof_zone, count, name, start, spanned = layout
    online = [node.nid for node in nodes if node.online]
    zone_name = functools.lru_cache(maxsize=None)(
        lambda address: read_cstring(target, address, page_size=facts.page_size))
    zones = []
    for nid, pgdat in _pgdat_addresses(target, facts, online, unreadable).items():
        try:
            data = target.read(pgdat + node_zones, sizeof_zone * count)
            for index in range(count):
                base = index * sizeof_zone
                zones.append(Zone(nid, index, zone_name(word_at(data, base + name)),
                                  word_at(data, base + start), word_at(data, base + spanned)))
        except ReadError as error:
            unreadable.append(Unreadable(f"node_zones of node {nid}", error.reason, pgdat))
    return zones


def _zone_layout(target: Target) -> Optional[tuple]:
    offsets = (target.offsetof("struct pglist_data", "node_zones"), target.sizeof("struct zone"),
               target.enumerator("__MAX_NR_ZONES"), target.offsetof("struct zone", "name"),
               target.offsetof("struct zone", "zone_start_pfn"),
               target.offsetof("struct zone", "spanned_pages"))
    return None if None in offsets else offsets


# memory_hotplug.online_policy values (v5.15, e83a437faa62 "mm/memory_hotplug:
# introduce "auto-movable" online policy"): an anonymous enum.
ONLINE_POLICIES = {"ONLINE_POLICY_CONTIG_ZONES": "contig-zones",
                   "ONLINE_POLICY_AUTO_MOVABLE": "auto-movable"}


def read_hotplug_settings(target: Target, unreadable: List[Unreadable]) -> HotplugSettings:
    """CONFIG_MEMORY_HOTREMOVE (``remove_memory()`` is built only with it),
    ``movable_node_enabled`` and ``online_policy`` (absent before v5.15)."""
    movable = target.symbol("movable_node_enabled")
    policy = target.symbol("online_policy")
    try:
        movable_node = bool(target.read(movable, 1)[0]) if movable is not None else False
        online_policy = _policy_name(int_at(target.read(policy, 4), 0), {
            name: target.enumerator(name) for name in ONLINE_POLICIES}) if policy is not None else None
    except ReadError as error:
        unreadable.append(Unreadable("memory hotplug settings", error.reason, error.address))
        movable_node, online_policy = False, None
    return HotplugSettings(hotremove=target.symbol("remove_memory") is not None,
                           movable_node=movable_node, online_policy=online_policy)


def _policy_name(value: int, enumerators: Dict[str, Optional[int]]) -> str:
    """The ``online_policy`` string of sysfs for the variable's value.

    >>> _policy_name(1, {"ONLINE_POLICY_CONTIG_ZONES": 0, "ONLINE_POLICY_AUTO_MOVABLE": 1})
    'auto-movable'
    """
    for name, enumerator in enumerators.items():
        if enumerator == value:
            return ONLINE_POLICIES[name]
    return f"unknown-{value}"
