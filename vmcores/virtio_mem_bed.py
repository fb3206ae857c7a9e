"""virtio-mem flavours of the test bed (issue 14), x86_64 and arm64: a
virtio-mem-pci device on node 1, nothing plugged at boot, grown and shrunk
through QMP (``requested-size``) so that it ends partly plugged: one block
fully plugged, the next holding unplugged (fake-offline) sub-blocks.

- ``virtio_mem`` (6.1 and the newest series): as above.
- ``virtio_mem_orphan`` (6.1): the shrink runs with
  ``unregister_memory_block_under_nodes`` patched to return, so the blocks
  virtio-mem empties and removes leave their nodeN/memoryM links behind.
- ``virtio_mem_bad`` (6.1): virtio_mem, then the device's memory group
  poked to name node 0 over the gdbstub (memory-group-mismatch).

The flavours live in this module of their own (``bed_files``): their cells'
hash covers it, not vmcores/flavours.py, so other flavours' changes do not
rebuild them.

Example:
    >>> FLAVOURS["virtio_mem_bad"].series, FLAVOURS["virtio_mem"].bed_files
    (('6.1',), ('virtio_mem_bed.py',))
"""

from __future__ import annotations

import re
import time

from .flavours import Flavour
from .packages import cache_root, link_addresses
from .qmp import ChannelError, GdbRemote
from .scenarios import HOTPLUG_TIMEOUT_S, UNLINK_FUNCTION, LiveGuest
from .truth import parse_iomem, split_sections

# A virtio-mem-pci device with 1 GiB of device memory on node 1, nothing
# plugged at boot (QEMU 7.2; the default block size is 2 MiB on an x86_64
# host, so the guest's sub-blocks are 2 MiB and its memory blocks 128 MiB,
# on x86_64 and on arm64 4K since v5.12). The same arguments on both arches:
# the virt board plugs virtio-mem-pci since QEMU 7.0 (b1b87327a903
# 'hw/arm/virt: Support for virtio-mem-pci'), at 0xc0000000 (memory24) there,
# 0x100000000 (memory32) on q35.
VIRTIO_MEM_QOM = "/machine/peripheral/vm0"
VIRTIO_MEM_ARGS = ["-object", "memory-backend-ram,id=vmem0,size=1G",
                   "-device", "virtio-mem-pci,id=vm0,memdev=vmem0,node=1,requested-size=0"]
# virtio_mem and the transport it needs (virtio_pci is a module on 6.1,
# built in on 7.x).
VIRTIO_MEM_MODULES = ["virtio_pci", "virtio_mem"]
# virtio-mem onlines what it adds through the kernel's default online type
# (add_memory_driver_managed()), and the bed's cmdline says offline:
# override it (the last memhp_default_state= wins), movable so that whole
# blocks can be unplugged and removed again.
VIRTIO_MEM_CMDLINE = "memhp_default_state=online_movable"
# Grown to 4 blocks, shrunk to 200 MiB: virtio-mem unplugs from the highest
# block down and removes blocks it emptied, so 1 block stays fully plugged
# and the next holds 72 MiB (36 of its 64 sub-blocks) plugged.
VIRTIO_MEM_GROW_MIB, VIRTIO_MEM_SHRINK_MIB = 512, 200
# /proc/kpageflags bit KPF_OFFLINE (include/uapi/linux/kernel-page-flags.h,
# v5.0 ca215086b14b 'mm: convert PG_balloon to PG_offline').
KPF_OFFLINE_BIT = 23


def virtio_mem_qemu_args(arch: str) -> list[str]:
    return list(VIRTIO_MEM_ARGS)


def virtio_mem_resize(g: LiveGuest, mib: int) -> dict:
    """Set the device's ``requested-size`` and wait until QEMU's ``size``
    (what the guest plugged) reaches it."""
    g.qmp.execute("qom-set", path=VIRTIO_MEM_QOM, property="requested-size", value=mib << 20)
    deadline = time.monotonic() + HOTPLUG_TIMEOUT_S
    while (size := g.qmp.execute("qom-get", path=VIRTIO_MEM_QOM, property="size")) != mib << 20:
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtio-mem plugged {size:#x} bytes, not {mib} MiB, "
                               f"after {HOTPLUG_TIMEOUT_S} s")
        time.sleep(0.5)
    return g.record(op="virtio-mem-resize", requested_size=mib << 20, size=size)


def virtio_mem_steps(g: LiveGuest) -> None:
    virtio_mem_resize(g, VIRTIO_MEM_GROW_MIB)
    virtio_mem_resize(g, VIRTIO_MEM_SHRINK_MIB)


def virtio_mem_orphan_steps(g: LiveGuest) -> None:
    """Shrink with the node links' removal skipped: the whole blocks
    virtio-mem unplugs are offlined and removed (offline_and_remove_memory())
    and leave their nodeN/memoryM links behind, as the DIMM orphan does."""
    virtio_mem_resize(g, VIRTIO_MEM_GROW_MIB)
    g.patch_return(UNLINK_FUNCTION)
    try:
        virtio_mem_resize(g, VIRTIO_MEM_SHRINK_MIB)
    finally:
        g.unpatch(UNLINK_FUNCTION)


def virtio_mem_bad_steps(g: LiveGuest) -> None:
    """virtio_mem, then the device's memory group made to name node 0 over
    the gdbstub (a data write: ``memory_group.nid``, the group's first
    member), while its blocks stay on node 1."""
    virtio_mem_steps(g)
    xarray = data_symbol_address(g, "memory_groups")
    with GdbRemote(g.gdb_port) as gdb:
        # struct xarray { spinlock_t xa_lock; gfp_t xa_flags; void *xa_head; }:
        # with one group (id 0) xa_head is the entry itself, not a node.
        group = int.from_bytes(gdb.read(xarray + 8, 8), "little")
        if group & 3 or group >> 63 == 0:
            raise RuntimeError(f"memory_groups holds more than one group (head {group:#x})")
        old = gdb.read(group, 4)
        gdb.write(group, (0).to_bytes(4, "little"))
    g.record(op="poke", what="memory_group.nid", address=group, old=old.hex(), new="00000000")


def data_symbol_address(g: LiveGuest, symbol: str) -> int:
    """Run-time address of a kernel data symbol: from /proc/kallsyms where it
    lists data (CONFIG_KALLSYMS_ALL: Debian's x86_64 cloud kernels), else from
    the debug vmlinux's .symtab plus the KASLR offset (Debian's arm64 cloud
    6.1 has no KALLSYMS_ALL, so its /proc/kallsyms lacks ``memory_groups``)."""
    try:
        return g.kallsyms_address(symbol)
    except ChannelError:
        meta = g.kernel_meta
        vmlinux = cache_root() / "kernels" / f"{meta['abi']}-{meta['version']}-{meta['arch']}" / "vmlinux"
        found = link_addresses(vmlinux, (symbol,))
        if symbol not in found:
            raise
        return found[symbol] + g.kaslr_offset


# Per online virtio-mem block: one character per 2 MiB sub-block, "P" none
# of its pages KPF_OFFLINE (plugged), "U" all (unplugged, fake-offline), "M"
# mixed. od prints the 8 bytes of a pfn's flags; bit 23 is byte 2's top bit.
SUBBLOCK_SCRIPT = r"""dd if=/proc/kpageflags bs=4096 skip={skip} count={count} 2>/dev/null |
od -An -v -tu1 -w8 | awk '{{ if ($3 >= 128) off++ }}
NR % {per} == 0 {{ printf "%s", (off == 0 ? "P" : (off == {per} ? "U" : "M")); off = 0 }}'"""


def virtio_mem_truth(g: LiveGuest) -> dict:
    """What QEMU and the guest say of the virtio-mem device: QEMU's sizes
    and address, the guest's virtio-mem /proc/iomem entries, the blocks of
    the device's range with their states, the driver's dmesg lines, and per
    online block its sub-blocks (plugged or not, from /proc/kpageflags)."""
    qom = {prop: g.qmp.execute("qom-get", path=VIRTIO_MEM_QOM, property=prop)
           for prop in ("size", "requested-size", "block-size", "memaddr", "node")}
    region = g.qmp.execute("qom-get", path="/objects/vmem0", property="size")
    sections = split_sections(g.run('echo "== iomem"; cat /proc/iomem; echo "== dmesg"; '
                                    'dmesg | grep -i virtio_mem; true'))
    iomem = [e for e in parse_iomem(sections["iomem"]) if "virtio" in e["name"]]
    first, end = qom["memaddr"] // g.block_size, (qom["memaddr"] + region) // g.block_size
    blocks = []
    for block in range(first, end):
        state = g.run(f"cat /sys/devices/system/memory/memory{block}/state 2>/dev/null || echo absent").strip()
        entry = {"block": block, "state": state}
        if state == "online":
            entry["subblocks"] = block_subblocks(g, block, qom["block-size"])
        blocks.append(entry)
    return {"qemu": {**qom, "region_size": region}, "iomem": iomem, "blocks": blocks,
            "dmesg": [re.sub(r"^\[[^]]*\] ", "", l) for l in sections["dmesg"].splitlines()]}


def block_subblocks(g: LiveGuest, block: int, subblock_bytes: int) -> str:
    pages = g.block_size // 4096
    out = g.run(SUBBLOCK_SCRIPT.format(skip=block * pages * 8 // 4096, count=pages * 8 // 4096,
                                       per=subblock_bytes // 4096), timeout=300).strip()
    if len(out) != g.block_size // subblock_bytes:
        raise RuntimeError(f"kpageflags of memory{block}: {out!r}")
    return out


BED_FILES = ("virtio_mem_bed.py",)
ARCHES = ("x86_64", "arm64")

FLAVOURS = {
    f.name: f
    for f in (
        Flavour("virtio_mem", ARCHES, virtio_mem_steps, VIRTIO_MEM_CMDLINE,
                VIRTIO_MEM_MODULES, virtio_mem_qemu_args, virtio_mem_truth, bed_files=BED_FILES),
        Flavour("virtio_mem_orphan", ARCHES, virtio_mem_orphan_steps, VIRTIO_MEM_CMDLINE,
                VIRTIO_MEM_MODULES, virtio_mem_qemu_args, virtio_mem_truth, ("6.1",), BED_FILES),
        Flavour("virtio_mem_bad", ARCHES, virtio_mem_bad_steps, VIRTIO_MEM_CMDLINE,
                VIRTIO_MEM_MODULES, virtio_mem_qemu_args, virtio_mem_truth, ("6.1",), BED_FILES),
    )
}
