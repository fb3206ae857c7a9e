"""read_sections on a hand-made memory image: columns, subsection maps read
along runs of ascending usage addresses or in address order, and the
unreadable ones."""

import pytest

from drgn_hotplug.reader.mmzone import SECTIONS_PER_RUN_TO_SORT, SectionLayout, read_sections
from drgn_hotplug.reader.target import ReadError
from drgn_hotplug.model import Section, SectionTable

# x86_64 6.1: struct mem_section is 16 bytes (section_mem_map, usage); the
# subsection map sits at offset 16 of struct mem_section_usage (56 bytes).
LAYOUT = SectionLayout(sizeof_section=16, usage_offset=8, subsection_map_offset=16,
                       subsection_map_bytes=8,
                       flag_bits={"MARKED_PRESENT": 0, "HAS_MEM_MAP": 1, "IS_ONLINE": 2,
                                  "IS_EARLY": 3, "TAINT_ZONE_DEVICE": 4})
EARLY, HOT, PRESENT_ONLY = 0b1111, 0b0111, 0b0001
ROOTS, ROOT0, ROOT1 = 0xffff888000001000, 0xffff888000010000, 0xffff888000020000
EARLY_USAGES, HOT_USAGES, BAD_USAGE = 0xffff888000100000, 0xffff888000200000, 0xffff888000900000
MEM_MAP = 0xffffea0000000000


class Memory:
    """A target whose readable bytes are a few segments."""

    def __init__(self, segments):
        self.segments = segments

    def read(self, address, size):
        for start, data in self.segments.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start:address - start + size]
        raise ReadError(address, size, "not in the image")


def words(*values):
    return b"".join(v.to_bytes(8, "little") for v in values)


def section_words(entries, count=256):
    """A root's bytes: (mem_map, usage) at the given section indexes."""
    data = bytearray(16 * count)
    for index, (mem_map, usage) in entries.items():
        data[16 * index:16 * index + 16] = words(mem_map, usage)
    return bytes(data)


def usage(subsection_map):
    return bytes(16) + words(subsection_map) + bytes(32)


def image(early_sections=4):
    early = {nr: (MEM_MAP + EARLY, EARLY_USAGES + 56 * nr) for nr in range(early_sections)}
    # Hot-added sections: kmalloc'ed usages, the second below the first.
    hot = {0: (MEM_MAP + HOT, HOT_USAGES + 64), 1: (MEM_MAP + HOT, HOT_USAGES),
           2: (MEM_MAP + HOT, BAD_USAGE), 3: (MEM_MAP + PRESENT_ONLY, 0)}
    return Memory({
        ROOTS: words(ROOT0, 0, ROOT1) + bytes(8 * 2045),
        ROOT0: section_words(early), ROOT1: section_words(hot),
        EARLY_USAGES: b"".join(usage((1 << 64) - 1) for _ in range(early_sections)),
        HOT_USAGES: usage(0xff) + bytes(8) + usage(0xf)})


# The usages ascend in three runs (the early array and the first hot one, the
# second hot one and the bad pointer, NULL): 4 early sections make the runs
# short, so the maps are read in address order; 100 make them long.
@pytest.mark.parametrize("early_sections", [4, 100])
def test_sections_come_in_number_order_with_their_own_subsection_maps(early_sections):
    assert (3 * SECTIONS_PER_RUN_TO_SORT <= early_sections + 4) == (early_sections == 100)
    unreadable = []
    table = read_sections(image(early_sections), ROOTS, True, 1 << 19, 4096, LAYOUT, unreadable)
    assert list(table.nrs) == list(range(early_sections)) + [512, 513, 514, 515]
    hot_maps = [0xf, 0xff, None, None]
    assert list(table.subsection_maps) == [(1 << 64) - 1] * early_sections + hot_maps
    assert table.find(513) == Section(513, ROOT1 + 16, MEM_MAP + HOT,
                                      frozenset({"MARKED_PRESENT", "HAS_MEM_MAP", "IS_ONLINE"}),
                                      HOT_USAGES, 0xff)
    assert table.find(515).usage_address is None and not table.find(515).valid
    assert table.numbers_where(lambda flags: "IS_EARLY" in flags) == list(range(early_sections))
    # Only the bad pointer is unreadable; the NULL usage is no read at all.
    assert [(u.what, u.address) for u in unreadable] == [
        ("mem_section_usage.subsection_map", BAD_USAGE + 16)]


def test_a_table_equals_the_list_of_its_sections_and_gives_their_plain_dicts():
    table = read_sections(image(), ROOTS, True, 1 << 19, 4096, LAYOUT, [])
    sections = list(table)
    assert len(sections) == 8
    assert table == sections[::-1] and SectionTable.of(sections[::-1]) == table
    assert table[-1] == sections[-1] and table[1:3] == sections[1:3]
    assert table.to_dicts()[4] == {
        "nr": 512, "address": ROOT1, "mem_map": MEM_MAP + HOT,
        "flags": ["HAS_MEM_MAP", "IS_ONLINE", "MARKED_PRESENT"], "usage_address": HOT_USAGES + 64,
        "subsection_map": 0xf}
