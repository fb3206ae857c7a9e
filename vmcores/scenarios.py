"""Scenarios: what the bed does to a booted guest before it records the truth and dumps.

- ``boot``: nothing hotplugged.
- ``hotplug``: two DIMMs hot-added (node 1, then node 0), onlined movable; the
  first one is then offlined and hot-removed for real (device_del + ACPI eject).
- ``orphan``: as hotplug, but the function that removes the node<->block
  links is patched to return at once during the hot-remove, which leaves
  dangling ``nodeN/memoryM`` links, as the 2019 arm64 bug did.
- ``pmem`` (x86_64): a ``memmap=`` pmem range set up as fsdax with its memmap
  in RAM, i.e. a ZONE_DEVICE section without memory block.
- ``discard`` (x86_64): enough ``memmap=`` holes that memblock.memory outgrows
  its static array at boot; after boot its regions array has been freed.

Example:
    >>> with LiveGuest(spec, kernel_meta, "orphan") as g:         # doctest: +SKIP
    ...     SCENARIOS["orphan"].play(g)
    ...     [e["op"] for e in g.events]
    ['hot-add', 'hot-add', 'online', 'online', 'online', 'online', 'offline', 'offline', 'patch', 'hot-remove', 'unpatch']
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from . import truth as truth_mod
from .guest import Guest, GuestSpec
from .qmp import ChannelError, GdbRemote

# The ACPI hot-remove of a DIMM, and its eject, take a few seconds under TCG.
HOTPLUG_TIMEOUT_S = 120

# The function that removes the nodeN/memoryM links of a memory block on
# hot-remove; it took this name (was unregister_mem_sect_under_nodes) in v5.3
# ("mm/memory_hotplug: Make unregister_memory_block_under_nodes() never fail",
# D. Hildenbrand, 2019) and keeps it through 6.12.
UNLINK_FUNCTION = "unregister_memory_block_under_nodes"

# An instruction that returns at once, per arch: x86 ``ret``; arm64 ``ret``
# (RET X30, 0xd65f03c0, little-endian). Overwriting the first instruction is
# safe on arm64 even when it is BTI ``bti c`` or PAC ``paciasp``: the call is
# a direct BL (no BTI landing check) and LR has not been signed yet.
RETURN_NOW = {"x86_64": b"\xc3", "arm64": (0xD65F03C0).to_bytes(4, "little")}

# DIMM size per arch: a whole number of memory blocks (x86_64: 128 MiB blocks;
# arm64: 1 GiB sections before v5.12, 128 MiB since).
DIMM_MIB = {"x86_64": 256, "arm64": 1024}


class LiveGuest(Guest):
    """A guest the bed drives: hotplug over QMP, sysfs over the console, code patches over gdb.

    Every action is appended to ``events`` (the ``events`` of truth.json).
    """

    def __init__(self, spec: GuestSpec, kernel_meta: dict, scenario: str):
        super().__init__(spec)
        self.kernel_meta = kernel_meta
        self.scenario = scenario
        self.events: list[dict] = []
        self.dimms = 0
        self.patched: dict[str, dict] = {}

    def boot(self) -> None:
        super().boot()
        self.kaslr_offset = self.kallsyms_address("_stext") - self.kernel_meta["symbols"]["_stext"]
        self.block_size = int(self.run("cat /sys/devices/system/memory/block_size_bytes"), 16)

    def run(self, cmd: str, timeout: float = 60) -> str:
        """Run a shell command in the guest; a failure raises ChannelError."""
        return self.shell.run(cmd, timeout)

    def hot_add(self, node: int, size_mib: int) -> dict:
        """Plug a pc-dimm of ``size_mib`` on ``node`` and wait for its memory blocks."""
        dimm = f"dimm{self.dimms}"
        self.dimms += 1
        self.qmp.execute("object-add", **{"qom-type": "memory-backend-ram", "id": f"{dimm}-mem",
                                          "size": size_mib << 20})
        self.qmp.execute("device_add", driver="pc-dimm", id=dimm, memdev=f"{dimm}-mem", node=node)
        (addr, size) = self.dimm_range(dimm)
        blocks = list(range(addr // self.block_size, (addr + size) // self.block_size))
        self.wait_guest(" && ".join(f"test -e /sys/devices/system/memory/memory{b}" for b in blocks))
        return self.record(op="hot-add", dimm=dimm, node=node, addr=addr, size=size, blocks=blocks)

    def dimm_range(self, dimm: str) -> tuple[int, int]:
        for dev in self.qmp.execute("query-memory-devices"):
            if dev["data"].get("id") == dimm:
                return dev["data"]["addr"], dev["data"]["size"]
        raise ChannelError(f"QEMU lists no memory device {dimm}")

    def wait_guest(self, test: str, timeout: float = HOTPLUG_TIMEOUT_S) -> None:
        """Wait until a shell test succeeds in the guest (ACPI hotplug is asynchronous)."""
        self.run(f"i=0; until {test}; do i=$((i+1)); [ $i -gt {int(timeout * 10)} ] && exit 1; "
                 f"sleep 0.1; done", timeout + 10)

    def online(self, block: int, kind: str = "online_movable") -> dict:
        self.run(f"echo {kind} > /sys/devices/system/memory/memory{block}/state")
        return self.record(op="online", block=block, type=kind)

    def offline(self, block: int) -> dict:
        self.run(f"echo offline > /sys/devices/system/memory/memory{block}/state", HOTPLUG_TIMEOUT_S)
        return self.record(op="offline", block=block)

    def hot_remove(self, added: dict) -> dict:
        """Unplug a DIMM: device_del, wait for the guest's eject, then drop its backend."""
        dimm = added["dimm"]
        self.qmp.execute("device_del", id=dimm)
        self.qmp.wait_event("DEVICE_DELETED", HOTPLUG_TIMEOUT_S, device=dimm)
        self.qmp.execute("object-del", id=f"{dimm}-mem")
        return self.record(op="hot-remove", dimm=dimm, node=added["node"], blocks=added["blocks"])

    def patch_return(self, symbol: str) -> dict:
        """Make a kernel function return at once (``ret`` at its entry), over the gdbstub."""
        address = self.kernel_meta["symbols"][symbol] + self.kaslr_offset
        ret = RETURN_NOW[self.spec.arch]
        with GdbRemote(self.gdb_port) as gdb:
            old = gdb.read(address, len(ret))
            gdb.write(address, ret)
        self.patched[symbol] = {"address": address, "old": old}
        return self.record(op="patch", symbol=symbol, address=address, old=old.hex(), new=ret.hex())

    def unpatch(self, symbol: str) -> dict:
        patch = self.patched.pop(symbol)
        with GdbRemote(self.gdb_port) as gdb:
            gdb.write(patch["address"], patch["old"])
        return self.record(op="unpatch", symbol=symbol, address=patch["address"], restored=patch["old"].hex())

    def record(self, **event) -> dict:
        self.events.append(event)
        return event

    def truth(self) -> dict:
        """What the guest kernel says about its memory right now (truth.json schema)."""
        return truth_mod.capture(self)


@dataclass
class Scenario:
    """A scenario: the arches it runs on, what it adds to the boot, and its steps."""

    name: str
    arches: tuple[str, ...]
    steps: Callable[[LiveGuest], None]
    cmdline: str = ""
    modules: list[str] = field(default_factory=list)

    def play(self, guest: LiveGuest) -> None:
        start = time.monotonic()
        self.steps(guest)
        guest.scenario_seconds = time.monotonic() - start


def add_two_dimms(g: LiveGuest) -> dict:
    """Hot-add a DIMM on node 1 and one on node 0, online both movable; return the first."""
    size = DIMM_MIB[g.spec.arch]
    first = g.hot_add(1, size)
    second = g.hot_add(0, size)
    for block in first["blocks"] + second["blocks"]:
        g.online(block, "online_movable")
    return first


def hotplug_steps(g: LiveGuest) -> None:
    first = add_two_dimms(g)
    for block in first["blocks"]:
        g.offline(block)
    g.hot_remove(first)


def orphan_steps(g: LiveGuest) -> None:
    first = add_two_dimms(g)
    for block in first["blocks"]:
        g.offline(block)
    g.patch_return(UNLINK_FUNCTION)
    try:
        g.hot_remove(first)
    finally:
        g.unpatch(UNLINK_FUNCTION)


# A legacy pmem range (e820 type 12) in node 1's RAM: 0x38000000 is section 7,
# and the range stops 128 KiB short of the section end, so the last 2 MiB
# subsection stays inactive (testbed-notes).
PMEM_START, PMEM_SIZE = 0x38000000, 0x7FE0000


def pmem_steps(g: LiveGuest) -> None:
    """Make the e820 pmem namespace fsdax with its memmap in RAM ("ndctl create-namespace
    -m fsdax --map=mem" by hand): a pfn device claims the namespace, then nd_pmem binds it."""
    nd = "/sys/bus/nd"
    g.wait_guest(f"test -e {nd}/devices/namespace0.0")
    g.run(f"echo namespace0.0 > {nd}/drivers/nd_pmem/unbind || true")
    pfn = g.run(f"cat {nd}/devices/region0/pfn_seed").strip()
    # A pfn device without uuid does not probe (ENODEV); ndctl sets one too.
    g.run(f"cd {nd}/devices/{pfn} && cat /proc/sys/kernel/random/uuid > uuid && echo ram > mode"
          f" && echo namespace0.0 > namespace")
    g.run(f"echo {pfn} > {nd}/drivers/nd_pmem/bind")
    g.record(op="pmem", start=PMEM_START, size=PMEM_SIZE, mode="fsdax", map="mem", pfn_device=pfn,
             namespace="namespace0.0")


# ``discard`` (x86_64): 130 one-page e820 holes punched into node 0's RAM
# split memblock.memory into more regions than its static array holds
# (INIT_MEMBLOCK_REGIONS, 128), so memblock_double_array() moves it to an
# allocated array that memblock_discard() frees after boot (v4.13,
# 3010f876500f): memblock.memory.regions then points at freed memory. One
# memmap= with a comma list keeps the command line under x86's 2048 bytes.
DISCARD_HOLES_MIB = range(257, 387)
DISCARD_CMDLINE = "memmap=" + ",".join(f"4K${mib}M" for mib in DISCARD_HOLES_MIB)

SCENARIOS = {
    s.name: s
    for s in (
        Scenario("boot", ("x86_64", "arm64"), lambda g: None),
        Scenario("hotplug", ("x86_64", "arm64"), hotplug_steps),
        Scenario("orphan", ("x86_64", "arm64"), orphan_steps),
        Scenario("pmem", ("x86_64",), pmem_steps, cmdline=f"memmap={PMEM_SIZE:#x}!{PMEM_START:#x}",
                 modules=["nd_e820", "nd_pmem"]),
        Scenario("discard", ("x86_64",), lambda g: None, cmdline=DISCARD_CMDLINE),
    )
}
