"""The ``memhp`` drgn command, registered through the ``drgn.plugins`` entry
point (importing this module registers it).

    $ drgn -c vmcore.kdump -s vmlinux
    >>> %memhp check                             # drgn 0.3.0 prompts take commands after "%"
    >>> %memhp explain 0x40000000 --json
    >>> %memhp watch                             # re-check on each memory change; Ctrl-C ends it
    >>> %memhp lsmem -o +NODE,ZONES              # what util-linux lsmem would print
    >>> run_command(prog, "memhp links")        # from a script; returns the exit status

The sub-commands and their output are those of ``drgn-hotplug``. ``watch``
on the running kernel (/proc/kcore) listens to its memory and node uevents;
on a QEMU guest it re-checks every ``--interval`` seconds, or on the
guest's QMP events with ``--qmp-events SOCKET`` (a second QMP socket of the
guest: drgn holds the one it attached through).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from drgn import Program
from drgn.commands import CommandError, argument
from drgn.commands.linux import linux_kernel_command

from . import lsmem, report, watch
from .cli import COMMANDS, Unanalysable, read_model_checked, render_command
from .watch import DEFAULT_INTERVAL_S


@linux_kernel_command(
    description="find memory-hotplug inconsistencies (drgn-hotplug)",
    long_description="Runs a drgn-hotplug sub-command on the program: check (every "
    "check), sections, memblock, blocks, links, or explain PFN|0xADDR. Returns the "
    "exit status drgn-hotplug would: 0 clean, 1 warnings or errors.",
    arguments=(
        argument("subcommand", choices=COMMANDS + ("watch", "lsmem"), help="what to run"),
        argument("location", nargs="?", metavar="PFN|0xADDR",
                 help="for explain: a decimal pfn or a 0x physical address"),
        argument("--json", action="store_true", help="print the JSON document"),
        argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                 help="for watch: re-check this often without events"),
        argument("--qmp-events", metavar="SOCKET",
                 help="for watch on a QEMU guest: a second QMP socket of the guest for its events"),
        # lsmem's own options, for %memhp lsmem.
        *(argument(*flags, **keywords) for flags, keywords in lsmem.ARGUMENTS),
    ),
)
def _cmd_memhp(prog: Program, name: str, args: argparse.Namespace, **kwargs: Any) -> int:
    if args.subcommand == "explain" and args.location is None:
        raise CommandError("memhp explain needs a PFN or 0xADDR")
    if args.subcommand == "watch":
        return _watch(prog, args)
    if args.subcommand == "lsmem":
        return _lsmem(prog, args)
    try:
        text, status = render_command(read_model_checked(prog), args.subcommand,
                                      args.location, as_json=args.json,
                                      version=report.package_version())
    except Unanalysable as error:
        raise CommandError(str(error)) from error
    print(text)
    return status


def _lsmem(prog: Program, args: argparse.Namespace) -> int:
    """``memhp lsmem``: what lsmem would print on this program's kernel."""
    if args.location is not None:
        raise CommandError(f"memhp lsmem takes options only, not {args.location!r}")
    try:
        sys.stdout.write(lsmem.render_model(read_model_checked(prog), lsmem.options_from(args)))
    except (Unanalysable, lsmem.LsmemError) as error:
        raise CommandError(f"lsmem: {error}") from error
    return report.EXIT_CLEAN


def _watch(prog: Program, args: argparse.Namespace) -> int:
    """``memhp watch``: watch.watch() on this program until Ctrl-C."""
    from drgn import ProgramFlags

    try:
        if args.qmp_events is not None:
            sources = [watch.QmpEvents(args.qmp_events)]
        elif prog.flags & ProgramFlags.IS_LOCAL:
            sources = [watch.Uevents()]
        elif prog.flags & ProgramFlags.IS_LIVE:
            sources = []
        else:
            raise CommandError("memhp watch needs a running kernel or QEMU guest, not a dump")
    except watch.SourceError as error:
        raise CommandError(str(error)) from error
    try:
        return watch.watch(lambda: read_model_checked(prog), sources, sys.stdout,
                           as_json=args.json, interval=args.interval)
    finally:
        for source in sources:
            source.close()
