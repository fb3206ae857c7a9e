"""Reports: the JSON document, human tables (tabulate) and the exit status.

Kernel strings (kernfs names, release) may carry terminal control
characters; every string that reaches a table goes through ``escape()``, and
JSON output escapes everything outside printable ASCII.

>>> human_size(0x8000000), pfn_range(0x4000, 0x8000)
('128 MiB', '0x4000-0x7fff')
>>> exit_status([])
0
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from tabulate import tabulate

from . import checks, kernels
from .model import SEVERITIES, Finding, KernelFacts, MemblockType, Model, SectionTable

TOOL = "drgn-hotplug"
SCHEMA_VERSION = 1

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_UNANALYSABLE = 2

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

# Crash's `kmem -n` state letters, so the sections table reads the same.
_SECTION_STATE_LETTERS = (("MARKED_PRESENT", "P"), ("HAS_MEM_MAP", "M"), ("IS_ONLINE", "O"),
                          ("IS_EARLY", "E"), ("TAINT_ZONE_DEVICE", "D"))


# ------------------------------------------------------------------ text helpers

def escape(text: Any) -> str:
    """Printable ASCII safe for any terminal: control characters (C0, DEL,
    C1), backslashes and non-ASCII become backslash escapes, so a kernel
    string can neither drive the terminal nor break column widths.

    >>> escape("memory32\\x1b[2J"), escape("a\\\\b"), escape(None), escape(7)
    ('memory32\\\\x1b[2J', 'a\\\\\\\\b', '', '7')
    >>> escape("n\\u00e9\\udcff")
    'n\\\\u00e9\\\\xff'
    """
    if text is None:
        return ""
    if type(text) is int:
        return str(text)
    text = str(text)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0x20 <= code < 0x7f:
        return ch
    if 0xdc80 <= code < 0xdd00:
        # an undecodable kernel byte, kept by errors="surrogateescape"
        return f"\\x{code & 0xff:02x}"
    if code < 0xa0:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def human_size(nbytes: int) -> str:
    """Binary-prefixed size, exact when it is a whole number of units.

    >>> human_size(4096), human_size(0x7fe0000), human_size(3 << 40), human_size(1536)
    ('4 KiB', '127.9 MiB', '3 TiB', '1.5 KiB')
    """
    value = float(nbytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    if value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def pfn_range(start: int, end: int) -> str:
    """Inclusive hex pfn range of a half-open [start, end)."""
    return f"{start:#x}-{end - 1:#x}"


def _hex(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:#x}"


# Above this many rows, tables are laid out by _plain_table(), which writes
# tabulate's "simple" format byte for byte: tabulate needs ~40 s for the
# 512 K sections of a 64 TiB machine, _plain_table() about a second.
TABULATE_MAX_ROWS = 2000


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[escape(cell) for cell in row] for row in rows]
    if len(cells) > TABULATE_MAX_ROWS:
        return _plain_table(cells, headers)
    return tabulate(cells, headers=list(headers), tablefmt="simple", disable_numparse=True)


def _plain_table(cells: List[List[str]], headers: Sequence[str]) -> str:
    """tabulate(..., tablefmt="simple", disable_numparse=True) for ASCII
    cells: columns as wide as their widest cell or header plus 2, two
    spaces apart, left-aligned, trailing blanks stripped."""
    widths = [len(h) + 2 for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


# ------------------------------------------------------------------ exit status, summary

def summary(findings: Iterable[Finding]) -> Dict[str, int]:
    """Finding counts per severity (every severity present, zero or not)."""
    counts = {severity: 0 for severity in SEVERITIES}
    for finding in findings:
        counts[finding.severity] += 1
    return counts


def exit_status(findings: Iterable[Finding]) -> int:
    """0 without warnings or errors, 1 with at least one (an object that
    could not be read is a warning: a partial analysis is not clean; 2,
    could not analyse, is the front end's to return).

    >>> exit_status([Finding("not-linear-mapped", "info", "NOMAP")])
    0
    >>> exit_status([Finding("orphaned-link", "error", "gone", node=1, block=32)])
    1
    """
    counts = summary(findings)
    return EXIT_FINDINGS if counts["error"] or counts["warning"] else EXIT_CLEAN


# ------------------------------------------------------------------ JSON

def kernel_dict(kernel: KernelFacts) -> Dict[str, Any]:
    """Every KernelFacts field (new optional ones included, tuples become
    JSON arrays), plus the name of the pfn_valid() model chosen for it."""
    out = dataclasses.asdict(kernel)
    out["pfn_valid_rule"] = kernels.rule_for(kernel).name
    return out


def document(model: Model, findings: Optional[List[Finding]] = None, command: str = "check",
             version: str = "", extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``--json`` document of docs/CONTRACTS.md.

    ``findings`` defaults to ``checks.run_checks(model)``; ``extra`` adds
    command-specific keys (e.g. "sections", "explain"). ``unreadable``
    lists what ``findings`` report as kind ``unreadable``, the fields
    the cross-check found misread included.
    """
    if findings is None:
        model, findings = checks.checked(model)
    model = checks.prepare(model)
    doc: Dict[str, Any] = {
        "tool": TOOL, "version": version, "schema": SCHEMA_VERSION, "command": command,
        "kernel": kernel_dict(model.kernel),
        "findings": [finding_dict(f) for f in findings],
        "skipped": checks.skipped_checks(model),
        "unreadable": [{"what": u.what, "reason": u.reason, "address": u.address}
                       for u in model.unreadable],
        "summary": summary(findings),
    }
    doc.update(extra or {})
    return doc


def finding_dict(finding: Finding) -> Dict[str, Any]:
    """A finding as its JSON object: unset fields left out, ``facts`` kept
    as built (checks only put JSON types in facts). Shallow, unlike
    ``Finding.to_dict()``, which deep-copies: a 64 TiB machine can have
    tens of thousands of findings.

    >>> finding_dict(Finding("orphaned-link", "error", "gone", node=1, block=32))
    {'kind': 'orphaned-link', 'severity': 'error', 'reason': 'gone', 'node': 1, 'block': 32, 'facts': {}}
    """
    out: Dict[str, Any] = {"kind": finding.kind, "severity": finding.severity,
                           "reason": finding.reason}
    for key in ("start_pfn", "end_pfn", "node", "block"):
        value = getattr(finding, key)
        if value is not None:
            out[key] = value
    out["facts"] = finding.facts
    return out


def package_version() -> str:
    """drgn-hotplug's version for the JSON documents of every front end:
    the installed package's, else the checkout's pyproject.toml (gdb's
    Python usually cannot see a package installed for another Python), ""
    when neither says.

    >>> package_version().count(".")
    2
    """
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("drgn-hotplug")
    except PackageNotFoundError:
        pass
    try:
        import tomllib  # Python 3.11+
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (ImportError, OSError, KeyError, ValueError):
        return ""


# Levels of the document laid out one member per line; deeper values are
# written on one line by json's C encoder (an indented dump goes through its
# pure-Python encoder: 8 s for the 512K sections of a 64 TB machine).
JSON_LINE_LEVELS = 2


def json_text(doc: Dict[str, Any]) -> str:
    """JSON with every non-printable-ASCII character escaped (json.dumps
    leaves DEL raw even with ensure_ascii), a member per line down to
    JSON_LINE_LEVELS: one line per finding, section, block or link.

    >>> print(json_text({"name": "a\\x7fb\\x1b", "blocks": [{"id": 0}, {"id": 1}], "none": []}))
    {
      "name": "a\\u007fb\\u001b",
      "blocks": [
        {"id": 0},
        {"id": 1}
      ],
      "none": []
    }
    """
    return "".join(_json_lines(doc, 0)).replace("\x7f", "\\u007f")


def _json_lines(value: Any, level: int) -> Iterator[str]:
    if level >= JSON_LINE_LEVELS or not isinstance(value, (dict, list)) or not value:
        yield json.dumps(value, ensure_ascii=True, default=_json_default)
        return
    inner = "\n" + "  " * (level + 1)
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    yield "{" if isinstance(value, dict) else "["
    for i, (key, item) in enumerate(items):
        yield ("," if i else "") + inner
        if key is not None:
            yield json.dumps(str(key), ensure_ascii=True) + ": "
        yield from _json_lines(item, level + 1)
    yield "\n" + "  " * level + ("}" if isinstance(value, dict) else "]")


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------ tables

def render_kernel(kernel: KernelFacts) -> str:
    """One header line naming the kernel and the pfn_valid() model used."""
    version = ".".join(str(v) for v in kernel.version)
    return (f"kernel {escape(kernel.release)} ({escape(kernel.arch)}, {version}), "
            f"sections of {human_size(1 << kernel.section_size_bits)}, "
            f"memory blocks of {human_size(kernel.memory_block_size)}, "
            f"pfn_valid() model: {kernels.rule_for(kernel).name}"
            + (f", dump format: {escape(kernel.dump_format)}" if kernel.dump_format else ""))


def finding_location(finding: Finding) -> str:
    """Where a finding is: a hex pfn range or nodeN/memoryM.

    >>> finding_location(Finding("orphaned-link", "error", "gone", node=1, block=32))
    'node1/memory32'
    >>> finding_location(Finding("unreadable", "warning", "struct page of pfn 0x8000: Excluded",
    ...                          facts={"address": 0xffffea0000200000}))
    '0xffffea0000200000'
    """
    if finding.start_pfn is not None and finding.end_pfn is not None:
        return f"pfn {pfn_range(finding.start_pfn, finding.end_pfn)}"
    if finding.kind == checks.UNREADABLE:
        return _hex(finding.facts.get("address"))
    node = "node?" if finding.node is None or finding.node < 0 else f"node{finding.node}"
    return f"{node}/memory{finding.block}"


def finding_size(finding: Finding, page_shift: int) -> str:
    if finding.start_pfn is None or finding.end_pfn is None:
        return ""
    return human_size((finding.end_pfn - finding.start_pfn) << page_shift)


def render_findings(findings: Sequence[Finding], kernel: KernelFacts) -> str:
    """One line per finding: severity, kind, where, size, reason."""
    if not findings:
        return "no findings"
    shift = kernel.page_shift
    rows = [(f.severity, f.kind, finding_location(f), finding_size(f, shift), f.reason)
            for f in findings]
    return _table(rows, ("SEVERITY", "KIND", "WHERE", "SIZE", "REASON"))


def render_table(model: Model, findings: Optional[List[Finding]] = None) -> str:
    """The human ``check`` report: kernel line, findings (unreadable
    objects among them), skipped checks and the summary line, which says
    when the analysis is partial."""
    if findings is None:
        model, findings = checks.checked(model)
    model = checks.prepare(model)
    parts = [render_kernel(model.kernel), "", render_findings(findings, model.kernel)]
    skipped = checks.skipped_checks(model)
    if skipped:
        parts += ["", "skipped: " + "; ".join(
            f"{s['check']}: {escape(s['reason'])}" for s in skipped)]
    counts = summary(findings)
    totals = ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)
    if model.unreadable:
        totals += (f"; {len(model.unreadable)} kernel objects unreadable, "
                   "so findings about them may be missing")
    parts += ["", totals]
    return "\n".join(parts)


def section_state(flags: Iterable[str]) -> str:
    """Crash-style state letters: P present, M memmap, O online, E early,
    D ZONE_DEVICE.

    >>> section_state({"MARKED_PRESENT", "HAS_MEM_MAP", "IS_EARLY"})
    'PME'
    """
    flags = set(flags)
    return "".join(letter for name, letter in _SECTION_STATE_LETTERS if name in flags)


def subsection_text(kernel: KernelFacts, bitmap: Optional[int]) -> str:
    """A subsection map as "all N" (N subsections per section), "none" or
    its hex bits, e.g. "0xffffffff00000000" for arm64 6.1's section 0."""
    if bitmap is None or not kernel.subsection_shift:
        return "-"
    count = checks.subsections_per_section(kernel)
    if bitmap == (1 << count) - 1:
        return f"all {count}"
    return "none" if bitmap == 0 else f"{bitmap:#x}"


def render_sections(model: Model) -> str:
    """Present sections, like crash ``kmem -n`` plus the subsection map."""
    kernel = model.kernel
    rows = []
    for section in SectionTable.of(model.sections):
        start, end = checks.section_range(kernel, section.nr)
        submap = subsection_text(kernel, section.subsection_map)
        rows.append((section.nr, _hex(section.address), _hex(section.mem_map),
                     section_state(section.flags), pfn_range(start, end), submap))
    return _table(rows, ("NR", "SECTION", "CODED_MEM_MAP", "STATE", "PFNS", "SUBSECTIONS"))


def render_memblock(model: Model) -> str:
    """memblock.memory and memblock.reserved, or why they are unavailable."""
    return "\n\n".join(_render_memblock_type(model.kernel, t)
                       for t in (model.memblock_memory, model.memblock_reserved))


def _render_memblock_type(kernel: KernelFacts, mtype: MemblockType) -> str:
    title = f"memblock.{mtype.name} at {_hex(mtype.address)}: cnt {mtype.cnt}, max {mtype.max}"
    if not mtype.available:
        return f"{title}: {escape(mtype.reason or 'unavailable')}"
    shift = kernel.page_shift
    rows = [(i, f"{r.base:#x}-{r.end - 1:#x}", human_size(r.size),
             pfn_range(r.base >> shift, (r.end + (1 << shift) - 1) >> shift),
             _region_flags(r), "-" if r.nid is None else r.nid)
            for i, r in enumerate(mtype.regions)]
    return title + "\n" + _table(rows, ("#", "PHYS", "SIZE", "PFNS", "FLAGS", "NID"))


def _region_flags(region) -> str:
    if not region.flags:
        return "-"
    return ",".join(region.flag_names) or f"{region.flags:#x}"


def render_blocks(model: Model) -> str:
    """Memory blocks, like crash ``kmem -n``'s second table; with a
    HOTPLUGGED_BY column (flavour_text()) when a block was added by a
    driver (a memory group or a driver-managed iomem resource)."""
    kernel = model.kernel
    rows = []
    flavours = {block.id: checks.block_flavour(model, block.id) for block in model.blocks}
    with_flavour = any(flavours.values())
    memmaps = {block.id: checks.block_memmap(model, block.id) for block in model.blocks}
    with_memmap = any(memmaps.values())
    for block in sorted(model.blocks, key=lambda b: b.id):
        start, end = checks.block_range(kernel, block.id)
        where = "bus+xarray" if block.in_bus and block.in_xarray else (
            "bus" if block.in_bus else "xarray")
        row = (f"memory{block.id}", _hex(block.address), pfn_range(start, end),
               "-" if block.nid is None else block.nid, block.state,
               block.zone or "-", block.start_section_nr, where)
        rows.append(row + ((flavour_text(flavours[block.id], kernel),) if with_flavour else ())
                    + ((memmap_text(memmaps[block.id], kernel),) if with_memmap else ()))
    return _table(rows, ("NAME", "MEM_BLOCK", "PFNS", "NODE", "STATE", "ZONE",
                         "START_SECTION_NO", "FOUND_IN") + (("HOTPLUGGED_BY",) if with_flavour else ())
                  + (("MEMMAP",) if with_memmap else ()))


def memmap_text(memmap: Optional[Dict[str, Any]], kernel: KernelFacts) -> str:
    """One cell of checks.block_memmap(): where a self-hosting block keeps
    its memmap, and how many of those struct pages say so.

    >>> k = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
    ...                 True, True, False)
    >>> memmap_text({"nr_vmemmap_pages": 512, "pfns": [0x108000, 0x108200], "needed_pages": 512,
    ...              "self_hosted_pages": 512}, k)
    'in block: 512 pages (2 MiB) at pfn 0x108000-0x1081ff, 512 PG_vmemmap_self_hosted'
    """
    if not memmap:
        return "-"
    pages = memmap["nr_vmemmap_pages"]
    text = (f"in block: {pages} pages ({human_size(pages << kernel.page_shift)}) at pfn "
            f"{pfn_range(*memmap['pfns'])}")
    if memmap["needed_pages"] != pages:
        text += f" (its memmap needs {memmap['needed_pages']})"
    if "self_hosted_pages" in memmap:
        text += f", {memmap['self_hosted_pages']} PG_vmemmap_self_hosted"
    return text


def flavour_text(flavour: Optional[Dict[str, Any]], kernel: KernelFacts) -> str:
    """One cell of checks.block_flavour(): driver, group, plugged and
    unplugged (PageOffline) memory of an online block of a group.

    >>> k = KernelFacts("x86_64", "6.1", (6, 1, 0), 4096, 27, 46, 1 << 19, 21, 1 << 27, 1024,
    ...                 True, True, False)
    >>> flavour_text({"managed_by": "virtio_mem", "memory_group": {"kind": "dynamic", "nid": 1},
    ...               "plugged_pages": 18432, "page_offline_pages": 14336}, k)
    'virtio_mem (dynamic group, node1): 72 MiB plugged, 56 MiB unplugged (PageOffline)'
    >>> flavour_text({"managed_by": "kmem", "memory_group": {"kind": "static", "nid": 1},
    ...               "plugged_pages": 32768, "page_offline_pages": 0}, k)
    'kmem (static group, node1)'
    """
    if not flavour:
        return "-"
    group = flavour.get("memory_group")
    text = flavour["managed_by"] + (f" ({group['kind']} group, node{group['nid']})" if group else "")
    offline = flavour.get("page_offline_pages")
    if offline is None:
        return text
    if group and group["kind"] == "dynamic":
        # Only virtio-mem registers dynamic groups; its unplugged sub-blocks are PageOffline.
        return text + (f": {human_size(flavour['plugged_pages'] << kernel.page_shift)} plugged, "
                       f"{human_size(offline << kernel.page_shift)} unplugged (PageOffline)")
    return text + (f": {human_size(offline << kernel.page_shift)} PageOffline" if offline else "")


def render_links(model: Model) -> str:
    """Every node <-> memory block link with its target's liveness."""
    rows = []
    for link in sorted(model.links, key=lambda l: (l.direction, l.node, l.block)):
        state = "live" if link.target_live else "DEAD (" + ", ".join(
            link.target_dead_reasons) + ")"
        rows.append((checks.link_path(link), _hex(link.kn_address), link.target_name or "-",
                     _hex(link.target_address), state))
    return _table(rows, ("LINK", "KERNFS_NODE", "TARGET", "TARGET_NODE", "TARGET_STATE"))


def render_explain(explained: Dict[str, Any], prefix: str = "") -> str:
    """``explain`` output as indented ``key: value`` lines, addresses in hex."""
    lines: List[str] = []
    _explain_lines(explained, prefix, lines)
    return "\n".join(lines)


_HEX_KEYS = {"pfn", "phys", "address", "flags", "section_mem_map", "usage", "subsection_map", "base",
             "size", "kn", "target", "phys_start", "phys_end", "block_address",
             "start_pfn", "end_pfn", "block_start_pfn", "block_end_pfn"}


def _explain_lines(value: Any, indent: str, lines: List[str], key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{indent}{escape(k)}:")
                _explain_lines(v, indent + "  ", lines, k)
            else:
                lines.append(f"{indent}{escape(k)}: {_explain_scalar(k, v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                lines.append(f"{indent}-")
                _explain_lines(item, indent + "  ", lines, key)
            else:
                lines.append(f"{indent}- {_explain_scalar(key, item)}")


def _explain_scalar(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int) and key in _HEX_KEYS:
        return f"{value:#x}"
    if isinstance(value, (list, dict)):
        return "none"
    return escape(value)
