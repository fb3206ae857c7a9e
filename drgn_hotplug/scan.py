"""``drgn-hotplug scan``: many dumps in one run, one JSON line per dump.

Each dump is checked by a worker process of its own (``drgn-hotplug -c DUMP
check --json``) with a time limit and an address-space limit, so a dump
that hangs or crashes its worker is a line of its own and never stops the
run. ``--shard I/N`` keeps every N-th dump of the sorted list, starting at
the I-th (0-based: a Kubernetes indexed job's JOB_COMPLETION_INDEX, a Slurm
array's SLURM_ARRAY_TASK_ID, ``seq 0 N-1 | parallel``), so shards run by
any batch engine concatenate into the lines of one run. The summary table
goes to stderr, the JSON lines to stdout.

    >>> shard_of(["a", "b", "c", "d", "e"], 1, 2)
    ['b', 'd']
    >>> parse_shard("0/4"), parse_shard("3/4")
    ((0, 4), (3, 4))
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional, Sequence, TextIO, Tuple

from . import dumps, report

# Per-dump defaults: drgn reads a bed dump in 0.5-1 s with ~260 MB resident.
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_MB = 4096
SLOWEST_SHOWN = 5


def parse_shard(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not I/N: {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text}: I must be in 0..N-1")
    return index, count


def shard_of(paths: Sequence[str], index: int, count: int) -> List[str]:
    """The dumps of shard ``index`` of ``count``: every count-th, in order."""
    return list(paths[index::count])


def find_dumps(inputs: Iterable[str]) -> List[str]:
    """The dumps named or found (recursively) under the inputs, sorted, each
    once. A file named on the command line is always kept (an unreadable
    one gets its own line); in a directory only kernel dumps are
    (dumps.is_core_dump)."""
    found = set()
    for item in inputs:
        if os.path.isdir(item):
            for top, dirs, files in os.walk(item):
                dirs.sort()
                found.update(os.path.join(top, name) for name in files
                             if os.path.isfile(os.path.join(top, name))
                             and dumps.is_core_dump(os.path.join(top, name)))
        else:
            found.add(item)
    return sorted(found)


def worker_argv(path: str, symbols: Sequence[str], debug_dirs: Sequence[str]) -> List[str]:
    argv = [sys.executable, "-m", "drgn_hotplug.cli", "-c", path]
    for s in symbols:
        argv += ["-s", s]
    for d in debug_dirs:
        argv += ["--debug-dir", d]
    return argv + ["check", "--json"]


def _limit_memory(megabytes: int):
    def apply() -> None:
        os.setsid()   # its own process group: a timeout kills the worker and its children
        limit = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def scan_one(path: str, symbols: Sequence[str] = (), debug_dirs: Sequence[str] = (),
             timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB) -> dict:
    """The JSON line of one dump: path, format, release, build_id,
    exit_status, verdict, seconds, and summary + findings, or reason."""
    line = {"path": path, "format": None, "release": None, "build_id": None}
    try:
        # Only a regular file: opening a FIFO or a device could block this
        # process; the worker, which may hang, tries those.
        if os.path.isfile(path):
            identity = dumps.identify(path)
            line.update(release=identity["release"], build_id=identity["build_id"])
    except Exception:   # noqa: BLE001 - the worker says why the dump is unreadable
        pass
    start = time.monotonic()
    proc = subprocess.Popen(worker_argv(path, symbols, debug_dirs), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory(memory_mb))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        line.update(exit_status=report.EXIT_UNANALYSABLE, verdict="timeout",
                    reason=f"no answer within {timeout:g} s: worker killed",
                    seconds=round(time.monotonic() - start, 2))
        return line
    line["seconds"] = round(time.monotonic() - start, 2)
    line.update(_outcome(proc.returncode, out, err))
    return line


def _outcome(status: int, out: str, err: str) -> dict:
    """The verdict of a finished worker from its exit status and output."""
    if status < 0:
        name = signal.Signals(-status).name
        return {"exit_status": report.EXIT_UNANALYSABLE, "verdict": "crashed",
                "reason": f"worker killed by {name}"}
    if status in (report.EXIT_CLEAN, report.EXIT_FINDINGS):
        try:
            doc = json.loads(out)
        except ValueError:
            return {"exit_status": report.EXIT_UNANALYSABLE, "verdict": "crashed",
                    "reason": "worker printed no JSON document"}
        return {"exit_status": status, "verdict": "findings" if status else "clean",
                "format": doc["kernel"].get("dump_format"), "release": doc["kernel"]["release"],
                "summary": doc["summary"], "findings": doc["findings"]}
    reason = (err.strip().splitlines() or [f"worker exited {status}"])[-1]
    if reason.startswith("drgn-hotplug: "):
        reason = reason[len("drgn-hotplug: "):]
    if status == report.EXIT_UNANALYSABLE and "MemoryError" in err:
        reason = f"out of memory (limit per worker): {reason}"
    return {"exit_status": report.EXIT_UNANALYSABLE if status != report.EXIT_UNANALYSABLE else status,
            "verdict": "unanalysable", "reason": reason}


def summary_table(lines: Sequence[dict]) -> str:
    """Dumps by verdict, findings by kind and severity, the slowest dumps.

    >>> print(summary_table([{"path": "a", "verdict": "clean", "seconds": 1.0, "findings": []},
    ...                      {"path": "b", "verdict": "findings", "seconds": 2.5,
    ...                       "findings": [{"kind": "orphaned-link", "severity": "error"}]}]))
    dumps: 2 (clean 1, findings 1)
    findings: orphaned-link/error 1
    slowest: b 2.5 s, a 1.0 s
    """
    verdicts = Counter(line["verdict"] for line in lines)
    kinds = Counter(f"{f['kind']}/{f['severity']}" for line in lines for f in line.get("findings") or [])
    slowest = sorted(lines, key=lambda line: -line.get("seconds", 0))[:SLOWEST_SHOWN]
    return "\n".join([
        f"dumps: {len(lines)} (" + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items())) + ")",
        "findings: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"),
        "slowest: " + ", ".join(f"{line['path']} {line.get('seconds', 0):.1f} s" for line in slowest),
    ])


def run(paths: Sequence[str], out: TextIO, jobs: int = 1, **worker) -> List[dict]:
    """Scan ``paths`` with ``jobs`` workers, printing each line as it ends."""
    lines: List[dict] = []
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        for line in pool.map(lambda p: scan_one(p, **worker), paths):
            print(json.dumps(line, sort_keys=True), file=out, flush=True)
            lines.append(line)
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drgn-hotplug scan", description="Check many dumps, one JSON line each, then a summary.",
        epilog="exit status: 0 every dump clean, 1 findings in some, 2 some could not be analysed")
    parser.add_argument("inputs", nargs="+", metavar="DUMP|DIR")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="worker processes at once (default 1)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                        help="scan only share I (0-based) of N of the sorted dumps")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"per dump (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, metavar="MB",
                        help=f"address-space limit per worker (default {DEFAULT_MEMORY_MB})")
    parser.add_argument("-s", "--symbols", action="append", default=[], metavar="VMLINUX")
    parser.add_argument("--debug-dir", action="append", default=[], metavar="DIR")
    return parser


def main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(list(argv))
    paths = shard_of(find_dumps(args.inputs), *args.shard)
    lines = run(paths, out, jobs=args.jobs, symbols=args.symbols, debug_dirs=args.debug_dir,
                timeout=args.timeout, memory_mb=args.memory_mb)
    print(summary_table(lines), file=err)
    return max((line["exit_status"] for line in lines), default=report.EXIT_CLEAN)
