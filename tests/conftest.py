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

import signal

import pytest

import vmcores


def pytest_configure(config):
    """Ctrl-C reaches the programs the tests interrupt (``watch``, drgn's
    prompt): a shell starts a background job with SIGINT ignored, an ignored
    signal stays ignored across exec, and Python then never raises
    KeyboardInterrupt; a handled one is reset to the default at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


# ---------------------------------------------------------------- the bed's own results

def pytest_runtest_logreport(report):
    """Remember the outcome of each matrix test (tests/test_matrix.py) per cell."""
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        key = MATRIX_KEYS.get(report.nodeid)
        if key is not None:
            reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else ""
            MATRIX_OUTCOMES.setdefault(key, {})[report.nodeid.split("::")[1].split("[")[0]] = \
                {"outcome": report.outcome, "reason": reason}


MATRIX_KEYS: dict[str, tuple[str, str, str]] = {}
MATRIX_OUTCOMES: dict[tuple[str, str, str], dict] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.module.__name__.endswith("test_matrix") and callspec and "key" in callspec.params:
            MATRIX_KEYS[item.nodeid] = tuple(callspec.params["key"])


def pytest_sessionfinish(session):
    """Merge this run's matrix outcomes, with the cells they ran on, into the
    bed's results file (``python -m vmcores.proven`` renders it)."""
    if MATRIX_OUTCOMES:
        from vmcores import proven

        proven.record(MATRIX_OUTCOMES)
