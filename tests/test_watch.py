"""``drgn-hotplug watch --qemu`` on a live bed guest (x86_64 and arm64
6.1), started before the scenario's steps are played, so it sees them happen.

One guest boot per arch: the tests run in file order on the same
guest (clean hotplug, the soak cycles, the drgn prompt, then the orphan
hot-remove, which leaves the guest broken, and last QEMU killed under
watch). Each test starts its own watch process (QMP serves one client per
socket: drgn's ``--qemu`` socket and the events
socket are free again once a watch has exited).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

import vmcores
from vmcores.scenarios import DIMM_MIB, UNLINK_FUNCTION, LiveGuest, add_two_dimms

pytest.importorskip("drgn")
pytestmark = pytest.mark.slow

INTERVAL_S = 3
# The orphaned links must be printed within this many seconds of the end of
# the hot-remove (DEVICE_DELETED seen by the bed).
ORPHAN_WITHIN_S = 5
# Hotplug cycles of the soak per arch: an arm64 cycle (1 GiB DIMM) takes
# ~8 s under TCG, an x86_64 one (256 MiB) ~1 s.
SOAK_CYCLES = {"x86_64": 20, "arm64": 4}
SOAK_RSS_GROWTH_KIB = 2048


class Watcher:
    """A ``drgn-hotplug watch --json`` process, its lines as they arrive
    (with the monotonic time each was read)."""

    def __init__(self, guest: LiveGuest, vmlinux: Path, events_socket: Path):
        self.proc = subprocess.Popen(
            ["drgn-hotplug", "--qemu", str(guest.drgn_qmp_socket), "-s", str(vmlinux), "watch",
             "--qmp-events", str(events_socket), "--json", "--interval", str(INTERVAL_S)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: List[Tuple[float, Dict]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_for(lambda line: line["event"]["source"] == "start", 120)

    def _read(self) -> None:
        for text in self.proc.stdout:
            self.lines.append((time.monotonic(), json.loads(text)))

    def wait_for(self, wanted: Callable[[Dict], bool], timeout: float, count: int = 1,
                 since: int = 0) -> float:
        """The arrival time of the ``count``-th line ``wanted`` accepts,
        among the lines from the ``since``-th on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = [when for when, line in self.lines[since:] if wanted(line)]
            if len(times) >= count:
                return times[count - 1]
            assert self.proc.poll() is None, self.proc.stderr.read()
            time.sleep(0.1)
        raise AssertionError(f"no such line within {timeout} s; lines: {self.lines}")

    def wait_for_blocks(self, what: str, blocks: List[int], since: int, timeout: float = 30) -> None:
        """Wait until the lines from the ``since``-th on have reported all
        ``blocks`` as ``what`` (blocks-added or blocks-removed): a read in
        the middle of a hot-remove may see one block of a DIMM gone and not
        yet the other."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {b for _, line in self.lines[since:] if line["change"] == what for b in line["blocks"]}
            if seen >= set(blocks):
                return
            assert self.proc.poll() is None, self.proc.stderr.read()
            time.sleep(0.1)
        raise AssertionError(f"{what} {blocks} not reported within {timeout} s; lines: {self.lines[since:]}")

    def serious(self, before: float = float("inf")) -> List[Dict]:
        return [line for when, line in self.lines
                if when < before and line["severity"] in ("error", "warning")]

    def resources(self) -> Tuple[int, int]:
        """(open file descriptors, resident KiB) of the watch process."""
        fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return fds, rss

    def stop(self) -> int:
        """Ctrl-C, and watch's exit status."""
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(30)
        self.reader.join(10)
        return status


class Bed:
    def __init__(self, cell: vmcores.Cell, guest: LiveGuest, events_socket: Path):
        self.cell, self.guest, self.events_socket = cell, guest, events_socket

    def watcher(self) -> Watcher:
        return Watcher(self.guest, self.cell.vmlinux, self.events_socket)


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def bed(request, tmp_path_factory):
    cell = vmcores.build_cell(request.param, "6.1", "orphan")
    events_socket = tmp_path_factory.mktemp("watch") / "events.sock"
    with vmcores.cells.cell_guest(cell, ("-qmp", f"unix:{events_socket},server=on,wait=off"), "watch") as guest:
        yield Bed(cell, guest, events_socket)


def blocks_line(what: str, blocks: List[int]) -> Callable[[Dict], bool]:
    return lambda line: line["change"] == what and line["blocks"] == blocks


def test_clean_hotplug_reports_blocks_and_nothing_serious(bed):
    g = bed.guest
    watcher = bed.watcher()
    try:
        first = g.hot_add(1, DIMM_MIB[g.spec.arch])
        watcher.wait_for(blocks_line("blocks-added", first["blocks"]), 30)
        second = g.hot_add(0, DIMM_MIB[g.spec.arch])
        for block in first["blocks"] + second["blocks"]:
            g.online(block)
        for block in first["blocks"]:
            g.offline(block)
        since = len(watcher.lines)
        g.hot_remove(first)
        watcher.wait_for_blocks("blocks-removed", first["blocks"], since)
        time.sleep(INTERVAL_S + 2)
    finally:
        status = watcher.stop()
    added = [line for _, line in watcher.lines if line["change"] == "blocks-added"
             and line["event"]["source"] != "start"]
    # The hot-adds were caught by their QMP event (the guest's _OST), not by the interval.
    assert sorted(b for line in added for b in line["blocks"]) == sorted(first["blocks"] + second["blocks"])
    assert {line["event"]["name"] for line in added} == {"ACPI_DEVICE_OST"}
    assert watcher.serious() == []
    assert status == 0


def test_soak_hotplug_cycles_leak_no_fds_or_memory(bed):
    g = bed.guest
    watcher = bed.watcher()

    def cycle() -> None:
        """Hot-add, online, offline, hot-remove a DIMM on node 0, each end seen by watch."""
        since = len(watcher.lines)
        added = g.hot_add(0, DIMM_MIB[g.spec.arch])
        watcher.wait_for_blocks("blocks-added", added["blocks"], since)
        for block in added["blocks"]:
            g.online(block)
        for block in added["blocks"]:
            g.offline(block)
        since = len(watcher.lines)
        g.hot_remove(added)
        watcher.wait_for_blocks("blocks-removed", added["blocks"], since)

    try:
        cycle()  # warm-up: drgn's type and symbol caches fill on the first reads
        fds_before, rss_before = watcher.resources()
        for _ in range(SOAK_CYCLES[g.spec.arch]):
            cycle()
        fds_after, rss_after = watcher.resources()
    finally:
        status = watcher.stop()
    assert fds_after == fds_before
    assert rss_after - rss_before < SOAK_RSS_GROWTH_KIB, (rss_before, rss_after)
    assert watcher.serious() == []
    assert status == 0


def test_memhp_watch_at_the_drgn_prompt_reports_a_hot_add(bed):
    pexpect = pytest.importorskip("pexpect")
    g = bed.guest
    child = pexpect.spawn("drgn", ["-q", "--qemu", str(g.drgn_qmp_socket), "-s", str(bed.cell.vmlinux)],
                          encoding="utf-8", timeout=120)
    try:
        child.expect(">>> ")
        child.sendline(f"%memhp watch --qmp-events {bed.events_socket} --interval {INTERVAL_S}")
        child.expect(r"blocks-added info memory0 .*\(after start\)")
        added = g.hot_add(0, DIMM_MIB[g.spec.arch])
        names = " ".join(f"memory{block}" for block in added["blocks"])
        child.expect(rf"blocks-added info {names} \(after qmp ACPI_DEVICE_OST {added['dimm']}\)", timeout=30)
        child.sendintr()
        child.expect(">>> ")
        assert "error" not in child.before and "warning" not in child.before
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_orphaned_links_appear_within_seconds_of_the_hot_remove(bed):
    g = bed.guest
    watcher = bed.watcher()
    try:
        first = add_two_dimms(g)
        for block in first["blocks"]:
            g.offline(block)
        g.patch_return(UNLINK_FUNCTION)
        try:
            remove_started = time.monotonic()
            g.hot_remove(first)
            removed = time.monotonic()
        finally:
            g.unpatch(UNLINK_FUNCTION)
        orphans = lambda line: line["change"] == "appeared" and \
            line["finding"]["kind"] == "orphaned-link"  # noqa: E731
        seen = watcher.wait_for(orphans, 30, count=len(first["blocks"]))
    finally:
        status = watcher.stop()
    assert seen - removed < ORPHAN_WITHIN_S
    assert watcher.serious(before=remove_started) == []
    found = [line for _, line in watcher.lines if orphans(line)]
    assert {(line["finding"]["node"], line["finding"]["block"]) for line in found} == \
        {(first["node"], block) for block in first["blocks"]}
    assert {line["event"]["source"] for line in found} == {"qmp"}
    assert status == 1


def test_watch_ends_when_the_guest_goes_away(bed):
    """QEMU killed under watch: its events socket closes, the re-check after
    it fails (an error line), and watch ends by itself with status 1."""
    watcher = bed.watcher()
    bed.guest.stop()
    status = watcher.proc.wait(60)
    watcher.reader.join(10)
    assert [line["finding"]["kind"] for _, line in watcher.lines if line["severity"] == "error"] == \
        ["recheck-failed"]
    assert watcher.lines[-1][1]["event"]["name"] == "closed"
    assert status == 1
