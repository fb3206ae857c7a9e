"""Ground truth: what the guest kernel says about its memory, captured just
before a dump (the ``truth.json`` schema of docs/CONTRACTS.md).

Everything comes from the guest's own sysfs, procfs and debugfs in one
command, plus the boot log on the serial console (``memblock=debug`` dumps
and, on arm64, the ``efi=debug`` memory map).

Example:
    >>> t = capture(live_guest)                                # doctest: +SKIP
    >>> [(l["node"], l["block"]) for l in t["node_links"] if not l["target_exists"]]   # doctest: +SKIP
    [(1, 32), (1, 33)]
"""

from __future__ import annotations

import re
import struct

# One round trip: sections separated by "== name" lines. Node directories of
# 6.12 also hold a memory_failure directory, hence the symlink test.
SCRIPT = r"""
echo "== release"; uname -r
echo "== page_size"; awk '/KernelPageSize/ {print $2; exit}' /proc/self/smaps
echo "== block_size"; cat /sys/devices/system/memory/block_size_bytes
echo "== links"
for l in /sys/devices/system/node/node*/memory*; do
  [ -L "$l" ] || continue
  if [ -e "$l" ]; then e=1; else e=0; fi
  echo "${l#/sys/devices/system/node/} $(readlink $l) $e"
done
echo "== blocks"
for b in /sys/devices/system/memory/memory*; do
  n=-; for x in $b/node*; do [ -e "$x" ] && n=${x##*/node}; done
  z=$(cat $b/valid_zones 2>/dev/null | tr ' ' ,)
  echo "${b##*/memory} $(cat $b/phys_index) $(cat $b/state) $n ${z:--}"
done
echo "== online"; cat /sys/devices/system/node/online
echo "== nodes"
for n in /sys/devices/system/node/node*; do
  echo "${n##*/node} $(awk '/MemTotal/ {print $4}' $n/meminfo)"
done
echo "== iomem"; cat /proc/iomem
for t in memory reserved; do
  [ -e /sys/kernel/debug/memblock/$t ] && { echo "== memblock-$t"; cat /sys/kernel/debug/memblock/$t; }
done
true
"""

# /proc/kpageflags bit KPF_NOPAGE (include/uapi/linux/kernel-page-flags.h).
KPF_NOPAGE = 1 << 20


def capture(g) -> dict:
    """The truth.json document of a LiveGuest (see vmcores.scenarios.LiveGuest)."""
    sections = split_sections(g.run(SCRIPT))
    console = g.console_text
    arm64 = g.spec.arch == "arm64"
    truth = {
        "arch": "aarch64" if arm64 else "x86_64",
        "kernel": g.kernel_meta["series"],
        "scenario": g.scenario,
        "release": sections["release"].strip(),
        "kaslr_offset": g.kaslr_offset,
        "block_size_bytes": int(sections["block_size"], 16),
        "page_size": int(sections["page_size"]) * 1024,
        "node_links": parse_links(sections["links"]),
        "memory_blocks": parse_blocks(sections["blocks"]),
        "nodes": parse_nodes(sections["nodes"], sections["online"]),
        "iomem": parse_iomem(sections["iomem"]),
        "memblock_debugfs": parse_memblock_debugfs(sections),
        "memblock_boot": parse_memblock_boot(console),
        "efi_memmap": efi_memmap(console) if arm64 else None,
        "no_page_ranges": no_page_ranges(g) if arm64 else None,
        "events": list(g.events),
    }
    truth["dangling_links"] = [{"node": l["node"], "block": l["block"]}
                               for l in truth["node_links"] if not l["target_exists"]]
    return truth


def split_sections(out: str) -> dict[str, str]:
    """Split the script output at its ``== name`` lines.

    >>> split_sections("== a\\n1\\n== b\\n2\\n3\\n")
    {'a': '1\\n', 'b': '2\\n3\\n'}
    """
    sections: dict[str, str] = {}
    name = None
    for line in out.splitlines(keepends=True):
        if line.startswith("== "):
            name = line[3:].strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line
    return sections


def parse_links(text: str) -> list[dict]:
    """``node1/memory32 ../../memory/memory32 0`` lines -> node_links entries.

    >>> parse_links("node1/memory32 ../../memory/memory32 0\\nnode0/memory_failure x 1\\n")
    [{'node': 1, 'block': 32, 'target': '../../memory/memory32', 'target_exists': False}]
    """
    links = []
    for line in text.splitlines():
        path, target, exists = line.split()
        match = re.fullmatch(r"node(\d+)/memory(\d+)", path)
        if match:
            links.append({"node": int(match[1]), "block": int(match[2]), "target": target,
                          "target_exists": exists == "1"})
    return sorted(links, key=lambda l: (l["node"], l["block"]))


def parse_blocks(text: str) -> list[dict]:
    """``32 00000020 online 1 Movable`` lines (phys_index is hex in sysfs) -> memory_blocks entries.

    >>> parse_blocks("33 00000021 offline - Normal,Movable\\n")
    [{'block': 33, 'phys_index': 33, 'state': 'offline', 'node': None, 'valid_zones': 'Normal Movable'}]
    """
    blocks = []
    for line in text.splitlines():
        block, phys_index, state, node, zones = line.split()
        blocks.append({"block": int(block), "phys_index": int(phys_index, 16), "state": state,
                       "node": None if node == "-" else int(node),
                       "valid_zones": None if zones == "-" else zones.replace(",", " ")})
    return sorted(blocks, key=lambda b: b["block"])


def parse_node_list(text: str) -> set[int]:
    """A sysfs node list such as ``0-1,3``.

    >>> sorted(parse_node_list("0-1,3\\n"))
    [0, 1, 3]
    """
    nodes: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            nodes.update(range(int(lo), int(hi or lo) + 1))
    return nodes


def parse_nodes(text: str, online: str) -> list[dict]:
    """``0 498380`` lines (node, MemTotal kB) -> nodes entries."""
    on = parse_node_list(online)
    nodes = []
    for line in text.splitlines():
        node, total = line.split()
        nodes.append({"node": int(node), "online": int(node) in on, "meminfo_total_kb": int(total)})
    return sorted(nodes, key=lambda n: n["node"])


def parse_iomem(text: str) -> list[dict]:
    """/proc/iomem -> entries with depth (two spaces of indent per level), end inclusive.

    >>> parse_iomem("00001000-0009ffff : System RAM\\n  000a0000-000fffff : PCI Bus 0000:00\\n")
    [{'start': 4096, 'end': 655359, 'name': 'System RAM', 'depth': 0}, {'start': 655360, 'end': 1048575, 'name': 'PCI Bus 0000:00', 'depth': 1}]
    """
    entries = []
    for line in text.splitlines():
        match = re.match(r"^( *)([0-9a-f]+)-([0-9a-f]+) : (.*)$", line)
        if match:
            entries.append({"start": int(match[2], 16), "end": int(match[3], 16), "name": match[4],
                            "depth": len(match[1]) // 2})
    return entries


def parse_memblock_debugfs(sections: dict[str, str]) -> dict | None:
    """``/sys/kernel/debug/memblock/{memory,reserved}`` (``   0: 0x..0x``, end inclusive), or None
    where the kernel has no such files (x86: no ARCH_KEEP_MEMBLOCK).

    >>> parse_memblock_debugfs({"memblock-memory": "   0: 0x0000000040000000..0x00000000bfffffff\\n"})
    {'memory': [{'base': 1073741824, 'size': 2147483648}], 'reserved': []}
    """
    if "memblock-memory" not in sections:
        return None
    result = {}
    for kind in ("memory", "reserved"):
        regions = []
        for match in re.finditer(r"^\s*\d+: (0x[0-9a-f]+)\.\.(0x[0-9a-f]+)", sections.get(f"memblock-{kind}", ""), re.M):
            base, last = int(match[1], 16), int(match[2], 16)
            regions.append({"base": base, "size": last - base + 1})
        result[kind] = regions
    return result


MEMBLOCK_ENTRY = re.compile(
    r"\b(memory|reserved)\[0x[0-9a-f]+\]\s+\[(0x[0-9a-f]+)-(0x[0-9a-f]+)\], (0x[0-9a-f]+) bytes"
    r"(?: on node (\d+))? flags: (0x[0-9a-f]+)")
MEMBLOCK_HEADER = re.compile(r"\b(memory|reserved|physmem)(\.cnt\s+=| size =)")


def parse_memblock_boot(console: str) -> dict | None:
    """The last ``MEMBLOCK configuration:`` dump of a ``memblock=debug`` boot log (memblock
    debugfs prints no flags, so flags come from here), or None if the log has none.

    >>> log = ("[    0.0] MEMBLOCK configuration:\\n[    0.0]  memory.cnt  = 0x1\\n"
    ...        "[    0.0]  memory[0x0]\\t[0x0000000004000000-0x0000000007ffffff], 0x0000000004000000 bytes on node 0 flags: 0x4\\n"
    ...        "[    0.0] other\\n")
    >>> parse_memblock_boot(log)
    {'memory': [{'base': 67108864, 'size': 67108864, 'flags': 4, 'nid': 0}], 'reserved': []}
    """
    start = console.rfind("MEMBLOCK configuration:")
    if start < 0:
        return None
    result: dict[str, list] = {"memory": [], "reserved": []}
    for line in console[start:].splitlines()[1:]:
        entry = MEMBLOCK_ENTRY.search(line)
        if entry:
            if entry[1] in result:
                result[entry[1]].append({"base": int(entry[2], 16), "size": int(entry[4], 16),
                                         "flags": int(entry[6], 16),
                                         "nid": None if entry[5] is None else int(entry[5])})
        elif not MEMBLOCK_HEADER.search(line) and "physmem[" not in line:
            break
    return result


def efi_memmap(console: str) -> list[dict]:
    from . import aarch64

    return aarch64.parse_efi_memmap(console)


def no_page_ranges(g) -> list[list[int]]:
    """pfn ranges (end exclusive) that /proc/kpageflags reports KPF_NOPAGE, i.e. without struct page."""
    import base64

    data = base64.b64decode(g.run("base64 /proc/kpageflags", timeout=300))
    return nopage_ranges_of(data)


def nopage_ranges_of(kpageflags: bytes) -> list[list[int]]:
    """Ranges of consecutive pfns with KPF_NOPAGE in a /proc/kpageflags image.

    >>> nopage_ranges_of(struct.pack("<4Q", 0, 1 << 20, 1 << 20, 4))
    [[1, 3]]
    """
    ranges: list[list[int]] = []
    for pfn, (flags,) in enumerate(struct.iter_unpack("<Q", kpageflags)):
        if flags & KPF_NOPAGE:
            if ranges and ranges[-1][1] == pfn:
                ranges[-1][1] = pfn + 1
            else:
                ranges.append([pfn, pfn + 1])
    return ranges
