"""What ``drgn-hotplug map`` costs: time and size of the page, from the
x86_64 6.1 orphan cell to the grown 64 TB (512K-section) machine.

For each target:

- ``map`` end to end: ``drgn-hotplug map -o FILE.html`` in a fresh process
  (wall), next to ``drgn-hotplug check`` on the same dump;
- the page alone: ``physmap.write`` (plan, explain facts per range, render)
  on the model read once in this process, best of 3, HTML and SVG;
- the page's size and its drawn ranges; headless Chromium's load of it
  (``--dump-dom``: parse, lay out, run the script).

Writes its section of benchmarks/RESULTS.md (between the map markers).

    python -m benchmarks.map [--sizes 16k,512k] [--skip-cells]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- map: benchmarks/map.py -->", "<!-- /map -->"


def targets(sizes: List[str], cells: bool) -> List[Tuple[str, Path, Path]]:
    """(label, dump, vmlinux): the bed's orphan cell, then each grown size."""
    import vmcores
    from vmcores import grow
    out = []
    if cells:
        cell = vmcores.build_cell("x86_64", "6.1", "orphan")
        out.append(("x86_64 6.1 orphan cell", cell.kdump, cell.vmlinux))
    boot = vmcores.build_cell("x86_64", "6.1", "boot").dir
    for label in sizes:
        grown = grow.grow(boot, grow.SIZES[label], seed=1)
        manifest = json.loads((grown / "manifest.json").read_text())
        out.append((f"grown {label}", grown / "grown.kdump", Path(manifest["vmlinux"])))
    return out


def wall(args: List[str]) -> Tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - start, result.returncode


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(label: str, dump: Path, vmlinux: Path, scratch: Path) -> dict:
    from drgn_hotplug import checks, cli, physmap
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "drgn_hotplug.cli", "-c", str(dump), "-s", str(vmlinux)]
    page, svg = scratch / "map.html", scratch / "map.svg"
    map_wall, status = wall(command + ["map", "-o", str(page)])
    check_wall, check_status = wall(command + ["check"])
    assert status == check_status, (label, status, check_status)
    prog, _ = cli.open_target(core=str(dump), symbols=[str(vmlinux)])
    model, findings = checks.checked(cli.read_model_checked(prog))
    html_s = best_of(3, lambda: physmap.write(str(page), model, findings))
    svg_s = best_of(3, lambda: physmap.write(str(svg), model, findings))
    picture = physmap.plan(model, findings)
    chromium = shutil.which("chromium")
    browser_s = None
    if chromium:
        browser_s, _ = wall([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                             "--dump-dom", page.as_uri()])
    return {"target": label, "sections": len(model.sections), "blocks": len(model.blocks),
            "findings": len(findings), "drawn": len(picture.boxes) + len(picture.unplaced),
            "map_wall": map_wall, "check_wall": check_wall, "html_s": html_s, "svg_s": svg_s,
            "html_bytes": page.stat().st_size, "svg_bytes": svg.stat().st_size,
            "browser_s": browser_s, "load": load}


def markdown(rows: List[dict]) -> str:
    day = time.strftime("%Y-%m-%d")
    lines = [BEGIN, "## map: time and size of the page", "",
             f"`python3 -m benchmarks.map` on {day} (2 cores shared with other work). `map` and "
             "`check` end to end are fresh processes (open the dump, load debug info, read, "
             "check; `map` then writes the page); the page alone is `physmap.write` on the "
             "model read once (best of 3); Chromium is `chromium --headless --dump-dom` "
             "loading the HTML page (start-up included). Load is the 1-minute load average "
             "when the target's measuring began: other work on the 2 cores (QEMU guests, test "
             "runs) slows the end-to-end times.", "",
             "| target | sections | blocks | findings | ranges drawn | map end to end (s) | "
             "check end to end (s) | page alone HTML / SVG (s) | HTML (KiB) | SVG (KiB) | "
             "Chromium load (s) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        browser = "-" if r["browser_s"] is None else f"{r['browser_s']:.2f}"
        lines.append(f"| {r['target']} | {r['sections']} | {r['blocks']} | {r['findings']} | "
                     f"{r['drawn']} | {r['map_wall']:.2f} | {r['check_wall']:.2f} | "
                     f"{r['html_s']:.2f} / {r['svg_s']:.2f} | {r['html_bytes'] / 1024:.0f} | "
                     f"{r['svg_bytes'] / 1024:.0f} | {browser} | {r['load']:.1f} |")
    return "\n".join(lines + [END]) + "\n"


def write_section(section: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    text = (pattern.sub(lambda _: section, text) if pattern.search(text)
            else text.rstrip("\n") + "\n\n" + section)
    RESULTS.write_text(text)


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16k,512k", help="grown sizes (vmcores grow --sections)")
    parser.add_argument("--skip-cells", action="store_true", help="only the grown targets")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="map-bench-") as scratch:
        for label, dump, vmlinux in targets(args.sizes.split(","), not args.skip_cells):
            print(f"measuring {label}", file=sys.stderr, flush=True)
            rows.append(measure(label, dump, vmlinux, Path(scratch)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    section = markdown(rows)
    write_section(section)
    print(section)


if __name__ == "__main__":
    main()
