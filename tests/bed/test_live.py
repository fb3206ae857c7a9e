"""A cell started live: the scenario replays, and drgn and gdb attach to the running guest."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import vmcores

pytestmark = [pytest.mark.bed, pytest.mark.slow, pytest.mark.live]


@pytest.fixture(scope="module")
def live_orphan(get_cell):
    cell = get_cell("x86_64", "6.1", "orphan")
    with vmcores.start_live(cell) as guest:
        yield cell, guest


def test_live_replay_orphans_the_same_links(live_orphan):
    cell, guest = live_orphan
    assert guest.truth()["dangling_links"] == cell.truth["dangling_links"] != []


def test_drgn_reads_the_live_guest_over_qmp(live_orphan):
    drgn = pytest.importorskip("drgn")
    cell, guest = live_orphan
    prog = drgn.Program()
    prog.set_qemu_qmp(str(guest.drgn_qmp_socket))
    prog.load_debug_info([str(cell.vmlinux)])
    assert prog["init_uts_ns"].name.release.string_().decode() == guest.run("uname -r").strip()


@pytest.mark.skipif(not shutil.which("gdb"), reason="gdb is not installed")
def test_gdb_reads_the_live_guest_over_the_gdbstub(live_orphan):
    cell, guest = live_orphan
    out = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", f"symbol-file -o {guest.kaslr_offset:#x} {cell.vmlinux}",
         "-ex", f"target remote 127.0.0.1:{guest.gdb_port}",
         "-ex", "printf \"%s\\n\", init_uts_ns.name.release", "-ex", "detach"],
        capture_output=True, text=True, timeout=120).stdout
    assert guest.run("uname -r").strip() in out.splitlines()
