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
    >>> status                                             # doctest: +SKIP
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
                symbols: Sequence[str] = (), debug_dirs: Sequence[str] = ()) -> Tuple[Any, Optional[str]]:
    """(drgn Program, the dump's format or None for a live kernel), debug
    info loaded.

    Mirrors drgn's own CLI (drgn/cli.py): a dump through ``dumps.open_dump``
    (drgn's ``set_core_dump``, or the pages read by drgn_hotplug where
    libkdumpfile gives up), ``set_qemu_qmp`` or ``set_kernel``, then
    ``load_debug_info`` of the given files, else of the vmlinux whose build
    ID is the kernel's (``debuginfo``: ``debug_dirs``, /usr/lib/debug), else
    of drgn's default locations.
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
    except PermissionError as error:
        if core is None and qemu is None:
            # /proc/kcore is mode 0400 root and its open() also wants CAP_SYS_RAWIO.
            raise Unanalysable("reading the running kernel (/proc/kcore) needs root "
                               "(CAP_SYS_RAWIO): run as root, or give -c VMCORE") from error
        raise Unanalysable(f"cannot open {core or qemu}: {first_line(error)}") from error
    except Exception as error:
        # libkdumpfile's errors reach Python as a bare Exception (drgn 0.3.0),
        # so anything raised while opening means "cannot open".
        where = core or qemu or "/proc/kcore"
        raise Unanalysable(f"cannot open {where}: {first_line(error)}") from error
    check_kernel_target(prog, core or qemu or "/proc/kcore", symbols)
    wanted = _kernel_identity(prog)
    if not symbols:
        from . import debuginfo

        found = debuginfo.find_vmlinux(wanted.get("BUILD-ID"), wanted.get("OSRELEASE"),
                                       debuginfo.search_roots(debug_dirs))
        symbols = [found] if found else []
    _load_kernel_debug_info(prog, symbols, _looked_for(wanted, debug_dirs))
    if core is not None:
        dumps.map_vmcoreinfo_safe_copy(prog)   # a kdump kernel's /proc/vmcore
    return prog, dump_format


def _kernel_identity(prog) -> Dict[str, str]:
    """The VMCOREINFO fields of the target (OSRELEASE, BUILD-ID), {} if unreadable."""
    import drgn

    from . import pairing

    try:
        return pairing.vmcoreinfo_fields(prog["VMCOREINFO"].string_().decode("ascii", "replace"))
    except (LookupError, drgn.FaultError):
        return {}


def _looked_for(wanted: Dict[str, str], debug_dirs: Sequence[str]) -> str:
    """What a failed debug-info search looked for, and where.

    >>> _looked_for({"OSRELEASE": "6.1.0-57-cloud-amd64", "BUILD-ID": "ab12"}, ["/srv/dbg"])
    "no vmlinux of 6.1.0-57-cloud-amd64 with build ID ab12 in /srv/dbg, /usr/lib/debug or drgn's default locations (give -s VMLINUX or --debug-dir DIR)"
    """
    from .debuginfo import search_roots

    build_id = wanted.get("BUILD-ID")
    return (f"no vmlinux of {wanted.get('OSRELEASE', 'an unknown release')}"
            + (f" with build ID {build_id}" if build_id else "")
            + f" in {', '.join(search_roots(debug_dirs))} or drgn's default locations"
            " (give -s VMLINUX or --debug-dir DIR)")


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


def _load_kernel_debug_info(prog, symbols: Sequence[str], looked_for: str) -> None:
    import drgn

    try:
        if symbols:
            prog.load_debug_info(list(symbols))
        else:
            prog.load_debug_info(main=True)
    except drgn.MissingDebugInfoError as error:
        if not symbols:
            raise Unanalysable(looked_for) from error
    except (OSError, ValueError) as error:
        raise Unanalysable(f"cannot load debug info: {first_line(error)}") from error
    if not _has_kernel_types(prog):
        if not symbols:
            raise Unanalysable(looked_for)
        raise Unanalysable(f"no kernel debug info matching this kernel in {', '.join(symbols)}")


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
                        default=default([]), help="kernel debug info file (repeatable); without it, "
                        "the vmlinux whose build ID is the kernel's is searched in --debug-dir, "
                        "/usr/lib/debug, then drgn's default locations")
    target.add_argument("--debug-dir", metavar="DIR", action="append", default=default([]),
                        help="a directory searched recursively (and in its .build-id/xx/ layout) "
                        "for the kernel's vmlinux (repeatable)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the JSON document instead of tables")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="show tracebacks and drgn's warnings")


def gdb_script_path() -> str:
    """The gdb extension shipped in the package, for ``(gdb) source PATH``.

    >>> gdb_script_path().endswith("drgn_hotplug/gdb_memhp.py")
    True
    """
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "gdb_memhp.py")


class _PrintGdbScript(argparse.Action):
    """``--gdb-script``: print gdb_script_path() and exit, without a sub-command."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(gdb_script_path())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drgn-hotplug",
        description="Find memory-hotplug inconsistencies in a Linux kernel or vmcore.",
        epilog="exit status: 0 clean, 1 warnings or errors found, 2 could not analyse")
    parser.add_argument("--gdb-script", action=_PrintGdbScript,
                        help="print the path of the gdb extension (memhp commands) to `source` in gdb")
    _add_common(parser, lambda value: value)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        child = sub.add_parser(name, help=_DESCRIPTIONS[name], description=_DESCRIPTIONS[name])
        if name == "explain":
            child.add_argument("location", metavar="PFN|0xADDR")
        _add_common(child, lambda value: argparse.SUPPRESS)
    _add_watch(sub)
    _add_lsmem(sub)
    _add_map(sub)
    # Parsed by scan.main (main hands it the arguments): listed here for --help.
    sub.add_parser("scan", help="check many dumps (files or directories), one JSON line each, "
                   "then a summary (see drgn-hotplug scan --help)", add_help=False)
    return parser


def _add_watch(sub) -> None:
    from .watch import DEFAULT_INTERVAL_S

    child = sub.add_parser(
        "watch", help="re-check a live kernel or QEMU guest on each memory change",
        description="Stay attached to the running kernel (or a QEMU guest) and re-check it on each "
        "memory or node uevent (QMP event of the guest with --qmp-events), else every --interval "
        "seconds; print one timestamped line per finding that appears or clears and per memory "
        "blocks added or removed, with the event that preceded it. Ctrl-C ends it.",
        epilog="exit status: 0 nothing at warning or error level seen, 1 a warning or error "
        "appeared, 2 could not attach")
    child.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                       help=f"re-check this often without events (default {DEFAULT_INTERVAL_S:g})")
    child.add_argument("--qmp-events", metavar="SOCKET",
                       help="with --qemu: a second QMP socket of the guest to read its events from "
                       "(QMP serves one client per socket and drgn holds the --qemu one)")
    _add_common(child, lambda value: argparse.SUPPRESS)


def _add_map(sub) -> None:
    child = sub.add_parser(
        "map", help="draw the physical address space with the findings (-o FILE.html or .svg)",
        description="Write one self-contained page (no network) of the physical address space: "
        "bands per node with the present sections, subsection maps, memblock.memory and "
        "reserved (NOMAP marked), memory blocks, and every finding over its range or block; "
        "holes squeezed. Hover or click a range (HTML) for its explain facts; the SVG has "
        "tooltips. Prints one line naming the file (with --json, check's document).",
        epilog="exit status: as check's (0 clean, 1 warnings or errors, 2 could not analyse)")
    child.add_argument("-o", "--output", metavar="FILE", required=True, type=_map_output,
                       help="the page to write: FILE.html (or .htm) or FILE.svg")
    _add_common(child, lambda value: argparse.SUPPRESS)


def _map_output(path: str) -> str:
    """``map -o`` FILE, refused before the kernel is opened when its suffix names no format."""
    from . import physmap

    try:
        physmap.format_of(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return path


def _map(model: Model, args: argparse.Namespace) -> Tuple[str, int]:
    """``drgn-hotplug map -o FILE``: (output text, check's exit status)."""
    from . import physmap

    with collector_paused():
        model, findings = checks.checked(model)
        try:
            picture = physmap.write(args.output, model, findings)
        except (OSError, ValueError) as error:
            raise Unanalysable(f"cannot write {args.output}: {first_line(error)}") from error
    status = report.exit_status(findings)
    drawn = len(picture.finding_boxes())
    if args.json:
        extra = {"map": {"file": args.output, "findings_drawn": drawn}}
        return report.json_text(report.document(model, findings, command="map",
                                                version=report.package_version(),
                                                extra=extra)), status
    return f"{args.output}: {drawn} findings drawn ({report.render_kernel(model.kernel)})", status


def _watch(args: argparse.Namespace) -> int:
    """``drgn-hotplug watch``: attach, then watch.watch() until Ctrl-C."""
    from . import watch

    try:
        if args.core is not None:
            raise Unanalysable("watch needs a running kernel (default) or --qemu, not a dump")
        if args.qmp_events is not None and args.qemu is None:
            raise Unanalysable("--qmp-events is for a QEMU guest: give --qemu too")
        prog, _ = open_target(qemu=args.qemu, symbols=args.symbols, debug_dirs=args.debug_dir)
        if args.qemu is None:
            sources = [watch.Uevents()]
        else:
            sources = [watch.QmpEvents(args.qmp_events)] if args.qmp_events else []
    except (Unanalysable, watch.SourceError) as error:
        print(f"drgn-hotplug: {error}", file=sys.stderr)
        return report.EXIT_UNANALYSABLE
    except KeyboardInterrupt:
        print("drgn-hotplug: interrupted before watching", file=sys.stderr)
        return report.EXIT_UNANALYSABLE
    if not sources:
        print(f"drgn-hotplug: no --qmp-events socket: re-checking every {args.interval:g} s",
              file=sys.stderr)
    return watch.watch(lambda: read_model_checked(prog), sources, sys.stdout,
                       as_json=args.json, interval=args.interval)


def _add_lsmem(sub) -> None:
    from . import lsmem

    child = sub.add_parser(
        "lsmem", help="what util-linux lsmem would print on the analysed kernel",
        description="Print what util-linux 2.38.1's lsmem would have printed on the analysed "
        "kernel (dump, running kernel or QEMU guest): its memory blocks' ranges, state, "
        "removable, node and zones, merged and summed as lsmem does, with lsmem's options.",
        epilog=lsmem.COLUMNS_HELP + ". exit status: 0, or 2 when the kernel could not be read")
    lsmem.add_arguments(child)
    _add_common(child, lambda value: argparse.SUPPRESS)


def _lsmem(args: argparse.Namespace) -> int:
    """``drgn-hotplug lsmem``: lsmem's output from the model of the target."""
    from . import lsmem

    try:
        options = lsmem.options_from(args)
        prog, _ = open_target(core=args.core, qemu=args.qemu, symbols=args.symbols,
                              debug_dirs=args.debug_dir)
        text = lsmem.render_model(read_model_checked(prog), options)
    except (Unanalysable, lsmem.LsmemError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"drgn-hotplug: lsmem: {error}", file=sys.stderr)
        return report.EXIT_UNANALYSABLE
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()
    return report.EXIT_CLEAN


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scan"]:
        from . import scan

        return scan.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # drgn logs a warning per kernel module without debug info.
        logging.getLogger("drgn").setLevel(logging.ERROR)
    if args.command == "watch":
        return _watch(args)
    if args.command == "lsmem":
        return _lsmem(args)
    try:
        prog, dump_format = open_target(core=args.core, qemu=args.qemu, symbols=args.symbols,
                                          debug_dirs=args.debug_dir)
        model = read_model_checked(prog)
        model.kernel = dataclasses.replace(model.kernel, dump_format=dump_format)
        if args.command == "map":
            text, status = _map(model, args)
        else:
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
