"""A small API for drgn scripts and the drgn REPL.

    >>> from drgn_hotplug import api                       # doctest: +SKIP
    >>> [f.kind for f in api.check(prog)]
    ['orphaned-link', 'orphaned-link']
    >>> api.explain(prog, 0x100000)["memory_block"]["exists"]
    False

Each call reads the kernel afresh (a live kernel changes between calls);
pass a model from :func:`read_model` to :func:`drgn_hotplug.checks` functions
to reuse one reading.
"""

from __future__ import annotations

from typing import Any, Dict, List

from . import checks
from .drgn_reader import read_model
from .model import Finding

__all__ = ["check", "explain", "read_model"]


def check(prog) -> List[Finding]:
    """Every finding for the kernel behind ``prog`` (a ``drgn.Program``)."""
    return checks.run_checks(read_model(prog))


def explain(prog, pfn: int) -> Dict[str, Any]:
    """Every predicate for one pfn, with the kernel objects behind it."""
    return checks.explain(read_model(prog), pfn)
