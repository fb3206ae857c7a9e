"""Throughput of ``drgn-hotplug scan`` over the bed's dumps: dumps per minute
with 1 and 2 worker processes (``--jobs``), the vmlinux found by build ID.

Every dump of every built cell of the matrix (cell.json ``dumps``: QEMU's
ELF, paging ELF and flattened kdump-zlib; makedumpfile's outputs on x86_64)
is scanned once per ``--jobs`` value; missing cells are not built. Per
format, the median seconds a worker took for one dump (a process: start,
open, debug info, read, check) tell where the time goes.

    python3 -m benchmarks.scan                 # jobs 1 and 2, every built cell
    python3 -m benchmarks.scan --jobs 2 --limit 5

Writes its section of benchmarks/RESULTS.md (between the scan markers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from vmcores.cells import Cell, bed_hash, cells_dir, matrix
from vmcores.packages import cache_root

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- scan: benchmarks/scan.py -->", "<!-- /scan -->"


def built_cells() -> List[Cell]:
    """The cells of the matrix already built for the current bed code."""
    cells = []
    for arch, kernel, scenario in matrix():
        found = sorted(cells_dir().glob(f"{arch}-{kernel}-{scenario}-*-{bed_hash(arch, scenario)}/cell.json"))
        if found:
            cells.append(Cell(found[-1].parent))
    return cells


def scan(cells: List[Cell], jobs: int) -> Dict[str, object]:
    """One scan of the cells' directories: wall time, its JSON lines, and
    the load average around it (the cores are shared)."""
    argv = [sys.executable, "-m", "drgn_hotplug.cli", "scan", "--jobs", str(jobs),
            "--debug-dir", str(cache_root() / "kernels"), *(str(c.dir) for c in cells)]
    load_before = os.getloadavg()[0]
    cpu_before = children_cpu()
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - start
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return {"jobs": jobs, "wall": wall, "cpu": children_cpu() - cpu_before, "lines": lines,
            "status": proc.returncode, "load": (load_before, os.getloadavg()[0])}


def children_cpu() -> float:
    """User + system seconds of every finished child and grandchild (the scan
    and its workers, which it waits for): the cost without the other work
    sharing the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_format(lines: List[dict]) -> Dict[str, float]:
    """Median worker seconds per dump, by format.

    >>> per_format([{"format": "elf", "seconds": 1.0}, {"format": "elf", "seconds": 3.0}])
    {'elf': 2.0}
    """
    by: Dict[str, List[float]] = defaultdict(list)
    for line in lines:
        by[line.get("format") or "unreadable"].append(line["seconds"])
    return {fmt: statistics.median(s) for fmt, s in sorted(by.items())}


def markdown(runs: List[Dict[str, object]], cells: List[Cell]) -> str:
    """The RESULTS.md section."""
    arches = sorted({c.meta["arch"] for c in cells})
    rows = ["| --jobs | dumps | wall (s) | dumps per minute | CPU s per dump | dumps per minute, 2 idle cores (from CPU) "
            "| verdicts | load average before / after |",
            "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        lines = run["lines"]
        verdicts = defaultdict(int)
        for line in lines:
            verdicts[line["verdict"]] += 1
        per_dump = run["cpu"] / len(lines)
        rows.append(f"| {run['jobs']} | {len(lines)} | {run['wall']:.0f} | {60 * len(lines) / run['wall']:.0f} | "
                    f"{per_dump:.2f} | {min(run['jobs'], 2) * 60 / per_dump:.0f} | "
                    + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
                    + f" | {run['load'][0]:.1f} / {run['load'][1]:.1f} |")
    formats = per_format(runs[0]["lines"])
    fmt_rows = ["| format | dumps | median seconds per dump (--jobs %d) |" % runs[0]["jobs"], "|---|---|---|"]
    counts = defaultdict(int)
    for line in runs[0]["lines"]:
        counts[line.get("format") or "unreadable"] += 1
    fmt_rows += [f"| {fmt} | {counts[fmt]} | {sec:.2f} |" for fmt, sec in formats.items()]
    return "\n".join([
        BEGIN,
        "## scan: dumps per minute on 2 cores",
        "",
        f"`python3 -m benchmarks.scan` on {datetime.date.today().isoformat()}: every dump of the "
        f"{len(cells)} built cells of the bed ({', '.join(arches)}; every format of each), "
        "`drgn-hotplug scan --jobs N --debug-dir <kernels>` (each dump checked by a worker process of its own, "
        "the vmlinux found by build ID). The machine's 2 cores were shared with other work "
        "(the load average is given), so the wall clock is that of a loaded machine; the CPU seconds "
        "of the scan and its workers per dump give what 2 idle cores would do (--jobs 1 keeps one "
        "core busy).",
        "",
        *rows,
        "",
        *fmt_rows,
        END,
        "",
    ])


def write_section(section: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main(argv: List[str] = sys.argv[1:]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, action="append", help="worker counts to measure (default 1 and 2)")
    parser.add_argument("--limit", type=int, help="only the first N built cells")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md")
    args = parser.parse_args(argv)
    cells = built_cells()[:args.limit]
    if not cells:
        print("no built cells: python3 -m vmcores build-all", file=sys.stderr)
        return 2
    runs = []
    for jobs in args.jobs or [1, 2]:
        runs.append(scan(cells, jobs))
        run = runs[-1]
        print(f"--jobs {jobs}: {len(run['lines'])} dumps in {run['wall']:.0f} s "
              f"({60 * len(run['lines']) / run['wall']:.0f} per minute)", file=sys.stderr, flush=True)
    section = markdown(runs, cells)
    print(section)
    if not args.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
