"""Flavour scenarios: the ways memory is hot-plugged besides ACPI DIMMs (issue 14).

A flavour is a scenario (vmcores.scenarios.Scenario) that may also give QEMU
arguments of its own (a virtio-mem device, ...) and record what its flavour
adds to the guest's truth (``truth.json`` key ``flavour``). Flavours live in
this module, not in scenarios.py, because a cell's hash covers the files that
make it: a flavour's change rebuilds only the flavour cells
(vmcores.cells.bed_hash).

- ``offline``: two DIMMs hot-added and onlined; the node 1 DIMM's blocks are
  then offlined but not removed (blocks offline, sections present, no
  node link lost).
- ``virtio_mem``, ``virtio_mem_orphan``, ``virtio_mem_bad`` (x86_64): in
  vmcores.virtio_mem_bed (their cells' hash covers that module only).
- ``memmap_on_memory`` (x86_64 and arm64): DIMMs hot-added with
  ``memory_hotplug.memmap_on_memory=1``, so each block hosts its own memmap
  at its start; one DIMM is then offlined and hot-removed (arm64 7.3 refuses
  to offline it: see offline_unless_refused).
  ``memmap_on_memory_bad`` (6.1): the same, with the kernel's rules for
  these blocks broken over the gdbstub (see the memmap_on_memory section).
- ``kmem`` (x86_64): a legacy pmem range made a devdax device and onlined
  as System RAM through dax_kmem (driver-managed "System RAM (kmem)"), then
  offlined and removed, then added again for the dump.

Example:
    >>> FLAVOURS["offline"].arches
    ('x86_64', 'arm64')
    >>> FLAVOURS["offline"].qemu_args("x86_64")
    []
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from . import packages
from .packages import Kernel
from .qmp import ChannelError, GdbRemote
from .scenarios import RETURN_NOW, LiveGuest, Scenario, add_two_dimms
from .truth import parse_iomem, split_sections


def no_qemu_args(arch: str) -> list[str]:
    return []


def no_flavour_truth(g: LiveGuest) -> dict:
    return {}


@dataclass
class Flavour(Scenario):
    """A scenario with QEMU arguments of its own (per arch) and flavour facts for its truth."""

    qemu_args: Callable[[str], list[str]] = no_qemu_args
    flavour_truth: Callable[[LiveGuest], dict] = no_flavour_truth
    # Series ids the flavour runs on ("newest": the arch's newest series);
    # the issue asks for 6.1 and the newest, which keeps the bed's size down.
    series: tuple[str, ...] = ("6.1", "newest")
    # The vmcores modules whose code makes the flavour's cells (their hash
    # covers these, vmcores.cells.bed_hash): a flavour kept in a module of
    # its own is not rebuilt when another flavour changes.
    bed_files: tuple[str, ...] = ("flavours.py",)

    def runs_on(self, arch: str, kernel: str, kernels: list[str]) -> bool:
        """Whether the flavour has a cell for this series of ``kernels`` (oldest first).

        >>> FLAVOURS["offline"].runs_on("x86_64", "7.x", ["5.10", "6.1", "7.x"])
        True
        >>> FLAVOURS["offline"].runs_on("x86_64", "5.10", ["5.10", "6.1", "7.x"])
        False
        """
        wanted = {kernels[-1] if s == "newest" else s for s in self.series}
        return arch in self.arches and kernel in wanted

    def boot_modules(self, k: Kernel) -> list[str]:
        """The flavour's modules this kernel builds as modules (built-in ones
        need no insmod), extracted into its modules directory first."""
        return ensure_modules(k, self.modules)


def ensure_modules(k: Kernel, roots: list[str]) -> list[str]:
    """The ``roots`` that ``k`` builds as modules, each extracted with its
    dependencies into the kernel directory (once: the package holds them
    all, the bed's unpacking keeps only vmcores.packages.MODULE_ROOTS's).

    >>> ensure_modules(k, ["virtio_pci", "virtio_mem"])        # doctest: +SKIP
    ['virtio_pci', 'virtio_mem']
    """
    with packages.package_lock():
        meta = k.meta
        deps, builtin = meta["module_deps"], set(meta.get("builtin_modules", []))
        missing = [r for r in roots if r not in deps and r not in builtin]
        if missing:
            layout = packages.series(k.series).layout
            deb = next((packages.cache_root() / "packages").glob(
                f"{layout.modules.format(abi=k.abi)}_*_{packages.DEB_ARCH[k.arch]}.deb"))
            blobs = packages.extract_members(deb, {}, k.dir, True)
            for root in missing:
                if packages.module_blob(blobs, root) is None:
                    builtin.add(root)
                else:
                    deps.update(packages.extract_modules(blobs, deb.name, k.modules_dir, (root,)))
            meta["builtin_modules"] = sorted(builtin)
            (k.dir / "kernel.json").write_text(json.dumps(meta, indent=1))
    return [r for r in roots if r in deps]


def offline_steps(g: LiveGuest) -> None:
    first = add_two_dimms(g)
    for block in first["blocks"]:
        g.offline(block)


# ---------------------------------------------------------------- memmap_on_memory
# With memory_hotplug.memmap_on_memory=1 (v5.13, a08a2ae34613 'mm,memory_hotplug:
# allocate memmap from the added memory range'), the ACPI driver adds a DIMM
# with MHP_MEMMAP_ON_MEMORY when the kernel supports it for its size: up to
# v6.5 only a request of exactly one memory block (mhp_supports_memmap_on_memory(size)),
# from v6.6 every block of a larger one (6b8f0798b85a 'mm/memory_hotplug: split
# memmap_on_memory requests across memblocks'). So: two one-block DIMMs and a
# two-block one, which 6.1 adds with its memmap in RAM and 7.x does not.
MEMMAP_ON_MEMORY_CMDLINE = "memory_hotplug.memmap_on_memory=1"
MEMMAP_PARAMETER = "/sys/module/memory_hotplug/parameters/memmap_on_memory"
# sizeof(struct page) on the bed's x86_64 kernels (6.1 and 7.3 DWARF).
STRUCT_PAGE_BYTES = 64
# /proc/kpageflags bits (include/linux/kernel-page-flags.h): KPF_RESERVED 32,
# KPF_OWNER_PRIVATE 37 (PG_owner_priv_1, which PG_vmemmap_self_hosted aliases).
# Per block, the run lengths of (reserved, owner_private) over its first
# pfns: "11:512 00:1536" is 512 pages both, then 1536 neither.
PAGE_RUNS_SCRIPT = r"""dd if=/proc/kpageflags bs=4096 skip={skip} count={count} 2>/dev/null |
od -An -v -tu1 -w8 | awk '{{ k = ($5 % 2) "" (int($5 / 32) % 2); if (NR > 1 && k != p) {{ printf "%s:%d ", p, n; n = 0 }} p = k; n++ }}
END {{ printf "%s:%d", p, n }}'"""
RUN_PAGES = 2048


def memmap_on_memory_steps(g: LiveGuest) -> None:
    """Hot-add three DIMMs (one block on node 1, one block on node 0, two
    blocks on node 1), online them movable, then offline and hot-remove the
    first, unless the kernel refuses to offline it (arm64 7.3)."""
    block_mib = g.block_size >> 20
    removed = g.hot_add(1, block_mib)
    kept = g.hot_add(0, block_mib)
    larger = g.hot_add(1, 2 * block_mib)
    for block in removed["blocks"] + kept["blocks"] + larger["blocks"]:
        g.online(block, "online_movable")
    if all([offline_unless_refused(g, block) for block in removed["blocks"]]):
        g.hot_remove(removed)


# arm64 refuses to offline a range whose linear-map or vmemmap edges would
# split a leaf mapping ("arm64/mm: Reject memory removal that splits a kernel
# leaf mapping": prevent_memory_remove_notifier() in arch/arm64/mm/mmu.c; in
# 7.3, not in 6.1). A block hosting its own memmap offlines the range after
# it, whose struct pages start 32 KiB into a 2 MiB vmemmap leaf: 7.3 says
# "[c0200000 c8000000] splits a leaf entry in vmemmap" and the write fails
# with EPERM, so there the block stays online and its DIMM plugged.
LEAF_SPLIT_MESSAGE = "splits a leaf entry"


def offline_unless_refused(g: LiveGuest, block: int) -> bool:
    """Offline ``block``; False, with the kernel's reason recorded, when it
    refuses for a leaf split (any other failure is the bed's and raises)."""
    try:
        g.offline(block)
        return True
    except ChannelError:
        reason = g.run(f"dmesg | grep '{LEAF_SPLIT_MESSAGE}' | tail -n 1; true").strip()
        if not reason:
            raise
    g.record(op="offline-refused", block=block, dmesg=re.sub(r"^\[[^]]*\] ", "", reason))
    return False


def expected_vmemmap_pages(block_size: int, page_size: int = 4096) -> int:
    """The pages a memory block's memmap takes: one struct page per page,
    rounded up to whole pages (the kernel also requires, or since v6.6 pads
    to, whole pageblocks: 512 pages on x86_64, which 128 MiB blocks meet).

    >>> expected_vmemmap_pages(128 << 20)
    512
    """
    return -(-(block_size // page_size) * STRUCT_PAGE_BYTES // page_size)


def page_runs(g: LiveGuest, block: int) -> str:
    pages = g.block_size // 4096
    return g.run(PAGE_RUNS_SCRIPT.format(skip=block * pages * 8 // 4096, count=RUN_PAGES * 8 // 4096)).strip()


def hot_added_blocks(g: LiveGuest) -> list[int]:
    return sorted({b for e in g.events if e["op"] == "hot-add" for b in e["blocks"]})


def memmap_on_memory_truth(g: LiveGuest) -> dict:
    """The module parameter, the hot-added System RAM of /proc/iomem, and per
    hot-added block its state and the (reserved, owner_private) page runs at
    its start (the guest has no per-block count of memmap pages: an online
    self-hosting block starts with that many PG_reserved|PG_owner_priv_1
    pages; 6.1 marks them both, later kernels may drop PG_reserved)."""
    sections = split_sections(g.run(f'echo "== parameter"; cat {MEMMAP_PARAMETER}; '
                                    'echo "== iomem"; cat /proc/iomem'))
    blocks = []
    for block in hot_added_blocks(g):
        state = g.run(f"cat /sys/devices/system/memory/memory{block}/state 2>/dev/null || echo absent").strip()
        entry = {"block": block, "state": state}
        if state == "online":
            entry["page_runs"] = page_runs(g, block)
        blocks.append(entry)
    return {"parameter": sections["parameter"].strip(),
            "iomem": [e for e in parse_iomem(sections["iomem"])
                      if e["name"].startswith("System RAM") and e["start"] >= 1 << 32],
            "blocks": blocks, "expected_vmemmap_pages": expected_vmemmap_pages(g.block_size)}


# The memmap_on_memory_bad cell (6.1) breaks three rules the kernel keeps,
# each on a block of its own:
# - hot-removed memory leaves /proc/iomem: release_mem_region_adjustable()
#   returns at once during the first DIMM's hot-remove, so its "System RAM"
#   resource outlives its memory block;
# - the self-hosted memmap pages of an online block are PG_vmemmap_self_hosted
#   (PG_owner_priv_1, bit 10 of page->flags on 6.1): the bit is cleared on the
#   first struct page of the second DIMM's block (a data write);
# - a block's nr_vmemmap_pages is what its memmap needs (512 pages): the
#   third DIMM's block, left offline, is made to say 256 (a data write).
PG_VMEMMAP_SELF_HOSTED_BIT = 10
RELEASE_FUNCTION = "release_mem_region_adjustable"
# Offsets in Debian 6.1's DWARF: struct xarray.xa_head, struct xa_node.slots,
# struct memory_block.nr_vmemmap_pages.
XA_HEAD, XA_NODE_SLOTS, NR_VMEMMAP_PAGES_61 = 8, 40, 0x308


def memmap_on_memory_bad_steps(g: LiveGuest) -> None:
    block_mib = g.block_size >> 20
    removed = g.hot_add(1, block_mib)
    unmarked = g.hot_add(0, block_mib)
    miscounted = g.hot_add(1, block_mib)
    for block in removed["blocks"] + unmarked["blocks"]:
        g.online(block, "online_movable")
    for block in removed["blocks"]:
        g.offline(block)
    with returning_at_once(g, RELEASE_FUNCTION):
        g.hot_remove(removed)
    clear_page_flag(g, unmarked["addr"] // 4096, PG_VMEMMAP_SELF_HOSTED_BIT)
    poke_nr_vmemmap_pages(g, miscounted["blocks"][0], 256)


@contextlib.contextmanager
def returning_at_once(g: LiveGuest, symbol: str) -> Iterator[None]:
    """A kernel function made to return at once (``ret`` at its entry, found
    in /proc/kallsyms: kernel.json names only the orphan scenario's) for the
    duration of the block, over the gdbstub."""
    address = g.kallsyms_address(symbol)
    ret = RETURN_NOW[g.spec.arch]
    with GdbRemote(g.gdb_port) as gdb:
        old = gdb.read(address, len(ret))
        gdb.write(address, ret)
    g.record(op="patch", symbol=symbol, address=address, old=old.hex(), new=ret.hex())
    try:
        yield
    finally:
        with GdbRemote(g.gdb_port) as gdb:
            gdb.write(address, old)
        g.record(op="unpatch", symbol=symbol, address=address, restored=old.hex())


def poke_nr_vmemmap_pages(g: LiveGuest, block: int, value: int) -> dict:
    """Set a memory block's ``nr_vmemmap_pages`` over the gdbstub, found in
    the ``memory_blocks`` xarray (one xa_node: the bed's block ids are < 64)."""
    memory_blocks = g.kallsyms_address("memory_blocks")  # before the gdbstub stops the guest
    with GdbRemote(g.gdb_port) as gdb:
        head = int.from_bytes(gdb.read(memory_blocks + XA_HEAD, 8), "little")
        if head & 3 != 2 or gdb.read(head - 2, 1) != b"\0":
            raise RuntimeError(f"memory_blocks is not one xa_node of shift 0 (head {head:#x})")
        mem = int.from_bytes(gdb.read(head - 2 + XA_NODE_SLOTS + 8 * block, 8), "little")
        address = mem + NR_VMEMMAP_PAGES_61
        old = int.from_bytes(gdb.read(address, 8), "little")
        gdb.write(address, value.to_bytes(8, "little"))
    return g.record(op="poke", what="memory_block.nr_vmemmap_pages", block=block, address=address,
                    old=old, new=value)


def clear_page_flag(g: LiveGuest, pfn: int, bit: int) -> dict:
    """Clear one bit of ``pfn``'s ``page->flags`` over the gdbstub (x86_64
    SPARSEMEM_VMEMMAP: the struct page is at vmemmap_base + pfn * 64)."""
    # kallsyms is read before the gdbstub is attached: attached, it stops the
    # guest, whose shell then never answers.
    vmemmap_base = g.kallsyms_address("vmemmap_base")
    with GdbRemote(g.gdb_port) as gdb:
        base = int.from_bytes(gdb.read(vmemmap_base, 8), "little")
        address = base + pfn * STRUCT_PAGE_BYTES
        old = int.from_bytes(gdb.read(address, 8), "little")
        gdb.write(address, (old & ~(1 << bit)).to_bytes(8, "little"))
    return g.record(op="poke", what="page->flags", bit=bit, pfn=pfn, block=pfn * 4096 // g.block_size,
                    address=address, old=f"{old:#x}", new=f"{old & ~(1 << bit):#x}")


# ---------------------------------------------------------------- kmem
# The path CXL and pmem memory take to become System RAM: a legacy pmem
# range (e820 type 12 from memmap=SIZE!START) in node 1's RAM, block aligned
# at both ends, made a devdax device (nd dax seed in "ram" mode, i.e. its
# ZONE_DEVICE memmap in RAM, bound to dax_pmem) and handed to dax_kmem,
# which adds it with add_memory_driver_managed() as "System RAM (kmem)":
# kmem adds whole memory blocks only (dax_kmem_range() rounds the range in),
# so the device's 2 MiB info-block offset costs the first block:
# 0x20000000-0x37ffffff gives blocks 5 and 6 (0x28000000-0x37ffffff).
# kmem removes its memory on unbind since v5.9 (9f960da72b25 'device-dax:
# "Hotremove" persistent memory that is used like normal RAM'); before, the
# memory stayed. Both bed kernels remove it: phase one onlines, offlines and
# unbinds; phase two binds again and leaves one block online, one offline.
KMEM_START, KMEM_SIZE = 0x20000000, 0x18000000
KMEM_CMDLINE = f"memmap={KMEM_SIZE:#x}!{KMEM_START:#x}"
KMEM_MODULES = ["nd_e820", "nd_pmem", "dax_pmem", "device_dax", "kmem"]
DAX = "/sys/bus/dax"


def kmem_blocks(g: LiveGuest) -> list[int]:
    """The memory blocks kmem added, from the "System RAM (kmem)" lines of /proc/iomem."""
    ranges = [e for e in parse_iomem(g.run("cat /proc/iomem")) if e["name"] == "System RAM (kmem)"]
    return [b for e in ranges for b in range(e["start"] // g.block_size, (e["end"] + 1) // g.block_size)]


def kmem_steps(g: LiveGuest) -> None:
    nd = "/sys/bus/nd"
    g.wait_guest(f"test -e {nd}/devices/namespace0.0")
    g.run(f"echo namespace0.0 > {nd}/drivers/nd_pmem/unbind || true")
    dax = g.run(f"cat {nd}/devices/region0/dax_seed").strip()
    g.run(f"cd {nd}/devices/{dax} && cat /proc/sys/kernel/random/uuid > uuid && echo ram > mode"
          f" && echo namespace0.0 > namespace")
    # The nd bus may have probed the device once its namespace was set.
    g.run(f"echo {dax} > {nd}/drivers/dax_pmem/bind 2>/dev/null || test -e {nd}/devices/{dax}/driver")
    g.wait_guest(f"test -e {DAX}/devices/dax0.0")
    g.record(op="devdax", start=KMEM_START, size=KMEM_SIZE, nd_device=dax, dax_device="dax0.0")
    release_from_device_dax(g)
    # new_id both allows and attaches the device (dax bus do_id_store()).
    g.run(f"echo dax0.0 > {DAX}/drivers/kmem/new_id")
    blocks = kmem_added(g, "kmem-add")
    for block in blocks:
        g.online(block, "online_movable")
    for block in blocks:
        g.offline(block)
    g.run(f"echo dax0.0 > {DAX}/drivers/kmem/unbind")
    g.wait_guest(" && ".join(f"! test -e /sys/devices/system/memory/memory{b}" for b in blocks))
    g.record(op="kmem-remove", dax_device="dax0.0", blocks=blocks)
    release_from_device_dax(g)
    g.run(f"echo dax0.0 > {DAX}/drivers/kmem/bind")
    blocks = kmem_added(g, "kmem-add")
    g.online(blocks[0], "online_movable")


def release_from_device_dax(g: LiveGuest) -> None:
    """Unbind dax0.0 from device_dax, the dax bus's default driver, if it took it."""
    g.run(f"if [ -e {DAX}/drivers/device_dax/dax0.0 ]; then echo dax0.0 > {DAX}/drivers/device_dax/unbind; fi")


def kmem_added(g: LiveGuest, op: str) -> list[int]:
    g.wait_guest(f"grep -q 'System RAM (kmem)' /proc/iomem")
    blocks = kmem_blocks(g)
    g.wait_guest(" && ".join(f"test -e /sys/devices/system/memory/memory{b}" for b in blocks))
    g.record(op=op, dax_device="dax0.0", blocks=blocks)
    return blocks


def kmem_truth(g: LiveGuest) -> dict:
    """/proc/iomem from the pmem range down, the dax device (driver, size,
    resource, node), the kmem blocks with their states and kmem's dmesg lines."""
    sections = split_sections(g.run(
        'echo "== iomem"; cat /proc/iomem; echo "== dax"; d=/sys/bus/dax/devices/dax0.0; '
        'echo "driver=$(basename $(readlink $d/driver) 2>/dev/null)"; '
        'for f in size resource target_node numa_node; do echo "$f=$(cat $d/$f 2>/dev/null)"; done; '
        'echo "== dmesg"; dmesg | grep -i -e kmem -e dax; true'))
    iomem = parse_iomem(sections["iomem"])
    pmem = [e for e in iomem if KMEM_START <= e["start"] < KMEM_START + KMEM_SIZE]
    blocks = [{"block": b, "state": g.run(f"cat /sys/devices/system/memory/memory{b}/state").strip()}
              for b in kmem_blocks(g)]
    dax = dict(line.split("=", 1) for line in sections["dax"].splitlines() if "=" in line)
    return {"iomem": pmem, "dax": dax, "blocks": blocks,
            "dmesg": [re.sub(r"^\[[^]]*\] ", "", l) for l in sections["dmesg"].splitlines()]}


FLAVOURS = {
    f.name: f
    for f in (
        Flavour("offline", ("x86_64", "arm64"), offline_steps),
        Flavour("memmap_on_memory", ("x86_64", "arm64"), memmap_on_memory_steps, MEMMAP_ON_MEMORY_CMDLINE,
                flavour_truth=memmap_on_memory_truth),
        Flavour("memmap_on_memory_bad", ("x86_64",), memmap_on_memory_bad_steps, MEMMAP_ON_MEMORY_CMDLINE,
                flavour_truth=memmap_on_memory_truth, series=("6.1",)),
        Flavour("kmem", ("x86_64",), kmem_steps, KMEM_CMDLINE, KMEM_MODULES, flavour_truth=kmem_truth),
    )
}
