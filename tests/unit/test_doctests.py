"""The examples in the engine's docstrings are run, so they stay true."""

import doctest
import importlib
import pkgutil

import pytest

from drgn_hotplug import checks, kernels, model, ranges, reader, report, selfcheck, vmcoreinfo
from vmcores import kdump_recompress, proven

# Every module of the reader package, found rather than listed, so a new one
# cannot go untested.
READER_MODULES = [importlib.import_module(f"{reader.__name__}.{info.name}")
                  for info in pkgutil.iter_modules(reader.__path__)]


@pytest.mark.parametrize("module", [checks, kernels, model, ranges, report, selfcheck, vmcoreinfo, proven,
                                    kdump_recompress, *READER_MODULES],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0
