"""The kernel's identity and memory-model constants: its own VMCOREINFO
(``vmcoreinfo_data``), ``init_uts_ns`` and the types of a few symbols."""

from __future__ import annotations

from typing import Dict, Optional

from .. import kernels, vmcoreinfo
from ..model import KernelFacts
from .mmzone import SUBSECTION_SHIFT
from .target import (ReadError, Target, array_length, int_at, read_word, require_offset,
                     require_symbol)


def read_vmcoreinfo_text(target: Target) -> str:
    """The kernel's own ``vmcoreinfo_data`` buffer (what a vmcore's note copies)."""
    data = read_word(target, require_symbol(target, "vmcoreinfo_data"))
    size = read_word(target, require_symbol(target, "vmcoreinfo_size"))
    return target.read(data, min(size, 1 << 16)).decode("ascii", "replace")


def read_uts(target: Target) -> Dict[str, str]:
    """sysname, release, version and machine from ``init_uts_ns.name``."""
    name = (require_symbol(target, "init_uts_ns")
            + require_offset(target, "struct uts_namespace", "name"))
    fields = {}
    for member in ("sysname", "release", "version", "machine"):
        at = name + require_offset(target, "struct new_utsname", member)
        fields[member] = target.read(at, 65).split(b"\0", 1)[0].decode("ascii", "replace")
    return fields


def implausible_constant(constants: vmcoreinfo.DerivedConstants,
                         sections_per_block: int) -> Optional[str]:
    """What in the kernel's own VMCOREINFO (read from its memory, which a
    crash may have corrupted) no kernel could have, None when all is plausible.

    >>> c = vmcoreinfo.DerivedConstants(4096, 27, 46, 1 << 19, None, "6.1")
    >>> implausible_constant(c, 1) is None
    True
    >>> implausible_constant(vmcoreinfo.DerivedConstants(4096, 99, 46, 1, None, "6.1"), 1)
    'SECTION_SIZE_BITS 99 with MAX_PHYSMEM_BITS 46'
    """
    page, section, physmem = (constants.page_size, constants.section_size_bits,
                              constants.max_physmem_bits)
    if page not in (4096, 16384, 65536):
        return f"PAGESIZE {page}"
    if section is None or physmem is None or not page.bit_length() - 1 < section < physmem <= 64:
        return f"SECTION_SIZE_BITS {section} with MAX_PHYSMEM_BITS {physmem}"
    if sections_per_block < 1 or sections_per_block & (sections_per_block - 1) \
            or sections_per_block.bit_length() - 1 + section > physmem:
        return f"sections_per_block {sections_per_block}"
    return None


def read_kernel_facts(target: Target) -> KernelFacts:
    """KernelFacts from VMCOREINFO, ``init_uts_ns`` and the types of a few symbols.

    Raises ReadError when those constants are missing or impossible: every
    later read and walk is sized by them.
    """
    info = vmcoreinfo.parse_vmcoreinfo(read_vmcoreinfo_text(target))
    constants = vmcoreinfo.derive_constants(info)
    uts = read_uts(target)
    release = constants.release or uts["release"]
    mem_section_type = target.symbol_type("mem_section") or ""
    has_subsections = target.offsetof("struct mem_section_usage", "subsection_map") is not None
    sections_per_block = int_at(target.read(require_symbol(target, "sections_per_block"), 4), 0)
    problem = implausible_constant(constants, sections_per_block)
    if problem:
        raise ReadError(0, 0, f"the kernel's VMCOREINFO or memory block size is corrupt: {problem}")
    return KernelFacts(
        arch=uts["machine"], release=release,
        version=vmcoreinfo.parse_kernel_version(release, uts["version"]),
        page_size=constants.page_size, section_size_bits=constants.section_size_bits,
        max_physmem_bits=constants.max_physmem_bits, nr_mem_sections=constants.nr_mem_sections,
        subsection_shift=SUBSECTION_SHIFT if has_subsections else None,
        memory_block_size=sections_per_block << constants.section_size_bits,
        # LENGTH(node_data) is MAX_NUMNODES (kernel/crash_core.c, NUMA kernels).
        max_numnodes=info.lengths.get("node_data")
        or array_length(target.symbol_type("node_devices")),
        # A pointer root (v4.15+) or an array of root pointers: SPARSEMEM_EXTREME.
        sparsemem_extreme="**" in mem_section_type or "*[" in mem_section_type,
        # vmemmap_populate() is built only with CONFIG_SPARSEMEM_VMEMMAP.
        sparsemem_vmemmap=target.symbol("vmemmap_populate") is not None,
        keeps_memblock=kernels.arch_keeps_memblock(uts["machine"]),
        kaslr_offset=constants.kaslr_offset)
