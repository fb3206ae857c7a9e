"""VMCOREINFO parsing, on the note of a real Debian 6.1.0-56 amd64 dump."""

from pathlib import Path

import pytest

from drgn_hotplug.vmcoreinfo import derive_constants, parse_kernel_version, parse_vmcoreinfo

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def x86_61():
    return parse_vmcoreinfo((DATA / "vmcoreinfo-x86_64-6.1.0-56.txt").read_text())


def test_real_x86_61_note(x86_61):
    assert x86_61.osrelease == "6.1.0-56-cloud-amd64"
    assert x86_61.symbols["mem_section"] == 0xffff88803ffdb000
    assert x86_61.lengths["mem_section"] == 2048        # NR_SECTION_ROOTS
    assert x86_61.sizes["mem_section"] == 16
    assert x86_61.offsets["mem_section.section_mem_map"] == 0
    assert x86_61.lengths["node_data"] == 1024          # MAX_NUMNODES
    assert x86_61.numbers["PAGE_OFFLINE_MAPCOUNT_VALUE"] == -257
    assert x86_61.values["BUILD-ID"] == "3b43fad5034874490492495d552c0af6a5fab235"
    assert x86_61.bad_lines == ()


def test_real_x86_61_constants(x86_61):
    c = derive_constants(x86_61)
    assert (c.page_size, c.section_size_bits, c.max_physmem_bits) == (4096, 27, 46)
    # NR_MEM_SECTIONS = 1 << (46 - 27); with 128 sections per root (4 KiB
    # page / 16-byte mem_section) that is LENGTH(mem_section) = 2048 roots.
    assert c.nr_mem_sections == 1 << 19 == 2048 * (4096 // 16)
    assert c.kaslr_offset == 0


def test_arm64_style_numbers_and_kaslr():
    # arm64 prints some NUMBERs as 0x%llx; KERNELOFFSET is always %lx.
    info = parse_vmcoreinfo("OSRELEASE=5.10.0-32-cloud-arm64\nPAGESIZE=4096\n"
                            "NUMBER(VA_BITS)=48\nNUMBER(kimage_voffset)=0xffff8000d7e00000\n"
                            "NUMBER(PHYS_OFFSET)=0x40000000\nKERNELOFFSET=57e00000\n"
                            "NUMBER(SECTION_SIZE_BITS)=30\nNUMBER(MAX_PHYSMEM_BITS)=48\n"
                            "CRASHTIME=1764094963\n\0\0\0")
    assert info.numbers["kimage_voffset"] == 0xffff8000d7e00000
    assert info.numbers["PHYS_OFFSET"] == 0x40000000
    assert info.kaslr_offset == 0x57e00000
    assert info.crashtime == 1764094963
    assert derive_constants(info).nr_mem_sections == 1 << 18


def test_garbage_is_kept_aside_not_fatal():
    info = parse_vmcoreinfo("SYMBOL(x)=zz\nno equals sign\nSIZE(page)=64\n\x1b[2J=1\n")
    assert info.sizes == {"page": 64}
    assert info.bad_lines == ("SYMBOL(x)=zz", "no equals sign")
    assert derive_constants(info).section_size_bits is None


@pytest.mark.parametrize("release, uts, expected", [
    # Debian drops the sublevel from the release; the UTS version has it.
    ("6.1.0-56-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)", (6, 1, 192)),
    ("5.10.0-32-cloud-arm64", "#1 SMP Debian 5.10.223-1 (2024-08-10)", (5, 10, 223)),
    ("6.12.117+deb12-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1~deb12u1",
     (6, 12, 117)),
    # A Debian string for another series (e.g. a backport rebuilt) is ignored.
    ("6.1.0-56-cloud-amd64", "#1 SMP Debian 5.10.223-1", (6, 1, 0)),
    ("6.8.0-49-generic", "#49-Ubuntu SMP PREEMPT_DYNAMIC Mon Nov  4 02:06:24 UTC 2024",
     (6, 8, 0)),
    ("5.4.0", None, (5, 4, 0)),
])
def test_parse_kernel_version(release, uts, expected):
    assert parse_kernel_version(release, uts) == expected


def test_unparseable_release_is_a_one_line_error():
    with pytest.raises(ValueError, match="cannot parse a kernel version"):
        parse_kernel_version("\x1b[31mgarbage")
