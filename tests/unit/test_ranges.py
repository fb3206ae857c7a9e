"""Pfn interval algebra, checked against plain Python sets on random input."""

import random

import pytest

from drgn_hotplug.ranges import (RangeSet, bitmap_runs, consecutive_runs, from_byte_regions,
                                 from_section_numbers, labelled_runs, subsection_ranges)


def random_ranges(rng, n=12, span=200):
    out = []
    for _ in range(n):
        start = rng.randrange(span)
        out.append((start, start + rng.randrange(1, 20)))
    return out


def as_set(ranges):
    return {p for s, e in ranges for p in range(s, e)}


@pytest.mark.parametrize("seed", range(40))
def test_operations_match_python_sets(seed):
    rng = random.Random(seed)
    a_ranges, b_ranges = random_ranges(rng), random_ranges(rng)
    a, b = RangeSet(a_ranges), RangeSet(b_ranges)
    sa, sb = as_set(a_ranges), as_set(b_ranges)
    assert as_set(a | b) == sa | sb
    assert as_set(a & b) == sa & sb
    assert as_set(a - b) == sa - sb
    for result in (a | b, a & b, a - b):
        # Canonical form: sorted, disjoint and never touching.
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(result.ranges, result.ranges[1:]))
        assert all(s < e for s, e in result.ranges)
    probe = rng.randrange(220)
    assert (probe in a) == (probe in sa)
    lo, hi = sorted((rng.randrange(220), rng.randrange(220)))
    assert as_set(a.overlapping(lo, hi)) == {p for p in sa if lo <= p < hi}


def test_touching_ranges_coalesce_and_empty_ranges_vanish():
    assert RangeSet([(0, 4), (4, 8), (10, 10), (9, 9)]).ranges == ((0, 8),)
    assert not RangeSet([(5, 5)])


def test_sections_to_pfns_x86_128m_sections():
    # SECTION_SIZE_BITS 27 with 4 KiB pages: 32768 pfns per section; the
    # hot-added DIMM at 0x100000000 is sections 32 and 33.
    assert from_section_numbers([32, 33], 15).ranges == ((0x100000, 0x110000),)


@pytest.mark.parametrize("seed", range(40))
def test_consecutive_runs_match_a_number_by_number_walk(seed):
    # Sparse, dense and mixed ascending numbers: runs of every length,
    # including lone numbers and one run reaching the end.
    rng = random.Random(seed)
    count = rng.randrange(300)
    numbers = sorted(rng.sample(range(count + rng.randrange(count + 2)), count))
    walked = []
    for nr in numbers:
        if walked and walked[-1][1] == nr:
            walked[-1] = (walked[-1][0], nr + 1)
        else:
            walked.append((nr, nr + 1))
    assert list(consecutive_runs(numbers)) == walked


def test_byte_regions_round_to_the_pfn_whose_first_byte_is_inside():
    # arm64 6.1's SRAT override: a 244-byte NOMAP region at 0xbfbfb000 then
    # RAM from 0xbfbfb0f4: memblock_is_map_memory(PFN_PHYS(0xbfbfb)) sees
    # the NOMAP region, so pfn 0xbfbfb belongs to it alone.
    nomap = from_byte_regions([(0xbfbfb000, 0xbfbfb0f4)], 12)
    ram = from_byte_regions([(0xbfbfb0f4, 0xc0000000)], 12)
    assert nomap.ranges == ((0xbfbfb, 0xbfbfc),)
    assert ram.ranges == ((0xbfbfc, 0xc0000),)


def test_subsection_map_of_the_pmem_section():
    # memmap=0x7fe0000!0x38000000: section 7, last of 64 subsections inactive.
    assert list(subsection_ranges(7, (1 << 63) - 1, 15, 9)) == [(0x38000, 0x3fe00)]
    assert list(bitmap_runs(0)) == []
    assert list(bitmap_runs((1 << 512) - 1)) == [(0, 512)]


def test_labelled_runs_merge_only_equal_neighbours():
    runs = labelled_runs([(10, 20, "nomap"), (0, 10, "hole"), (20, 30, "nomap"),
                          (31, 40, "nomap")])
    assert runs == [(0, 10, "hole"), (10, 30, "nomap"), (31, 40, "nomap")]


def test_64_tb_of_sections_stays_range_sized():
    # 64 TiB in 128 MiB sections: 512 K sections, 16 G pfns. Every other
    # section missing gives 256 K ranges; the algebra must not expand pfns.
    nrs = range(0, 1 << 19, 2)
    sections = from_section_numbers(nrs, 15)
    assert len(sections) == 1 << 18
    assert sum(e - s for s, e in sections) == (1 << 18) * (1 << 15)
    everything = RangeSet([(0, 1 << 34)])
    holes = everything - sections
    assert len(holes) == 1 << 18
    assert (holes | sections) == everything
    assert not (holes & sections)
