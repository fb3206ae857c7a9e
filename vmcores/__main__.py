"""Command line of the test bed.

    python -m vmcores build --arch x86_64 --kernel 6.1 --scenario orphan   # last line: the cell directory
    python -m vmcores build-all
    python -m vmcores list
    python -m vmcores start --arch x86_64 --kernel 6.1 --scenario orphan   # live until Ctrl-C
    python -m vmcores corpus --seed 1 --cases 1000   # broken-input corpus, markdown result table
    python -m vmcores grow --sections 512k            # a 64 TB grown dump (last line: its directory)
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from . import grow
from .cells import ALL_SCENARIOS, KERNELS, bed_hash, build_cell, cells_dir, matrix, start_live
from .packages import PackageError
from .qmp import ChannelError


def cell_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, choices=list(KERNELS))
    parser.add_argument("--kernel", required=True, choices=sorted({k for ks in KERNELS.values() for k in ks}))
    parser.add_argument("--scenario", required=True, choices=list(ALL_SCENARIOS))


def build(args) -> int:
    start = time.monotonic()
    cell = build_cell(args.arch, args.kernel, args.scenario)
    print(f"built in {time.monotonic() - start:.1f} s", file=sys.stderr)
    print(cell.dir)
    return 0


def build_all(args) -> int:
    """Build every cell of the matrix; a cell that fails is tried once more
    (TCG guests rarely, but really, die at random)."""
    failed = []
    for arch, kernel, scenario in matrix():
        for attempt in (1, 2):
            start = time.monotonic()
            try:
                cell = build_cell(arch, kernel, scenario)
                print(f"{arch} {kernel} {scenario}: {time.monotonic() - start:.1f} s {cell.dir}", flush=True)
                break
            except Exception as err:  # one cell's failure, whatever it is, must not stop the matrix
                print(f"{arch} {kernel} {scenario}: attempt {attempt} FAILED: {type(err).__name__}: {err}",
                      flush=True)
        else:
            failed.append((arch, kernel, scenario))
    if failed:
        print(f"{len(failed)} cells failed: " + ", ".join(" ".join(c) for c in failed))
    return 1 if failed else 0


def list_cells(args) -> int:
    """The matrix, with the cached cell directories of each entry (current code hash marked '*')."""
    for arch, kernel, scenario in matrix():
        built = sorted(cells_dir().glob(f"{arch}-{kernel}-{scenario}-*/cell.json"))
        names = [p.parent.name + (" *" if p.parent.name.endswith(bed_hash(arch, scenario)) else "") for p in built]
        print(f"{arch:7} {kernel:10} {scenario:8} {', '.join(names) or '-'}")
    print(f"(* = built by the current bed code, hashes x86_64 {bed_hash('x86_64')}, "
          f"arm64 {bed_hash('arm64')}, flavours x86_64 {bed_hash('x86_64', 'offline')}; cache {cells_dir()})")
    return 0


def stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def start(args) -> int:
    """Start a cell's guest live and keep it until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    cell = build_cell(args.arch, args.kernel, args.scenario)
    with start_live(cell) as guest:
        print(f"vmlinux:   {cell.vmlinux}")
        print(f"drgn:      drgn --qemu {guest.drgn_qmp_socket} -s {cell.vmlinux}")
        print(f"gdb:       gdb -ex 'symbol-file -o {guest.kaslr_offset:#x} {cell.vmlinux}'"
              f" -ex 'target remote 127.0.0.1:{guest.gdb_port}'")
        print(f"qmp:       {guest.drgn_qmp_socket}")
        print(f"gdb port:  {guest.gdb_port}")
        print("running; Ctrl-C stops the guest", flush=True)
        try:
            while guest.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def corpus(args) -> int:
    from . import corpus as corpus_mod

    return corpus_mod.main(args.seed, args.cases, args.workers, args.only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmcores", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("build", build), ("start", start)):
        p = sub.add_parser(name)
        cell_arguments(p)
        p.set_defaults(func=func)
    sub.add_parser("build-all").set_defaults(func=build_all)
    sub.add_parser("list").set_defaults(func=list_cells)
    p = sub.add_parser("corpus", help="run drgn-hotplug on mutated dumps of the bed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", metavar="IDS", help="comma-separated case numbers to rerun")
    p.set_defaults(func=corpus)
    grow.add_command(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ChannelError, PackageError) as err:
        print(f"vmcores: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
