"""The gdb reader: the same Model as the drgn reader, through gdb's Python API.

Runs inside gdb (``import gdb`` only works there). gdb answers the
``reader.target.Target`` questions (symbols, types, enumerators, raw memory)
and ``reader.compose.read_model`` does the rest, so nothing here interprets
kernel data.

    (gdb) python from drgn_hotplug import gdb_reader
    (gdb) python print(gdb_reader.read_model().kernel.release)
    6.1.0-56-cloud-amd64

Memory is only ever read (``Inferior.read_memory``), whole arrays at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import gdb  # type: ignore[import-not-found]

from . import vmcoreinfo
from .model import Model
from .reader import compose, pfn_valid
from .reader.target import ReadError, Target, first_line, read_word


# gdb resolves a global to the first compile unit it meets that mentions it,
# often one that only saw a header's extern declaration without the array
# length ("struct node *node_devices[]"); a file-scoped lookup in the
# defining file gives the complete type. drivers/base/node.c has defined
# node_devices since the node devices appeared (v2.5).
DEFINING_FILE = {"node_devices": "drivers/base/node.c"}


class GdbTarget:
    """``reader.target.Target`` answered by the gdb session's symbols and inferior."""

    def __init__(self, inferior: Optional["gdb.Inferior"] = None):
        self.inferior = inferior or gdb.selected_inferior()

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        try:
            return self.inferior.read_memory(address, size).tobytes()
        except (gdb.MemoryError, gdb.error) as error:
            raise ReadError(address, size, first_line(error)) from None

    def symbol(self, name: str) -> Optional[int]:
        value = _symbol_value(name)
        return int(value.address) if value is not None and value.address is not None else None

    def symbol_type(self, name: str) -> Optional[str]:
        value = _symbol_value(name)
        if value is None:
            return None
        spelling = str(value.type.strip_typedefs())
        if spelling.endswith("[]") and name in DEFINING_FILE:
            spelling = str(gdb.parse_and_eval(f"'{DEFINING_FILE[name]}'::{name}").type)
        return spelling

    def sizeof(self, type_name: str) -> Optional[int]:
        kind = _lookup_type(type_name)
        return kind.sizeof if kind is not None else None

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        kind = _lookup_type(type_name)
        offset = 0
        for name in member.split("."):
            if kind is None:
                return None
            found = _find_field(kind.strip_typedefs(), name)
            if found is None:
                return None
            field_offset, kind = found
            offset += field_offset
        return offset

    def enumerator(self, name: str) -> Optional[int]:
        try:
            symbol = gdb.lookup_static_symbol(name) or gdb.lookup_global_symbol(name)
            if symbol is None:
                symbol, _ = gdb.lookup_symbol(name)
            if symbol is None or symbol.addr_class != gdb.SYMBOL_LOC_CONST:
                return None
            return int(symbol.value())
        except gdb.error:
            return None

    def enumerators(self, type_name: str) -> Dict[str, int]:
        kind = _lookup_type(type_name)
        if kind is None or kind.code != gdb.TYPE_CODE_ENUM:
            return {}
        return {f.name: int(f.enumval) for f in kind.fields()}


def _symbol_value(name: str) -> Optional["gdb.Value"]:
    # Static variables (memory_blocks, sections_per_block) are not global symbols.
    symbol = gdb.lookup_global_symbol(name) or gdb.lookup_static_symbol(name)
    # A variable whose defining DWARF lacks a location (LOC_UNRESOLVED, e.g.
    # init_uts_ns) takes its address from the ELF symbol table.
    if symbol is None or not (symbol.is_variable or symbol.is_function
                              or symbol.addr_class == gdb.SYMBOL_LOC_UNRESOLVED):
        return None
    return symbol.value()


def _lookup_type(name: str) -> Optional["gdb.Type"]:
    try:
        return gdb.lookup_type(name)
    except gdb.error:
        return None


def _find_field(kind: "gdb.Type", name: str):
    """(byte offset, type) of member ``name``, looking inside anonymous unions and structs."""
    if kind.code not in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
        return None
    for field in kind.fields():
        if field.name == name:
            return field.bitpos // 8, field.type
        if not field.name:
            inner = _find_field(field.type.strip_typedefs(), name)
            if inner is not None:
                return field.bitpos // 8 + inner[0], inner[1]
    return None


def read_model(target: Optional[GdbTarget] = None) -> Model:
    """The Model of the kernel gdb is looking at (a vmcore or a live gdbstub)."""
    model = compose.read_model(target or GdbTarget())
    model.kernel = dataclasses.replace(model.kernel,
                                       arch_pfn_valid_inlines=arch_pfn_valid_inlines())
    return model


def arch_pfn_valid_inlines() -> Optional[Tuple[str, ...]]:
    """Names of the functions inlined into the kernel's own global ``pfn_valid``
    function (innermost first at each instruction, first seen first), None when
    it has none: the evidence kernels.pfn_valid_rule() wants.

    arm64 exported its own pfn_valid() until v5.16 (3de360c3fdb3); 5.10 stable
    kernels carry pfn_section_valid() from v5.12's eeb0753ba27b. A static
    out-of-line copy of the generic inline is not global and does not count.
    """
    symbol = gdb.lookup_global_symbol("pfn_valid")
    if symbol is None or not symbol.is_function:
        return None
    start = int(symbol.value().address)
    function_block = gdb.block_for_pc(start)
    while function_block is not None and function_block.function is None:
        function_block = function_block.superblock
    if function_block is None:
        return None
    addresses = pfn_valid.instruction_addresses(function_block.start, function_block.end,
                                                gdb.selected_inferior().architecture().name())
    return pfn_valid.pfn_valid_inlines(_inline_chain(gdb.block_for_pc(pc)) for pc in addresses)


def _inline_chain(block) -> List[str]:
    """Function names from the innermost (inlined) block at a pc out to its function."""
    names = []
    while block is not None and not block.is_global and not block.is_static:
        if block.function is not None:
            names.append(block.function.name)
        block = block.superblock
    return names


# ---------------------------------------------------------------- KASLR

def symbols_match(target: Target) -> bool:
    """Whether the loaded symbols sit where the target's kernel put them
    (the KASLR offset given to ``symbol-file -o`` is right, or none is needed)."""
    return offset_fits(target, 0)


def offset_fits(target: Target, offset: int) -> bool:
    """Whether the kernel's own VMCOREINFO, found through the symbols moved by
    ``offset``, puts ``init_uts_ns`` where those moved symbols do.

    Reading the image's static data is not proof: on a core file gdb falls
    back to the vmlinux file for addresses the core lacks, so only data the
    running kernel wrote (the vmcoreinfo_data pointer, the text it points
    to) can tell.
    """
    symbols = [target.symbol(name) for name in ("vmcoreinfo_data", "vmcoreinfo_size",
                                                "init_uts_ns")]
    if None in symbols:
        return False
    data_pointer, size_address, uts = (address + offset for address in symbols)
    try:
        data, size = read_word(target, data_pointer), read_word(target, size_address)
        if not data or not 0 < size <= 1 << 16:
            return False
        text = target.read(data, size).decode("ascii", "replace")
    except ReadError:
        return False
    return vmcoreinfo.parse_vmcoreinfo(text).symbols.get("init_uts_ns") == uts


# The kernel image moves by multiples of this: x86_64 places it at
# CONFIG_PHYSICAL_ALIGN (2 MiB or a multiple) slots within KERNEL_IMAGE_SIZE
# (arch/x86/boot/compressed/kaslr.c); arm64 rounds its virtual offset to
# 2 MiB and adds the EFI stub's 64 KiB-granular physical misalignment
# (arch/arm64/kernel/kaslr.c, drivers/firmware/efi/libstub/arm64-stub.c).
KASLR_STEP = {"i386:x86-64": 2 << 20, "aarch64": 64 << 10}
X86_64_KERNEL_IMAGE_SIZE = 1 << 30


def kaslr_candidates(pc: Optional[int], text: int, end: int, step: int):
    """Offsets that put ``pc`` (a stopped CPU, usually in kernel text) inside [text, end).

    >>> list(kaslr_candidates(0x5000, 0x1000, 0x3000, 0x1000))
    [12288, 16384]
    """
    if pc is None or pc < text:
        return range(0)
    low = max(0, pc - end + 1)
    return range(-(-low // step) * step, pc - text + 1, step)


def find_kaslr_offset(target: Target, pc: Optional[int], arch: str) -> Optional[int]:
    """The offset at which ``linux_banner`` reads "Linux version " in the target.

    Tries the offsets that place the stopped pc in kernel text first, then
    (x86_64 only, whose range is small) every slot of KERNEL_IMAGE_SIZE.
    """
    banner, text, end = (target.symbol(name) for name in ("linux_banner", "_text", "_end"))
    if None in (banner, text, end):
        return None
    step = KASLR_STEP.get(arch, 2 << 20)
    candidates = list(kaslr_candidates(pc, text, end, step))
    if arch == "i386:x86-64":
        candidates += range(0, X86_64_KERNEL_IMAGE_SIZE, step)
    # The pc's offsets are slots of the x86_64 range too: try each once.
    for offset in dict.fromkeys(candidates):
        try:
            if target.read(banner + offset, 14) == b"Linux version " \
                    and offset_fits(target, offset):
                return offset
        except ReadError:
            continue
    return None
