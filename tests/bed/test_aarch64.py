"""vmcores.aarch64: the SRAT fix and the UEFI map, on QEMU's real table and a real boot."""

from __future__ import annotations

import struct

import pytest

from vmcores import aarch64

pytestmark = pytest.mark.bed

# The SRAT QEMU 7.2 builds for aarch64.machine_args() (2 vCPUs, nodes of 1 GiB
# at 0x40000000 and 0x80000000, hotplug space from 0xc0000000 on node 1), as
# read from /sys/firmware/acpi/tables/SRAT in the guest.
QEMU_SRAT = bytes.fromhex(
    "53524154cc000000035a424f4348532042585043202020200100000042585043010000000100000000000000"
    "0000000003120000000000000000010000000000000003120000000001000000010000000000000001280000"
    "0000000000000040000000000000004000000000000000000100000000000000000000000128010000000000"
    "00000080000000000000004000000000000000000100000000000000000000000128010000000000000000c0"
    "00000000000000800200000000000000030000000000000000000000")


def srat_memory_entries(table: bytes) -> list[tuple[int, int, int, int]]:
    """(node, base, length, flags) of each Memory Affinity structure."""
    entries, pos = [], aarch64.ACPI_HEADER.size + aarch64.SRAT_RESERVED
    while pos < len(table):
        kind, length = table[pos], table[pos + 1]
        if kind == aarch64.SRAT_TYPE_MEMORY:
            node, base_lo, base_hi, len_lo, len_hi, flags = struct.unpack_from("<I2xIIII4xI", table, pos + 2)
            entries.append((node, base_hi << 32 | base_lo, len_hi << 32 | len_lo, flags))
        pos += length
    return entries


def test_patched_srat_adds_flash_to_node0_and_stays_valid():
    new = aarch64.patched_srat(QEMU_SRAT)
    header = aarch64.ACPI_HEADER.unpack_from(new)
    old = aarch64.ACPI_HEADER.unpack_from(QEMU_SRAT)
    assert header[1] == len(new) == len(QEMU_SRAT) + 40
    assert sum(new) % 256 == 0
    assert header[6] == old[6] + 1                        # OEM revision: an upgrade
    assert (header[4], header[5]) == (old[4], old[5])     # same OEM ids, or no match
    assert srat_memory_entries(new) == srat_memory_entries(QEMU_SRAT) + [(0, 0x04000000, 0x04000000, 1)]


def test_patched_srat_refuses_other_tables():
    with pytest.raises(ValueError, match="not a whole SRAT"):
        aarch64.patched_srat(b"APIC" + QEMU_SRAT[4:])
    with pytest.raises(ValueError, match="not a whole SRAT"):
        aarch64.patched_srat(QEMU_SRAT[:-4])


def read_newc(archive: bytes) -> dict[str, bytes]:
    files, pos = {}, 0
    while True:
        assert archive[pos:pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name = archive[pos + 110:pos + 110 + namesize - 1].decode()
        data_at = pos + 110 + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return files
        files[name] = archive[data_at:data_at + size]
        pos = data_at + size + (-size % 4)


def test_acpi_override_cpio_holds_the_tables_where_the_kernel_looks():
    srat = aarch64.patched_srat(QEMU_SRAT)
    archive = aarch64.acpi_override_cpio({"srat": srat})
    assert read_newc(archive) == {"kernel/firmware/acpi/srat.aml": srat}
    assert len(archive) % 512 == 0


@pytest.fixture(scope="module")
def arm64_cell():
    import vmcores

    return vmcores.build_cell("arm64", "6.1", "boot")


@pytest.mark.slow
def test_srat_upgrade_gives_two_numa_nodes(arm64_cell):
    console = arm64_cell.console_log.read_text(errors="replace")
    assert "ACPI: Table Upgrade: override [SRAT-" in console
    assert "ACPI: SRAT: Node 0 PXM 0 [mem 0x04000000-0x07ffffff]" in console
    assert "Faking a node" not in console
    assert {n["node"] for n in arm64_cell.truth["nodes"] if n["online"]} == {0, 1}


@pytest.mark.slow
def test_efi_runtime_and_flash_regions_are_nomap_in_memblock(arm64_cell):
    console = arm64_cell.console_log.read_text(errors="replace")
    efi = aarch64.parse_efi_memmap(console)
    flash = [e for e in efi if e["type"] == "MMIO" and e["start"] == aarch64.FLASH_START]
    assert flash and flash[0]["end"] == aarch64.FLASH_END - 1 and "RUN" in flash[0]["attrs"]
    runtime = [e for e in efi if e["type"].startswith("Runtime") and "RUN" in e["attrs"]]
    assert runtime
    nomap = [(r["base"], r["base"] + r["size"]) for r in arm64_cell.truth["memblock_boot"]["memory"]
             if r["flags"] & 0x4]
    for e in flash + runtime:
        assert any(start <= e["start"] and e["end"] < end for start, end in nomap), e
