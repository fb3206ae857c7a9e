"""The kernels proven: the bed's own results, as the README's table.

``tests/test_matrix.py`` runs the same proofs on every cell of the matrix
(findings equal the guest's truth, blocks and links equal its sysfs, gdb
builds drgn's model, crash ``kmem -n`` agrees where crash reads the kernel);
``tests/conftest.py`` hands each cell's outcomes to ``record()``, which keeps
them, with the cell's package, in ``<cache>/proven.json``. This module renders
that file; it never writes a result of its own.

    python -m vmcores.proven                    # the table, markdown
    python -m vmcores.proven --readme README.md # rewrite the README's table in place

Example:
    >>> outcomes = {"test_findings_equal_the_guest_truth": {"outcome": "passed", "reason": ""},
    ...             "test_sections_and_blocks_equal_crash_kmem_n": {"outcome": "skipped", "reason": "x"}}
    >>> cell_proven(outcomes), crash_agrees(outcomes)
    (True, False)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from .cells import bed_hash, cells_dir, matrix
from .packages import cache_root, series

CRASH_TEST = "test_sections_and_blocks_equal_crash_kmem_n"
BEGIN, END = "<!-- proven:begin -->", "<!-- proven:end -->"


def results_path() -> Path:
    return cache_root() / "proven.json"


def load() -> dict:
    path = results_path()
    return json.loads(path.read_text()) if path.exists() else {}


def built_cell_meta(arch: str, kernel: str, scenario: str) -> dict | None:
    """cell.json of the newest cell built by the current bed code, if any."""
    built = sorted(cells_dir().glob(f"{arch}-{kernel}-{scenario}-*-{bed_hash(arch, scenario)}/cell.json"),
                   key=lambda p: p.stat().st_mtime)
    return json.loads(built[-1].read_text()) if built else None


def record(outcomes: dict[tuple[str, str, str], dict]) -> None:
    """Merge one test run's per-cell outcomes into the results file."""
    results = load()
    for key, tests in outcomes.items():
        meta = built_cell_meta(*key) or {}
        entry = results.setdefault(" ".join(key), {"tests": {}})
        entry["tests"].update(tests)
        entry.update(abi=meta.get("abi"), package_version=meta.get("package_version"),
                     suite=meta.get("suite") or series(key[1]).suite, when=time.strftime("%Y-%m-%d"))
    results_path().parent.mkdir(parents=True, exist_ok=True)
    results_path().write_text(json.dumps(results, indent=1, sort_keys=True))


def cell_proven(tests: dict) -> bool:
    """Every proof but crash's passed (crash cannot read every kernel)."""
    proofs = [t for name, t in tests.items() if name != CRASH_TEST]
    return bool(proofs) and all(t["outcome"] == "passed" for t in proofs)


def crash_agrees(tests: dict) -> bool:
    return tests.get(CRASH_TEST, {}).get("outcome") == "passed"


def table(results: dict) -> str:
    """One row per (arch, series) of the matrix."""
    rows = ["| arch | series | Debian suite | ABI (package) | scenarios proven | crash `kmem -n` agrees |",
            "|---|---|---|---|---|---|"]
    series = dict.fromkeys((arch, kernel) for arch, kernel, _ in matrix())
    for arch, kernel in series:
        scenarios = [s for a, k, s in matrix() if (a, k) == (arch, kernel)]
        entries = {s: results.get(f"{arch} {kernel} {s}") for s in scenarios}
        done = [e for e in entries.values() if e]
        proven = [s for s, e in entries.items() if e and cell_proven(e["tests"])]
        failed = [s for s, e in entries.items() if e and not cell_proven(e["tests"])]
        untested = [s for s, e in entries.items() if not e]
        abi = next((f"{e['abi']} ({e['package_version']})" for e in done if e.get("abi")), "-")
        suite = next((e["suite"] for e in done if e.get("suite")), "-")
        crash = [s for s, e in entries.items() if e and crash_agrees(e["tests"])]
        text = ", ".join(proven) or "none"
        text += "".join(f"; {label}: {', '.join(names)}"
                        for label, names in (("FAILED", failed), ("not run", untested)) if names)
        rows.append(f"| {arch} | {kernel} | {suite} | {abi} | {text} | "
                    f"{'yes (' + ', '.join(crash) + ')' if crash else 'no'} |")
    return "\n".join(rows)


def rewrite_readme(path: Path, text: str) -> None:
    """Replace what stands between the README's proven markers."""
    readme = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} section")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", readme))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmcores.proven", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, help="rewrite this README's proven table")
    args = parser.parse_args(argv)
    text = table(load())
    if args.readme:
        rewrite_readme(args.readme, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
