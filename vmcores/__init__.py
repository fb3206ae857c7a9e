"""The real-kernel test bed: Debian kernels under QEMU, memory hotplug, vmcores and ground truth.

    >>> import vmcores
    >>> cell = vmcores.build_cell("x86_64", "6.1", "orphan")     # doctest: +SKIP
    >>> cell.kdump, cell.vmlinux, cell.truth["dangling_links"]    # doctest: +SKIP
"""

from .cells import KERNELS, Cell, build_cell, matrix, start_live
from .packages import SERIES, series
from .scenarios import LiveGuest

__all__ = ["KERNELS", "SERIES", "Cell", "LiveGuest", "build_cell", "matrix", "series", "start_live"]
