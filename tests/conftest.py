"""Fixtures over the real-kernel test bed (vmcores/).

Use ``get_cell(arch, kernel, scenario)`` in a test, or parametrize ``cell`` indirectly:

    @pytest.mark.parametrize("cell", [("x86_64", "6.1", "orphan")], indirect=True, ids=str)
    def test_something(cell):
        prog = drgn.program_from_core_dump(...)  # cell.kdump, cell.vmlinux, cell.truth

Cells are built on first use (about a minute each for x86_64, four for arm64)
and then reused from the on-disk cache, so tests using them are marked slow
by the ``bed``/``slow`` markers of their modules.
"""

from __future__ import annotations

import pytest

import vmcores


@pytest.fixture(scope="session")
def get_cell():
    """``get_cell(arch, kernel, scenario) -> vmcores.Cell``, built or reused once per session."""
    cells: dict[tuple[str, str, str], vmcores.Cell] = {}

    def get(arch: str, kernel: str, scenario: str) -> vmcores.Cell:
        key = (arch, kernel, scenario)
        if key not in cells:
            cells[key] = vmcores.build_cell(*key)
        return cells[key]

    return get


@pytest.fixture
def cell(request, get_cell) -> vmcores.Cell:
    """The cell named by an indirect parameter ``(arch, kernel, scenario)``."""
    return get_cell(*request.param)
