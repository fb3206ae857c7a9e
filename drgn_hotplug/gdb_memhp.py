"""memhp: drgn-hotplug's memory-hotplug checks as gdb commands.

Load it in ``gdb vmlinux`` attached to a kernel-virtual vmcore or a QEMU
gdbstub, in the style of the kernel's scripts/gdb/linux::

    (gdb) source drgn_hotplug/gdb_memhp.py       # or: source $(drgn-hotplug --gdb-script)
    (gdb) memhp check
    (gdb) memhp explain 0x100000 --json
    (gdb) p $memhp_pfn_valid(0x100000)

Sub-commands mirror the ``drgn-hotplug`` command and print the same tables
or, with ``--json``, the same JSON document. The model comes from
drgn_hotplug.gdb_reader; checks and reports are drgn_hotplug's, unchanged.
Nothing here writes target memory or resumes a stopped target.
"""

import os
import sys

import gdb

# gdb embeds the system Python, which may not see the environment this file
# was installed into (a virtualenv, pip --user): put the directory holding
# drgn_hotplug/ (the checkout, or that environment's site-packages, where
# tabulate is too) on gdb's sys.path.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_PACKAGE_PARENT, "drgn_hotplug", "__init__.py")) \
        and _PACKAGE_PARENT not in sys.path:
    sys.path.insert(0, _PACKAGE_PARENT)

try:
    from drgn_hotplug import checks, cli, gdb_reader, lsmem, report
    from drgn_hotplug.reader.target import ReadError
except ImportError as _error:  # a missing dependency must say how to get it, in one line
    _IMPORT_ERROR = (
        f"memhp: not loaded: cannot import drgn_hotplug ({_error}); gdb runs {sys.executable} "
        f"{sys.version.split()[0]}: install python3-tabulate, and source the file "
        "`drgn-hotplug --gdb-script` prints (or gdb/memhp.py of a checkout)")
else:
    _IMPORT_ERROR = None


def read_model():
    """The Model of the kernel gdb is looking at; a user error if it cannot be read."""
    # Without a target gdb would read the vmlinux file's initial data.
    if not gdb.selected_inferior().pid:
        raise gdb.GdbError("memhp: no target: open a vmcore (core-file) or attach "
                           "(target remote HOST:PORT) first")
    require_stopped()
    target = gdb_reader.GdbTarget()
    if target.symbol("init_uts_ns") is None:
        raise gdb.GdbError("memhp: no kernel symbols: load the debug vmlinux (gdb vmlinux, "
                           "or `symbol-file vmlinux`)")
    if not gdb_reader.symbols_match(target):
        raise gdb.GdbError("memhp: the symbols do not match the target's memory (KASLR?): "
                           "`memhp kaslr` finds the offset for `symbol-file -o`")
    try:
        return gdb_reader.read_model(target)
    except ReadError as error:
        raise gdb.GdbError(f"memhp: cannot analyse this kernel: {error}") from None


def require_stopped():
    """A user error while the target runs (``continue &``): memhp never stops or resumes it."""
    thread = gdb.selected_thread()
    if thread is not None and thread.is_running():
        raise gdb.GdbError("memhp: the target is running: interrupt it first")


class Memhp(gdb.Command):
    """Memory-hotplug consistency checks (drgn-hotplug).

memhp check|sections|memblock|blocks|links [--json]
memhp explain PFN|0xPHYSADDR [--json]
memhp lsmem [lsmem's options]
memhp kaslr"""

    def __init__(self):
        super().__init__("memhp", gdb.COMMAND_DATA, prefix=True)


class MemhpReport(gdb.Command):
    """One drgn-hotplug report; --json prints drgn-hotplug's JSON document."""

    def __init__(self, name):
        self.__doc__ = f"{cli._DESCRIPTIONS[name]}.\nUsage: memhp {name}" + (
            " PFN|0xPHYSADDR" if name == "explain" else "") + " [--json]"
        self.report = name
        super().__init__(f"memhp {name}", gdb.COMMAND_DATA)

    def invoke(self, argument, from_tty):
        args = gdb.string_to_argv(argument)
        operands = [a for a in args if a != "--json"]
        if len(operands) != (self.report == "explain"):
            raise gdb.GdbError(f"usage: {self.__doc__.splitlines()[-1][len('Usage: '):]}")
        try:
            text, _ = cli.render_command(read_model(), self.report,
                                         operands[0] if operands else None,
                                         as_json="--json" in args, version=report.package_version())
        except cli.Unanalysable as error:
            raise gdb.GdbError(f"memhp {self.report}: {error}") from None
        gdb.write(text if text.endswith("\n") else text + "\n")


class MemhpLsmem(gdb.Command):
    """Print what util-linux lsmem would print on the analysed kernel.
Usage: memhp lsmem [-J|--json] [-P] [-r] [-a] [-b] [-n] [-o LIST] [--output-all] [-S LIST] [--summary[=WHEN]]"""

    def __init__(self):
        super().__init__("memhp lsmem", gdb.COMMAND_DATA)

    def invoke(self, argument, from_tty):
        try:
            options = lsmem.options_from(lsmem.parser("memhp lsmem").parse_args(
                gdb.string_to_argv(argument)))
        except SystemExit:  # argparse printed the usage or the error
            raise gdb.GdbError("memhp lsmem: see the usage above") from None
        except lsmem.LsmemError as error:
            raise gdb.GdbError(f"memhp lsmem: {error}") from None
        try:
            text = lsmem.render_model(read_model(), options)
        except lsmem.LsmemError as error:
            raise gdb.GdbError(f"memhp lsmem: {error}") from None
        gdb.write(text)


class MemhpKaslr(gdb.Command):
    """Find the kernel's KASLR offset and print the symbol-file command for it.

Tries the offsets that put the stopped pc in kernel text (then, on x86_64,
every 2 MiB slot) until linux_banner reads "Linux version "; the target is
only read, the symbols are left to the user to reload."""

    def __init__(self):
        super().__init__("memhp kaslr", gdb.COMMAND_DATA)

    def invoke(self, argument, from_tty):
        require_stopped()
        target = gdb_reader.GdbTarget()
        if gdb_reader.symbols_match(target):
            gdb.write("memhp kaslr: the loaded symbols already match the target's kernel\n")
            return
        arch = gdb.selected_inferior().architecture().name()
        offset = gdb_reader.find_kaslr_offset(target, _stopped_pc(), arch)
        if offset is None:
            raise gdb.GdbError("memhp kaslr: no offset places linux_banner in the target's memory")
        vmlinux = gdb.current_progspace().filename or "vmlinux"
        gdb.write(f"KASLR offset {offset:#x}: symbol-file -o {offset:#x} {vmlinux}\n")


def _stopped_pc():
    try:
        return int(gdb.selected_frame().pc())
    except gdb.error:
        return None


class _ModelCache:
    """One Model per prompt, for convenience functions called in loops
    (``while $i < 0x40000 ... $memhp_pfn_valid($i)`` in a gdb script).

    Dropped at the next prompt and whenever the target may have changed
    meanwhile: it ran or stopped, memory was written, the symbols changed.
    """

    def __init__(self):
        self.model = None
        self.sets = None
        for registry in (gdb.events.before_prompt, gdb.events.stop, gdb.events.cont,
                         gdb.events.memory_changed, gdb.events.new_objfile,
                         gdb.events.clear_objfiles):
            registry.connect(self.clear)

    def clear(self, *_):
        self.model = self.sets = None

    def pfn_sets(self):
        if self.sets is None:
            self.model = read_model()
            self.sets = checks.pfn_sets(self.model)
        return self.sets


class PfnValid(gdb.Function):
    """$memhp_pfn_valid(PFN): 1 if the analysed kernel's own pfn_valid(PFN) is true, else 0.

Modelled per arch and kernel version (drgn-hotplug's pfn_valid rules)."""

    def __init__(self, cache):
        self.cache = cache
        super().__init__("memhp_pfn_valid")

    def invoke(self, pfn):
        answer = self.cache.pfn_sets().pfn_valid
        if answer is None:
            raise gdb.GdbError("memhp_pfn_valid: unknown: this kernel's pfn_valid() needs "
                               "memblock, which is unavailable in the target")
        return int(int(pfn) in answer)


class SectionValid(gdb.Function):
    """$memhp_section_valid(PFN): 1 if valid_section() holds for PFN's section
(it has a memmap), else 0."""

    def __init__(self, cache):
        self.cache = cache
        super().__init__("memhp_section_valid")

    def invoke(self, pfn):
        return int(int(pfn) in self.cache.pfn_sets().valid)


def _register():
    Memhp()
    for name in cli.COMMANDS:
        MemhpReport(name)
    MemhpLsmem()
    MemhpKaslr()
    cache = _ModelCache()
    PfnValid(cache)
    SectionValid(cache)


if _IMPORT_ERROR:
    gdb.write(_IMPORT_ERROR + "\n", gdb.STDERR)
else:
    _register()
