"""Pfn interval algebra on sorted, coalesced, half-open ranges.

Checks reason about sets of pfns, but a 64 TB machine has 16 G pfns and
512 K sections: every operation here costs O(n log n) in the number of
ranges, never anything per pfn.

>>> a = RangeSet([(0, 10), (20, 30)])
>>> b = RangeSet([(5, 25)])
>>> (a & b).ranges, (a - b).ranges, (a | b).ranges
(((5, 10), (20, 25)), ((0, 5), (25, 30)), ((0, 30),))
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

Range = Tuple[int, int]


class RangeSet:
    """An immutable set of pfns stored as sorted, disjoint, non-adjacent
    half-open ranges.

    >>> RangeSet([(8, 9), (0, 4), (4, 6)]).ranges
    ((0, 6), (8, 9))
    >>> 5 in RangeSet([(0, 6)]), 6 in RangeSet([(0, 6)])
    (True, False)
    """

    __slots__ = ("ranges", "_starts")

    def __init__(self, ranges: Iterable[Range] = ()):
        self.ranges: Tuple[Range, ...] = tuple(_coalesce(sorted(
            (s, e) for s, e in ranges if s < e)))
        self._starts = [s for s, _ in self.ranges]

    @classmethod
    def _from_coalesced(cls, ranges: List[Range]) -> "RangeSet":
        new = cls.__new__(cls)
        new.ranges = tuple(ranges)
        new._starts = [s for s, _ in ranges]
        return new

    def __iter__(self) -> Iterator[Range]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        inner = ", ".join(f"({s:#x}, {e:#x})" for s, e in self.ranges)
        return f"RangeSet([{inner}])"

    def __contains__(self, pfn: int) -> bool:
        return self.find(pfn) is not None

    def find(self, pfn: int) -> Optional[Range]:
        """The range holding ``pfn``, or None.

        >>> RangeSet([(0, 4), (8, 12)]).find(9)
        (8, 12)
        """
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i >= 0 and pfn < self.ranges[i][1]:
            return self.ranges[i]
        return None

    def __or__(self, other: "RangeSet") -> "RangeSet":
        merged = heapq.merge(self.ranges, other.ranges)
        return RangeSet._from_coalesced(list(_coalesce(merged)))

    def __and__(self, other: "RangeSet") -> "RangeSet":
        return RangeSet._from_coalesced(_intersect(self.ranges, other.ranges))

    def __sub__(self, other: "RangeSet") -> "RangeSet":
        return RangeSet._from_coalesced(_subtract(self.ranges, other.ranges))

    def overlapping(self, start: int, end: int) -> "RangeSet":
        """The part of the set inside [start, end), found by bisection.

        >>> RangeSet([(0, 4), (8, 12), (20, 30)]).overlapping(3, 9).ranges
        ((3, 4), (8, 9))
        """
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for s, e in self.ranges[i:]:
            if s >= end:
                break
            if e > start:
                out.append((max(s, start), min(e, end)))
        return RangeSet._from_coalesced(out)

    def intersects(self, start: int, end: int) -> bool:
        return bool(self.overlapping(start, end))


def _coalesce(ranges: Iterable[Range]) -> Iterator[Range]:
    """Merge sorted ranges that overlap or touch."""
    cur_s = cur_e = None
    for s, e in ranges:
        if cur_e is not None and s <= cur_e:
            cur_e = max(cur_e, e)
            continue
        if cur_e is not None:
            yield cur_s, cur_e
        cur_s, cur_e = s, e
    if cur_e is not None:
        yield cur_s, cur_e


def _intersect(a: Sequence[Range], b: Sequence[Range]) -> List[Range]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        s = max(a[i][0], b[j][0])
        e = min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _subtract(a: Sequence[Range], b: Sequence[Range]) -> List[Range]:
    out, j = [], 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > s:
                out.append((s, b[k][0]))
            s = max(s, b[k][1])
            if s >= e:
                break
            k += 1
        if s < e:
            out.append((s, e))
    return out


def from_section_numbers(numbers: Iterable[int], pfn_section_shift: int) -> RangeSet:
    """The pfns of a set of sections, numbered in any order.

    >>> from_section_numbers([3, 1, 2, 7, 2], 15).ranges
    ((32768, 131072), (229376, 262144))
    """
    return from_ascending_section_numbers(sorted(set(numbers)), pfn_section_shift)


def from_ascending_section_numbers(ordered: Sequence[int], pfn_section_shift: int) -> RangeSet:
    """The pfns of the sections numbered ``ordered`` (ascending, without
    repeats, as a SectionTable lists them): one range per run of
    consecutive numbers.

    >>> from_ascending_section_numbers([1, 2, 3, 7], 15).ranges
    ((32768, 131072), (229376, 262144))
    """
    return RangeSet._from_coalesced([(first << pfn_section_shift, end << pfn_section_shift)
                                     for first, end in consecutive_runs(ordered)])


def consecutive_runs(ordered: Sequence[int]) -> Iterator[Range]:
    """(first, last + 1) of each run of consecutive numbers in an ascending
    sequence without repeats.

    Along the sequence, number minus index never decreases and stays put
    exactly inside a run, so each run's end is found by galloping then
    bisecting: 512K present sections in a few hundred runs cost a few
    thousand steps, and a lone number costs one.

    >>> list(consecutive_runs([1, 2, 3, 7, 9, 10]))
    [(1, 4), (7, 8), (9, 11)]
    """
    i, count = 0, len(ordered)
    while i < count:
        offset = ordered[i] - i
        last, step = i, 1  # ordered[last] is in the run; ordered[last + step] is to be tried
        while last + step < count and ordered[last + step] - (last + step) == offset:
            last += step
            step *= 2
        beyond = min(last + step, count)  # not in the run, or the end
        while beyond - last > 1:
            middle = (last + beyond) // 2
            if ordered[middle] - middle == offset:
                last = middle
            else:
                beyond = middle
        yield ordered[i], ordered[last] + 1
        i = last + 1


def from_byte_regions(regions: Iterable[Tuple[int, int]], page_shift: int) -> RangeSet:
    """The pfns whose first byte lies in one of the [base, end) byte ranges.

    That is the kernel's test: ``memblock_is_map_memory(PFN_PHYS(pfn))``
    asks about the pfn's first byte only.

    >>> from_byte_regions([(0x1800, 0x4000)], 12).ranges
    ((2, 4),)
    """
    mask = (1 << page_shift) - 1
    return RangeSet(((base + mask) >> page_shift, (end + mask) >> page_shift)
                    for base, end in regions)


def bitmap_runs(bitmap: int) -> Iterator[Range]:
    """Runs of set bits as half-open (first, last + 1) bit indexes, in
    O(number of runs) big-int operations.

    >>> list(bitmap_runs(0b1110_0110))
    [(1, 3), (5, 8)]
    """
    offset = 0
    while bitmap:
        low = (bitmap & -bitmap).bit_length() - 1
        bitmap >>= low
        offset += low
        ones = (~bitmap & (bitmap + 1)).bit_length() - 1
        yield offset, offset + ones
        bitmap >>= ones
        offset += ones


def subsection_ranges(section_nr: int, bitmap: int, pfn_section_shift: int,
                      pfn_subsection_shift: int) -> Iterator[Range]:
    """The pfn ranges of the active subsections of one section, in order.

    >>> list(subsection_ranges(1, 0b1011, 15, 9))
    [(32768, 33792), (34304, 34816)]
    """
    base = section_nr << pfn_section_shift
    for s, e in bitmap_runs(bitmap):
        yield base + (s << pfn_subsection_shift), base + (e << pfn_subsection_shift)


def labelled_runs(pieces: Iterable[Tuple[int, int, Any]]) -> List[Tuple[int, int, Any]]:
    """Sort disjoint (start, end, label) pieces and merge neighbours that
    touch and carry equal labels.

    >>> labelled_runs([(4, 8, "a"), (0, 4, "a"), (8, 9, "b")])
    [(0, 8, 'a'), (8, 9, 'b')]
    """
    out: List[Tuple[int, int, Any]] = []
    for s, e, label in sorted(pieces, key=lambda p: (p[0], p[1])):
        if out and out[-1][1] == s and out[-1][2] == label:
            out[-1] = (out[-1][0], e, label)
        else:
            out.append((s, e, label))
    return out
