"""Parse VMCOREINFO text and derive the memory-model constants from it.

The same text comes from a vmcore's VMCOREINFO note (drgn exposes it as
``prog["VMCOREINFO"]``) and from the kernel's ``vmcoreinfo_data`` buffer
(what the gdb front end reads), so parsing lives here, free of drgn and gdb.

>>> info = parse_vmcoreinfo("OSRELEASE=6.1.0-27-cloud-amd64\\nPAGESIZE=4096\\n"
...                         "NUMBER(SECTION_SIZE_BITS)=27\\n"
...                         "NUMBER(MAX_PHYSMEM_BITS)=46\\nKERNELOFFSET=2a000000\\n")
>>> c = derive_constants(info)
>>> c.page_size, c.nr_mem_sections, hex(c.kaslr_offset)
(4096, 524288, '0x2a000000')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

_KEYED = re.compile(r"^(SYMBOL|SIZE|OFFSET|NUMBER|LENGTH)\((.+)\)$")


@dataclass
class VmcoreInfo:
    """VMCOREINFO split by key kind.

    ``symbols`` are addresses (hex in the text), ``sizes``/``offsets``/
    ``lengths``/``numbers`` integers; every other KEY=VALUE line stays a
    string in ``values`` (OSRELEASE, PAGESIZE, KERNELOFFSET, CRASHTIME,
    BUILD-ID, ...). Lines that do not parse are kept in ``bad_lines``.
    """

    symbols: Dict[str, int] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)
    offsets: Dict[str, int] = field(default_factory=dict)
    lengths: Dict[str, int] = field(default_factory=dict)
    numbers: Dict[str, int] = field(default_factory=dict)
    values: Dict[str, str] = field(default_factory=dict)
    bad_lines: Tuple[str, ...] = ()

    @property
    def osrelease(self) -> Optional[str]:
        return self.values.get("OSRELEASE")

    @property
    def page_size(self) -> Optional[int]:
        return _int_or_none(self.values.get("PAGESIZE"), 10)

    @property
    def kaslr_offset(self) -> Optional[int]:
        """KERNELOFFSET, written by the kernel as ``%lx`` (hex, no 0x)."""
        return _int_or_none(self.values.get("KERNELOFFSET"), 16)

    @property
    def crashtime(self) -> Optional[int]:
        return _int_or_none(self.values.get("CRASHTIME"), 10)


@dataclass(frozen=True)
class DerivedConstants:
    """Memory-model constants VMCOREINFO gives; None when it lacks them
    (the reader then falls back to DWARF)."""

    page_size: Optional[int]
    section_size_bits: Optional[int]
    max_physmem_bits: Optional[int]
    nr_mem_sections: Optional[int]
    kaslr_offset: Optional[int]
    release: Optional[str]


def parse_vmcoreinfo(text: str) -> VmcoreInfo:
    """Parse VMCOREINFO text (one KEY=VALUE per line; NUL padding ignored).

    >>> i = parse_vmcoreinfo("SYMBOL(mem_section)=ffff888003e2e000\\n"
    ...                      "SIZE(mem_section)=16\\nOFFSET(page.flags)=0\\n"
    ...                      "NUMBER(kimage_voffset)=0xffff7fffc8000000\\n"
    ...                      "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257\\ngarbage\\n")
    >>> hex(i.symbols["mem_section"]), i.sizes, i.offsets["page.flags"]
    ('0xffff888003e2e000', {'mem_section': 16}, 0)
    >>> hex(i.numbers["kimage_voffset"]), i.numbers["PAGE_OFFLINE_MAPCOUNT_VALUE"]
    ('0xffff7fffc8000000', -257)
    >>> i.bad_lines
    ('garbage',)
    """
    info = VmcoreInfo()
    bad = []
    for line in text.replace("\0", "").splitlines():
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            bad.append(line)
            continue
        if not _store(info, key, value):
            bad.append(line)
    info.bad_lines = tuple(bad)
    return info


def _store(info: VmcoreInfo, key: str, value: str) -> bool:
    match = _KEYED.match(key)
    if not match:
        info.values[key] = value
        return True
    kind, name = match.groups()
    # The kernel prints symbols with %lx, sizes/offsets/lengths with %lu,
    # and numbers mostly with %ld, but some arches print 0x%llx.
    number = _int_or_none(value, 16 if kind == "SYMBOL" else 0)
    if number is None:
        return False
    target = {"SYMBOL": info.symbols, "SIZE": info.sizes,
              "OFFSET": info.offsets, "LENGTH": info.lengths,
              "NUMBER": info.numbers}[kind]
    target[name] = number
    return True


def _int_or_none(text: Optional[str], base: int) -> Optional[int]:
    """int(text) in ``base``; base 0 means "0x" prefix is hex, else decimal
    (leading zeros allowed, unlike int(x, 0))."""
    if text is None:
        return None
    text = text.strip()
    if base == 0:
        stripped = text.lstrip("-")
        base = 16 if stripped[:2].lower() == "0x" else 10
    try:
        return int(text, base)
    except ValueError:
        return None


def derive_constants(info: VmcoreInfo) -> DerivedConstants:
    """Page size, SECTION_SIZE_BITS, MAX_PHYSMEM_BITS, NR_MEM_SECTIONS and
    the KASLR offset, as far as VMCOREINFO has them.

    NR_MEM_SECTIONS is ``1 << (MAX_PHYSMEM_BITS - SECTION_SIZE_BITS)``
    (SECTIONS_SHIFT in include/linux/page-flags-layout.h).

    >>> derive_constants(parse_vmcoreinfo("PAGESIZE=4096\\n")).nr_mem_sections is None
    True
    """
    section_bits = info.numbers.get("SECTION_SIZE_BITS")
    physmem_bits = info.numbers.get("MAX_PHYSMEM_BITS")
    nr_sections = None
    if section_bits is not None and physmem_bits is not None \
            and 0 < section_bits <= physmem_bits:
        nr_sections = 1 << (physmem_bits - section_bits)
    return DerivedConstants(
        page_size=info.page_size,
        section_size_bits=section_bits,
        max_physmem_bits=physmem_bits,
        nr_mem_sections=nr_sections,
        kaslr_offset=info.kaslr_offset,
        release=info.osrelease,
    )


_RELEASE_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
_DEBIAN_VERSION = re.compile(r"\bDebian (\d+)\.(\d+)(?:\.(\d+))?")


def parse_kernel_version(release: str, uts_version: Optional[str] = None) -> Tuple[int, int, int]:
    """(major, minor, sublevel) of the kernel source.

    Debian's release names drop the sublevel ("6.1.0-27-cloud-amd64" is
    6.1.115), but the UTS version string carries the package version:
    prefer it when its major.minor agrees with the release.

    >>> parse_kernel_version("6.1.0-27-cloud-amd64",
    ...     "#1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)")
    (6, 1, 115)
    >>> parse_kernel_version("5.10.0-32-cloud-arm64", "#1 SMP Debian 5.10.223-1 (2024-08-10)")
    (5, 10, 223)
    >>> parse_kernel_version("6.12.8-amd64"), parse_kernel_version("5.4")
    ((6, 12, 8), (5, 4, 0))
    """
    match = _RELEASE_VERSION.match(release or "")
    if not match:
        raise ValueError(f"cannot parse a kernel version from release {release!r}")
    version = _version_tuple(match)
    debian = _DEBIAN_VERSION.search(uts_version or "")
    if debian:
        packaged = _version_tuple(debian)
        if packaged[:2] == version[:2]:
            return packaged
    return version


def _version_tuple(match: "re.Match[str]") -> Tuple[int, int, int]:
    major, minor, sub = match.groups()
    return int(major), int(minor), int(sub or 0)
