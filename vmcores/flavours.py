"""Flavour scenarios: the ways memory is hot-plugged besides ACPI DIMMs (issue 14).

A flavour is a scenario (vmcores.scenarios.Scenario) that may also give QEMU
arguments of its own (a virtio-mem device, ...) and record what its flavour
adds to the guest's truth (``truth.json`` key ``flavour``). Flavours live in
this module, not in scenarios.py, because a cell's hash covers the files that
make it: a flavour's change rebuilds only the flavour cells
(vmcores.cells.bed_hash).

- ``offline``: two DIMMs hot-added and onlined; the node 1 DIMM's blocks are
  then offlined but not removed (blocks offline, sections present, no
  node link lost).

Example:
    >>> FLAVOURS["offline"].arches
    ('x86_64', 'arm64')
    >>> FLAVOURS["offline"].qemu_args("x86_64")
    []
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .scenarios import LiveGuest, Scenario, add_two_dimms


def no_qemu_args(arch: str) -> list[str]:
    return []


def no_flavour_truth(g: LiveGuest) -> dict:
    return {}


@dataclass
class Flavour(Scenario):
    """A scenario with QEMU arguments of its own (per arch) and flavour facts for its truth."""

    qemu_args: Callable[[str], list[str]] = no_qemu_args
    flavour_truth: Callable[[LiveGuest], dict] = no_flavour_truth
    # Series ids the flavour runs on ("newest": the arch's newest series);
    # the issue asks for 6.1 and the newest, which keeps the bed's size down.
    series: tuple[str, ...] = ("6.1", "newest")

    def runs_on(self, arch: str, kernel: str, kernels: list[str]) -> bool:
        """Whether the flavour has a cell for this series of ``kernels`` (oldest first).

        >>> FLAVOURS["offline"].runs_on("x86_64", "7.x", ["5.10", "6.1", "7.x"])
        True
        >>> FLAVOURS["offline"].runs_on("x86_64", "5.10", ["5.10", "6.1", "7.x"])
        False
        """
        wanted = {kernels[-1] if s == "newest" else s for s in self.series}
        return arch in self.arches and kernel in wanted


def offline_steps(g: LiveGuest) -> None:
    first = add_two_dimms(g)
    for block in first["blocks"]:
        g.offline(block)


FLAVOURS = {
    f.name: f
    for f in (
        Flavour("offline", ("x86_64", "arm64"), offline_steps),
    )
}
