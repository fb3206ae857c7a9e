"""The ways memory is hot-plugged besides ACPI DIMMs (issue 14), on the
bed's real kernels: the ``iomem_resource`` tree the readers build equals
the guest's /proc/iomem on every cell, flavour cells included (a
driver-managed "System RAM (kmem)" is what names dax_kmem's memory).
"""

from __future__ import annotations

import pytest

from test_matrix import CELLS, cell, model_of

pytestmark = [pytest.mark.bed, pytest.mark.slow]


def truth_tree(truth: dict) -> list:
    return [(r["start"], r["end"], r["name"], r["depth"]) for r in truth["iomem"]]


def truth_system_ram(truth: dict) -> set:
    """/proc/iomem's "System RAM" lines: boot memory, hot-added DIMMs, and
    "System RAM (driver)" for memory a driver added (add_memory_driver_managed()
    requires that name)."""
    return {(r["start"], r["end"], r["name"]) for r in truth["iomem"] if r["name"].startswith("System RAM")}


@pytest.mark.parametrize("key", CELLS, ids="-".join)
def test_iomem_equals_proc_iomem(key):
    truth, model = cell(key).truth, model_of(key)
    assert [(r.start, r.end, r.name, r.depth) for r in model.iomem] == truth_tree(truth)
    system_ram = {(r.start, r.end, r.name) for r in model.iomem
                  if r.system_ram and r.name.startswith("System RAM")}
    assert system_ram == truth_system_ram(truth)
    assert {(r.start, r.end, r.name) for r in model.iomem if r.driver_managed} == \
        {(s, e, name) for s, e, name in truth_system_ram(truth) if name != "System RAM"}
