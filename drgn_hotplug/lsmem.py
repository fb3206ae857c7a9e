"""``lsmem``: what util-linux's lsmem would have printed on the analysed
kernel, byte for byte, from the model of a dump, a live kernel or a guest.

Two halves, each transcribing C code it names:

- what sysfs shows of each memory block (drivers/base/memory.c: the
  ``memoryN`` directories, ``state``, ``removable``, ``valid_zones`` and the
  ``nodeN`` link), computed from the model with the rules of kernels.py;
- what lsmem makes of it (util-linux 2.38.1, Debian bookworm's:
  sys-utils/lsmem.c, and the libsmartcols table printer it uses).

tabulate (the other reports' table library) is not the tool here: lsmem's
layout is libsmartcols', whose widths, right alignment, width hints,
missing trailing padding and JSON writer this module reproduces exactly.

>>> memory = SysfsMemory(1 << 27, [SysfsBlock(0, "online", True, 0, ("None",)),
...                               SysfsBlock(1, "online", True, 0, ("DMA32",))], True, True)
>>> print(render(memory, parse_options(["-o", "RANGE,SIZE,ZONES"])), end="")
RANGE                                  SIZE ZONES
0x0000000000000000-0x0000000007ffffff  128M  None
0x0000000008000000-0x000000000fffffff  128M DMA32
<BLANKLINE>
Memory block size:       128M
Total online memory:     256M
Total offline memory:      0B
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from . import checks, kernels
from .model import MemoryBlock, Model, Zone
from .ranges import RangeSet


class LsmemError(Exception):
    """lsmem cannot be reproduced (bad options, a fact the model lacks): one line."""


# ---------------------------------------------------------------- what sysfs shows

@dataclass(frozen=True)
class SysfsBlock:
    """What lsmem reads of one ``memoryN`` directory: ``state`` as sysfs spells
    it, ``removable`` (None: unknown for this kernel), the node of its first
    ``nodeN`` link (-1 without one) and the ``valid_zones`` words as lsmem
    names them (``"none"`` is lsmem's ``"None"``)."""

    index: int
    state: str
    removable: Optional[bool]
    node: int
    zones: Tuple[str, ...]


@dataclass(frozen=True)
class SysfsMemory:
    """/sys/devices/system/memory as lsmem sees it: ``have_nodes`` when the
    first block has a node link, ``have_zones`` when ``memory0/valid_zones``
    exists (both are lsmem's own tests)."""

    block_size: int
    blocks: List[SysfsBlock]
    have_nodes: bool
    have_zones: bool


def sysfs_memory(model: Model) -> SysfsMemory:
    """The memory block directories sysfs would list for ``model``'s kernel."""
    if model.hotplug is None:
        raise LsmemError("the model has no memory hotplug settings (zones, CONFIG_MEMORY_HOTREMOVE)")
    listed = _listed_blocks(model.blocks)
    nodes = _first_node_links(model)
    have_zones = kernels.has_valid_zones(model.hotplug.hotremove) and any(
        b.id == 0 for b in listed)
    removable = kernels.sysfs_removable(model.kernel.version, model.hotplug.hotremove)
    pfn_valid = _pfn_valid(model) if have_zones else None
    blocks = [SysfsBlock(b.id, b.state, removable, nodes.get(b.id, -1),
                         lsmem_zone_names(valid_zones(model, b, pfn_valid)) if have_zones else ())
              for b in listed]
    return SysfsMemory(model.kernel.memory_block_size, blocks,
                       have_nodes=bool(blocks) and blocks[0].node != -1, have_zones=have_zones)


def _listed_blocks(blocks: Sequence[MemoryBlock]) -> List[MemoryBlock]:
    # A block has a sysfs directory while it is a device on the memory bus.
    by_id: Dict[int, MemoryBlock] = {}
    for block in blocks:
        if block.in_bus:
            by_id.setdefault(block.id, block)
    return [by_id[i] for i in sorted(by_id)]


def _first_node_links(model: Model) -> Dict[int, int]:
    """block -> the node its ``memoryM/nodeN`` link names. lsmem takes the
    first ``node*`` entry readdir() gives, in kernfs hash order; a block
    linked to two nodes (it spans both) gets the lower node here."""
    nodes: Dict[int, int] = {}
    for link in model.links:
        if link.direction == "block-to-node":
            nodes[link.block] = min(link.node, nodes.get(link.block, link.node))
    return nodes


def _pfn_valid(model: Model) -> Optional[RangeSet]:
    """The pfns the kernel's pfn_valid() accepts, for kernels whose online
    blocks' zone is found by walking them (before v5.18); else None."""
    if kernels.block_keeps_zone(model.kernel.version):
        return None
    pfn_valid = checks.pfn_sets(model).pfn_valid
    if pfn_valid is None:
        raise LsmemError("valid_zones: this kernel's pfn_valid() needs memblock, "
                         "which is unavailable in the target")
    return pfn_valid


def valid_zones(model: Model, block: MemoryBlock, pfn_valid: Optional[RangeSet] = None) -> str:
    """``memoryN/valid_zones`` without its newline (valid_zones_show()).

    Online: the block's zone, "none" when it spans several (before v5.18
    ``pfn_valid`` must be given: the pfns whose zone counts). Otherwise: the
    zone ``online`` would pick, then the kernel and movable choices that
    differ from it (zone_for_pfn_range(), print_allowed_zone()).
    """
    start = block.start_section_nr << model.kernel.pfn_section_shift
    pages = model.kernel.pages_per_block
    if block.state == "online":
        if kernels.block_keeps_zone(model.kernel.version):
            return block.zone or "none"
        assert pfn_valid is not None
        zone = _single_zone(model.zones, pfn_valid.overlapping(start, start + pages))
        return zone.name if zone else "none"
    assert model.hotplug is not None
    if model.hotplug.online_policy == kernels.AUTO_MOVABLE_POLICY:
        raise LsmemError("valid_zones of offline blocks under memory_hotplug.online_policy="
                         "auto-movable depends on memory groups, which are not modelled")
    if block.nid is None:
        raise LsmemError(f"memory{block.id}: no node to choose its zones from")
    node_zones = [z for z in model.zones if z.nid == block.nid]
    default = _default_zone(node_zones, start, pages, model.hotplug.movable_node)
    allowed = (_default_kernel_zone(node_zones, start, pages), _named(node_zones, "Movable"))
    return " ".join([default.name] + [zone.name for zone in allowed if zone != default])


def _intersects(zone: Zone, start: int, pages: int) -> bool:
    """zone_intersects(): a non-empty zone spanning part of [start, start + pages)."""
    return zone.spanned_pages > 0 and start < zone.end_pfn and start + pages > zone.start_pfn


def _single_zone(zones: Sequence[Zone], valid: RangeSet) -> Optional[Zone]:
    """test_pages_in_a_zone() (before v5.18): the one zone of the block's
    pfn_valid() pages (pfn_valid_within(): arm64 had HOLES_IN_ZONE), None
    when they are in several or there are none. Taken from the zone spans,
    of every node (the pages' own zone bits are not read), as
    early_node_zone_for_memory_block() does since v5.18."""
    spanning = [z for z in zones if any(_intersects(z, start, end - start) for start, end in valid)]
    return spanning[0] if len(spanning) == 1 else None


def _named(node_zones: Sequence[Zone], name: str) -> Zone:
    for zone in node_zones:
        if zone.name == name:
            return zone
    raise LsmemError(f"no {name} zone in the node's zones")


def _default_kernel_zone(node_zones: Sequence[Zone], start: int, pages: int) -> Zone:
    """default_kernel_zone_for_pfn(): the first zone below ZONE_NORMAL that
    intersects the range, else ZONE_NORMAL."""
    normal = _named(node_zones, "Normal")
    for zone in sorted(node_zones, key=lambda z: z.index):
        if zone.index < normal.index and _intersects(zone, start, pages):
            return zone
    return normal


def _default_zone(node_zones: Sequence[Zone], start: int, pages: int, movable_node: bool) -> Zone:
    """default_zone_for_pfn(): the zone the range already belongs to when
    exactly one of the kernel zone and ZONE_MOVABLE spans it, else ZONE_MOVABLE
    with ``movable_node``, else the kernel zone."""
    kernel_zone = _default_kernel_zone(node_zones, start, pages)
    movable = _named(node_zones, "Movable")
    in_kernel, in_movable = _intersects(kernel_zone, start, pages), _intersects(movable, start, pages)
    if in_kernel != in_movable:
        return kernel_zone if in_kernel else movable
    return movable if movable_node else kernel_zone


# lsmem.c zone_names[], indexed by its enum zone_id: valid_zones words map
# to these, case-insensitively; any other word is "Unknown".
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Highmem", "Movable", "Device", "None", "Unknown")
MAX_NR_ZONES = len(ZONE_NAMES)


def lsmem_zone_names(text: str) -> Tuple[str, ...]:
    """The zones lsmem reads from a ``valid_zones`` text (at most MAX_NR_ZONES words).

    >>> lsmem_zone_names("Normal Movable"), lsmem_zone_names("none"), lsmem_zone_names("dma32 Foo")
    (('Normal', 'Movable'), ('None',), ('DMA32', 'Unknown'))
    """
    known = {name.lower(): name for name in ZONE_NAMES}
    return tuple(known.get(word.lower(), "Unknown") for word in text.split(" ") if word)[:MAX_NR_ZONES]


# ---------------------------------------------------------------- lsmem options

# lsmem.c coldescs[]: name, width hint, right-aligned, help.
COLUMNS = {
    "RANGE": (0, False, "start and end address of the memory range"),
    "SIZE": (5, True, "size of the memory range"),
    "STATE": (0, True, "online status of the memory range"),
    "REMOVABLE": (0, True, "memory is removable"),
    "BLOCK": (0, True, "memory block number or blocks range"),
    "NODE": (0, True, "numa node of memory"),
    "ZONES": (0, True, "valid zones for the memory range"),
}
DEFAULT_COLUMNS = ("RANGE", "SIZE", "STATE", "REMOVABLE", "BLOCK")
# ``columns[ARRAY_SIZE(coldescs) * 2]``: each column at most twice.
MAX_COLUMNS = len(COLUMNS) * 2
SPLIT_COLUMNS = ("STATE", "REMOVABLE", "NODE", "ZONES")


@dataclass(frozen=True)
class Options:
    """lsmem's settings after its option parsing (main() of lsmem.c)."""

    columns: Tuple[str, ...] = DEFAULT_COLUMNS
    split: Tuple[str, ...] = ("STATE", "REMOVABLE")
    list_all: bool = False
    bytes: bool = False
    noheadings: bool = False
    format: str = "human"  # or "raw", "pairs", "json"
    want_table: bool = True
    want_summary: bool = True


# (flags, argparse keywords) of lsmem's options: the drgn-hotplug lsmem
# sub-command, %memhp lsmem and gdb's memhp lsmem all take these (-J's long
# form is their own --json).
ARGUMENTS: Tuple[Tuple[Tuple[str, ...], Dict], ...] = (
    # SUPPRESS: a sub-command's default would undo drgn-hotplug's own --json.
    (("-J",), {"dest": "json", "action": "store_true", "default": argparse.SUPPRESS,
               "help": "use JSON output format"}),
    (("-P", "--pairs"), {"action": "store_true", "help": 'use key="value" output format'}),
    (("-a", "--all"), {"action": "store_true", "dest": "list_all",
                       "help": "list each individual memory block"}),
    (("-b", "--bytes"), {"action": "store_true",
                         "help": "print SIZE in bytes rather than in human readable format"}),
    (("-n", "--noheadings"), {"action": "store_true", "help": "don't print headings"}),
    (("-o", "--output"), {"metavar": "LIST", "help": "output columns (+LIST adds to the default)"}),
    (("--output-all",), {"action": "store_true", "help": "output all columns"}),
    (("-r", "--raw"), {"action": "store_true", "help": "use raw output format"}),
    (("-S", "--split"), {"metavar": "LIST", "help": "split ranges by specified columns"}),
    (("--summary",), {"nargs": "?", "const": "only", "metavar": "WHEN",
                      "choices": ("never", "always", "only"),
                      "help": "print summary information (never, always or only)"}),
)

COLUMNS_HELP = "columns: " + ", ".join(COLUMNS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """lsmem's options on ``parser`` (which has ``--json`` already, or not)."""
    for flags, keywords in ARGUMENTS:
        parser.add_argument(*flags, **keywords)


def parser(prog: str = "lsmem") -> argparse.ArgumentParser:
    """A parser of lsmem's options alone, ``--json`` included."""
    result = argparse.ArgumentParser(prog=prog, description="List the ranges of available "
                                     "memory with their online status.", epilog=COLUMNS_HELP)
    add_arguments(result)
    result.add_argument("--json", action="store_true", help="use JSON output format")
    return result


def parse_options(argv: Sequence[str]) -> Options:
    """Options from lsmem's command-line words.

    >>> parse_options(["-o", "+NODE", "-b"]).columns
    ('RANGE', 'SIZE', 'STATE', 'REMOVABLE', 'BLOCK', 'NODE')
    """
    return options_from(parser().parse_args(list(argv)))


def options_from(args: argparse.Namespace) -> Options:
    """Options from parsed arguments, as lsmem.c's main() settles them."""
    json = getattr(args, "json", False)
    if sum(map(bool, (json, args.pairs, args.raw))) > 1:
        raise LsmemError("mutually exclusive arguments: --json --pairs --raw")
    if args.split is not None and args.list_all:
        raise LsmemError("mutually exclusive arguments: --all --split")
    fmt = "json" if json else "pairs" if args.pairs else "raw" if args.raw else "human"
    want_table = args.summary != "only"
    # -J, -P and -r turn the summary off; --summary=always turns it back on.
    want_summary = args.summary == "always" or (fmt == "human" and args.summary != "never")
    if not (want_table or want_summary):
        raise LsmemError("options --{raw,json,pairs} and --summary=only are mutually exclusive")
    columns = tuple(COLUMNS) if args.output_all else DEFAULT_COLUMNS
    if args.output:
        listed = column_names(args.output.removeprefix("+"))
        columns = columns + listed if args.output.startswith("+") else listed
    if len(columns) > MAX_COLUMNS:
        raise LsmemError(f"too many columns specified, the limit is {MAX_COLUMNS - 1} columns")
    split = columns if args.split is None else (
        () if args.split.lower() == "none" else column_names(args.split))
    return Options(columns=columns, split=tuple(c for c in SPLIT_COLUMNS if c in split),
                   list_all=args.list_all, bytes=args.bytes, noheadings=args.noheadings,
                   format=fmt, want_table=want_table, want_summary=want_summary)


def column_names(text: str) -> Tuple[str, ...]:
    """Column names of a comma list, case-insensitive (string_to_idarray()).

    >>> column_names("range,Size")
    ('RANGE', 'SIZE')
    """
    names = []
    for word in text.split(","):
        if word.upper() not in COLUMNS:
            raise LsmemError(f"unknown column: {word}")
        names.append(word.upper())
    return tuple(names)


# ---------------------------------------------------------------- lsmem's output

@dataclass(frozen=True)
class Range:
    """Adjacent blocks lsmem prints as one line (``count`` blocks from ``first``)."""

    first: SysfsBlock
    count: int


def merged(memory: SysfsMemory, options: Options) -> List[Range]:
    """The lines of lsmem's table: read_info() and is_mergeable()."""
    ranges: List[Range] = []
    for block in memory.blocks:
        if ranges and _mergeable(ranges[-1], block, memory, options):
            ranges[-1] = Range(ranges[-1].first, ranges[-1].count + 1)
        else:
            ranges.append(Range(block, 1))
    return ranges


def _mergeable(current: Range, block: SysfsBlock, memory: SysfsMemory, options: Options) -> bool:
    first = current.first
    if options.list_all or first.index + current.count != block.index:
        return False
    if "STATE" in options.split and _state(first) != _state(block):
        return False
    if "REMOVABLE" in options.split and first.removable != block.removable:
        return False
    if "NODE" in options.split and memory.have_nodes and first.node != block.node:
        return False
    if "ZONES" in options.split and memory.have_zones:
        return "Unknown" not in first.zones and first.zones == block.zones
    return True


def _state(block: SysfsBlock) -> str:
    """lsmem's STATE: the three states it knows, "?" for others (sysfs's ERROR-UNKNOWN-n)."""
    return {"online": "online", "offline": "offline", "going-offline": "on->off"}.get(block.state, "?")


def human_size(nbytes: int) -> str:
    """size_to_human_string(SIZE_SUFFIX_1LETTER, n) of util-linux's lib/strutils.c.

    >>> [human_size(n) for n in (0, 1 << 27, 896 << 20, 3 << 29, 1 << 30, 1000, (1 << 30) - 1)]
    ['0B', '128M', '896M', '1.5G', '1G', '1000B', '1024M']
    """
    exp = next((shift - 10 for shift in range(10, 70, 10) if nbytes < 1 << shift), 60)
    letter = "BKMGTPE"[exp // 10]
    dec, frac = (nbytes >> exp, nbytes & ((1 << exp) - 1)) if exp else (nbytes, 0)
    if frac:
        if frac >= (2**64 - 1) // 1000:
            frac = ((frac // 1024) * 1000) // (1 << (exp - 10))
        else:
            frac = (frac * 1000) // (1 << exp)
        frac = ((frac + 50) // 100) * 10
        if frac == 100:
            dec, frac = dec + 1, 0
    if not frac:
        return f"{dec}{letter}"
    digits = f"{dec}.{frac:02d}"
    return (digits[:-1] if digits.endswith("0") else digits) + letter


def cell(column: str, line: Range, memory: SysfsMemory, options: Options) -> str:
    """One cell as add_scols_line() fills it ("" where lsmem leaves it NULL)."""
    block = line.first
    start, size = block.index * memory.block_size, line.count * memory.block_size
    if column == "RANGE":
        return f"0x{start:016x}-0x{start + size - 1:016x}"
    if column == "SIZE":
        return str(size) if options.bytes else human_size(size)
    if column == "STATE":
        return _state(block)
    if column == "REMOVABLE":
        if block.state != "online":
            return ""
        return "yes" if block.removable else "no"
    if column == "BLOCK":
        return str(block.index) if line.count == 1 else f"{block.index}-{block.index + line.count - 1}"
    if column == "NODE":
        return str(block.node) if memory.have_nodes else ""
    return "/".join(block.zones) if memory.have_zones else ""


def summary(memory: SysfsMemory, options: Options) -> str:
    """print_summary(): block size and the online and offline totals."""
    online = sum(memory.block_size for b in memory.blocks if b.state == "online")
    offline = len(memory.blocks) * memory.block_size - online
    rows = (("Memory block size:", memory.block_size), ("Total online memory:", online),
            ("Total offline memory:", offline))
    if options.bytes:
        return "".join(f"{label:<23} {value:>15}\n" for label, value in rows)
    return "".join(f"{label:<23} {human_size(value):>5}\n" for label, value in rows)


def render(memory: SysfsMemory, options: Options) -> str:
    """Everything lsmem prints (stdout), newlines included."""
    if "REMOVABLE" in options.columns + options.split and any(
            b.removable is None for b in memory.blocks):
        raise LsmemError("REMOVABLE: before v5.7 the kernel computed it from each page's state, "
                         "which is not modelled (leave REMOVABLE out of -o and --split)")
    if not options.want_table:
        return summary(memory, options)
    lines = merged(memory, options)
    rows = [[cell(c, line, memory, options) for c in options.columns] for line in lines]
    text = scols_table(options.columns, rows, options)
    if options.want_summary:
        text += "\n" + summary(memory, options)
    return text


def render_model(model: Model, options: Options) -> str:
    """render() of the sysfs view of ``model``."""
    return render(sysfs_memory(model), options)


# ---------------------------------------------------------------- libsmartcols 2.38.1

def scols_table(headers: Sequence[str], rows: List[List[str]], options: Options) -> str:
    """scols_print_table() of lsmem's table ("" when it has no line, except JSON)."""
    if options.format == "json":
        return _json_table(headers, rows, options)
    if not rows:
        return ""
    if options.format == "pairs":
        lines = [" ".join(f"{h}={_quoted(v)}" for h, v in zip(headers, row)) for row in rows]
    elif options.format == "raw":
        lines = [" ".join(map(_nonblank, row)) for row in [list(headers)] * (not options.noheadings) + rows]
    else:
        lines = _human_lines(headers, rows, options.noheadings)
    return "\n".join(lines) + "\n"


def _human_lines(headers: Sequence[str], rows: List[List[str]], noheadings: bool) -> List[str]:
    widths = [_column_width(h, [row[i] for row in rows]) for i, h in enumerate(headers)]
    return [_human_line(list(headers) if header else row, headers, widths)
            for header, row in [(True, [])] * (not noheadings) + [(False, row) for row in rows]]


def _column_width(header: str, values: Sequence[str]) -> int:
    """count_column_width(): the widest value, at least the header, else the
    width hint when both are narrower than it."""
    hint = COLUMNS[header][0]
    width = max((len(v) for v in values), default=0)
    if width < len(header):
        return len(header)
    if hint >= 1 and width < hint and len(header) < hint:
        return hint
    return width


def _human_line(values: Sequence[str], headers: Sequence[str], widths: Sequence[int]) -> str:
    """print_data() for each cell: right-aligned columns padded on the left,
    others on the right, the last column not padded on the right, one space
    between columns."""
    out = []
    last = len(values) - 1
    for i, (value, header, width) in enumerate(zip(values, headers, widths)):
        right = COLUMNS[header][1]
        if right and value:
            out.append(value.rjust(width))
        elif i == last:
            out.append(value)
        else:
            out.append(value.ljust(width))
        if i != last:
            out.append(" ")
    return "".join(out)


def _json_table(headers: Sequence[str], rows: List[List[str]], options: Options) -> str:
    """The JSON of lib/jsonwrt.c: 3-space indents, objects joined by "},{",
    lower-case names; SIZE with -b and NODE are numbers, REMOVABLE a boolean."""
    if not rows:
        return '{\n   "memory": [\n\n   ]\n}\n'
    objects = []
    for row in rows:
        members = [f'         "{h.lower()}": {_json_value(h, v, options)}' for h, v in zip(headers, row)]
        objects.append("{\n" + ",\n".join(members) + "\n      }")
    return '{\n   "memory": [\n      ' + ",".join(objects) + "\n   ]\n}\n"


def _json_value(header: str, value: str, options: Options) -> str:
    if header == "REMOVABLE":
        return "false" if not value or value[0] in "0Nn" else "true"
    if header == "NODE" or (header == "SIZE" and options.bytes):
        return value or "null"
    return _json_string(value) if value else "null"


def _json_string(value: str) -> str:
    """fputs_quoted_json(): quote and backslash escaped, control characters as \\u00XX."""
    short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    return '"' + "".join("\\" + ch if ch in '"\\' else ch if ord(ch) >= 0x20
                         else short.get(ch, f"\\u00{ord(ch):02x}") for ch in value) + '"'


def _quoted(value: str) -> str:
    """fputs_quoted() of -P: ``"`` ``\\`` backquote ``$`` and non-printables as \\xNN."""
    return '"' + "".join(f"\\x{ord(ch):02x}" if ch in '"\\`$' or not ch.isprintable() else ch
                         for ch in value) + '"'


def _nonblank(value: str) -> str:
    """fputs_nonblank() of -r: blanks, backslash and non-printables as \\xNN."""
    return "".join(f"\\x{ord(ch):02x}" if ch in " \t\\" or not ch.isprintable() else ch
                   for ch in value)
