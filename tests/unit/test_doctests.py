"""The examples in the engine's docstrings are run, so they stay true."""

import doctest

import pytest

from drgn_hotplug import checks, kernels, layout, model, ranges, report, vmcoreinfo


@pytest.mark.parametrize("module", [checks, kernels, layout, model, ranges, report, vmcoreinfo],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0
