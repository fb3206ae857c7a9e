"""The ``memhp`` drgn command, registered through the ``drgn.plugins`` entry
point (importing this module registers it).

    $ drgn -c vmcore.kdump -s vmlinux
    >>> %memhp check                             # drgn 0.3.0 prompts take commands after "%"
    >>> %memhp explain 0x40000000 --json
    >>> run_command(prog, "memhp links")        # from a script; returns the exit status

The sub-commands and their output are those of ``drgn-hotplug``.
"""

from __future__ import annotations

import argparse
from typing import Any

from drgn import Program
from drgn.commands import CommandError, argument
from drgn.commands.linux import linux_kernel_command

from . import report
from .cli import COMMANDS, Unanalysable, read_model_checked, render_command


@linux_kernel_command(
    description="find memory-hotplug inconsistencies (drgn-hotplug)",
    long_description="Runs a drgn-hotplug sub-command on the program: check (every "
    "check), sections, memblock, blocks, links, or explain PFN|0xADDR. Returns the "
    "exit status drgn-hotplug would: 0 clean, 1 warnings or errors.",
    arguments=(
        argument("subcommand", choices=COMMANDS, help="what to run"),
        argument("location", nargs="?", metavar="PFN|0xADDR",
                 help="for explain: a decimal pfn or a 0x physical address"),
        argument("--json", action="store_true", help="print the JSON document"),
    ),
)
def _cmd_memhp(prog: Program, name: str, args: argparse.Namespace, **kwargs: Any) -> int:
    if args.subcommand == "explain" and args.location is None:
        raise CommandError("memhp explain needs a PFN or 0xADDR")
    try:
        text, status = render_command(read_model_checked(prog), args.subcommand,
                                      args.location, as_json=args.json,
                                      version=report.package_version())
    except Unanalysable as error:
        raise CommandError(str(error)) from error
    print(text)
    return status
