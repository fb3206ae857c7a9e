"""Time of `check` in gdb (memhp) and in the drgn front end (drgn-hotplug) on the same guest.

gdb reads the cell's kernel-virtual ELF, drgn its kdump: the same memory of
the same guest. Two numbers per front end, best of --repeat runs:
- "end to end": a fresh process that loads the vmlinux, opens the dump and
  prints the check report (what a user waits for; the timed repeats that
  follow in the same process are subtracted);
- "check only": the `check` command inside an already loaded session
  (read the model, run the checks, render), what a second check costs.

    python benchmarks/bench_gdb_vs_drgn.py [--arch x86_64 --kernel 6.1 --scenario orphan]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

import vmcores  # noqa: E402

GDB = {"x86_64": "gdb", "arm64": "gdb-multiarch"}
# Printed by the in-session timing snippets below.
SECONDS = re.compile(r"CHECK_SECONDS=([0-9.]+)")


def gdb_argv(cell: vmcores.Cell, repeat: int) -> list:
    """gdb -batch: load symbols at the cell's KASLR offset, open the dump, check `repeat` times."""
    timed = ("python import time; t = time.perf_counter(); "
             "gdb.execute('memhp check', to_string=True); "
             "print(f'CHECK_SECONDS={time.perf_counter() - t:.4f}')")
    return [GDB[cell.meta["arch"]], "-batch", "-nx",
            "-ex", f"symbol-file -o {cell.meta['kaslr_offset']:#x} {cell.vmlinux}",
            "-ex", f"core-file {cell.kvaddr_elf}",
            "-ex", f"source {CHECKOUT / 'gdb' / 'memhp.py'}",
            "-ex", "memhp check", *(["-ex", timed] * repeat)]


def drgn_snippet(cell: vmcores.Cell, repeat: int) -> str:
    """Python for a fresh interpreter: open the kdump with drgn, check, then time `repeat` checks."""
    return f"""
import time, drgn
from drgn_hotplug import cli, drgn_reader
prog = drgn.Program(); prog.set_core_dump({str(cell.kdump)!r})
prog.load_debug_info([{str(cell.vmlinux)!r}])
cli.render_command(drgn_reader.read_model(prog), "check")
for _ in range({repeat}):
    t = time.perf_counter()
    cli.render_command(drgn_reader.read_model(prog), "check")
    print(f"CHECK_SECONDS={{time.perf_counter() - t:.4f}}")
"""


def timed_run(argv: list) -> tuple:
    """(seconds until the first check was printed, in-session check seconds) of one process."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=CHECKOUT)
    wall = time.perf_counter() - start
    checks = [float(s) for s in SECONDS.findall(proc.stdout)]
    if not checks:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall - sum(checks), checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="x86_64", choices=sorted(GDB))
    parser.add_argument("--kernel", default="6.1")
    parser.add_argument("--scenario", default="orphan")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cell = vmcores.build_cell(args.arch, args.kernel, args.scenario)
    fronts = {"gdb (memhp check)": gdb_argv(cell, args.repeat),
              "drgn (drgn-hotplug check)": [sys.executable, "-c", drgn_snippet(cell, args.repeat)]}
    rows = []
    for name, argv in fronts.items():
        walls, checks = zip(*(timed_run(argv) for _ in range(args.repeat)))
        per_check = [c for run in checks for c in run]
        rows.append([name, f"{min(walls):.2f}", f"{statistics.median(walls):.2f}",
                     f"{min(per_check) * 1000:.0f}", f"{statistics.median(per_check) * 1000:.0f}"])
    print(f"cell {cell.dir.name}, best/median of {args.repeat} processes, "
          f"{args.repeat} checks each")
    print(tabulate(rows, headers=["front end", "end to end s (best)", "(median)",
                                  "check only ms (best)", "(median)"]))


if __name__ == "__main__":
    main()
