"""What a debugger tells of the arch ``pfn_valid()``: the functions inlined
into it, the evidence kernels.pfn_valid_rule() wants."""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple


def instruction_addresses(start: int, end: int, arch: str) -> range:
    """Every address an instruction of [start, end) may begin at: arm64
    instructions are 4 bytes, x86 ones of any length, so every byte.

    >>> instruction_addresses(0x1000, 0x1010, "aarch64")
    range(4096, 4112, 4)
    """
    return range(start, end, 4 if arch == "aarch64" else 1)


def pfn_valid_inlines(chains: Iterable[Iterable[Optional[str]]]) -> Tuple[str, ...]:
    """The functions inlined into an arch ``pfn_valid()``, first seen first,
    from the inline chain a debugger gives at each of its instructions: the
    evidence kernels.pfn_valid_rule() wants. Both readers use it, so drgn and
    gdb name the same rule.

    >>> pfn_valid_inlines([["valid_section", "pfn_valid"], ["early_section", "valid_section", None]])
    ('valid_section', 'early_section')
    """
    names: Dict[str, None] = {}
    for chain in chains:
        for name in chain:
            if name and name != "pfn_valid":
                names.setdefault(name)
    return tuple(names)
