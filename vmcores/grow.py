"""Grow a real test-bed dump into a vmcore of a machine with up to 64 TB of sections.

Takes the x86_64 dump of a test-bed cell and its vmlinux, and rewrites the
kernel's own memory-hotplug bookkeeping as the kernel would have left it on a
big machine: the SPARSEMEM_EXTREME roots and ``mem_section_usage`` arrays,
2 GiB memory blocks (``sections_per_block``, ``memory_block_size_probed``),
their devices on the memory bus, the ``memory_blocks`` xarray, the kernfs
directories and rbtrees of /sys/devices/system/{memory,node}, the
node<->block links, ``node_devices``/``node_data``/``node_states`` for up to 8
nodes, ``memblock.memory`` (the static array, within its max), and the page
tables that make the new objects readable.  Every offset, size and
enumerator comes from the vmlinux's DWARF (through drgn on the source dump);
new objects are clones of the kernel's own objects with their fields set.

The result opens the normal way (``drgn -c grown.kdump -s vmlinux``,
``drgn-hotplug check -c grown.kdump -s vmlinux``); ``grown-kvaddr.elf`` is
for gdb.  ``manifest.json`` records the machine and the exact findings a
correct checker must report.

What is not real, by design (the dump would otherwise hold 64 TB):
- new objects live in 2 GiB of node-0 memory right above the original
  guest's RAM, mapped in the direct map with 2 MiB pages;
- the struct pages of generated sections are 2 MiB vmemmap pages shared per
  (node, zone): each carries the right node and zone in ``page->flags``, so
  ``page_to_nid()`` is right for every pfn.  The gdb ELF leaves them out
  (one PT_LOAD per section would make gdb's linear section search the whole
  cost), so gdb reports those struct pages unreadable;
- zone spans of the new nodes' ``pg_data_t`` are those of the node they were
  cloned from; /sys/bus/memory/devices links and the attribute
  sub-directories (power/) of new kernfs directories are empty.

Example::

    python -m vmcores grow --sections 16384      # last line: the output directory
    drgn-hotplug check -c DIR/grown.kdump -s VMLINUX
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from . import dumpfmt
from .packages import cache_root

MASK64 = (1 << 64) - 1
GiB = 1 << 30
MiB = 1 << 20
PMD_SIZE = 2 * MiB
SECTIONS_PER_BLOCK = 16                  # 2 GiB blocks of 128 MiB sections
SUBSECTION_SHIFT = 21                    # include/linux/mmzone.h, v5.3 (f46edbd1b151)
# New objects go to node-0 RAM of memory block 1 (2 GiB..4 GiB), right above
# the original 1 GiB guest, so the dump's physical image stays small.
NEW_BASE = 2 * GiB
NEW_LIMIT = 1 * GiB
SIZES = {"1k": 1024, "16k": 16384, "128k": 131072, "512k": 524288}
KN_DEACTIVATED_BIAS = -(1 << 31) + 1     # fs/kernfs/kernfs-internal.h
GOLDEN_RATIO_64 = 0x61C8864680B583EB     # include/linux/hash.h
RB_BLACK = 1
PSE = 0x80                               # x86 _PAGE_PSE
ADDRESS_MASK = 0x000FFFFFFFFFF000


class GrowError(Exception):
    """The source dump cannot be grown; the message is one line."""


# ---------------------------------------------------------------- the planned machine

EARLY, HOT, ZONE_DEVICE = "early", "hot", "zone-device"


@dataclass
class Plan:
    """The machine to describe: which sections exist, on which node, how.

    Block 0 is the original guest (sections 0-7, nodes 0 and 1); blocks
    1.. are split into one contiguous run per node, each run ending with
    hot-added (movable) blocks and, on some nodes, a ZONE_DEVICE range in a
    block of its own.

    >>> p = make_plan(1024, seed=1)
    >>> p.nodes, len(p.blocks), p.kind[16]
    (2, 55, 'early')
    """

    n_sections: int
    nodes: int
    seed: int
    kind: Dict[int, str] = field(default_factory=dict)          # section nr -> kind
    node: Dict[int, int] = field(default_factory=dict)          # section nr -> nid
    subsection_map: Dict[int, int] = field(default_factory=dict)  # only when not full
    blocks: Dict[int, Tuple[int, ...]] = field(default_factory=dict)  # block -> nodes
    memblock: List[Tuple[int, int, int]] = field(default_factory=list)  # pfn start, end, nid
    gaps: List[Tuple[int, int]] = field(default_factory=list)   # early pfns outside memblock
    orphans: List[Tuple[int, int]] = field(default_factory=list)       # (node, removed block)
    missing: List[Tuple[int, int, Tuple[str, ...]]] = field(default_factory=list)
    wrong: List[Tuple[int, int]] = field(default_factory=list)  # (wrong node, block)
    holes: List[int] = field(default_factory=list)              # absent blocks
    original: Dict[int, int] = field(default_factory=dict)      # the source's sections -> nid


# The x86_64 boot cell: 1 GiB on two nodes (QEMU -numa, 512 MiB each).
BOOT_CELL_SECTIONS = {nr: (0 if nr < 4 else 1) for nr in range(8)}
BOOT_CELL_MEMBLOCK = ((1, 0x9f, 0), (0x100, 0x20000, 0), (0x20000, 0x3ffe0, 1))
PAGES_PER_SECTION = 1 << 15
SUBSECTIONS = 64
FULL_MAP = (1 << SUBSECTIONS) - 1


def nodes_for(n_sections: int) -> int:
    """2 nodes up to 1K sections, 4 up to 16K, then 8.

    >>> nodes_for(1024), nodes_for(16384), nodes_for(524288)
    (2, 4, 8)
    """
    return 2 if n_sections <= 1024 else 4 if n_sections <= 16384 else 8


def make_plan(n_sections: int, seed: int,
              original_sections: Optional[Dict[int, int]] = None,
              original_memblock: Sequence[Tuple[int, int, int]] = BOOT_CELL_MEMBLOCK) -> Plan:
    """The machine for ``n_sections`` (a multiple of 1024), reproducible from
    ``seed``, around the source's sections ({nr: nid}) and memblock regions."""
    if n_sections % 1024 or not 1024 <= n_sections <= 1 << 19:
        raise GrowError(f"--sections must be a multiple of 1024 between 1024 and 524288, "
                        f"not {n_sections}")
    rng = random.Random(seed)
    plan = Plan(n_sections, nodes_for(n_sections), seed)
    plan.original = dict(original_sections or BOOT_CELL_SECTIONS)
    for nr, nid in plan.original.items():
        plan.kind[nr], plan.node[nr] = EARLY, nid
    plan.blocks[0] = (0, 1)
    plan.memblock = list(original_memblock)
    n_blocks = n_sections // SECTIONS_PER_BLOCK
    for nid in range(plan.nodes):
        first = 1 + nid * (n_blocks - 1) // plan.nodes
        end = 1 + (nid + 1) * (n_blocks - 1) // plan.nodes
        _plan_node(plan, rng, nid, first, end)
    _plan_links(plan, rng)
    return plan


def _plan_node(plan: Plan, rng: random.Random, nid: int, first: int, end: int) -> None:
    zone_device = nid in (0, plan.nodes - 1)
    last_memory = end - 1 if zone_device else end
    hot = max(3, (last_memory - first) // 10)
    early_blocks = list(range(first, last_memory - hot))
    # Block 1 holds the generator's objects: never a hole or a gap.
    candidates = [b for b in early_blocks[1:-1] if b != 1]
    holes = set(rng.sample(candidates, min(2, len(candidates) // 4)))
    gap_block = rng.choice([b for b in candidates if b not in holes])
    plan.holes += sorted(holes)
    for block in range(first, last_memory):
        if block in holes:
            continue
        kind = EARLY if block in early_blocks else HOT
        for nr in _block_sections(block):
            plan.kind[nr], plan.node[nr] = kind, nid
        plan.blocks[block] = (nid,)
    gap_section = gap_block * SECTIONS_PER_BLOCK + rng.randrange(SECTIONS_PER_BLOCK)
    # 64 MiB without memblock memory in the middle of an early section (a
    # firmware hole): subsection_map_init() covers memblock ranges only.
    plan.subsection_map[gap_section] = FULL_MAP & ~(((1 << 32) - 1) << 16)
    gap_start = gap_section * PAGES_PER_SECTION + 16 * 512
    plan.gaps.append((gap_start, gap_start + 32 * 512))
    _memblock_runs(plan, nid, first, last_memory - hot, gap_start)
    if zone_device:
        # pmem-like: 4 sections of ZONE_DEVICE in a block of their own, the
        # last subsection not added (memmap=...! ranges rarely end on a section).
        sections = _block_sections(end - 1)[4:8]
        for nr in sections:
            plan.kind[nr], plan.node[nr] = ZONE_DEVICE, nid
        plan.subsection_map[sections[-1]] = FULL_MAP >> 1


def _block_sections(block: int) -> List[int]:
    return list(range(block * SECTIONS_PER_BLOCK, (block + 1) * SECTIONS_PER_BLOCK))


def _memblock_runs(plan: Plan, nid: int, first: int, end: int, gap_start: int) -> None:
    """memblock.memory regions of a node's early blocks: one per run between holes and the gap."""
    start = None
    for block in range(first, end + 1):
        if block < end and block not in plan.holes:
            start = block if start is None else start
            continue
        if start is not None:
            lo, hi = start * SECTIONS_PER_BLOCK * PAGES_PER_SECTION, block * SECTIONS_PER_BLOCK * PAGES_PER_SECTION
            if lo <= gap_start < hi:
                plan.memblock += [(lo, gap_start, nid), (gap_start + 32 * 512, hi, nid)]
            else:
                plan.memblock.append((lo, hi, nid))
        start = None


def _plan_links(plan: Plan, rng: random.Random) -> None:
    """Remove a few hot blocks behind a stale node link, drop a few links, add a wrong one."""
    hot_by_node: Dict[int, List[int]] = {}
    for block, nodes in plan.blocks.items():
        if plan.kind[block * SECTIONS_PER_BLOCK] == HOT:
            hot_by_node.setdefault(nodes[0], []).append(block)
    for i in range(3):
        nid = i % plan.nodes
        block = rng.choice(hot_by_node[nid][1:])
        hot_by_node[nid].remove(block)
        plan.orphans.append((nid, block))
        del plan.blocks[block]
        for nr in _block_sections(block):
            del plan.kind[nr], plan.node[nr]
    # A partial hot-add: the last section of a live hot block has half its subsections.
    partial = max(_block_sections(hot_by_node[0][0]))
    plan.subsection_map[partial] = FULL_MAP >> 32
    early = [b for b, nodes in plan.blocks.items()
             if b > 1 and len(nodes) == 1 and plan.kind[b * SECTIONS_PER_BLOCK] == EARLY]
    picked = rng.sample(early, 4)
    for block, missing in zip(picked, (("node-to-block",), ("block-to-node",),
                                       ("node-to-block", "block-to-node"))):
        plan.missing.append((plan.blocks[block][0], block, missing))
    wrong_block = picked[3]
    plan.wrong.append(((plan.blocks[wrong_block][0] + 1) % plan.nodes, wrong_block))


# ---------------------------------------------------------------- expected findings

def merge(ranges: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Union of half-open ranges, adjacent ones joined.

    >>> merge([(5, 7), (0, 2), (2, 3)])
    [(0, 3), (5, 7)]
    """
    out: List[Tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def subtract(ranges: Sequence[Tuple[int, int]], cut: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``ranges`` minus ``cut``.

    >>> subtract([(0, 10)], [(2, 3), (5, 12)])
    [(0, 2), (3, 5)]
    """
    out = []
    for lo, hi in merge(ranges):
        for clo, chi in merge(cut):
            if chi <= lo or clo >= hi:
                continue
            if clo > lo:
                out.append((lo, clo))
            lo = max(lo, chi)
        if lo < hi:
            out.append((lo, hi))
    return out


def subsection_pieces(nr: int, bitmap: int, active: bool) -> List[Tuple[int, int]]:
    """Pfn ranges of the active (or inactive) subsections of section ``nr``.

    >>> subsection_pieces(1, 1, True)
    [(32768, 33280)]
    """
    base = nr * PAGES_PER_SECTION
    return merge([(base + i * 512, base + (i + 1) * 512) for i in range(SUBSECTIONS)
                  if bool(bitmap >> i & 1) == active])


def expected_findings(plan: Plan) -> List[dict]:
    """The findings a correct x86_64 6.1 checker reports on the grown machine."""
    early = merge([(nr * PAGES_PER_SECTION, (nr + 1) * PAGES_PER_SECTION)
                   for nr, kind in plan.kind.items() if kind == EARLY])
    memblock = [(lo, hi) for lo, hi, _ in plan.memblock]
    findings = [_range("memmap-without-memblock", "early-section-hole", r)
                for r in subtract(early, memblock)]
    for kind, why, active in ((HOT, "hot-added-arch-discards-memblock", True),
                              (ZONE_DEVICE, "zone-device", True),
                              (HOT, "subsection-inactive", False),
                              (ZONE_DEVICE, "subsection-inactive-zone-device", False)):
        finding_kind = "memmap-without-memblock" if active else "pfn-valid-mismatch"
        pieces = [p for nr, k in plan.kind.items() if k == kind
                  for p in subsection_pieces(nr, plan.subsection_map.get(nr, FULL_MAP), active)]
        findings += [_range(finding_kind, why, r) for r in merge(pieces)]
    findings += [{"kind": "orphaned-link", "severity": "error", "node": n, "block": b}
                 for n, b in plan.orphans]
    findings += [{"kind": "missing-link", "severity": "error", "node": n, "block": b,
                  "missing": list(m)} for n, b, m in plan.missing]
    findings += [{"kind": "wrong-node-link", "severity": "error", "node": n, "block": b}
                 for n, b in plan.wrong]
    return findings


def _range(kind: str, reason: str, pfns: Tuple[int, int]) -> dict:
    return {"kind": kind, "severity": "info", "reason_code": reason,
            "start_pfn": pfns[0], "end_pfn": pfns[1]}


# ---------------------------------------------------------------- reading the source dump

@dataclass
class SourceDump:
    """The physical pages of a kdump-compressed dump written by dumpfmt."""

    path: Path
    page_size: int
    runs: List[Tuple[int, int]]                  # dumped pfn runs, end exclusive
    note_bytes: bytes
    vmcoreinfo_text: str

    def pages(self) -> Iterator[Tuple[int, bytes]]:
        """(pfn, page bytes) of every non-zero dumped page."""
        with open(self.path, "rb") as f:
            header = dumpfmt.DISK_DUMP_HEADER.unpack(f.read(dumpfmt.DISK_DUMP_HEADER.size))
            block, sub_blocks, bitmap_blocks = header[6], header[7], header[8]
            f.seek((1 + sub_blocks + bitmap_blocks) * block)
            count = sum(end - start for start, end in self.runs)
            descs = f.read(count * dumpfmt.PAGE_DESC.size)
            pfns = (pfn for start, end in self.runs for pfn in range(start, end))
            zero = bytes(self.page_size)
            for pfn, (offset, size, flags, _) in zip(pfns, dumpfmt.PAGE_DESC.iter_unpack(descs)):
                f.seek(offset)
                raw = f.read(size)
                page = zlib.decompress(raw) if flags & dumpfmt.DUMP_DH_COMPRESSED_ZLIB else raw
                if page != zero:
                    yield pfn, page


def read_source_kdump(path: Path) -> SourceDump:
    """Headers, dumped pfn runs, notes and VMCOREINFO of a kdump-compressed file."""
    with open(path, "rb") as f:
        header = dumpfmt.DISK_DUMP_HEADER.unpack(f.read(dumpfmt.DISK_DUMP_HEADER.size))
        if header[0] != dumpfmt.KDUMP_SIGNATURE:
            raise GrowError(f"{path}: not a kdump-compressed dump")
        block, sub_blocks, bitmap_blocks = header[6], header[7], header[8]
        f.seek(block)
        sub = dumpfmt.KDUMP_SUB_HEADER.unpack(f.read(dumpfmt.KDUMP_SUB_HEADER.size))
        f.seek(sub[5])
        vmcoreinfo = f.read(sub[6]).decode("ascii", "replace")
        f.seek(sub[7])
        notes = f.read(sub[8])
        half = bitmap_blocks * block // 2
        f.seek((1 + sub_blocks) * block + half)
        bitmap = f.read(half)
    return SourceDump(path, block, bit_runs(bitmap), notes, vmcoreinfo)


def bit_runs(bitmap: bytes) -> List[Tuple[int, int]]:
    """Runs of set bits (bit i%8 of byte i//8) as half-open ranges.

    >>> bit_runs(bytes([0b11100000, 0b1]))
    [(5, 9)]
    """
    value = int.from_bytes(bitmap, "little")
    runs, pos = [], 0
    while value >> pos:
        low = value >> pos
        start = pos + (low & -low).bit_length() - 1
        ones = ~(value >> start)
        end = start + (ones & -ones).bit_length() - 1
        runs.append((start, end))
        pos = end
    return runs


# ---------------------------------------------------------------- kernel types, from DWARF

class Kernel:
    """The source kernel seen through drgn: layouts, symbols, template bytes.

    Offsets and sizes are asked of the vmlinux's DWARF every time, so the
    generator follows whatever layout the kernel was built with.
    """

    def __init__(self, prog):
        import drgn
        self.drgn = drgn
        self.prog = prog
        info = dict(line.split("=", 1) for line in self.vmcoreinfo().splitlines() if "=" in line)
        self.info = info
        self.phys_base = int(info["NUMBER(phys_base)"])
        self.page_offset = prog["page_offset_base"].value_()
        self.vmemmap = prog["vmemmap_base"].value_()
        self.init_top_pgt = int(info["SYMBOL(init_top_pgt)"], 16)

    def vmcoreinfo(self) -> str:
        prog = self.prog
        return prog.read(prog["vmcoreinfo_data"].value_(), prog["vmcoreinfo_size"].value_()).decode()

    def sizeof(self, type_name: str) -> int:
        return self.drgn.sizeof(self.prog.type(type_name))

    def off(self, type_name: str, member: str) -> int:
        return self.drgn.offsetof(self.prog.type(type_name), member)

    def const(self, name: str) -> int:
        return self.prog.constant(name).value_()

    def sym(self, name: str) -> int:
        return self.prog[name].address_

    def read(self, address: int, size: int) -> bytes:
        return self.prog.read(address, size)

    def word(self, address: int) -> int:
        return self.prog.read_u64(address)

    def phys(self, vaddr: int) -> int:
        """Physical address of a kernel image or direct-map address."""
        if vaddr >= dumpfmt.X86_START_KERNEL_MAP:
            return vaddr - dumpfmt.X86_START_KERNEL_MAP + self.phys_base
        if self.page_offset <= vaddr < self.page_offset + (1 << 46):
            return vaddr - self.page_offset
        raise GrowError(f"{vaddr:#x} is neither in the kernel image nor in the direct map")

    def kernfs_children(self, kn: int) -> List[int]:
        from drgn.helpers.linux.kernfs import kernfs_children
        obj = self.drgn.Object(self.prog, "struct kernfs_node *", kn)
        return [child.value_() for child in kernfs_children(obj)]

    def kernfs_name(self, kn: int) -> str:
        return self.prog.read(self.word(kn + self.off("struct kernfs_node", "name")), 64
                              ).split(b"\0")[0].decode()


def kernfs_name_hash(name: bytes) -> int:
    """fs/kernfs/dir.c kernfs_name_hash() for a NULL namespace.

    >>> kernfs_name_hash(b"memory0") == kernfs_name_hash(b"memory0")
    True
    """
    h = 0
    for c in name:
        h = (h + (c << 4) + (c >> 4)) * 11 & MASK64       # partial_name_hash()
    h = (h * GOLDEN_RATIO_64 & MASK64) >> 32              # end_name_hash(): hash_long(h, 32)
    h &= 0x7FFFFFFF
    return h + 2 if h < 2 else min(h, 0x7FFFFFFE)


# ---------------------------------------------------------------- new memory

class Region:
    """A bump allocator over new physical memory seen through the direct map.

    >>> r = Region(0x80000000, 0xffff888000000000)
    >>> hex(r.alloc(b"ab", align=8)), hex(r.alloc(bytes(3), align=4096))
    ('0xffff888080000000', '0xffff888080001000')
    """

    def __init__(self, base: int, page_offset: int):
        self.base = base
        self.page_offset = page_offset
        self.data = bytearray()

    def reserve(self, size: int, align: int = 8) -> int:
        start = -(-len(self.data) // align) * align
        if start + size > NEW_LIMIT:
            raise GrowError(f"the grown objects need more than {NEW_LIMIT >> 20} MiB")
        self.data.extend(bytes(start + size - len(self.data)))
        return self.page_offset + self.base + start

    def alloc(self, content: bytes, align: int = 8) -> int:
        address = self.reserve(len(content), align)
        self.put(address, content)
        return address

    def put(self, address: int, content: bytes) -> None:
        at = address - self.page_offset - self.base
        self.data[at:at + len(content)] = content

    def phys(self, address: int) -> int:
        return address - self.page_offset

    def string(self, text: str) -> int:
        return self.alloc(text.encode() + b"\0", align=8)


def rebase(template: bytes, old: int, new: int) -> bytearray:
    """A copy of an object whose self-pointers (empty list heads, embedded
    back-pointers) point into the copy instead of the original.

    >>> rebase((0x1008).to_bytes(8, "little") + bytes(8), 0x1000, 0x2000)[:8].hex()
    '0820000000000000'
    """
    out = bytearray(template)
    for at in range(0, len(out) - 7, 8):
        value = int.from_bytes(out[at:at + 8], "little")
        if old <= value < old + len(template):
            out[at:at + 8] = (value - old + new).to_bytes(8, "little")
    return out


def put_word(buf: bytearray, offset: int, value: int, size: int = 8) -> None:
    buf[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")


# ---------------------------------------------------------------- the builder

class Grower:
    """Writes the planned machine's kernel objects into new memory and patches the old."""

    def __init__(self, kernel: Kernel, plan: Plan):
        self.k = kernel
        self.plan = plan
        self.region = Region(NEW_BASE, kernel.page_offset)
        self.patches: Dict[int, bytes] = {}          # physical address -> bytes (old memory)
        self.strings: Dict[str, int] = {}
        self.next_id = 1 << 32
        self.tables: Dict[int, bytearray] = {}       # physical page-table page -> entries
        self.kn_names: Dict[int, str] = {}           # new kernfs node -> its name

    # -- memory access
    def write(self, vaddr: int, content: bytes) -> None:
        if self.region.page_offset + NEW_BASE <= vaddr < self.region.page_offset + NEW_BASE + NEW_LIMIT:
            self.region.put(vaddr, content)
        else:
            self.patches[self.k.phys(vaddr)] = bytes(content)

    def write_word(self, vaddr: int, value: int, size: int = 8) -> None:
        self.write(vaddr, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))

    def string(self, text: str) -> int:
        if text not in self.strings:
            self.strings[text] = self.region.string(text)
        return self.strings[text]

    def clone(self, template_address: int, size: int) -> Tuple[int, bytearray]:
        address = self.region.reserve(size, align=64)
        return address, rebase(self.k.read(template_address, size), template_address, address)

    # -- the whole machine
    def build(self) -> None:
        self.direct_map_table = self.region.reserve(4096, 4096)
        self.build_kernfs_templates()
        self.build_nodes()
        self.build_sections()
        self.build_memblock()
        self.build_blocks()
        self.build_node_links()
        self.build_scalars()
        self.map_direct()
        self.sync_pgds()

    # -- sections
    def section_flags(self, kind: str) -> int:
        bit = lambda name: 1 << self.k.const(f"SECTION_{name}_BIT")  # noqa: E731
        flags = bit("MARKED_PRESENT") | bit("HAS_MEM_MAP")
        if kind == EARLY:
            return flags | bit("IS_ONLINE") | bit("IS_EARLY")
        if kind == HOT:
            return flags | bit("IS_ONLINE")
        return flags | bit("TAINT_ZONE_DEVICE")

    def usage_size(self) -> int:
        """mem_section_usage_size(): the struct plus the pageblock bitmap
        (4 bits per 2 MiB pageblock, in longs)."""
        pageblock_bits = self.k.const("NR_PAGEBLOCK_BITS")
        bits = PAGES_PER_SECTION // 512 * pageblock_bits
        return self.k.sizeof("struct mem_section_usage") + -(-bits // 64) * 8

    def build_sections(self) -> None:
        k, plan = self.k, self.plan
        sizeof_section = k.sizeof("struct mem_section")
        per_root = 4096 // sizeof_section
        usage_offset = k.off("struct mem_section", "usage")
        map_offset = k.off("struct mem_section_usage", "subsection_map")
        usage_size = self.usage_size()
        roots_array = k.word(k.sym("mem_section"))
        old_root0 = k.word(roots_array)
        roots: Dict[int, int] = {}
        usages = self.allocate_usages(usage_size)
        for nr in sorted(plan.kind):
            root_nr = nr // per_root
            if root_nr not in roots:
                roots[root_nr] = self.region.reserve(4096, 4096)
            at = roots[root_nr] + (nr % per_root) * sizeof_section
            if nr in plan.original:
                self.region.put(at, k.read(old_root0 + nr * sizeof_section, sizeof_section))
                continue
            usage = usages[nr]
            self.region.put(usage + map_offset,
                            plan.subsection_map.get(nr, FULL_MAP).to_bytes(8, "little"))
            # sparse_encode_mem_map(): mem_map - section_nr_to_pfn(nr) is vmemmap itself.
            self.region.put(at, (k.vmemmap | self.section_flags(plan.kind[nr])).to_bytes(8, "little"))
            self.region.put(at + usage_offset, usage.to_bytes(8, "little"))
            self.map_vmemmap(nr)
        for root_nr, root in roots.items():
            self.write_word(roots_array + 8 * root_nr, root)

    def allocate_usages(self, usage_size: int) -> Dict[int, int]:
        """Early sections share one usage array per node (sparse_init_nid());
        hot-added ones get one kzalloc each (section_activate())."""
        usages = {}
        by_node: Dict[int, List[int]] = {}
        for nr, kind in sorted(self.plan.kind.items()):
            if nr in self.plan.original:
                continue
            if kind == EARLY:
                by_node.setdefault(self.plan.node[nr], []).append(nr)
            else:
                usages[nr] = self.region.reserve(usage_size, 64)
        for nrs in by_node.values():
            array = self.region.reserve(usage_size * len(nrs), 64)
            usages.update({nr: array + i * usage_size for i, nr in enumerate(nrs)})
        return usages

    # -- page tables
    def table(self, phys: int) -> bytearray:
        if phys not in self.tables:
            self.tables[phys] = bytearray(self.k.prog.read(phys, 4096, True))
        return self.tables[phys]

    def entry(self, table_phys: int, index: int) -> int:
        if NEW_BASE <= table_phys < NEW_BASE + NEW_LIMIT:
            at = table_phys - NEW_BASE + 8 * index
            return int.from_bytes(self.region.data[at:at + 8], "little")
        return int.from_bytes(self.table(table_phys)[8 * index:8 * index + 8], "little")

    def set_entry(self, table_phys: int, index: int, value: int) -> None:
        if NEW_BASE <= table_phys < NEW_BASE + NEW_LIMIT:
            at = table_phys - NEW_BASE + 8 * index
            self.region.data[at:at + 8] = value.to_bytes(8, "little")
        else:
            put_word(self.table(table_phys), 8 * index, value)

    def pmd_slot(self, vaddr: int) -> Tuple[int, int]:
        """(PMD table physical address, index) for ``vaddr``, creating tables as needed
        with the flags of the kernel's own table entries (4-level paging)."""
        table = self.k.phys(self.k.init_top_pgt)
        for shift in (39, 30):
            index = vaddr >> shift & 511
            entry = self.entry(table, index)
            if not entry & 1:
                new = self.region.reserve(4096, 4096)
                entry = self.region.phys(new) | self.table_flags
                self.set_entry(table, index, entry)
            table = entry & ADDRESS_MASK
        return table, vaddr >> 21 & 511

    def learn_flags(self) -> None:
        """Entry flags of the kernel's own tables, from the first vmemmap and
        direct-map leaves; a 4 KiB leaf becomes a 2 MiB one with _PAGE_PSE
        (its bit 7, PAT, is clear for write-back RAM)."""
        for name, vaddr in (("vmemmap_leaf", self.k.vmemmap), ("direct_leaf", self.k.page_offset)):
            table = self.k.phys(self.k.init_top_pgt)
            for shift in (39, 30, 21, 12):
                entry = self.entry(table, vaddr >> shift & 511)
                if shift == 12 or entry & PSE:
                    break
                self.table_flags = entry & 0xFFF
                table = entry & ADDRESS_MASK
            if not entry & 1:
                raise GrowError(f"{name}: the source kernel does not map {vaddr:#x}")
            setattr(self, name, entry & ~ADDRESS_MASK & MASK64 | PSE)

    def map_vmemmap(self, nr: int) -> None:
        """The 2 MiB of struct pages of section ``nr`` -> a chunk shared by its (node, zone)."""
        table, index = self.pmd_slot(self.k.vmemmap + nr * PAGES_PER_SECTION * 64)
        self.set_entry(table, index, self.page_chunk(self.plan.node[nr], self.plan.kind[nr])
                       | self.vmemmap_leaf)

    def page_chunk(self, nid: int, kind: str) -> int:
        key = (nid, kind)
        if key not in self.chunks:
            zone = self.k.const({EARLY: "ZONE_NORMAL", HOT: "ZONE_MOVABLE",
                                 ZONE_DEVICE: "ZONE_DEVICE"}[kind])
            page = bytearray(self.page_template)
            flags = int.from_bytes(page[:8], "little")
            flags &= ~(((1 << self.nodes_width) - 1) << self.nodes_shift)
            flags &= ~(((1 << self.zones_width) - 1) << self.zones_shift)
            flags |= nid << self.nodes_shift | zone << self.zones_shift
            put_word(page, self.flags_offset, flags)
            address = self.region.reserve(PMD_SIZE, PMD_SIZE)
            self.region.put(address, bytes(page) * (PMD_SIZE // len(page)))
            self.chunks[key] = self.region.phys(address)
        return self.chunks[key]

    def learn_page_flags(self) -> None:
        """page->flags layout (include/linux/page-flags-layout.h, SPARSEMEM_VMEMMAP:
        no section field): node bits on top, zone bits below."""
        k = self.k
        self.flags_offset = k.off("struct page", "flags")
        self.nodes_width = (len(k.prog["node_devices"]) - 1).bit_length()
        self.zones_width = (k.const("__MAX_NR_ZONES") - 1).bit_length()
        self.nodes_shift = 64 - self.nodes_width
        self.zones_shift = self.nodes_shift - self.zones_width
        # A page of the original node-1 memory, as a template for the rest.
        self.page_template = k.read(k.vmemmap + 0x30000 * k.sizeof("struct page"),
                                    k.sizeof("struct page"))
        self.chunks: Dict[Tuple[int, str], int] = {}

    def map_direct(self) -> None:
        """Direct-map 2 MiB pages for the new region (one PMD table: at most 1 GiB)."""
        pmd = self.region.phys(self.direct_map_table)
        pud_table, _ = self._pud_slot(self.k.page_offset + NEW_BASE)
        self.set_entry(pud_table, (self.k.page_offset + NEW_BASE) >> 30 & 511,
                       pmd | self.table_flags)
        for i in range(-(-len(self.region.data) // PMD_SIZE)):
            self.set_entry(pmd, i, NEW_BASE + i * PMD_SIZE | self.direct_leaf)

    def sync_pgds(self) -> None:
        """Copy the kernel-half PGD entries added to init_top_pgt into every
        process PGD on pgd_list, as sync_global_pgds() does: a dump is read
        through the page tables of the CR3 it was taken with."""
        from drgn.helpers.linux.list import list_for_each_entry
        k = self.k
        init = k.phys(k.init_top_pgt)
        added = [(i, self.entry(init, i)) for i in range(256, 512)
                 if self.entry(init, i) and not int.from_bytes(
                     k.prog.read(init + 8 * i, 8, True), "little")]
        sizeof_page = k.sizeof("struct page")
        for page in list_for_each_entry("struct page", k.prog["pgd_list"].address_of_(), "lru"):
            pgd = (page.value_() - k.vmemmap) // sizeof_page << 12
            for index, entry in added:
                if not self.entry(pgd, index):
                    self.set_entry(pgd, index, entry)

    def _pud_slot(self, vaddr: int) -> Tuple[int, int]:
        pgd = self.k.phys(self.k.init_top_pgt)
        entry = self.entry(pgd, vaddr >> 39 & 511)
        return entry & ADDRESS_MASK, vaddr >> 30 & 511

    # -- memblock
    def build_memblock(self) -> None:
        k = self.k
        memory = k.sym("memblock") + k.off("struct memblock", "memory")
        regions = k.word(memory + k.off("struct memblock_type", "regions"))
        if regions != k.sym("memblock_memory_init_regions"):
            raise GrowError("memblock.memory is not the static init array in the source dump")
        maximum = k.word(memory + k.off("struct memblock_type", "max"))
        if len(self.plan.memblock) > maximum:
            raise GrowError(f"{len(self.plan.memblock)} memblock regions exceed max {maximum}")
        size = k.sizeof("struct memblock_region")
        template = k.read(regions, size)
        data = bytearray()
        total = 0
        for lo, hi, nid in self.plan.memblock:
            region = bytearray(template)
            put_word(region, k.off("struct memblock_region", "base"), lo << 12)
            put_word(region, k.off("struct memblock_region", "size"), (hi - lo) << 12)
            put_word(region, k.off("struct memblock_region", "flags"), 0, 4)
            put_word(region, k.off("struct memblock_region", "nid"), nid, 4)
            data += region
            total += (hi - lo) << 12
        self.write(regions, bytes(data))
        self.write_word(memory + k.off("struct memblock_type", "cnt"), len(self.plan.memblock))
        self.write_word(memory + k.off("struct memblock_type", "total_size"), total)

    # -- kernfs
    def build_kernfs_templates(self) -> None:
        """Templates from the source: block 1's directory, its children and links."""
        k = self.k
        self.learn_flags()
        self.learn_page_flags()
        self.kn_size = k.sizeof("struct kernfs_node")
        kn = lambda m: k.off("struct kernfs_node", m)  # noqa: E731
        self.kn_off = {m: kn(m) for m in ("count", "active", "parent", "name", "rb", "ns", "hash",
                                          "dir.children", "symlink.target_kn", "priv", "id",
                                          "flags", "iattr")}
        self.block_layout()
        self.old_blocks = self.source_blocks()
        template_block = self.old_blocks[1]
        self.block_kn_template = k.word(template_block + self.dev + self.off_dev["kobj.sd"])
        children = k.kernfs_children(self.block_kn_template)
        self.block_children = [c for c in children if not re.fullmatch(r"node\d+", k.kernfs_name(c))]
        self.link_template = next(c for c in children if re.fullmatch(r"node\d+", k.kernfs_name(c)))
        self.memory_dir = k.word(self.block_kn_template + self.kn_off["parent"])

    def new_kn(self, template: int, name: str, parent: int, **fields: int) -> int:
        """A kernfs_node cloned from ``template``, unlinked, with a fresh id."""
        address, data = self.clone(template, self.kn_size)
        off = self.kn_off
        put_word(data, off["parent"], parent)
        put_word(data, off["name"], self.string(name))
        put_word(data, off["hash"], kernfs_name_hash(name.encode()), 4)
        put_word(data, off["ns"], 0)
        put_word(data, off["iattr"], 0)
        put_word(data, off["id"], self.next_id)
        self.next_id += 1
        for member, value in fields.items():
            size = 4 if member in ("active", "count") else 2 if member == "flags" else 8
            put_word(data, off[member.replace("__", ".")], value, size)
        self.region.put(address, bytes(data))
        self.kn_names[address] = name
        return address

    def set_children(self, directory: int, children: Sequence[int]) -> None:
        """Make ``children`` the rbtree of ``directory``, ordered as kernfs_sd_compare()."""
        names = {c: self.kn_name_hash(c) for c in children}
        ordered = sorted(children, key=lambda c: names[c])
        root = build_rbtree(ordered, self.kn_off["rb"], self.write_rb)
        self.write_word(directory + self.kn_off["dir.children"], root)

    def kn_name_hash(self, kn: int) -> Tuple[int, bytes]:
        name = self.kn_names.get(kn)
        if name is None:
            name = self.k.kernfs_name(kn)
        return kernfs_name_hash(name.encode()), name.encode()

    def write_rb(self, node: int, parent_color: int, right: int, left: int) -> None:
        self.write(node, struct.pack("<QQQ", parent_color, right, left))

    # -- memory blocks
    def block_layout(self) -> None:
        k = self.k
        self.sizeof_block = k.sizeof("struct memory_block")
        self.dev = k.off("struct memory_block", "dev")
        self.off_dev = {m: k.off("struct device", m) for m in ("kobj.name", "kobj.sd", "p", "id",
                                                                 "kobj.entry")}
        self.dp_size = k.sizeof("struct device_private")
        self.dp_node = k.off("struct device_private", "knode_bus.n_node")
        self.dp_device = k.off("struct device_private", "device")

    def source_blocks(self) -> Dict[int, int]:
        from drgn.helpers.linux.mm import for_each_memory_block
        return {mem.dev.id.value_(): mem.value_() for mem in for_each_memory_block(self.k.prog)}

    def build_blocks(self) -> None:
        k, plan = self.k, self.plan
        template = self.old_blocks[1]
        template_p = k.word(template + self.dev + self.off_dev["p"])
        online_type = k.const("MMOP_ONLINE_MOVABLE")
        self.block_kn: Dict[int, int] = {}
        self.block_address: Dict[int, int] = {}
        bus_nodes = []
        memory_children = [c for c in k.kernfs_children(self.memory_dir)
                           if not re.fullmatch(r"memory\d+", k.kernfs_name(c))]
        for block in sorted(plan.blocks):
            address, data = self.clone(template, self.sizeof_block)
            p_address, p_data = self.clone(template_p, self.dp_size)
            first = block * SECTIONS_PER_BLOCK
            kind = plan.kind.get(first, EARLY)
            name = f"memory{block}"
            kn = self.new_kn(self.block_kn_template, name, self.memory_dir,
                             priv=address + self.dev + k.off("struct device", "kobj"))
            put_word(data, k.off("struct memory_block", "start_section_nr"), first)
            put_word(data, k.off("struct memory_block", "nid"), plan.blocks[block][-1], 4)
            if kind == HOT:
                put_word(data, k.off("struct memory_block", "online_type"), online_type, 4)
            put_word(data, k.off("struct memory_block", "zone"),
                     self.zone_of(plan.blocks[block], kind))
            put_word(data, self.dev + self.off_dev["id"], block, 4)
            put_word(data, self.dev + self.off_dev["kobj.name"], self.string(name))
            put_word(data, self.dev + self.off_dev["kobj.sd"], kn)
            put_word(data, self.dev + self.off_dev["p"], p_address)
            entry = address + self.dev + self.off_dev["kobj.entry"]
            put_word(data, self.dev + self.off_dev["kobj.entry"], entry)
            put_word(data, self.dev + self.off_dev["kobj.entry"] + 8, entry)
            put_word(p_data, self.dp_device, address + self.dev)
            self.region.put(address, bytes(data))
            self.region.put(p_address, bytes(p_data))
            bus_nodes.append(p_address + self.dp_node)
            self.block_kn[block] = kn
            self.block_address[block] = address
            memory_children.append(kn)
        for node, block in plan.orphans:
            self.block_kn[block] = self.dead_block_kn(block)
        self.set_children(self.memory_dir, memory_children)
        self.link_bus(bus_nodes)
        self.build_xarray()

    def zone_of(self, nodes: Tuple[int, ...], kind: str) -> int:
        """&NODE_DATA(nid)->node_zones[ZONE_*], NULL for a block spanning nodes
        (memory_block_add_nid(), early blocks on several nodes)."""
        if len(nodes) > 1:
            return 0
        zone = self.k.const("ZONE_MOVABLE" if kind == HOT else "ZONE_NORMAL")
        return (self.pgdat[nodes[0]] + self.k.off("pg_data_t", "node_zones")
                + zone * self.k.sizeof("struct zone"))

    def dead_block_kn(self, block: int) -> int:
        """The kernfs directory of a removed block that a stale link still pins:
        drained (KN_DEACTIVATED_BIAS), KERNFS_REMOVING (v6.1, c25491747b21), out of
        its parent's rbtree (RB_CLEAR_NODE: parent pointer to itself)."""
        flags = self.k.read(self.block_kn_template + self.kn_off["flags"], 2)
        removing = self.k.const("KERNFS_REMOVING")
        kn = self.new_kn(self.block_kn_template, f"memory{block}", self.memory_dir,
                         active=KN_DEACTIVATED_BIAS,
                         flags=int.from_bytes(flags, "little") | removing, priv=0)
        rb = kn + self.kn_off["rb"]
        self.write_rb(rb, rb, 0, 0)
        return kn

    def link_bus(self, nodes: List[int]) -> None:
        """The memory bus's klist: every block's knode_bus in block order."""
        k = self.k
        private = k.word(k.sym("memory_subsys") + k.off("struct bus_type", "p"))
        head = private + k.off("struct subsys_private", "klist_devices.k_list")
        ring = [head] + nodes
        for i, node in enumerate(ring):
            self.write(node, struct.pack("<QQ", ring[(i + 1) % len(ring)], ring[i - 1]))

    def build_xarray(self) -> None:
        """memory_blocks: block id -> struct memory_block *, as xa_store() builds it
        (XA_CHUNK_SHIFT 6)."""
        k = self.k
        xa = k.sym("memory_blocks")
        size = k.sizeof("struct xa_node")
        head = build_xarray(self.block_address, lambda: self.region.reserve(size, 64),
                            self.write_xa_node, xa)
        self.write_word(xa + k.off("struct xarray", "xa_head"), head)

    def write_xa_node(self, address: int, shift: int, offset: int, parent: int, array: int,
                      slots: Sequence[int]) -> None:
        k = self.k
        off = lambda m: k.off("struct xa_node", m)  # noqa: E731
        data = bytearray(k.sizeof("struct xa_node"))
        data[off("shift")] = shift
        data[off("offset")] = offset
        data[off("count")] = sum(1 for s in slots if s)
        put_word(data, off("parent"), parent)
        put_word(data, off("array"), array)
        list_head = address + off("private_list")
        put_word(data, off("private_list"), list_head)
        put_word(data, off("private_list") + 8, list_head)
        data[off("slots"):off("slots") + 8 * 64] = struct.pack("<64Q", *slots)
        self.region.put(address, bytes(data))

    # -- nodes
    def build_nodes(self) -> None:
        """node_devices[], node_data[] and node directories for nodes 2.. (clones of node 1)."""
        k, plan = self.k, self.plan
        devices, data = k.sym("node_devices"), k.sym("node_data")
        self.node_dev = {nid: k.word(devices + 8 * nid) for nid in range(plan.nodes)}
        self.pgdat = {nid: k.word(data + 8 * nid) for nid in range(plan.nodes)}
        kn_offset = k.off("struct node", "dev.kobj.sd")
        self.node_kn = {nid: k.word(dev + kn_offset) for nid, dev in self.node_dev.items() if dev}
        template_kn = self.node_kn[1]
        self.node_dir = k.word(template_kn + self.kn_off["parent"])
        self.node_children = {nid: [c for c in k.kernfs_children(kn)
                                    if not re.fullmatch(r"memory\d+", k.kernfs_name(c))]
                              for nid, kn in self.node_kn.items()}
        template_children = [c for c in self.node_children[1]
                             if not re.fullmatch(r"cpu\d+", k.kernfs_name(c))]
        siblings = k.kernfs_children(self.node_dir)
        for nid in (0, 1):
            self.write_span(nid)
        for nid in range(2, plan.nodes):
            self.pgdat[nid] = self.clone_pgdat(nid)
            address, node = self.clone(self.node_dev[1], k.sizeof("struct node"))
            kn = self.new_kn(template_kn, f"node{nid}", self.node_dir,
                             priv=address + k.off("struct node", "dev.kobj"))
            put_word(node, k.off("struct node", "dev.id"), nid, 4)
            put_word(node, k.off("struct node", "dev.kobj.name"), self.string(f"node{nid}"))
            put_word(node, kn_offset, kn)
            self.region.put(address, bytes(node))
            self.node_dev[nid], self.node_kn[nid] = address, kn
            self.node_children[nid] = [self.new_kn(c, k.kernfs_name(c), kn, **{"dir__children": 0})
                                       for c in template_children]
            siblings.append(kn)
            self.write_word(devices + 8 * nid, address)
            self.write_word(data + 8 * nid, self.pgdat[nid])
        self.set_children(self.node_dir, siblings)

    def clone_pgdat(self, nid: int) -> int:
        k = self.k
        size = k.sizeof("pg_data_t")
        address, pgdat = self.clone(self.pgdat[1], size)
        put_word(pgdat, k.off("pg_data_t", "node_id"), nid, 4)
        start, spanned, present = self.node_span(nid)
        put_word(pgdat, k.off("pg_data_t", "node_start_pfn"), start)
        put_word(pgdat, k.off("pg_data_t", "node_spanned_pages"), spanned)
        put_word(pgdat, k.off("pg_data_t", "node_present_pages"), present)
        self.region.put(address, bytes(pgdat))
        return address

    def node_span(self, nid: int) -> Tuple[int, int, int]:
        """(node_start_pfn, node_spanned_pages, node_present_pages) of a node
        holding the plan's sections on it, as online_pages() would leave them."""
        pfns = [nr * PAGES_PER_SECTION for nr, n in self.plan.node.items() if n == nid]
        start, end = min(pfns), max(pfns) + PAGES_PER_SECTION
        return start, end - start, len(pfns) * PAGES_PER_SECTION

    def write_span(self, nid: int) -> None:
        """The source's own nodes span the grown machine's memory on them too."""
        k = self.k
        start, spanned, present = self.node_span(nid)
        for member, value in (("node_start_pfn", start), ("node_spanned_pages", spanned),
                              ("node_present_pages", present)):
            self.write_word(self.pgdat[nid] + k.off("pg_data_t", member), value)

    # -- links
    def build_node_links(self) -> None:
        """nodeN/memoryM and memoryM/nodeN links, less the planted missing ones,
        plus the planted wrong and stale ones; block directories get their attributes."""
        plan = self.plan
        missing = {(n, b, d) for n, b, dirs in plan.missing for d in dirs}
        pairs = [(n, b) for b, nodes in plan.blocks.items() for n in nodes] + plan.wrong
        node_links: Dict[int, List[int]] = {n: [] for n in range(plan.nodes)}
        for n, b in pairs + plan.orphans:
            if (n, b, "node-to-block") not in missing:
                node_links[n].append(self.new_link(f"memory{b}", self.node_kn[n], self.block_kn[b]))
        block_links: Dict[int, List[int]] = {b: [] for b in plan.blocks}
        for n, b in pairs:
            if (n, b, "block-to-node") not in missing and (n, b) not in plan.wrong:
                block_links[b].append(self.new_link(f"node{n}", self.block_kn[b], self.node_kn[n]))
        for n, links in node_links.items():
            self.set_children(self.node_kn[n], self.node_children[n] + links)
        for b, links in block_links.items():
            attributes = [self.new_kn(c, self.k.kernfs_name(c), self.block_kn[b], dir__children=0)
                          for c in self.block_children]
            self.set_children(self.block_kn[b], attributes + links)

    def new_link(self, name: str, parent: int, target: int) -> int:
        return self.new_kn(self.link_template, name, parent, symlink__target_kn=target)

    # -- scalars
    def build_scalars(self) -> None:
        k, plan = self.k, self.plan
        self.write_word(k.sym("sections_per_block"), SECTIONS_PER_BLOCK, 4)
        self.write_word(k.sym("memory_block_size_probed"), SECTIONS_PER_BLOCK << 27)
        self.write_word(k.sym("__highest_present_section_nr"), max(plan.kind))
        self.write_word(k.sym("nr_online_nodes"), plan.nodes, 4)
        size = k.sizeof("nodemask_t")
        states = k.sym("node_states")
        mask = ((1 << plan.nodes) - 1).to_bytes(size, "little")
        for state in ("N_POSSIBLE", "N_ONLINE", "N_NORMAL_MEMORY", "N_MEMORY"):
            self.write(states + k.const(state) * size, mask)

    # -- output
    def physical_patches(self) -> Dict[int, bytes]:
        patches = dict(self.patches)
        patches.update((phys, bytes(table)) for phys, table in self.tables.items())
        return patches


def build_rbtree(ordered: Sequence[int], rb_offset: int, write) -> int:
    """Lay out a balanced red-black tree over ``ordered`` objects; return the root rb_node.

    Median split: leaves sit on the last two levels; nodes on an incomplete
    last level are red, all others black, so every path has the same black
    height. ``write(rb, parent_color, right, left)`` stores one rb_node.

    >>> out = {}
    >>> hex(build_rbtree([0x100, 0x200, 0x300], 0, lambda n, pc, r, l: out.update({n: (pc, r, l)})))
    '0x200'
    >>> out[0x200], out[0x100]
    ((1, 768, 256), (513, 0, 0))
    """
    n = len(ordered)
    if not n:
        return 0
    depth = n.bit_length() - 1
    perfect = n == (1 << (depth + 1)) - 1

    def place(lo: int, hi: int, parent: int, level: int) -> int:
        if lo >= hi:
            return 0
        mid = (lo + hi) // 2
        node = ordered[mid] + rb_offset
        red = level == depth and not perfect and depth > 0
        right = place(mid + 1, hi, node, level + 1)
        left = place(lo, mid, node, level + 1)
        write(node, parent | (0 if red else RB_BLACK), right, left)
        return node

    return place(0, n, 0, 0)


def build_xarray(entries: Dict[int, int], alloc, write, array: int) -> int:
    """The xa_head of an xarray holding ``entries`` (index -> pointer).

    ``alloc()`` reserves one xa_node and returns its address;
    ``write(node, shift, offset, parent, array, slots)`` stores it. Internal
    entries are ``node | 2`` (xa_mk_node()).

    >>> nodes = {}
    >>> def alloc(): return 0x1000 * (len(nodes) + 1 + nodes.setdefault(len(nodes), 0))
    >>> def write(node, shift, offset, parent, array, slots):
    ...     nodes[node] = (shift, parent, [i for i, s in enumerate(slots) if s])
    >>> hex(build_xarray({0: 0x40, 70: 0x80}, alloc, write, 0))
    '0x1002'
    >>> nodes[0x1000]
    (6, 0, [0, 1])
    """
    if not entries:
        return 0
    top = max(entries)
    if top == 0:
        return entries[0]
    shift = 0
    while top >> (shift + 6):
        shift += 6
    return _xa_node(sorted(entries.items()), 0, shift, 0, 0, alloc, write, array) | 2


def _xa_node(items, base, shift, offset, parent, alloc, write, array) -> int:
    address = alloc()
    slots = [0] * 64
    groups: Dict[int, list] = {}
    for index, pointer in items:
        groups.setdefault((index - base) >> shift, []).append((index, pointer))
    for slot, members in groups.items():
        if shift == 0:
            slots[slot] = members[0][1]
        else:
            slots[slot] = _xa_node(members, base + (slot << shift), shift - 6, slot, address,
                                   alloc, write, array) | 2
    write(address, shift, offset, parent, array, slots)
    return address


# ---------------------------------------------------------------- the source's own sections

def original_layout(kernel: Kernel) -> Tuple[Dict[int, int], List[Tuple[int, int, int]]]:
    """{section nr: nid} of the source's present sections (the node of the
    first memblock.memory region they overlap) and its memblock.memory
    regions as (start pfn, end pfn, nid)."""
    from drgn.helpers.linux.mmzone import for_each_present_section
    prog = kernel.prog
    memory = prog["memblock"].memory
    regions = [(r.base.value_() >> 12, (r.base.value_() + r.size.value_()) >> 12, r.nid.value_())
               for r in memory.regions[:memory.cnt.value_()]]
    sections = {}
    for nr, _ in for_each_present_section(prog):
        lo, hi = nr * PAGES_PER_SECTION, (nr + 1) * PAGES_PER_SECTION
        sections[nr] = next(nid for start, end, nid in regions if start < hi and end > lo)
    return sections, regions


# ---------------------------------------------------------------- writing the dumps

def write_phys_elf(src: SourceDump, grower: Grower, out: Path) -> None:
    """A physical ELF (what QEMU's dump-guest-memory writes) of the grown memory:
    the source's pages with the patches applied, then the new region."""
    ps = src.page_size
    runs = [(lo * ps, hi * ps) for lo, hi in src.runs]
    region = grower.region
    size = -(-len(region.data) // PMD_SIZE) * PMD_SIZE
    if any(lo < NEW_BASE + size and hi > NEW_BASE for lo, hi in runs):
        raise GrowError("the source dump has memory where the grown objects go (above 2 GiB)")
    runs = sorted(runs + [(NEW_BASE, NEW_BASE + size)])
    phdr_end = dumpfmt.ELF_HEADER.size + (1 + len(runs)) * dumpfmt.PROGRAM_HEADER.size
    data_at = -(-(phdr_end + len(src.note_bytes)) // ps) * ps
    offsets, at = [], data_at
    for lo, hi in runs:
        offsets.append(at)
        at += hi - lo
    phdrs = [dumpfmt.PROGRAM_HEADER.pack(dumpfmt.PT_NOTE, 0, phdr_end, 0, 0, len(src.note_bytes),
                                         len(src.note_bytes), 0)]
    phdrs += [dumpfmt.PROGRAM_HEADER.pack(dumpfmt.PT_LOAD, dumpfmt.PF_RWX, off, 0, lo, hi - lo,
                                          hi - lo, 0) for (lo, hi), off in zip(runs, offsets)]

    def file_offset(paddr: int) -> int:
        for (lo, hi), off in zip(runs, offsets):
            if lo <= paddr < hi:
                return off + paddr - lo
        raise GrowError(f"physical {paddr:#x} is outside the dump")

    with open(out, "wb") as f:
        f.write(dumpfmt.elf_header("x86_64", len(phdrs)) + b"".join(phdrs) + src.note_bytes)
        f.truncate(at)
        fd = f.fileno()
        for pfn, page in src.pages():
            os.pwrite(fd, page, file_offset(pfn * ps))
        for paddr, content in grower.physical_patches().items():
            os.pwrite(fd, content, file_offset(paddr))
        os.pwrite(fd, bytes(region.data), file_offset(NEW_BASE))


def write_kvaddr(phys_elf: Path, out: Path, shared: Sequence[int]) -> None:
    """dumpfmt's kernel-virtual ELF, less the shared struct-page chunks (one
    PT_LOAD per generated section would make gdb's section search the cost)."""
    dump = dumpfmt.read_qemu_elf(phys_elf)
    chunks = set(shared)
    with dumpfmt.mapped(dump) as mm:
        mappings = [m for m in dumpfmt.kernel_mappings(dump, mm)
                    if m.paddr & ~(PMD_SIZE - 1) not in chunks]
        dumpfmt.write_elf(dump, mm, dumpfmt.clip_to_segments(dumpfmt.merge_mappings(mappings),
                                                            dump.segments), out)


def generator_hash() -> str:
    h = hashlib.sha256()
    for name in ("grow.py", "dumpfmt.py"):
        h.update(Path(__file__).with_name(name).read_bytes())
    return h.hexdigest()[:10]


def grown_dir(cell_dir: Path, n_sections: int, seed: int) -> Path:
    return cache_root() / "grown" / f"{cell_dir.name}-{n_sections}-s{seed}-{generator_hash()}"


def grow(cell_dir: Path, n_sections: int, seed: int = 1) -> Path:
    """The cached grown dump directory for a source cell (built if absent)."""
    final = grown_dir(Path(cell_dir), n_sections, seed)
    if (final / "manifest.json").exists():
        return final
    work = final.with_name(f".{final.name}.tmp{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    build(Path(cell_dir), n_sections, seed, work)
    os.replace(work, final) if not final.exists() else None
    return final


def build(cell_dir: Path, n_sections: int, seed: int, out: Path) -> dict:
    import time
    import drgn
    started = time.monotonic()
    cell = json.loads((cell_dir / "cell.json").read_text())
    if cell["arch"] != "x86_64":
        raise GrowError("only x86_64 cells can be grown (4-level page tables, static memblock)")
    src = read_source_kdump(cell_dir / "vmcore.kdump")
    prog = drgn.Program()
    prog.set_core_dump(str(cell_dir / "vmcore.kdump"))
    prog.load_debug_info([cell["vmlinux"]])
    kernel = Kernel(prog)
    sections, memblock = original_layout(kernel)
    if sorted(sections) != list(range(8)):
        raise GrowError(f"the source must have sections 0-7 present (a 1 GiB guest), not "
                        f"{sorted(sections)}")
    plan = make_plan(n_sections, seed, sections, memblock)
    grower = Grower(kernel, plan)
    grower.build()
    phys = out / "grown-phys.elf"
    write_phys_elf(src, grower, phys)
    dumpfmt.write_kdump(phys, out / "grown.kdump")
    write_kvaddr(phys, out / "grown-kvaddr.elf", list(grower.chunks.values()))
    phys.unlink()
    manifest = {
        "source_cell": str(cell_dir), "vmlinux": cell["vmlinux"], "seed": seed,
        "generator": generator_hash(), "sections": n_sections,
        "present_sections": len(plan.kind),
        "valid_sections": len(plan.kind),
        "section_kinds": {kind: sum(1 for k in plan.kind.values() if k == kind)
                          for kind in (EARLY, HOT, ZONE_DEVICE)},
        "blocks": len(plan.blocks), "nodes": plan.nodes,
        "block_size": SECTIONS_PER_BLOCK << 27,
        "memblock_regions": len(plan.memblock),
        "hole_blocks": plan.holes,
        "planted": {"orphaned": plan.orphans, "missing": [[n, b, list(m)] for n, b, m in plan.missing],
                    "wrong_node": plan.wrong},
        "expected_findings": expected_findings(plan),
        "new_memory": {"phys": NEW_BASE, "size": len(grower.region.data)},
        "files": {"kdump": "grown.kdump", "kvaddr_elf": "grown-kvaddr.elf"},
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---------------------------------------------------------------- command line

def add_command(sub) -> None:
    """``python -m vmcores grow --sections N|1k|16k|128k|512k [--seed S] [--cell DIR]``."""
    p = sub.add_parser("grow", help="grow the x86_64 6.1 boot dump into a large machine")
    p.add_argument("--sections", required=True, help="1024..524288 (multiple of 1024) or "
                   + ", ".join(SIZES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cell", type=Path, help="source cell directory (default: x86_64 6.1 boot)")
    p.set_defaults(func=grow_command)


def grow_command(args) -> int:
    import sys
    import time
    started = time.monotonic()
    try:
        n_sections = SIZES.get(args.sections.lower()) or int(args.sections)
        make_plan(n_sections, args.seed)   # a bad size fails before any build
        if args.cell is None:
            from .cells import build_cell
            args.cell = build_cell("x86_64", "6.1", "boot").dir
        out = grow(args.cell, n_sections, args.seed)
    except (GrowError, OSError) as error:
        print(f"vmcores grow: {error}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"vmcores grow: --sections must be a number or one of {', '.join(SIZES)}",
              file=sys.stderr)
        return 2
    print(f"grown in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(out)
    return 0
