"""arm64 cells: the kernel command line and the ACPI SRAT upgrade the initrd carries.

QEMU's own SRAT is read once from a guest (``/sys/firmware/acpi/tables/SRAT``)
and cached per QEMU version and machine arguments; vmcores.aarch64 patches it.

Example:
    >>> cpio = acpi_override(kernel)          # doctest: +SKIP
    >>> cpio[:6]                              # doctest: +SKIP
    b'070701'
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tempfile
from pathlib import Path

from . import aarch64
from .guest import Guest, GuestSpec
from .initramfs import build_initramfs
from .packages import Kernel, cache_root, fetch_busybox


def cmdline() -> str:
    """The arm64 command line; hot-added memory stays offline until the scenario onlines it."""
    return f"{aarch64.kernel_cmdline()} memhp_default_state=offline"


def qemu_srat(k: Kernel) -> bytes:
    """QEMU's SRAT for the bed's arm64 machine, booting ``k`` once to read it (then cached)."""
    version = subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256((version + " ".join(aarch64.machine_args())).encode()).hexdigest()[:12]
    path = cache_root() / "acpi" / f"qemu-srat-{key}.aml"
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            initrd = Path(tmp) / "initrd"
            initrd.write_bytes(build_initramfs(fetch_busybox("arm64"), []))
            with Guest(GuestSpec("arm64", k.image, initrd, cmdline())) as g:
                table = base64.b64decode(g.shell.run("base64 /sys/firmware/acpi/tables/SRAT"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(table)
    return path.read_bytes()


def acpi_override(k: Kernel) -> bytes:
    """The uncompressed cpio that must open the initrd: QEMU's SRAT with the flash
    region put on node 0, so the kernel keeps both NUMA nodes."""
    return aarch64.acpi_override_cpio({"srat": aarch64.patched_srat(qemu_srat(k))})
