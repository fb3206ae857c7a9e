"""The ``drgn-hotplug`` command: open a kernel with drgn, read, check, report.

    drgn-hotplug check                               # the running kernel (/proc/kcore)
    drgn-hotplug -c vmcore.kdump -s vmlinux check    # a dump
    drgn-hotplug --qemu /run/qmp.sock links --json   # a QEMU guest over QMP
    drgn-hotplug -c vmcore explain 0x40000000        # one physical address (or a decimal pfn)

Exit status: 0 no warning or error, 1 at least one warning or error
(``check``; ``explain``: findings covering the pfn); an object that could not
be read is a warning (kind ``unreadable``), so a partial analysis exits 1;
2 the kernel could not be analysed, with one line on stderr saying why (``--debug`` adds the
traceback). drgn is imported only when a kernel is opened, so ``--help``
works without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import checks, report
from .model import Model
from .reader.compose import collector_paused
from .reader.target import first_line

COMMANDS = ("check", "sections", "memblock", "blocks", "links", "explain")

_DESCRIPTIONS = {
    "check": "run every check and list the findings",
    "sections": "list the present memory sections (like crash kmem -n)",
    "memblock": "list memblock.memory and memblock.reserved",
    "blocks": "list the memory block devices",
    "links": "list the node <-> memory block sysfs links and their targets",
    "explain": "every predicate for one pfn (decimal) or physical address (0x...)",
}


class Unanalysable(Exception):
    """The kernel could not be opened or read at all: exit status 2."""


def parse_location(text: str, page_shift: int) -> int:
    """The pfn named by an ``explain`` argument: a decimal pfn, or a
    0x-prefixed physical address.

    >>> parse_location("262144", 12), parse_location("0x40000000", 12)
    (262144, 262144)
    """
    try:
        pfn = int(text, 16) >> page_shift if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        pfn = -1
    if not 0 <= pfn < 1 << (64 - page_shift):
        raise Unanalysable(f"not a pfn or 0x address: {text!r}")
    return pfn


def render_command(model: Model, command: str, location: Optional[str] = None,
                   as_json: bool = False, version: str = "") -> Tuple[str, int]:
    """(output text, exit status) of one sub-command on a model.

    Pure: shared by this command and the ``memhp`` drgn command.

    >>> text, status = render_command(model, "check")     # doctest: +SKIP
    >>> status
    1
    """
    # The model of a 64 TB machine is a million objects: collections during
    # the checks would walk them all again (as while reading, drgn_hotplug/reader/).
    with collector_paused():
        return _render_command(model, command, location, as_json, version)


def _render_command(model: Model, command: str, location: Optional[str],
                    as_json: bool, version: str) -> Tuple[str, int]:
    model, findings = checks.checked(model)
    status = report.EXIT_CLEAN
    extra: Dict[str, Any] = {}
    if command == "check":
        text = report.render_table(model, findings)
        status = report.exit_status(findings)
    elif command == "explain":
        pfn = parse_location(location or "", model.kernel.page_shift)
        explained = checks.explain(model, pfn)
        extra["explain"] = explained
        text = report.render_explain(explained)
        if any(f["severity"] in ("error", "warning") for f in explained["findings"]):
            status = report.EXIT_FINDINGS
    else:
        text, extra = _listing(model, command, as_json)
    if as_json:
        doc = report.document(model, findings, command=command, version=version, extra=extra)
        return report.json_text(doc), status
    return text, status


# Each listing: its table renderer, and the part of the plain model its JSON carries.
_LISTINGS: Dict[str, Tuple[Callable[[Model], str], Callable[[Dict[str, Any]], Dict[str, Any]]]] = {
    "sections": (report.render_sections, lambda plain: {"sections": plain["sections"]}),
    "memblock": (report.render_memblock, lambda plain: {
        "memblock": {"memory": plain["memblock_memory"], "reserved": plain["memblock_reserved"]}}),
    "blocks": (report.render_blocks, lambda plain: {"blocks": plain["blocks"]}),
    "links": (report.render_links, lambda plain: {"nodes": plain["nodes"], "links": plain["links"]}),
}


def _listing(model: Model, command: str, as_json: bool) -> Tuple[str, Dict[str, Any]]:
    if command not in _LISTINGS:
        raise ValueError(f"unknown command {command!r}")
    render, json_part = _LISTINGS[command]
    # A 64 TB machine's plain model and its table each cost seconds: make
    # only the one asked for.
    if as_json:
        return "", json_part(model.to_dict())
    return report.render_kernel(model.kernel) + "\n\n" + render(model), {}


# ---------------------------------------------------------------- opening kernels

def open_program(core: Optional[str] = None, qemu: Optional[str] = None,
                 symbols: Sequence[str] = ()):
    """A drgn Program for a dump (``core``), a QEMU guest (``qemu``: its
    QMP socket) or the running kernel, with the kernel's debug info loaded."""
    return open_target(core, qemu, symbols)[0]


def open_target(core: Optional[str] = None, qemu: Optional[str] = None,
                symbols: Sequence[str] = ()) -> Tuple[Any, Optional[str]]:
    """(drgn Program, the dump's format or None for a live kernel), debug
    info loaded.

    Mirrors drgn's own CLI (drgn/cli.py): a dump through ``dumps.open_dump``
    (drgn's ``set_core_dump``, or the pages read by drgn_hotplug where
    libkdumpfile gives up), ``set_qemu_qmp`` or ``set_kernel``, then
    ``load_debug_info`` of the given files, else of the default locations.
    """
    import drgn

    from . import dumps

    dump_format = None
    if qemu is not None:
        wait_for_qmp_greeting(qemu)
    try:
        if core is not None:
            opened = dumps.open_dump(core)
            prog, dump_format = opened.prog, opened.format
        else:
            prog = drgn.Program()
            if qemu is not None:
                prog.set_qemu_qmp(qemu)
            else:
                prog.set_kernel()
    except dumps.DumpError as error:
        raise Unanalysable(str(error)) from error
    except Exception as error:
        # libkdumpfile's errors reach Python as a bare Exception (drgn 0.3.0),
        # so anything raised while opening means "cannot open".
        where = core or qemu or "/proc/kcore"
        raise Unanalysable(f"cannot open {where}: {first_line(error)}") from error
    check_kernel_target(prog, core or qemu or "/proc/kcore", symbols)
    _load_kernel_debug_info(prog, symbols)
    return prog, dump_format


# Seconds to wait for QEMU's QMP greeting before calling the socket busy.
QMP_GREETING_TIMEOUT = 10.0


def wait_for_qmp_greeting(path: str, timeout: float = QMP_GREETING_TIMEOUT) -> None:
    """Refuse a QMP socket that does not greet within ``timeout`` seconds.

    A QMP socket serves one client at a time: QEMU accepts a second
    connection but stays silent until the first leaves, and drgn 0.3.0
    would then wait forever for the greeting. Probing first turns that hang
    into a one-line error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
            greeting = probe.recv(4096)
        except socket.timeout:
            raise Unanalysable(f"{path}: no QMP greeting within {timeout:g} s (is another "
                               "client connected? QMP serves one at a time)") from None
        except OSError as error:
            raise Unanalysable(f"cannot open {path}: {first_line(error)}") from error
    if not greeting.startswith(b'{"QMP"'):
        raise Unanalysable(f"{path} is not a QMP socket (it sent {greeting[:40]!r})")


# The architectures the model and drgn_hotplug/reader decode (64-bit little-endian).
_SUPPORTED_ARCHES = {"X86_64": "x86_64", "AARCH64": "aarch64"}


def check_kernel_target(prog, where: str, symbols: Sequence[str]) -> None:
    """Refuse, before any structure is read, a target that is not a Linux
    kernel (no VMCOREINFO), an unsupported architecture, or a ``-s`` vmlinux
    that is another kernel than the dump's (release, build id, machine)."""
    import drgn

    from . import pairing

    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise Unanalysable(f"{where} has no VMCOREINFO: not a Linux kernel dump")
    arch = prog.platform.arch.name if prog.platform else "unknown"
    if arch not in _SUPPORTED_ARCHES:
        raise Unanalysable(f"unsupported architecture {arch}: drgn-hotplug reads x86_64 and aarch64")
    try:
        info = pairing.vmcoreinfo_fields(prog["VMCOREINFO"].string_().decode("ascii", "replace"))
    except (LookupError, drgn.FaultError):
        return
    for path in symbols:
        try:
            identity = pairing.vmlinux_identity(path)
        except (OSError, pairing.NotAnElf) as error:
            raise Unanalysable(f"cannot use {path} as debug info: {first_line(error)}") from error
        if identity.release is None:
            continue  # a module or a separate debug file: drgn matches those itself
        reason = pairing.mismatch(info, _SUPPORTED_ARCHES[arch], identity)
        if reason:
            raise Unanalysable(f"wrong vmlinux: {reason}")


def _load_kernel_debug_info(prog, symbols: Sequence[str]) -> None:
    import drgn

    try:
        if symbols:
            prog.load_debug_info(list(symbols))
        else:
            prog.load_debug_info(main=True)
    except drgn.MissingDebugInfoError as error:
        if not symbols:
            raise Unanalysable(f"no debug info for the kernel (give -s VMLINUX): "
                               f"{first_line(error)}") from error
    except (OSError, ValueError) as error:
        raise Unanalysable(f"cannot load debug info: {first_line(error)}") from error
    if not _has_kernel_types(prog):
        given = ", ".join(symbols) if symbols else "the default locations"
        raise Unanalysable(f"no kernel debug info matching this kernel in {given}")


def _has_kernel_types(prog) -> bool:
    try:
        prog.type("struct mem_section")
    except LookupError:
        return False
    return True


def read_model_checked(prog) -> Model:
    """read_model(), with "cannot identify the kernel" as Unanalysable."""
    from drgn import FaultError

    from .drgn_reader import read_model
    from .reader.target import ReadError

    try:
        return read_model(prog)
    except (ReadError, FaultError, LookupError, ValueError) as error:
        raise Unanalysable(f"cannot read the kernel: {first_line(error)}") from error


# ---------------------------------------------------------------- argument parsing

def _add_common(parser: argparse.ArgumentParser, default: Callable[[Any], Any]) -> None:
    """Target and output options, accepted before or after the sub-command
    (sub-parsers use SUPPRESS defaults so they never undo the main ones)."""
    target = parser.add_argument_group("target (default: the running kernel, /proc/kcore)")
    where = target.add_mutually_exclusive_group()
    where.add_argument("-c", "--core", metavar="VMCORE", default=default(None),
                       help="a kernel core dump (kdump, ELF)")
    where.add_argument("--live", action="store_true", default=default(False),
                       help="the running kernel through /proc/kcore (default)")
    where.add_argument("--qemu", metavar="SOCKET", default=default(None),
                       help="a QEMU guest through its QMP socket")
    target.add_argument("-s", "--symbols", metavar="VMLINUX", action="append",
                        default=default([]), help="kernel debug info file (repeatable)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the JSON document instead of tables")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="show tracebacks and drgn's warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drgn-hotplug",
        description="Find memory-hotplug inconsistencies in a Linux kernel or vmcore.",
        epilog="exit status: 0 clean, 1 warnings or errors found, 2 could not analyse")
    _add_common(parser, lambda value: value)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        child = sub.add_parser(name, help=_DESCRIPTIONS[name], description=_DESCRIPTIONS[name])
        if name == "explain":
            child.add_argument("location", metavar="PFN|0xADDR")
        _add_common(child, lambda value: argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # drgn logs a warning per kernel module without debug info.
        logging.getLogger("drgn").setLevel(logging.ERROR)
    try:
        prog, dump_format = open_target(core=args.core, qemu=args.qemu, symbols=args.symbols)
        model = read_model_checked(prog)
        model.kernel = dataclasses.replace(model.kernel, dump_format=dump_format)
        text, status = render_command(model, args.command, getattr(args, "location", None),
                                      as_json=args.json, version=report.package_version())
    except Unanalysable as error:
        if args.debug:
            traceback.print_exc()
        print(f"drgn-hotplug: {error}", file=sys.stderr)
        return report.EXIT_UNANALYSABLE
    except KeyboardInterrupt:
        print("drgn-hotplug: interrupted", file=sys.stderr)
        return report.EXIT_UNANALYSABLE
    except Exception:
        if args.debug:
            raise
        print(f"drgn-hotplug: internal error: {first_line(sys.exc_info()[1])} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return report.EXIT_UNANALYSABLE
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
