"""What ``drgn-hotplug watch`` costs on a quiet system: CPU per re-check on
the bed's live guests.

For each cell's guest (booted again, nothing hotplugged while measuring):

- re-check, in process: ``watch.observe(read_model(prog))`` on a drgn
  Program attached over QMP, as watch does on every event or interval
  (best, median and worst of RUNS, CPU = user + system of this process);
- watch process: a ``drgn-hotplug watch --interval 1`` left alone for
  IDLE_S seconds; its CPU (from /proc/PID/stat) over that time, per
  re-check, and as a share of one core at the default interval.

Writes its section of benchmarks/RESULTS.md (between the watch markers).
Run: python3 -m benchmarks.watch [--cells x86_64:6.1:orphan arm64:6.1:orphan]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import vmcores
from drgn_hotplug import cli, watch
from vmcores.scenarios import LiveGuest

RUNS = 30
IDLE_S = 30
WATCH_INTERVAL_S = 1
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- watch: benchmarks/watch.py -->", "<!-- /watch -->"


def recheck_costs(cell: vmcores.Cell, guest: LiveGuest) -> Dict[str, float]:
    """CPU and wall seconds of RUNS re-checks of the guest, after a warm-up."""
    prog = cli.open_program(qemu=str(guest.drgn_qmp_socket), symbols=[str(cell.vmlinux)])
    observation = watch.observe(cli.read_model_checked(prog))
    cpu, wall = [], []
    for _ in range(RUNS):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        watch.observe(cli.read_model_checked(prog))
        cpu.append(time.process_time() - cpu0)
        wall.append(time.perf_counter() - wall0)
    del prog  # frees drgn's QMP connection for the watch process
    return {"blocks": len(observation.blocks), "findings": len(observation.findings),
            "cpu_best": min(cpu), "cpu_median": statistics.median(cpu), "cpu_worst": max(cpu),
            "wall_median": statistics.median(wall)}


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_watch_cost(cell: vmcores.Cell, guest: LiveGuest, events_socket: Path) -> Dict[str, float]:
    """CPU of a watch process left alone for IDLE_S seconds, after its start-up."""
    proc = subprocess.Popen(["drgn-hotplug", "--qemu", str(guest.drgn_qmp_socket), "-s", str(cell.vmlinux),
                             "watch", "--qmp-events", str(events_socket), "--interval", str(WATCH_INTERVAL_S)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdout.readline()  # the first line: watch has attached and read the kernel once
        time.sleep(2 * watch.SETTLE_S)
        start_cpu, start = process_cpu_s(proc.pid), time.monotonic()
        time.sleep(IDLE_S)
        cpu, seconds = process_cpu_s(proc.pid) - start_cpu, time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(30)
    per_recheck = cpu / (seconds / WATCH_INTERVAL_S)
    return {"idle_cpu_s": cpu, "idle_s": seconds, "per_recheck": per_recheck,
            "share_at_default": per_recheck / watch.DEFAULT_INTERVAL_S}


def measure(key: str) -> Dict[str, object]:
    arch, kernel, scenario = key.split(":")
    cell = vmcores.build_cell(arch, kernel, scenario)
    events_socket = Path(tempfile.mkdtemp(prefix="watch-bench-")) / "events.sock"
    with vmcores.cells.cell_guest(cell, ("-qmp", f"unix:{events_socket},server=on,wait=off"), "benchmark") as guest:
        row: Dict[str, object] = {"cell": f"{arch} {kernel} ({cell.meta['abi']})"}
        row.update(recheck_costs(cell, guest))
        row.update(idle_watch_cost(cell, guest, events_socket))
    return row


def markdown(rows: List[Dict[str, object]]) -> str:
    """The RESULTS.md section."""
    lines = [BEGIN, "## watch: CPU per re-check on a quiet system", "",
             f"`python3 -m benchmarks.watch` on {time.strftime('%Y-%m-%d')} (2 cores shared with other "
             "work). Each cell's guest booted again, nothing hotplugged while measuring; drgn attached "
             "over QMP (it reads guest memory through /proc/PID/mem of QEMU).",
             "",
             f"- re-check: read the kernel and run every check, as watch does on each event or interval "
             f"({RUNS} runs after a warm-up; CPU = user + system of the reading process);",
             f"- watch process: `drgn-hotplug watch --interval {WATCH_INTERVAL_S}` left alone for "
             f"{IDLE_S} s after its start-up, its CPU from /proc/PID/stat; per re-check, and as a share "
             f"of one core at the default --interval {watch.DEFAULT_INTERVAL_S:g}.",
             "",
             "| guest | blocks | findings | re-check CPU best / median / worst (ms) | re-check wall median (ms) "
             "| watch process CPU over idle time | per re-check (ms) | share of a core at default interval |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['blocks']} | {r['findings']} | {r['cpu_best'] * 1e3:.1f} / "
                     f"{r['cpu_median'] * 1e3:.1f} / {r['cpu_worst'] * 1e3:.1f} | {r['wall_median'] * 1e3:.1f} | "
                     f"{r['idle_cpu_s']:.2f} s in {r['idle_s']:.0f} s | {r['per_recheck'] * 1e3:.1f} | "
                     f"{r['share_at_default'] * 100:.2f} % |")
    return "\n".join(lines + [END]) + "\n"


def write_section(section: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=["x86_64:6.1:orphan", "arm64:6.1:orphan"],
                        metavar="ARCH:KERNEL:SCENARIO")
    args = parser.parse_args(argv)
    rows = [measure(key) for key in args.cells]
    section = markdown(rows)
    write_section(section)
    print(section)


if __name__ == "__main__":
    main()
