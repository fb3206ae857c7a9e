"""A mutation corpus of broken, hostile and partial vmcores, and its runner.

Every case is a real test-bed dump (or a pairing, truncation or rewrite of
one) handed to ``drgn-hotplug``; the runner checks that the command ends
within ``CASE_TIMEOUT_S`` with exit 0/1 and a consistent JSON report (or
clean tables), or with exit 2 and exactly one line on stderr: never a
traceback, a hang, an internal error or raw control characters on stdout.

Cases come from a seed, reproducibly for a given bed: structure mutations
are found with drgn on the intact dump (mem_section roots and usage,
memblock arrays and counts, memory_block devices and their bus list, kernfs
nodes, names and rbtree links, the memory_blocks xarray, node_devices, the
kernel's own VMCOREINFO text and release), then written into a copy of the
kdump file by appending the rewritten pages and pointing their page
descriptors at them.

    python -m vmcores corpus --seed 1 --cases 1000      # prints a markdown result table

>>> flip_bit((0).to_bytes(8, "little"), 3).hex()
'0800000000000000'
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from drgn_hotplug.dumps import KdumpLayout, PlainFile, decompress, read_kdump_layout

from .cells import Cell, cells_dir
from .dumpfmt import KDUMP_SUB_HEADER, PAGE_DESC
from .packages import cache_root

CASE_TIMEOUT_S = 10
# A corrupt count must not let one case take the shared machine's memory.
CASE_MEMORY_LIMIT = 4 << 30
WORKERS = 2
REPO = Path(__file__).resolve().parent.parent

# The dumps mutations start from: (arch, kernel, scenario), when built.
SOURCE_CELLS = (("x86_64", "6.1", "orphan"), ("x86_64", "6.12", "orphan"),
                ("x86_64", "6.1", "hotplug"), ("x86_64", "5.10", "orphan"),
                ("arm64", "6.1", "hotplug"), ("arm64", "5.10", "hotplug"))

FINDING_KINDS = {"pfn-valid-mismatch", "not-linear-mapped", "memblock-without-memmap",
                 "memmap-without-memblock", "orphaned-link", "missing-link", "wrong-node-link",
                 "unreadable"}
SEVERITIES = ("error", "warning", "info")

# Strings a hostile kernel could hold: cursor movement, screen clearing, an
# OSC title change ended by BEL, C1 CSI, DEL and bytes that are not UTF-8.
HOSTILE_STRINGS = (b"\x1b[2J\x1b[H", b"\x1b]0;owned\x07", b"mem\x9b31m\x7f", b"\xff\xfe\x1b[5m",
                   b"\r\n\ttab")


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with one bit inverted (bit 0 = low bit of the first byte)."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# ---------------------------------------------------------------- kdump files

def kdump_layout(path: Path) -> KdumpLayout:
    """The headers of a kdump-compressed file (makedumpfile's or dumpfmt's),
    decoded as drgn-hotplug decodes them."""
    with open(path, "rb") as f:
        return read_kdump_layout(PlainFile(f))


def patch_kdump(path: Path, layout: KdumpLayout, patches: Sequence[Tuple[int, bytes]]) -> int:
    """Write ``(physical address, bytes)`` patches into a kdump file in place.

    Each touched page is appended, uncompressed, at the end of the file and
    its descriptor repointed, so pages shared with others (the zero page)
    stay intact. Returns how many patches landed (pages not in the dump
    are skipped).
    """
    ps = layout.block_size
    by_page: Dict[int, List[Tuple[int, bytes]]] = collections.defaultdict(list)
    for address, data in patches:
        for i, byte in enumerate(data):
            by_page[(address + i) // ps].append(((address + i) % ps, bytes([byte])))
    landed = 0
    with open(path, "r+b") as f:
        for pfn, edits in sorted(by_page.items()):
            at = layout.desc_offset(pfn)
            if at is None:
                continue
            f.seek(at)
            desc = PAGE_DESC.unpack(f.read(PAGE_DESC.size))
            page = bytearray(decompress(desc[2], os.pread(f.fileno(), desc[1], desc[0]), ps))
            for offset, byte in edits:
                page[offset:offset + 1] = byte
            end = f.seek(0, os.SEEK_END)
            f.write(page)
            f.seek(at)
            f.write(PAGE_DESC.pack(end, ps, 0, desc[3]))
            landed += 1
    return landed


# ---------------------------------------------------------------- sources and sites

@dataclass(frozen=True)
class Source:
    """One intact dump of the bed and the vmlinux it was made with."""

    name: str
    kdump: str
    vmlinux: str
    filtered: Optional[str]
    arch: str
    kernel: str


def newest_cell(arch: str, kernel: str, scenario: str) -> Optional[Cell]:
    """The most recently built cell of a kind, whatever bed hash built it (the
    corpus needs dumps, not the newest bed code)."""
    built = [p.parent for p in cells_dir().glob(f"{arch}-{kernel}-{scenario}-*/cell.json")]
    return Cell(max(built, key=lambda d: (d / "cell.json").stat().st_mtime)) if built else None


def pin_source(source: Source, scratch: Path) -> Source:
    """The source with its dumps hard-linked into ``scratch``, so a cell the
    bed deletes or rebuilds during a run stays readable until the end."""
    def pin(path: Optional[str]) -> Optional[str]:
        if path is None:
            return None
        pinned = scratch / f"{source.name}-{Path(path).name}"
        if pinned.exists():
            return str(pinned)
        try:
            os.link(path, pinned)
        except OSError:
            shutil.copyfile(path, pinned)
        return str(pinned)
    return dataclasses.replace(source, kdump=pin(source.kdump), filtered=pin(source.filtered))


def available_sources() -> List[Source]:
    sources = []
    for arch, kernel, scenario in SOURCE_CELLS:
        cell = newest_cell(arch, kernel, scenario)
        if cell is None or not cell.kdump.exists():
            continue
        filtered = cell.filtered_kdump
        sources.append(Source(f"{arch}-{kernel}-{scenario}", str(cell.kdump), str(cell.vmlinux),
                              str(filtered) if filtered else None, arch, kernel))
    return sources


@dataclass(frozen=True)
class Field:
    """A member a mutation may rewrite: ``kind`` picks the mutations
    ("pointer", "count", "word", "string", "text")."""

    name: str
    offset: int
    size: int
    kind: str
    # For pointers: an address that closes a cycle when stored here.
    cycle_to: Optional[int] = None


@dataclass(frozen=True)
class Site:
    """A kernel object the reader reads, at a kernel virtual address."""

    group: str
    label: str
    address: int
    size: int
    fields: Tuple[Field, ...]


def discover_sites(prog) -> List[Site]:
    """Every object drgn-hotplug reads, located on the intact dump."""
    import drgn_hotplug.reader.kernfs
    import drgn_hotplug.reader.mmzone
    import drgn_hotplug.reader.target
    from drgn_hotplug.drgn_reader import DrgnTarget, read_model

    model = read_model(prog)
    target = DrgnTarget(prog)
    sites: List[Site] = []
    for finder in (_section_sites, _memblock_sites, _block_sites, _xarray_sites, _node_sites,
                   _kernfs_sites, _identity_sites):
        sites += finder(prog, model, target, drgn_hotplug.reader)
    return sites


def _ptr(name, offset, cycle_to=None):
    return Field(name, offset, 8, "pointer", cycle_to)


def _offset(prog, type_name: str, member: str) -> int:
    from drgn_hotplug.drgn_reader import DrgnTarget
    return DrgnTarget(prog).offsetof(type_name, member)


def _sizeof(prog, type_name: str) -> int:
    from drgn_hotplug.drgn_reader import DrgnTarget
    return DrgnTarget(prog).sizeof(type_name)


def _section_sites(prog, model, target, reader) -> List[Site]:
    sites = []
    if model.kernel.sparsemem_extreme:
        roots = reader.mmzone.mem_section_roots(target)
        words = reader.target.decode_words(prog.read(roots, 8 * 64))
        used = [i for i, w in enumerate(words) if w]
        sites.append(Site("mem_section roots", "mem_section[]", roots, 8 * (max(used) + 1),
                          tuple(_ptr(f"root{i}", 8 * i, roots) for i in used)))
    size = _sizeof(prog, "struct mem_section")
    usage = _offset(prog, "struct mem_section", "usage")
    for s in model.sections:
        sites.append(Site("mem_section", f"section {s.nr}", s.address, size,
                          (Field("section_mem_map", 0, 8, "word"), _ptr("usage", usage, s.address))))
    usage_size = _sizeof(prog, "struct mem_section_usage")
    for u in sorted({s.usage_address for s in model.sections if s.usage_address}):
        sites.append(Site("mem_section_usage", f"usage {u:#x}", u, usage_size,
                          (Field("subsection_map", 0, 8, "word"),)))
    return sites


def _memblock_sites(prog, model, target, reader) -> List[Site]:
    sites = []
    kind = "struct memblock_type"
    region_size = _sizeof(prog, "struct memblock_region")
    for mtype in (model.memblock_memory, model.memblock_reserved):
        sites.append(Site("memblock counts", f"memblock.{mtype.name}", mtype.address,
                          _sizeof(prog, kind),
                          (Field("cnt", _offset(prog, kind, "cnt"), 8, "count"),
                           Field("max", _offset(prog, kind, "max"), 8, "count"),
                           _ptr("regions", _offset(prog, kind, "regions"), mtype.address))))
        if mtype.available and mtype.regions:
            regions = prog["memblock"].member_(mtype.name).regions.value_()
            fields = []
            for i in range(len(mtype.regions)):
                at = i * region_size
                fields += [Field(f"[{i}].base", at, 8, "word"), Field(f"[{i}].size", at + 8, 8, "word"),
                           Field(f"[{i}].flags", at + 16, 4, "word")]
            sites.append(Site("memblock regions", f"memblock.{mtype.name}.regions", regions,
                              region_size * len(mtype.regions), tuple(fields)))
    return sites


def _block_sites(prog, model, target, reader) -> List[Site]:
    sites = []
    mb = "struct memory_block"
    size = _sizeof(prog, mb)
    dev = _offset(prog, mb, "dev")
    fields = [Field("start_section_nr", _offset(prog, mb, "start_section_nr"), 8, "count"),
              Field("state", _offset(prog, mb, "state"), 8, "word"),
              Field("nid", _offset(prog, mb, "nid"), 4, "count"),
              Field("dev.id", dev + _offset(prog, "struct device", "id"), 4, "count"),
              _ptr("dev.kobj.sd", dev + _offset(prog, "struct device", "kobj.sd")),
              _ptr("dev.p", dev + _offset(prog, "struct device", "p"))]
    knode = _offset(prog, "struct device_private", "knode_bus.n_node")
    first_node = None
    for b in model.blocks:
        sites.append(Site("memory_block", f"memory{b.id}", b.address, size, tuple(fields)))
        private = reader.target.read_word(target,
                                          b.address + dev + _offset(prog, "struct device", "p"))
        node = private + knode
        first_node = first_node or node
        sites.append(Site("memory bus list", f"memory{b.id} knode_bus", node, 16,
                          (_ptr("next", 0, first_node), _ptr("prev", 8, node))))
    return sites


def _xarray_sites(prog, model, target, reader) -> List[Site]:
    try:
        xarray = prog["memory_blocks"]
    except KeyError:
        return []
    head_at = xarray.xa_head.address_
    sites = [Site("memory_blocks xarray", "memory_blocks.xa_head", head_at, 8,
                  (_ptr("xa_head", 0, head_at),))]
    slots = _offset(prog, "struct xa_node", "slots")
    stack = [xarray.xa_head.value_()]
    while stack:
        entry = stack.pop()
        if entry & 3 != 2 or entry <= 4096:
            continue
        node = entry - 2
        words = reader.target.decode_words(prog.read(node + slots, 64 * 8))
        used = [i for i, w in enumerate(words) if w]
        sites.append(Site("memory_blocks xarray", f"xa_node {node:#x}", node, slots + 64 * 8,
                          (Field("shift", 0, 1, "count"),
                           *(_ptr(f"slots[{i}]", slots + 8 * i, entry) for i in used))))
        if prog.read(node, 1)[0]:
            stack += [words[i] for i in used]
    return sites


def _node_sites(prog, model, target, reader) -> List[Site]:
    array = prog["node_devices"].address_
    sites = [Site("node_devices", "node_devices[]", array, 8 * max(n.nid + 1 for n in model.nodes),
                  tuple(_ptr(f"[{n.nid}]", 8 * n.nid, array) for n in model.nodes))]
    sd = _offset(prog, "struct node", "dev.kobj.sd")
    for n in model.nodes:
        sites.append(Site("node_devices", f"node{n.nid}", n.address + sd, 8, (_ptr("dev.kobj.sd", 0),)))
    return sites


def _kernfs_sites(prog, model, target, reader) -> List[Site]:
    """kernfs directories of nodes and blocks: their rbtree roots, every child
    node (rb links, name, symlink target, liveness) and the link targets."""
    kn = "struct kernfs_node"
    size = _sizeof(prog, kn)
    rb, children = _offset(prog, kn, "rb"), _offset(prog, kn, "dir.children")
    kl = reader.kernfs.kernfs_layout(target)
    kernfs = reader.kernfs.KernfsReader(target, kl, model.kernel.page_size)
    dirs = [n.kn_address for n in model.nodes if n.kn_address]
    dirs += [b.kn_address for b in model.blocks if b.kn_address]
    sites = []
    for directory in dirs:
        root = reader.target.read_word(target, directory + children)
        sites.append(Site("kernfs rbtree", f"dir {directory:#x} children", directory + children, 8,
                          (_ptr("rb_node", 0, directory + children),)))
        for child in kernfs.children(directory):
            fields = (Field("active", kl.active, 4, "count"),
                      _ptr("parent", kl.parent, child.address),
                      _ptr("name", kl.name), _ptr("rb.parent_color", rb, root),
                      _ptr("rb.rb_right", rb + 8, root), _ptr("rb.rb_left", rb + 16, root),
                      _ptr("symlink.target_kn", kl.target_kn, directory),
                      Field("flags", kl.flags, 2, "word"))
            sites.append(Site("kernfs node", f"kn {child.address:#x}", child.address, size, fields))
    for link in model.links:
        name_at = kernfs.node(link.kn_address).name_address
        sites.append(Site("kernfs name", f"name of {link.name}", name_at, 16,
                          (Field("name", 0, 16, "string"),)))
        if link.target_address:
            target_kn = kernfs.node(link.target_address)
            sites.append(Site("kernfs name", f"name of {link.target_name}", target_kn.name_address,
                              16, (Field("name", 0, 16, "string"),)))
            sites.append(Site("kernfs node", f"target kn {link.target_address:#x}",
                              link.target_address, size,
                              (Field("active", kl.active, 4, "count"), _ptr("parent", kl.parent),
                               Field("flags", kl.flags, 2, "word"))))
    return sites


def _identity_sites(prog, model, target, reader) -> List[Site]:
    """What names the kernel: its release string and VMCOREINFO text in memory."""
    uts = prog["init_uts_ns"].name
    vmcoreinfo = reader.target.read_word(target, prog["vmcoreinfo_data"].address_)
    length = reader.target.read_word(target, prog["vmcoreinfo_size"].address_)
    sites = [Site("kernel identity", "init_uts_ns.release", uts.release.address_, 65,
                  (Field("release", 0, 16, "string"),)),
             Site("kernel identity", "vmcoreinfo_size", prog["vmcoreinfo_size"].address_, 8,
                  (Field("size", 0, 8, "count"),)),
             Site("kernel identity", "vmcoreinfo_data", vmcoreinfo, length,
                  (Field("text", 0, length, "text"),))]
    flags = _offset(prog, "struct page", "flags")
    shift = model.kernel.pfn_section_shift
    by_nr = {s.nr: s for s in model.sections}
    map_mask = ~((1 << reader.mmzone.section_map_last_bit(target, model.kernel)) - 1)
    sizeof_page = _sizeof(prog, "struct page")
    for pfn in list(model.page_nids)[:8]:
        section = by_nr[pfn >> shift]
        page = ((section.mem_map & map_mask) + pfn * sizeof_page) & (1 << 64) - 1
        sites.append(Site("struct page", f"page of pfn {pfn:#x}", page + flags, 8,
                          (Field("flags", 0, 8, "word"),)))
    return sites


# ---------------------------------------------------------------- mutations

def mutate_field(rng: random.Random, original: bytes, fld: Field, site: Site) -> Tuple[str, bytes]:
    """(what was done, new bytes) for one field of a site."""
    if fld.kind == "string":
        return _mutate_string(rng, original)
    if fld.kind == "text":
        return _mutate_text(rng, original)
    value = int.from_bytes(original, "little")
    bits = fld.size * 8
    choices: List[Tuple[str, Callable[[], int]]] = [
        ("bit flip", lambda: value ^ 1 << rng.randrange(bits)), ("zero", lambda: 0),
        ("all ones", lambda: (1 << bits) - 1)]
    if fld.kind == "pointer":
        choices += [("self pointer", lambda: site.address + fld.offset),
                    ("non-canonical", lambda: 0xdead000000000100),
                    ("plus 8", lambda: value + 8 & (1 << 64) - 1)]
        if fld.cycle_to is not None:
            choices += [("cycle", lambda: fld.cycle_to)] * 3
    elif fld.kind == "count":
        choices += [("2^31", lambda: 1 << 31 if bits > 31 else (1 << bits) - 1),
                    ("plus one", lambda: value + 1 & (1 << bits) - 1),
                    ("negative", lambda: (1 << bits) - rng.randrange(1, 1000))]
    name, make = rng.choice(choices)
    return name, make().to_bytes(fld.size, "little")


def _mutate_string(rng: random.Random, original: bytes) -> Tuple[str, bytes]:
    kind = rng.choice(("escape", "escape", "unterminated", "empty"))
    if kind == "escape":
        hostile = rng.choice(HOSTILE_STRINGS)
        keep = original.split(b"\0")[0][:16 - len(hostile) - 1]
        return f"escape {hostile!r}", (keep + hostile + b"\0").ljust(len(original), b"\0")[:len(original)]
    if kind == "unterminated":
        return "unterminated", b"A" * len(original)
    return "empty", bytes(len(original))


def _mutate_text(rng: random.Random, original: bytes) -> Tuple[str, bytes]:
    """Rewrite one VMCOREINFO value (same length, so the text keeps its size)."""
    lines = original.split(b"\n")
    candidates = [i for i, line in enumerate(lines) if b"=" in line]
    i = rng.choice(candidates)
    key, _, value = lines[i].partition(b"=")
    garbage = rng.choice((b"9" * len(value), b"x" * len(value), b"0" * len(value), b"-" + b"1" * (len(value) - 1)))
    lines[i] = key + b"=" + garbage[:len(value)]
    return f"{key.decode(errors='replace')}={garbage[:len(value)].decode()}", b"\n".join(lines)


def changed_span(old: bytes, new: bytes) -> Tuple[int, int]:
    """[first, last) of the bytes that differ (an empty span at 0 when none do).

    >>> changed_span(b"abcdef", b"abXdYf")
    (2, 5)
    """
    differ = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    return (differ[0], differ[-1] + 1) if differ else (0, 0)


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    """One corpus case: a dump (or a mutated copy), a vmlinux and a command."""

    id: int
    group: str
    description: str
    core: str
    vmlinux: Optional[str]
    command: Tuple[str, ...] = ("check", "--json")
    truncate: Optional[int] = None
    patches: List[Tuple[int, str]] = field(default_factory=list)  # (phys address, hex bytes)
    file_patches: List[Tuple[int, str]] = field(default_factory=list)  # (file offset, hex bytes)
    make: Optional[str] = None  # a synthetic file: "empty", "text", "random", "elf-header"

    def argv(self, core: str) -> List[str]:
        out = [sys.executable, "-m", "drgn_hotplug.cli", "-c", core]
        if self.vmlinux:
            out += ["-s", self.vmlinux]
        return out + list(self.command)


COMMANDS = (("check", "--json"),) * 4 + (("check",), ("links",), ("sections", "--json"),
                                         ("memblock",), ("blocks", "--json"),
                                         ("explain", "0x100000000", "--json"))


def fixed_cases(sources: Sequence[Source], kernels: Sequence[Path], scratch: Path) -> List[Case]:
    """Cases that need no randomness: bad files, truncations, wrong pairings."""
    cases: List[Case] = []
    main = sources[0]
    for kind in ("empty", "text", "random", "elf-header"):
        cases.append(Case(0, "not a vmcore", f"{kind} file", "", main.vmlinux, make=kind))
    cases.append(Case(0, "not a vmcore", "the vmlinux as the core", main.vmlinux, main.vmlinux))
    cases.append(Case(0, "not a vmcore", "a directory", str(scratch), main.vmlinux))
    cases.append(Case(0, "not a vmcore", "a missing file", str(scratch / "absent"), main.vmlinux))
    for source in sources:
        size = os.path.getsize(source.kdump)
        layout = kdump_layout(Path(source.kdump))
        for point in (0, 100, 4096 + 200, layout.descs_at - 1000, layout.descs_at + 5000,
                      size // 10, size // 2, size * 9 // 10, size - 4096, size - 1):
            cases.append(Case(0, "truncated", f"{source.name} kdump cut at {point}", source.kdump,
                              source.vmlinux, truncate=point))
        for vmlinux in kernels:
            if str(vmlinux) != source.vmlinux:
                cases.append(Case(0, "wrong vmlinux", f"{source.name} dump with {vmlinux.parent.name}",
                                  source.kdump, str(vmlinux)))
        cases += [Case(0, "no debug info", f"{source.name}: -s /etc/passwd", source.kdump, "/etc/passwd"),
                  Case(0, "no debug info", f"{source.name}: -s missing file", source.kdump,
                       str(scratch / "no-vmlinux")),
                  Case(0, "no debug info", f"{source.name}: no -s", source.kdump, None)]
        cases += _no_vmcoreinfo_cases(source)
        if source.filtered:
            for command in COMMANDS[3:]:
                cases.append(Case(0, "filtered dump", f"{source.name} makedumpfile -d 31, "
                                  f"{' '.join(command)}", source.filtered, source.vmlinux, command))
    return cases


def _no_vmcoreinfo_cases(source: Source) -> List[Case]:
    """The dump's VMCOREINFO note renamed and its sub-header pointer cleared."""
    layout = kdump_layout(Path(source.kdump))
    with open(source.kdump, "rb") as f:
        f.seek(layout.sub_header_at)
        sub = KDUMP_SUB_HEADER.unpack(f.read(KDUMP_SUB_HEADER.size))
        offset_note, size_note = sub[7], sub[8]
        f.seek(offset_note)
        notes = f.read(size_note)
    where = notes.find(b"VMCOREINFO")
    renamed = [(offset_note + where, b"XMCOREINFO".hex())] if where >= 0 else []
    cleared = KDUMP_SUB_HEADER.pack(*sub[:5], 0, 0, *sub[7:])
    return [Case(0, "no VMCOREINFO", f"{source.name}: VMCOREINFO note renamed, sub-header cleared",
                 source.kdump, source.vmlinux,
                 file_patches=[(layout.sub_header_at, cleared.hex())] + renamed)]


def mutation_cases(rng: random.Random, source: Source, sites: Sequence[Site], prog,
                   count: int) -> List[Case]:
    """``count`` structure mutations of one source, spread evenly over the site groups."""
    from drgn.helpers.linux.mm import follow_phys

    init_mm = prog["init_mm"].address_of_()
    by_group: Dict[str, List[Site]] = collections.defaultdict(list)
    for site in sites:
        by_group[site.group].append(site)
    groups = sorted(by_group)
    cases = []
    while len(cases) < count:
        group = groups[len(cases) % len(groups)]
        site = rng.choice(by_group[group])
        patches, done = [], []
        for _ in range(rng.choice((1, 1, 1, 2))):
            fld = rng.choice(site.fields)
            address = site.address + fld.offset
            original = prog.read(address, fld.size)
            what, new = mutate_field(rng, original, fld, site)
            first, last = changed_span(original, new)
            phys = follow_phys(init_mm, address + first).value_()
            patches.append((phys, new[first:last].hex()))
            done.append(f"{fld.name} {what}")
        command = rng.choice(COMMANDS)
        cases.append(Case(0, group, f"{source.name} {site.label}: {', '.join(done)}",
                          source.kdump, source.vmlinux, command, patches=patches))
    return cases


def generate(seed: int, total: int, scratch: Path) -> List[Case]:
    """The corpus for ``seed``: the fixed cases, then structure mutations
    shared out over the sources, numbered from 1."""
    from drgn_hotplug import cli

    scratch.mkdir(parents=True, exist_ok=True)
    sources = [pin_source(s, scratch) for s in available_sources()]
    if not sources:
        raise ValueError("no test-bed dumps: build a cell first (python -m vmcores build ...)")
    kernels = sorted((cache_root() / "kernels").glob("*/vmlinux"))
    cases = fixed_cases(sources, kernels, scratch)
    rng = random.Random(seed)
    remaining = max(0, total - len(cases))
    for i, source in enumerate(sources):
        share = remaining // len(sources) + (i < remaining % len(sources))
        prog = cli.open_program(core=source.kdump, symbols=[source.vmlinux])
        cases += mutation_cases(rng, source, discover_sites(prog), prog, share)
    for number, case in enumerate(cases, 1):
        case.id = number
    return cases


# ---------------------------------------------------------------- running

@dataclass
class Result:
    case: Case
    status: Optional[int]
    seconds: float
    verdict: str  # "ok" or what went wrong
    detail: str = ""


def prepare_core(case: Case, work: Path) -> str:
    """The core file a case runs on: the source itself, or a fresh mutated copy."""
    if case.make:
        path = work / f"case{case.id}"
        path.write_bytes(_synthetic(case.make, case.id))
        return str(path)
    if case.truncate is None and not case.patches and not case.file_patches:
        return case.core
    path = work / f"case{case.id}.kdump"
    if case.truncate is None:
        shutil.copyfile(case.core, path)
    else:
        with open(case.core, "rb") as src:
            path.write_bytes(src.read(case.truncate))
    if case.patches:
        patch_kdump(path, kdump_layout(path),
                    [(address, bytes.fromhex(data)) for address, data in case.patches])
    with open(path, "r+b") as f:
        for offset, data in case.file_patches:
            f.seek(offset)
            f.write(bytes.fromhex(data))
    return str(path)


def _synthetic(kind: str, seed: int) -> bytes:
    if kind == "empty":
        return b""
    if kind == "text":
        return b"this is not a vmcore\n" * 100
    if kind == "random":
        return random.Random(seed).randbytes(1 << 16)
    # An x86_64 ELF core header and nothing else.
    return b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 4, 62, 1) + bytes(40)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CASE_MEMORY_LIMIT, CASE_MEMORY_LIMIT))


def run_case(case: Case, work: Path) -> Result:
    core = prepare_core(case, work)
    start = time.monotonic()
    try:
        proc = subprocess.run(case.argv(core), capture_output=True, timeout=CASE_TIMEOUT_S,
                              cwd=REPO, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return Result(case, None, time.monotonic() - start, "hang", f"no exit in {CASE_TIMEOUT_S} s")
    finally:
        if core != case.core:
            Path(core).unlink(missing_ok=True)
    seconds = time.monotonic() - start
    verdict, detail = judge(case, proc.returncode, proc.stdout, proc.stderr)
    return Result(case, proc.returncode, seconds, verdict, detail)


def judge(case: Case, status: int, stdout: bytes, stderr: bytes) -> Tuple[str, str]:
    """("ok", "") or (what is wrong, evidence) for one finished case."""
    err = stderr.decode("utf-8", "replace")
    if b"Traceback" in stderr or b"Traceback" in stdout:
        return "traceback", err.strip().splitlines()[-1] if err.strip() else ""
    if status == 2:
        lines = err.splitlines()
        if len(lines) != 1 or stdout.strip():
            return "not one line", repr(err[:300])
        if "internal error" in err:
            return "internal error", lines[0][:300]
        return "ok", lines[0][:200]
    if status not in (0, 1):
        return "bad exit", f"exit {status}: {err[:200]!r}"
    if err.strip():
        return "stderr on success", err.strip()[:200]
    bad = control_characters(stdout)
    if bad:
        return "raw control characters", bad
    if "--json" in case.command:
        return check_document(stdout, status, case.command[0])
    return "ok", ""


def control_characters(stdout: bytes) -> str:
    """The first terminal control character printed (newline excepted), "" if none.

    >>> control_characters(b"ok\\n"), control_characters(b"a\\x1b[2J")
    ('', "'\\\\x1b' at 1")
    """
    text = stdout.decode("utf-8", "surrogateescape")
    for i, ch in enumerate(text):
        code = ord(ch)
        if (code < 0x20 and ch != "\n") or 0x7f <= code < 0xa0 or 0xdc80 <= code <= 0xdcff:
            return f"{ch!r} at {i}"
    return ""


def check_document(stdout: bytes, status: int, command: str) -> Tuple[str, str]:
    """Whether a --json document follows docs/CONTRACTS.md and agrees with the exit status."""
    try:
        doc = json.loads(stdout)
    except ValueError as error:
        return "invalid JSON", str(error)[:200]
    problems = schema_problems(doc)
    if problems:
        return "schema", problems[0]
    if command == "check":
        serious = doc["summary"]["error"] + doc["summary"]["warning"]
        if (status == 1) != bool(serious):
            return "exit status", f"exit {status} with summary {doc['summary']}"
    return "ok", ""


def schema_problems(doc) -> List[str]:
    """What in a JSON document breaks the documented schema ([] when nothing).

    >>> schema_problems({"tool": "drgn-hotplug"})[0]
    'missing kernel'
    """
    problems = [f"missing {key}" for key in ("kernel", "findings", "unreadable", "summary")
                if key not in doc]
    if problems:
        return problems
    counts = collections.Counter()
    for f in doc["findings"]:
        if f.get("kind") not in FINDING_KINDS or f.get("severity") not in SEVERITIES:
            problems.append(f"bad finding {f.get('kind')!r}/{f.get('severity')!r}")
        ints = [k for k in ("start_pfn", "end_pfn", "node", "block") if k in f]
        if any(not isinstance(f[k], int) for k in ints):
            problems.append(f"non-integer location in {f}")
        # An unreadable object has no pfn or block: its facts name it.
        named = f.get("kind") == "unreadable" and isinstance(f.get("facts", {}).get("what"), str)
        if ("start_pfn" in f) != ("end_pfn" in f) or not ("start_pfn" in f or "block" in f
                                                          or named):
            problems.append(f"finding without a location: {f.get('kind')}")
        counts[f.get("severity")] += 1
    for u in doc["unreadable"]:
        if not isinstance(u.get("what"), str) or not isinstance(u.get("reason"), str) \
                or not (u.get("address") is None or isinstance(u.get("address"), int)):
            problems.append(f"bad unreadable entry {u}")
    if {s: doc["summary"].get(s) for s in SEVERITIES} != {s: counts[s] for s in SEVERITIES}:
        problems.append(f"summary {doc['summary']} does not count the findings")
    if [f.get("facts") for f in doc["findings"] if f.get("kind") == "unreadable"] \
            != doc["unreadable"]:
        problems.append("the unreadable findings are not the unreadable objects")
    return problems


def run_corpus(cases: Sequence[Case], work: Path, workers: int = WORKERS,
               progress: Optional[Callable[[Result], None]] = None) -> List[Result]:
    work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:
        results = []
        for result in pool.map(lambda c: run_case(c, work), cases):
            results.append(result)
            if progress:
                progress(result)
    return results


def result_table(results: Sequence[Result]) -> str:
    """A markdown table: per case group, the exit statuses, failures and the slowest case."""
    rows: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    slowest: Dict[str, float] = collections.defaultdict(float)
    for r in results:
        for group in (r.case.group, "**all**"):
            c = rows[group]
            c["cases"] += 1
            c[f"exit {r.status}" if r.verdict == "ok" else "failed"] += 1
            c["hang"] += r.verdict == "hang"
            slowest[group] = max(slowest[group], r.seconds)
    header = "| group | cases | exit 0 | exit 1 | exit 2 | hangs | failures | slowest (s) |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group in sorted(rows, key=lambda g: (g == "**all**", g)):
        c = rows[group]
        lines.append(f"| {group} | {c['cases']} | {c['exit 0']} | {c['exit 1']} | {c['exit 2']} | "
                     f"{c['hang']} | {c['failed']} | {slowest[group]:.1f} |")
    return "\n".join(lines)


def main(seed: int, total: int, workers: int = WORKERS, select: Optional[str] = None) -> int:
    """Generate and run the corpus; print the table, then each failure. Exit 1 on any failure."""
    scratch = Path(tempfile.mkdtemp(prefix="corpus-", dir=cache_root()))
    try:
        cases = generate(seed, total, scratch)
        if select:
            wanted = {int(x) for x in select.split(",")}
            cases = [c for c in cases if c.id in wanted]
        print(f"corpus: seed {seed}, {len(cases)} cases, {workers} workers", file=sys.stderr)
        done = [0]

        def progress(result: Result) -> None:
            done[0] += 1
            if result.verdict != "ok":
                print(f"  case {result.case.id} [{result.case.group}] {result.case.description}: "
                      f"{result.verdict} {result.detail[:150]}", file=sys.stderr, flush=True)
            if done[0] % 50 == 0:
                print(f"  {done[0]}/{len(cases)} done", file=sys.stderr, flush=True)
        results = run_corpus(cases, scratch, workers, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(result_table(results))
    failures = [r for r in results if r.verdict != "ok"]
    for r in failures:
        print(f"\ncase {r.case.id} [{r.case.group}] {r.case.description}: {r.verdict}: {r.detail}")
    return 1 if failures else 0
