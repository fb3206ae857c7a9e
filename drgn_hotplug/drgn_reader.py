"""Read a kernel (vmcore, /proc/kcore or QEMU guest) into the plain model.

The drgn front end's reader. drgn answers the questions of
:class:`drgn_hotplug.reader.target.Target` (bytes, symbols, sizes, offsets,
enumerators) through :class:`DrgnTarget`, and drgn_hotplug.reader walks and decodes
the kernel structures: the same code the gdb front end runs, so both build
the same model. What only drgn can tell is added here: the embedded kernel
config and the functions inlined into an arch ``pfn_valid()`` (from the
DWARF inline records at each of its instruction addresses).

>>> import drgn                                        # doctest: +SKIP
>>> prog = drgn.Program(); prog.set_core_dump("vmcore.kdump")
>>> prog.load_debug_info(["vmlinux"])
>>> model = read_model(prog)
>>> model.kernel.release, len(model.blocks)
('6.1.0-56-cloud-amd64', 8)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

import drgn
from drgn import FaultError, Program
from drgn.helpers.linux.kconfig import get_kconfig

from . import kernels
from .model import Model
from .reader import compose, memblock, pfn_valid
from .reader.target import ReadError

# Kernel config options shown with the kernel facts (when the kernel embeds
# its config, CONFIG_IKCONFIG; Debian kernels do not).
_INTERESTING_CONFIG = re.compile(
    r"^CONFIG_(SPARSEMEM\w*|MEMORY_HOTPLUG\w*|MEMORY_HOTREMOVE|ZONE_DEVICE|"
    r"ARCH_KEEP_MEMBLOCK|NUMA|NODES_SHIFT|HAVE_ARCH_PFN_VALID|ARM64_\w*PAGES|"
    r"PGTABLE_LEVELS|RANDOMIZE_BASE|FLATMEM)$")


# Tags that name more than one structure in a vmlinux, and the header of the
# one the reader reads: 5.10's kernel/audit_tree.c has its own struct node
# (seen on Debian 5.10.0-43: offsetof(struct node, dev) failed every other run).
_TYPE_HEADERS = {"struct node": "include/linux/node.h"}


def read_model(prog: Program) -> Model:
    """Everything the checks need, read from ``prog``.

    Raises :class:`~drgn_hotplug.reader.target.ReadError` only when the kernel
    cannot be identified (no readable VMCOREINFO nor ``init_uts_ns``);
    anything else unreadable is listed in ``model.unreadable``.
    """
    target = DrgnTarget(prog)
    model = compose.read_model(target)
    config = read_config(prog)
    kernel = dataclasses.replace(
        model.kernel, config=config,
        keeps_memblock=kernels.arch_keeps_memblock(model.kernel.arch, config),
        arch_pfn_valid_inlines=arch_pfn_valid_inlines(prog))
    if kernel.keeps_memblock != model.kernel.keeps_memblock:
        # The embedded config overrides the arch rule: judge memblock again.
        model.memblock_memory, model.memblock_reserved = memblock.read_memblock(
            target, kernel, model.unreadable)
    model.kernel = kernel
    return model


class DrgnTarget:
    """:class:`drgn_hotplug.reader.target.Target` answered by a drgn Program.

    >>> t = DrgnTarget(prog)                               # doctest: +SKIP
    >>> t.offsetof("struct kernfs_node", "symlink.target_kn"), t.enumerator("KERNFS_LINK")
    (64, 4)
    """

    def __init__(self, prog: Program):
        self.prog = prog

    def read(self, address: int, size: int) -> bytes:
        try:
            return self.prog.read(address, size)
        except FaultError as error:
            raise ReadError(address, size, str(error)) from None
        except (ValueError, OverflowError) as error:
            raise ReadError(address & (1 << 64) - 1, size, str(error)) from None

    def symbol(self, name: str) -> Optional[int]:
        try:
            address = self.prog[name].address_
        except LookupError:
            address = None
        if address is not None:
            return address
        # A function DWARF calls optimized out (7.3's vmemmap_populate) still
        # has its ELF symbol, and that is where its code is.
        try:
            return self.prog.symbol(name).address
        except LookupError:
            return None

    def sizeof(self, type_name: str) -> Optional[int]:
        try:
            return drgn.sizeof(self._type(type_name))
        except LookupError:
            return None

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        try:
            return drgn.offsetof(self._type(type_name), member)
        except LookupError:
            return None

    def _type(self, type_name: str) -> drgn.Type:
        # A tag defined twice in vmlinux resolves to either definition from one
        # run to the next: pin the one the reader means by its header.
        return self.prog.type(type_name, _TYPE_HEADERS.get(type_name))

    def enumerator(self, name: str) -> Optional[int]:
        try:
            return self.prog.constant(name).value_()
        except LookupError:
            return None

    def enumerators(self, type_name: str) -> Dict[str, int]:
        try:
            return {e.name: e.value for e in self.prog.type(type_name).enumerators}
        except LookupError:
            return {}

    def symbol_type(self, name: str) -> Optional[str]:
        try:
            return str(self.prog[name].type_)
        except LookupError:
            return None


def read_config(prog: Program) -> Dict[str, str]:
    """The memory-model options of the embedded kernel config, {} without one."""
    try:
        config = get_kconfig(prog)
    except (LookupError, FaultError, ValueError):
        return {}
    return {k: v for k, v in config.items() if _INTERESTING_CONFIG.match(k)}


def arch_pfn_valid_inlines(prog: Program) -> Optional[Tuple[str, ...]]:
    """Names of the functions inlined into the kernel's own GLOBAL
    ``pfn_valid`` function, None when it has none.

    arm64 exported its own pfn_valid() until v5.16 (3de360c3fdb3); what it
    inlines tells which rule it implements (5.10 stable kernels carry
    ``pfn_section_valid()`` from v5.12's eeb0753ba27b). x86 kernels may
    hold a LOCAL out-of-line copy of the generic inline: that one is not an
    arch pfn_valid. Every instruction address of the function is asked for
    its inline chain.
    """
    symbols = [s for s in prog.symbols("pfn_valid")
               if s.binding == drgn.SymbolBinding.GLOBAL and s.kind == drgn.SymbolKind.FUNC]
    if not symbols:
        return None
    arch = "aarch64" if prog.platform.arch == drgn.Architecture.AARCH64 else "x86_64"
    addresses = pfn_valid.instruction_addresses(symbols[0].address,
                                                symbols[0].address + symbols[0].size, arch)
    return pfn_valid.pfn_valid_inlines(_inline_chain(prog, address) for address in addresses)


def _inline_chain(prog: Program, address: int) -> List[Optional[str]]:
    """Function names at an address, innermost inline first; none where it has no line info."""
    try:
        return [location.name() for location in prog.source_location(address)]
    except LookupError:
        return []
