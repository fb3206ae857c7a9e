"""watch's comparison of re-checks and its loop, on hand-made models of the
x86_64 6.1 bed guest (the live proof is tests/test_watch.py)."""

from __future__ import annotations

import doctest
import io
import json
import socket
from typing import Iterator, List

import pytest

from drgn_hotplug import watch
from drgn_hotplug.model import Model

import handmade


def mid_hot_add() -> Model:
    """x86_hotplug half-way: the DIMM's blocks registered, their node links
    not made yet (register_memory_block_under_node() runs after
    add_memory_block())."""
    model = handmade.x86_boot()
    model.sections += [handmade.section(32, handmade.HOTPLUGGED), handmade.section(33, handmade.HOTPLUGGED)]
    model.blocks += [handmade.block(32, 1, zone="Movable"), handmade.block(33, 1, zone="Movable")]
    return model


def test_docstring_examples():
    result = doctest.testmod(watch)
    assert result.failed == 0 and result.attempted > 0


def test_a_hotplug_step_seen_once_is_not_reported():
    boot, mid = watch.observe(handmade.x86_boot()), watch.observe(mid_hot_add())
    after = watch.observe(handmade.x86_hotplug())
    assert {f["severity"] for f in mid.findings.values()} & {"warning", "error"}
    changes = watch.finding_changes(boot, mid, after, watch.Event("qmp", "ACPI_DEVICE_OST"))
    # x86 never puts hot-added memory in memblock: an info finding of its own.
    assert [(c.what, c.severity, c.finding["kind"]) for c in changes] == \
        [("appeared", "info", "memmap-without-memblock")]
    assert [(c.what, c.blocks) for c in watch.block_changes(boot, mid, watch.Event("interval"))] == \
        [("blocks-added", (32, 33))]


def test_a_finding_seen_twice_appears_and_one_gone_twice_clears():
    boot, orphan = watch.observe(handmade.x86_boot()), watch.observe(handmade.x86_orphan())
    appeared = watch.finding_changes(boot, orphan, orphan, watch.Event("interval"))
    assert [(c.what, c.finding["kind"], c.finding["block"]) for c in appeared] == \
        [("appeared", "orphaned-link", 32), ("appeared", "orphaned-link", 33)]
    reported = watch.after_changes(boot, appeared)
    assert reported.same_as(orphan)
    cleared = watch.finding_changes(reported, boot, boot, watch.Event("interval"))
    assert [(c.what, c.severity) for c in cleared] == [("cleared", "error"), ("cleared", "error")]
    assert watch.after_changes(reported, cleared).same_as(boot)


def readings(models: List[Model]):
    """A read_model that returns ``models`` in turn, then ends watch as Ctrl-C does."""
    it: Iterator[Model] = iter(models)

    def read() -> Model:
        try:
            return next(it)
        except StopIteration:
            raise KeyboardInterrupt from None
    return read


def run_watch(models: List[Model]):
    out = io.StringIO()
    status = watch.watch(readings(models), [], out, as_json=True, interval=0.01, settle=0.01)
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


def test_watch_reports_a_clean_hotplug_as_blocks_and_exits_0():
    boot, mid, hot = handmade.x86_boot(), mid_hot_add(), handmade.x86_hotplug()
    status, lines = run_watch([boot, boot, mid, hot, hot, boot, boot])
    blocks = [line for line in lines if "blocks" in line]
    assert [(line["change"], line["blocks"], line["event"]["source"]) for line in blocks] == [
        ("blocks-added", list(range(8)), "start"),
        ("blocks-added", [32, 33], "interval"),
        ("blocks-removed", [32, 33], "interval")]
    assert {line["severity"] for line in lines} == {"info"}
    assert status == 0


def test_watch_reports_blocks_that_came_and_went_within_a_settle():
    boot, mid = handmade.x86_boot(), mid_hot_add()
    status, lines = run_watch([boot, mid, boot, boot])
    assert [(line["change"], line["blocks"]) for line in lines if "blocks" in line] == [
        ("blocks-added", list(range(8))), ("blocks-added", [32, 33]), ("blocks-removed", [32, 33])]
    assert [line for line in lines if line["severity"] != "info"] == []
    assert status == 0


def test_watch_reports_orphans_once_and_exits_1():
    boot, orphan = handmade.x86_boot(), handmade.x86_orphan()
    status, lines = run_watch([boot, boot, orphan, orphan, orphan, orphan])
    serious = [line for line in lines if line["severity"] == "error"]
    assert [(line["change"], line["finding"]["node"], line["finding"]["block"]) for line in serious] == \
        [("appeared", 1, 32), ("appeared", 1, 33)]
    assert status == 1


def test_a_read_failing_twice_is_an_error_line():
    def fail() -> Model:
        raise RuntimeError("FaultError: could not read memory at 0xffff888100000000")
    out = io.StringIO()
    failures = iter([fail, fail, fail, fail, fail])

    def read() -> Model:
        step = next(failures, None)
        if step is None:
            raise KeyboardInterrupt
        return step()
    status = watch.watch(read, [], out, interval=0.01, settle=0.01)
    assert "recheck-failed" in out.getvalue() and "could not read memory" in out.getvalue()
    assert status == 1


def test_uevents_listen_on_this_kernel():
    """The kernel's uevent multicast is open to any user; nothing arrives
    here about memory unless memory is hot-plugged."""
    source = watch.Uevents()
    try:
        assert source.events() == [] or all(e.source == "uevent" for e in source.events())
    finally:
        source.close()


def test_a_qmp_socket_that_does_not_greet_is_a_one_line_error(tmp_path, monkeypatch):
    """A QMP socket busy with another client: QEMU accepts, then stays silent."""
    monkeypatch.setattr(watch, "QMP_TIMEOUT_S", 0.2)
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        with pytest.raises(watch.SourceError, match="no greeting within 0.2 s.*one at a time"):
            watch.QmpEvents(str(path))


def test_a_missing_qmp_socket_is_a_one_line_error(tmp_path):
    with pytest.raises(watch.SourceError, match="cannot listen to QMP events on .*No such file"):
        watch.QmpEvents(str(tmp_path / "absent.sock"))


@pytest.mark.parametrize("argv, says", [
    (["-c", "vmcore", "watch"], "watch needs a running kernel (default) or --qemu, not a dump"),
    (["watch", "--qmp-events", "events.sock"], "--qmp-events is for a QEMU guest: give --qemu too"),
])
def test_watch_refuses_what_it_cannot_watch_in_one_line(argv, says, capsys):
    from drgn_hotplug import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"drgn-hotplug: {says}\n"
