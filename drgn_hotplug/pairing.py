"""Does a vmlinux belong to a dump? Decided before any structure is read.

A dump's VMCOREINFO names its kernel (OSRELEASE, and BUILD-ID since v5.9,
0935288c6e00); a vmlinux names itself in its ``linux_banner`` string
("Linux version <release> (...)") and its GNU build-id note. Reading a
dump with another kernel's debug info decodes every structure at the wrong
offsets, so a mismatch is refused with both identities in the message.

Pure Python over the ELF file: no drgn, so the gdb front end can use it too.

>>> vmcoreinfo_fields("OSRELEASE=6.1.0-56-cloud-amd64\\nBUILD-ID=3b43fa\\nPAGESIZE=4096\\n")["BUILD-ID"]
'3b43fa'
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
NT_GNU_BUILD_ID = 3
SHT_NOTE = 7
_BANNER = re.compile(rb"Linux version (\S+) \(")


@dataclass(frozen=True)
class VmlinuxIdentity:
    """What a vmlinux says it is; ``release`` None when it has no banner (not a vmlinux)."""

    path: str
    machine: Optional[str]
    release: Optional[str]
    build_id: Optional[str]


class NotAnElf(Exception):
    """The file is not a 64-bit little-endian ELF file."""


def vmcoreinfo_fields(text: str) -> Dict[str, str]:
    """KEY=value lines of a VMCOREINFO text."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def vmlinux_identity(path: str) -> VmlinuxIdentity:
    """Machine, release and build id of an ELF file (reads its headers, notes and .rodata).

    Raises OSError when the file cannot be read and NotAnElf when it is not
    a 64-bit little-endian ELF file.
    """
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4:6] != b"\x02\x01":
            raise NotAnElf(f"{path} is not a 64-bit little-endian ELF file")
        machine = ELF_MACHINES.get(struct.unpack_from("<H", header, 18)[0],
                                   f"ELF machine {struct.unpack_from('<H', header, 18)[0]}")
        build_id, release = None, None
        for name, kind, offset, size in _sections(f, header):
            if kind == SHT_NOTE and build_id is None:
                build_id = _gnu_build_id(_read(f, offset, size))
            elif name == ".rodata" and release is None:
                match = _BANNER.search(_read(f, offset, size))
                release = match.group(1).decode("ascii", "replace") if match else None
    return VmlinuxIdentity(path, machine, release, build_id)


def _read(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _sections(f, header: bytes) -> Iterator[Tuple[str, int, int, int]]:
    """(name, type, file offset, size) of each ELF section."""
    shoff, = struct.unpack_from("<Q", header, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 58)
    if not shoff or shentsize < 64 or shnum > 1 << 16:
        return
    table = _read(f, shoff, shentsize * shnum)
    entries = [struct.unpack_from("<IIQQQQ", table, i * shentsize)
               for i in range(len(table) // shentsize)]
    if shstrndx >= len(entries):
        return
    names = _read(f, entries[shstrndx][4], entries[shstrndx][5])
    for name_at, kind, _flags, _addr, offset, size in entries:
        name = names[name_at:names.find(b"\0", name_at)].decode("ascii", "replace")
        yield name, kind, offset, size


def _gnu_build_id(notes: bytes) -> Optional[str]:
    """The hex build id in a block of ELF notes, None without one.

    >>> _gnu_build_id(struct.pack("<III", 4, 2, 3) + b"GNU\\0" + b"\\xab\\xcd\\0\\0")
    'abcd'
    """
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        if kind == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
            return notes[desc_at:desc_at + descsz].hex()
        at = desc_at + (descsz + 3) // 4 * 4
    return None


def mismatch(vmcoreinfo: Dict[str, str], dump_machine: Optional[str],
             vmlinux: VmlinuxIdentity) -> Optional[str]:
    """Why ``vmlinux`` is not the dump's kernel, None when nothing says so.

    The build id decides when both sides have one; otherwise the release.

    >>> v = VmlinuxIdentity("vmlinux-6.12", "x86_64", "6.12.117+deb12-cloud-amd64", "aa")
    >>> mismatch({"OSRELEASE": "6.1.0-56-cloud-amd64", "BUILD-ID": "bb"}, "x86_64", v)
    'vmlinux-6.12 is 6.12.117+deb12-cloud-amd64 (build id aa), the dump is 6.1.0-56-cloud-amd64 (build id bb)'
    >>> mismatch({"OSRELEASE": "6.12.117+deb12-cloud-amd64", "BUILD-ID": "aa"}, "x86_64", v) is None
    True
    """
    if dump_machine and vmlinux.machine != dump_machine:
        return f"{vmlinux.path} is an {vmlinux.machine} kernel, the dump is {dump_machine}"
    release, build_id = vmcoreinfo.get("OSRELEASE"), vmcoreinfo.get("BUILD-ID")
    if build_id and vmlinux.build_id:
        differs = build_id.lower() != vmlinux.build_id
    else:
        differs = bool(release and vmlinux.release and release != vmlinux.release)
    if not differs:
        return None
    return (f"{vmlinux.path} is {vmlinux.release} (build id {vmlinux.build_id}), "
            f"the dump is {release} (build id {build_id})")
