"""arm64 guest specifics: QEMU virt machine, AAVMF firmware, the SRAT fix, EFI map.

The arm64 guests boot through the kernel's EFI stub under AAVMF so that the
kernel sees a real UEFI memory map (runtime and flash regions become
MEMBLOCK_NOMAP).  QEMU's SRAT leaves the flash region 0x04000000-0x07ffffff
without a node, so the kernel discards NUMA and falls back to one fake node;
:func:`patched_srat` adds the missing entry and :func:`acpi_override_cpio`
packs it for the kernel's ACPI table upgrade from the initrd.

Example::

    argv = ["qemu-system-aarch64", *machine_args(), *firmware_args(run_dir)]
    initrd = acpi_override_cpio({"srat": patched_srat(srat)}) + busybox_initramfs
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
NODE_SIZE = "1G"

# QEMU virt's flash: two 64 MiB banks; the second holds the UEFI variables.
FLASH_START = 0x04000000
FLASH_END = 0x08000000                  # exclusive


def firmware_args(workdir: Path) -> list[str]:
    """AAVMF as two pflash drives: shared read-only code, and a private copy of the
    variable store in ``workdir`` (UEFI writes to it while booting).

    >>> firmware_args(Path("/tmp/run"))[:2]    # doctest: +SKIP
    ['-drive', 'if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd']
    """
    workdir = Path(workdir)
    variables = workdir / "AAVMF_VARS.fd"
    if not variables.exists():
        shutil.copyfile(AAVMF_VARS, variables)
    return ["-drive", f"if=pflash,format=raw,readonly=on,file={AAVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={variables}"]


def machine_args() -> list[str]:
    """QEMU arguments after the binary name: virt with a GICv3 (what arm64 servers
    have; GICv2 caps a guest at 8 vCPUs), 2 vCPUs, two 1 GiB NUMA nodes and room
    for DIMMs.

    ``pauth-impdef=on`` swaps QEMU's slow architected pointer-authentication
    algorithm for a cheap one, which makes TCG boots several times faster.

    >>> machine_args()[:2]
    ['-machine', 'virt,gic-version=3']
    """
    nodes = []
    for node in (0, 1):
        nodes += ["-object", f"memory-backend-ram,id=m{node},size={NODE_SIZE}",
                  "-numa", f"node,nodeid={node},memdev=m{node}"]
    return ["-machine", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on",
            "-accel", "tcg,thread=multi", "-smp", "2", "-m", "2G,slots=4,maxmem=8G", *nodes]


def kernel_cmdline() -> str:
    """The arm64 kernel command line.

    ``earlycon=pl011,0x9000000`` rather than a bare ``earlycon``: on 6.1 the bare
    form waits for ACPI's SPCR and the early ``memblock=debug`` lines are lost;
    ``efi=debug`` prints the UEFI memory map; ``log_buf_len`` keeps the whole
    memblock dump in dmesg too.
    """
    return "console=ttyAMA0 earlycon=pl011,0x9000000 efi=debug memblock=debug log_buf_len=16M"


# --- ACPI SRAT upgrade -------------------------------------------------------

ACPI_HEADER = struct.Struct("<4sIBB6s8sI4sI")
SRAT_RESERVED = 12                      # table revision (4) + reserved (8)
SRAT_MEMORY_AFFINITY = struct.Struct("<BBIHIIIIIIQ")
SRAT_TYPE_MEMORY = 1
SRAT_MEM_ENABLED = 1


def patched_srat(qemu_srat: bytes) -> bytes:
    """QEMU's SRAT plus a Memory Affinity entry putting the flash region on node 0.

    The OEM revision goes up by one: the kernel only upgrades a firmware table
    with an initrd table of the same OEM ids and a higher OEM revision.

    >>> srat = _acpi_table(b"SRAT", b"\\0" * SRAT_RESERVED, oem_revision=1)
    >>> new = patched_srat(srat)
    >>> len(new), ACPI_HEADER.unpack_from(new)[6], sum(new) % 256
    (88, 2, 0)
    """
    header = ACPI_HEADER.unpack_from(qemu_srat)
    signature, length = header[0], header[1]
    if signature != b"SRAT" or length != len(qemu_srat):
        raise ValueError(f"not a whole SRAT table: signature {signature!r}, "
                         f"length {length} of {len(qemu_srat)} bytes")
    entry = SRAT_MEMORY_AFFINITY.pack(
        SRAT_TYPE_MEMORY, SRAT_MEMORY_AFFINITY.size, 0, 0,
        FLASH_START & 0xFFFFFFFF, FLASH_START >> 32,
        (FLASH_END - FLASH_START) & 0xFFFFFFFF, (FLASH_END - FLASH_START) >> 32,
        0, SRAT_MEM_ENABLED, 0)
    body = qemu_srat[ACPI_HEADER.size:] + entry
    _, _, revision, _, oem_id, oem_table_id, oem_revision, creator_id, creator_revision = header
    return _acpi_table(signature, body, oem_id, oem_table_id, oem_revision + 1,
                       creator_id, creator_revision, revision)


def _acpi_table(signature: bytes, body: bytes, oem_id: bytes = b"BOCHS ",
                oem_table_id: bytes = b"BXPC    ", oem_revision: int = 1,
                creator_id: bytes = b"BXPC", creator_revision: int = 1,
                revision: int = 3) -> bytes:
    """An ACPI table with a correct length and checksum."""
    length = ACPI_HEADER.size + len(body)
    unsummed = ACPI_HEADER.pack(signature, length, revision, 0, oem_id, oem_table_id,
                                oem_revision, creator_id, creator_revision) + body
    checksum = (-sum(unsummed)) & 0xFF
    return unsummed[:9] + bytes([checksum]) + unsummed[10:]


def acpi_override_cpio(tables: dict[str, bytes]) -> bytes:
    """An uncompressed newc cpio of ``kernel/firmware/acpi/<name>.aml`` files,
    to be placed first in the initrd (CONFIG_ACPI_TABLE_UPGRADE scans only an
    uncompressed archive at its start).  Padded to 512 bytes so that the
    compressed initramfs appended after it starts on a block boundary.

    >>> acpi_override_cpio({"srat": b"x"})[:6], len(acpi_override_cpio({"srat": b"x"})) % 512
    (b'070701', 0)
    """
    archive = b"".join(_newc_entry(f"kernel/firmware/acpi/{name}.aml", data, ino)
                       for ino, (name, data) in enumerate(sorted(tables.items()), 1))
    archive += _newc_entry("TRAILER!!!", b"", 0, mode=0)
    return archive + bytes(-len(archive) % 512)


def _newc_entry(name: str, data: bytes, ino: int, mode: int = 0o100644) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    padded_name = header + encoded
    padded_name += bytes(-len(padded_name) % 4)
    return padded_name + data + bytes(-len(data) % 4)


# --- boot log parsing -------------------------------------------------------

# efi=debug lines from arm64's reserve_regions() (drivers/firmware/efi/efi-init.c;
# the bracket is efi_md_typeattr_format()), one per UEFI descriptor, e.g.
# efi:   0x000004000000-0x000007ffffff [MMIO        |RUN|  |  |  |  |  |  |  |  |  |   |  |  |WC|  ]
# 5.10 appends "*" to the descriptors it adds as memory.
EFI_MEMMAP_LINE = re.compile(
    r"efi:\s+0x([0-9a-f]+)-0x([0-9a-f]+) \[([^|\]]+)\|([^\]]*)\]")


def parse_efi_memmap(console_log: str) -> list[dict]:
    """The UEFI memory map the kernel printed with ``efi=debug``, as
    ``{"type", "start", "end", "attrs"}`` with ``end`` inclusive, as printed.

    >>> log = ("[    0.000000] efi:   0x000004000000-0x000007ffffff [MMIO        |RUN|  |  |  |  |  |"
    ...        "  |  |  |  |   |  |  |WC|  ]\\n")
    >>> parse_efi_memmap(log)
    [{'type': 'MMIO', 'start': 67108864, 'end': 134217727, 'attrs': ['RUN', 'WC']}]
    """
    return [{"type": m[3].strip(), "start": int(m[1], 16), "end": int(m[2], 16),
             "attrs": [a.strip() for a in m[4].split("|") if a.strip()]}
            for m in EFI_MEMMAP_LINE.finditer(console_log)]
