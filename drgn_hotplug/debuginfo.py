"""Find the vmlinux of a dump by its build ID, without ``-s``.

The kernel writes its build ID into VMCOREINFO (``BUILD-ID=``, since v5.9,
commit 0935288c6e00 "kdump: append kernel build-id string to VMCOREINFO");
a vmlinux carries it as its GNU build-id note. A directory is searched in
the ``.build-id/xx/rest.debug`` layout of debug packages first, then
recursively for files named ``vmlinux*`` (Debian's ``-dbg`` packages:
``usr/lib/debug/boot/vmlinux-<release>``, ``usr/lib/debug/lib/modules/<release>/vmlinux``).
Without a build ID in the dump, a vmlinux of the same release is taken.

    >>> build_id_paths("/usr/lib/debug", "ab12cd")
    ['/usr/lib/debug/.build-id/ab/12cd.debug', '/usr/lib/debug/.build-id/ab/12cd']
"""

from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

from .pairing import NotAnElf, vmlinux_identity

# Where distributions install kernel debug info (Debian, Fedora, SUSE).
SYSTEM_DEBUG_DIR = "/usr/lib/debug"


def build_id_paths(root: str, build_id: str) -> list[str]:
    """The paths a debug file of ``build_id`` has under ``root``'s .build-id tree."""
    head, rest = build_id[:2], build_id[2:]
    base = os.path.join(root, ".build-id", head, rest)
    return [base + ".debug", base]


def vmlinux_candidates(root: str) -> Iterator[str]:
    """Files named vmlinux* under ``root``, recursively, in a stable order
    (.build-id trees skipped: they are looked up by name)."""
    for top, dirs, files in os.walk(root, onerror=lambda error: None):
        dirs[:] = sorted(d for d in dirs if d != ".build-id")
        for name in sorted(files):
            if name.startswith("vmlinux"):
                yield os.path.join(top, name)


def find_vmlinux(build_id: Optional[str], release: Optional[str], roots: Sequence[str]) -> Optional[str]:
    """The first vmlinux under ``roots`` whose build ID is ``build_id`` (or,
    when the dump has none, whose release is ``release``); None if none."""
    build_id = build_id.lower() if build_id else None
    for root in roots:
        if build_id:
            for path in build_id_paths(root, build_id):
                if matches(path, build_id, release):
                    return path
        for path in vmlinux_candidates(root):
            if matches(path, build_id, release):
                return path
    return None


def matches(path: str, build_id: Optional[str], release: Optional[str]) -> bool:
    try:
        identity = vmlinux_identity(path)
    except (OSError, NotAnElf):
        return False
    if build_id:
        return identity.build_id == build_id
    return release is not None and identity.release == release


def search_roots(debug_dirs: Sequence[str]) -> list[str]:
    """``--debug-dir`` directories first, then the system's debug directory.

    >>> search_roots(["/srv/debug"])
    ['/srv/debug', '/usr/lib/debug']
    """
    return [*debug_dirs, SYSTEM_DEBUG_DIR]
