"""``drgn-hotplug watch``: re-check a running kernel whenever its memory
changes and print what appeared or cleared since the last re-check.

    $ drgn-hotplug watch                                   # this machine: memory/node uevents
    $ drgn-hotplug --qemu drgn.sock watch --qmp-events events.sock   # a QEMU guest: QMP events

The pieces, all without drgn (the front ends, cli.py and drgn_plugin.py,
pass a ``read_model`` callable that reads the kernel afresh):

- ``Observation``: what one re-check saw (findings by identity, block ids);
- ``block_changes``: the memory blocks added or removed, from each read;
- ``finding_changes``: the findings that appeared or cleared according to
  two reads ``settle`` seconds apart (a hotplug operation is a sequence of
  kernel steps: a finding seen only mid-way, e.g. a block registered whose
  node links are not made yet, is not reported);
- ``Uevents`` and ``QmpEvents``: the event sources (netlink uevents of the
  ``memory`` and ``node`` subsystems; QMP events about memory devices);
- ``watch``: the loop. Ctrl-C ends it; it returns 1 if a warning or error
  was seen, else 0.

It only reads: uevents are a multicast the kernel sends anyway, and a QMP
client that never sends a command other than ``qmp_capabilities`` changes
nothing in the guest.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import selectors
import socket
import time
from typing import Any, Callable, Dict, FrozenSet, IO, Iterable, List, Optional, Sequence, Tuple

from . import checks
from .model import Model
from .reader.compose import collector_paused
from .reader.target import first_line

# Seconds between a re-check that saw a change and the one that confirms it.
SETTLE_S = 1.0
DEFAULT_INTERVAL_S = 10.0
# Reads after a change before a failing read is reported as an error.
READ_ATTEMPTS = 4

SERIOUS = ("error", "warning")

# QMP events that follow a change of the guest's memory devices (QEMU
# qapi/machine.json, qapi/acpi.json, qapi/qdev.json): ACPI _OST of a DIMM's
# insert or eject, the end of a device_del, a virtio-mem resize, a failed unplug.
QMP_MEMORY_EVENTS = frozenset({"ACPI_DEVICE_OST", "DEVICE_DELETED", "MEMORY_DEVICE_SIZE_CHANGE",
                               "MEM_UNPLUG_ERROR", "MEMORY_FAILURE"})

# The uevent subsystems of /sys/devices/system/memory/memoryN and
# /sys/devices/system/node/nodeN.
UEVENT_SUBSYSTEMS = frozenset({"memory", "node"})

FindingKey = Tuple[str, str, Optional[int], Optional[int], Optional[int], Optional[int]]


def finding_key(finding: Dict[str, Any]) -> FindingKey:
    """What makes two re-checks' findings the same finding: kind, severity
    and place (facts such as addresses may differ between readings).

    >>> finding_key({"kind": "orphaned-link", "severity": "error", "node": 1, "block": 32,
    ...              "reason": "r", "facts": {}})
    ('orphaned-link', 'error', None, None, 1, 32)
    """
    return (finding["kind"], finding["severity"], finding.get("start_pfn"), finding.get("end_pfn"),
            finding.get("node"), finding.get("block"))


@dataclasses.dataclass(frozen=True)
class Observation:
    """One re-check: its findings (plain dicts) by key, and the block ids."""

    findings: Dict[FindingKey, Dict[str, Any]]
    blocks: FrozenSet[int]

    @classmethod
    def of(cls, findings: Iterable[Dict[str, Any]], blocks: Iterable[int]) -> "Observation":
        """The observation of one re-check's findings and block ids.

        >>> Observation.of([], [32, 33]).blocks == {32, 33}
        True
        """
        return cls({finding_key(f): f for f in findings}, frozenset(blocks))

    @classmethod
    def nothing(cls) -> "Observation":
        return cls({}, frozenset())

    def same_as(self, other: "Observation") -> bool:
        return self.findings.keys() == other.findings.keys() and self.blocks == other.blocks


def observe(model: Model) -> Observation:
    """Check a freshly read model and keep what watch compares."""
    # As in cli.render_command: no collections while the checks walk the model.
    with collector_paused():
        model, findings = checks.checked(model)
        return Observation.of([f.to_dict() for f in findings], [b.id for b in model.blocks])


@dataclasses.dataclass(frozen=True)
class Event:
    """What made watch re-check: ``source`` is start, interval, uevent or
    qmp; ``name`` the uevent action or QMP event; ``detail`` the rest."""

    source: str
    name: str = ""
    detail: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        """How a line names the event.

        >>> Event("uevent", "remove", {"devpath": "/devices/system/memory/memory32"}).text()
        'uevent remove /devices/system/memory/memory32'
        >>> Event("qmp", "DEVICE_DELETED", {"device": "dimm0", "path": "/machine/peripheral/dimm0"}).text()
        'qmp DEVICE_DELETED dimm0'
        >>> Event("interval").text()
        'interval'
        """
        if self.source == "uevent":
            return " ".join(part for part in ("uevent", self.name, self.detail.get("devpath")) if part)
        if self.source == "qmp":
            device = self.detail.get("device") or self.detail.get("info", {}).get("device")
            return " ".join(part for part in ("qmp", self.name, device) if part)
        return self.source


    def tells_much(self) -> bool:
        """Whether the event names the device or sysfs path it is about, or
        is the end of QEMU.

        >>> Event("qmp", "ACPI_DEVICE_OST", {"info": {"source": 3, "status": 0}}).tells_much()
        False
        """
        return self.name == "closed" or bool(self.detail.get("devpath") or self.detail.get("device")
                                             or self.detail.get("info", {}).get("device"))


@dataclasses.dataclass(frozen=True)
class Change:
    """One line of watch's output. ``what``: appeared, cleared (a finding),
    blocks-added, blocks-removed."""

    what: str
    event: Event
    finding: Optional[Dict[str, Any]] = None
    blocks: Tuple[int, ...] = ()

    @property
    def severity(self) -> str:
        """A finding's severity; block changes are info. A cleared finding
        is reported at its own severity too (the reader sees what it was)."""
        return self.finding["severity"] if self.finding else "info"


def block_changes(reported: Observation, read: Observation, event: Event) -> List[Change]:
    """The blocks added and removed since ``reported``, from one read (a
    block is registered or not: no step of a hotplug makes that a
    judgement, and a DIMM added then removed within ``settle`` is still seen).

    >>> [(c.what, c.blocks) for c in block_changes(Observation.of([], [7, 32, 33]),
    ...                                            Observation.of([], [7, 34]), Event("interval"))]
    [('blocks-added', (34,)), ('blocks-removed', (32, 33))]
    """
    added = tuple(sorted(read.blocks - reported.blocks))
    removed = tuple(sorted(reported.blocks - read.blocks))
    return [Change(what, event, blocks=blocks)
            for what, blocks in (("blocks-added", added), ("blocks-removed", removed)) if blocks]


def finding_changes(reported: Observation, first: Observation, second: Observation,
                    event: Event) -> List[Change]:
    """The findings that appeared or cleared since ``reported`` according
    to both of two successive reads (a finding seen only mid-way through a
    hotplug, e.g. a block registered whose node links are not made yet, is
    not reported).

    >>> orphan = {"kind": "orphaned-link", "severity": "error", "node": 1, "block": 32}
    >>> missing = {"kind": "missing-link", "severity": "error", "node": 0, "block": 34}
    >>> before = Observation.of([], [32, 33])
    >>> mid = Observation.of([orphan, missing], [34])      # the links of 34 not made yet
    >>> after = Observation.of([orphan], [34])
    >>> [(c.what, c.finding["kind"]) for c in finding_changes(before, mid, after, Event("start"))]
    [('appeared', 'orphaned-link')]
    """
    appeared = first.findings.keys() & second.findings.keys() - reported.findings.keys()
    cleared = reported.findings.keys() - first.findings.keys() - second.findings.keys()
    return ([Change("appeared", event, finding=second.findings[key]) for key in sorted(appeared, key=str)]
            + [Change("cleared", event, finding=reported.findings[key]) for key in sorted(cleared, key=str)])


def after_changes(reported: Observation, changes: Sequence[Change]) -> Observation:
    """``reported`` with ``changes`` applied: what has been reported so far.

    >>> orphan = {"kind": "orphaned-link", "severity": "error", "node": 1, "block": 32}
    >>> new = after_changes(Observation.of([], [32]), [Change("appeared", Event("start"), orphan),
    ...                                               Change("blocks-removed", Event("start"), blocks=(32,))])
    >>> list(new.findings), sorted(new.blocks)
    ([('orphaned-link', 'error', None, None, 1, 32)], [])
    """
    findings = dict(reported.findings)
    blocks = set(reported.blocks)
    for change in changes:
        if change.what == "appeared":
            findings[finding_key(change.finding)] = change.finding
        elif change.what == "cleared":
            findings.pop(finding_key(change.finding), None)
        elif change.what == "blocks-added":
            blocks.update(change.blocks)
        elif change.what == "blocks-removed":
            blocks.difference_update(change.blocks)
    return Observation(findings, frozenset(blocks))


def place(finding: Dict[str, Any]) -> str:
    """Where a finding is: a node link, a block, or a pfn range.

    >>> place({"node": 1, "block": 32}), place({"block": 7}), place({"start_pfn": 0x100, "end_pfn": 0x200})
    ('node1/memory32', 'memory7', 'pfn 0x100-0x1ff')
    """
    if finding.get("node") is not None and finding.get("block") is not None:
        return f"node{finding['node']}/memory{finding['block']}"
    if finding.get("block") is not None:
        return f"memory{finding['block']}"
    if finding.get("start_pfn") is not None:
        return f"pfn {finding['start_pfn']:#x}-{finding['end_pfn'] - 1:#x}"
    return str(finding.get("facts", {}).get("what", "-"))


def timestamp(seconds: float) -> str:
    """UTC, ISO 8601 to the millisecond.

    >>> timestamp(1796110316.0118)
    '2026-12-01T07:31:56.011Z'
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def text_line(change: Change, when: float) -> str:
    """One human line.

    >>> orphan = {"kind": "orphaned-link", "severity": "error", "node": 1, "block": 32,
    ...           "reason": "node1/memory32: target memory32 removed (deactivated, removing, unlinked)"}
    >>> text_line(Change("appeared", Event("qmp", "DEVICE_DELETED", {"device": "dimm0"}), orphan), 0)
    '1970-01-01T00:00:00.000Z appeared error   orphaned-link node1/memory32: target memory32 removed (deactivated, removing, unlinked) (after qmp DEVICE_DELETED dimm0)'
    >>> text_line(Change("cleared", Event("interval"), {"kind": "memmap-without-memblock", "severity": "info",
    ...     "start_pfn": 0x9f, "end_pfn": 0x100, "reason": "hole inside an early section"}), 0)
    '1970-01-01T00:00:00.000Z cleared info    memmap-without-memblock pfn 0x9f-0xff: hole inside an early section (after interval)'
    >>> text_line(Change("blocks-added", Event("interval"), blocks=(32, 33)), 0)
    '1970-01-01T00:00:00.000Z blocks-added info memory32 memory33 (after interval)'
    """
    after = f"(after {change.event.text()})"
    if change.finding is None:
        names = " ".join(f"memory{b}" for b in change.blocks)
        return f"{timestamp(when)} {change.what} info {names} {after}"
    f = change.finding
    reason = f.get("reason", "")
    # Link findings' reasons start with the link already.
    where = reason if reason.startswith(place(f)) else f"{place(f)}: {reason}"
    return f"{timestamp(when)} {change.what} {f['severity']:<7} {f['kind']} {where} {after}"


def json_line(change: Change, when: float) -> str:
    """One JSON Lines record.

    >>> json_line(Change("blocks-removed", Event("qmp", "DEVICE_DELETED", {"device": "dimm0"}), blocks=(32,)), 0)
    '{"time": "1970-01-01T00:00:00.000Z", "change": "blocks-removed", "severity": "info", "event": {"source": "qmp", "name": "DEVICE_DELETED", "detail": {"device": "dimm0"}}, "blocks": [32]}'
    """
    record: Dict[str, Any] = {"time": timestamp(when), "change": change.what,
                              "severity": change.severity, "event": dataclasses.asdict(change.event)}
    if change.finding is not None:
        record["finding"] = change.finding
    else:
        record["blocks"] = list(change.blocks)
    return json.dumps(record)


# ---------------------------------------------------------------- event sources

class SourceError(Exception):
    """An event source could not be opened: watch cannot start (exit 2)."""


def parse_uevent(message: bytes) -> Optional[Event]:
    """A kernel uevent (``ACTION@DEVPATH`` then NUL-separated KEY=VALUE) of
    the memory or node subsystem, else None.

    >>> parse_uevent(b"offline@/devices/system/memory/memory32\\0ACTION=offline\\0"
    ...              b"DEVPATH=/devices/system/memory/memory32\\0SUBSYSTEM=memory\\0SEQNUM=1911\\0")
    Event(source='uevent', name='offline', detail={'devpath': '/devices/system/memory/memory32', 'seqnum': '1911'})
    >>> parse_uevent(b"add@/devices/virtual/net/lo\\0ACTION=add\\0SUBSYSTEM=net\\0") is None
    True
    """
    fields = dict(part.split("=", 1) for part in message.decode("utf-8", "replace").split("\0")[1:]
                  if "=" in part)
    if fields.get("SUBSYSTEM") not in UEVENT_SUBSYSTEMS:
        return None
    return Event("uevent", fields.get("ACTION", ""),
                 {"devpath": fields.get("DEVPATH", ""), "seqnum": fields.get("SEQNUM", "")})


# include/uapi/linux/netlink.h; the kernel's uevents go to multicast group 1.
NETLINK_KOBJECT_UEVENT = 15
UEVENT_KERNEL_GROUP = 1


class Uevents:
    """The running kernel's uevents (any user may listen)."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
            self.sock.bind((0, UEVENT_KERNEL_GROUP))
        except OSError as error:
            raise SourceError(f"cannot listen to kernel uevents: {first_line(error)}") from error
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self) -> List[Event]:
        """The memory and node uevents waiting; [] when none."""
        found = []
        while True:
            try:
                message = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return found
            except OSError:
                # ENOBUFS: the kernel dropped uevents while we were
                # re-checking; the next re-check reads everything anyway.
                return found + [Event("uevent", "overrun")]
            event = parse_uevent(message)
            if event is not None:
                found.append(event)

    def close(self) -> None:
        self.sock.close()


def parse_qmp(buffer: bytes) -> Tuple[List[Event], bytes]:
    """(the memory events among the complete QMP lines, the incomplete rest).

    >>> parse_qmp(b'{"event": "DEVICE_DELETED", "data": {"device": "dimm0"}, '
    ...           b'"timestamp": {"seconds": 1, "microseconds": 2}}\\r\\n{"event": "RESUME", "da')
    ([Event(source='qmp', name='DEVICE_DELETED', detail={'device': 'dimm0'})], b'{"event": "RESUME", "da')
    """
    *lines, rest = buffer.split(b"\n")
    events = []
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("event") in QMP_MEMORY_EVENTS:
            events.append(Event("qmp", message["event"], message.get("data", {})))
    return events, rest


# Seconds to wait for QEMU's greeting and the reply to qmp_capabilities.
QMP_TIMEOUT_S = 10.0


class QmpEvents:
    """A QEMU guest's events, on a QMP socket of its own (QMP serves one
    client per socket, and drgn holds the one it reads memory through)."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(QMP_TIMEOUT_S)
        try:
            self.sock.connect(path)
            self.buffer = self._read_line_starting(b'{"QMP"', "greeting")
            self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            self.buffer = self._read_line_starting(b'{"return"', "reply to qmp_capabilities")
        except (OSError, SourceError) as error:
            self.sock.close()
            reason = str(error) if isinstance(error, SourceError) else first_line(error)
            raise SourceError(f"cannot listen to QMP events on {path}: {reason}") from error
        self.sock.setblocking(False)
        self.closed = False

    def _read_line_starting(self, prefix: bytes, what: str) -> bytes:
        """Read up to the first line starting with ``prefix``; return what follows it."""
        data = getattr(self, "buffer", b"")
        while True:
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                if line.startswith(prefix):
                    return data
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise SourceError(f"no {what} within {QMP_TIMEOUT_S:g} s (is another client "
                                  "connected? QMP serves one at a time)") from None
            if not chunk:
                raise SourceError(f"QEMU closed the socket before its {what}")
            data += chunk

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self) -> List[Event]:
        """The memory events waiting; a ``closed`` event once QEMU has gone."""
        found: List[Event] = []
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                found.append(Event("qmp", "closed", {"path": self.path}))
                break
            events, self.buffer = parse_qmp(self.buffer + chunk)
            found += events
        return found

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- the loop

@dataclasses.dataclass
class Printer:
    """Writes changes as text or JSON Lines, flushed at once (watch's output
    is read while it runs), and remembers whether anything was serious."""

    out: IO[str]
    as_json: bool = False
    serious_seen: bool = False

    def emit(self, changes: Iterable[Change], when: float) -> None:
        for change in changes:
            if change.what == "appeared" and change.severity in SERIOUS:
                self.serious_seen = True
            self.out.write((json_line if self.as_json else text_line)(change, when) + "\n")
        self.out.flush()

    def failed(self, event: Event, error: str, when: float) -> None:
        """A re-check that failed twice in a row: an error line of its own."""
        self.emit([Change("appeared", event, finding={"kind": "recheck-failed", "severity": "error",
                                                      "reason": error})], when)


def preceding(events: Sequence[Event]) -> Event:
    """The event to name before a change: the last one that names a device
    or says QEMU has gone (QEMU's final ACPI_DEVICE_OST of an eject names
    no device), else the last.

    >>> preceding([Event("qmp", "DEVICE_DELETED", {"device": "dimm0"}),
    ...            Event("qmp", "ACPI_DEVICE_OST", {"info": {"status": 0}})]).name
    'DEVICE_DELETED'
    >>> preceding([]).source
    'interval'
    """
    telling = [e for e in events if e.tells_much()]
    return (telling or list(events) or [Event("interval")])[-1]


def wait_for_events(selector: selectors.BaseSelector, timeout: float) -> List[Event]:
    """The events that arrive within ``timeout`` seconds: as soon as some
    have, all those waiting. A source that has closed is dropped."""
    found: List[Event] = []
    deadline = time.monotonic() + timeout
    while not found:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in selector.select(left):
            found += key.data.events()
            if getattr(key.data, "closed", False):
                selector.unregister(key.fileobj)
    return found


def read_observation(read_model: Callable[[], Model]) -> Tuple[Optional[Observation], str]:
    """(the observation, "") or (None, why the read failed)."""
    try:
        return observe(read_model()), ""
    # A read racing a hotplug step can fail anywhere in the reader (a freed
    # object, a list changing under it): that is a reason to read again,
    # never a reason to stop watching.
    except Exception as error:  # noqa: BLE001
        return None, first_line(error)


def recheck(read_model: Callable[[], Model], reported: Observation, events: List[Event],
            printer: Printer, selector: selectors.BaseSelector,
            settle: float) -> Tuple[Observation, List[Event]]:
    """Read the kernel after ``events`` and print the blocks added or
    removed; if the findings differ from those reported (or the read
    failed), read again ``settle`` seconds later and print the findings two
    successive reads agree on. Each change names the last event before the
    read that saw it. Returns (what has been reported now, the events that
    arrived meanwhile: each is a reason to read again)."""
    first, error = read_observation(read_model)
    arrived_since: List[Event] = []
    for _ in range(READ_ATTEMPTS):
        if first is not None:
            reported = report_blocks(printer, reported, first, events)
            if first.same_as(reported):
                return reported, []
        reported, arrived = settle_reading_blocks(read_model, reported, events, printer,
                                                  selector, settle)
        second, error = read_observation(read_model)
        if second is not None:
            reported = report_blocks(printer, reported, second, events + arrived)
        if first is not None and second is not None:
            changes = finding_changes(reported, first, second, preceding(events))
            printer.emit(changes, time.time())
            return after_changes(reported, changes), arrived
        events = events + arrived
        arrived_since += arrived
        first = second
    printer.failed(preceding(events), error, time.time())
    return reported, arrived_since


def settle_reading_blocks(read_model: Callable[[], Model], reported: Observation,
                          events: List[Event], printer: Printer,
                          selector: selectors.BaseSelector,
                          settle: float) -> Tuple[Observation, List[Event]]:
    """Wait ``settle`` seconds, reading and printing the blocks on each event
    meanwhile (a DIMM added and removed within ``settle`` is not missed;
    its findings wait: uevents come mid-way through a hotplug, e.g. before
    the new block's node links are made). Returns (what has been reported
    now, the events that arrived)."""
    arrived: List[Event] = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        new = wait_for_events(selector, deadline - time.monotonic())
        if new:
            arrived += new
            read, _ = read_observation(read_model)
            if read is not None:
                reported = report_blocks(printer, reported, read, events + arrived)
    return reported, arrived


def report_blocks(printer: Printer, reported: Observation, read: Observation,
                  events: List[Event]) -> Observation:
    """Print the block changes of one read; return ``reported`` with them."""
    changes = block_changes(reported, read, preceding(events))
    printer.emit(changes, time.time())
    return after_changes(reported, changes)


def watch(read_model: Callable[[], Model], sources: Sequence[Any], out: IO[str],
          as_json: bool = False, interval: float = DEFAULT_INTERVAL_S,
          settle: float = SETTLE_S) -> int:
    """Re-check on each event of ``sources`` (else every ``interval``
    seconds) until Ctrl-C, or until a source's QEMU has gone; return 1 if a
    warning or error appeared (a failed re-check is an error), else 0.

    ``read_model`` must read the kernel afresh on each call (a drgn
    Program on a live kernel or QEMU guest caches no kernel memory).
    """
    printer = Printer(out, as_json)
    selector = selectors.DefaultSelector()
    for source in sources:
        selector.register(source, selectors.EVENT_READ, source)
    reported = Observation.nothing()
    events = [Event("start")]
    try:
        while True:
            reported, later = recheck(read_model, reported, events, printer, selector, settle)
            if any(e.name == "closed" for e in events + later):
                # QEMU has gone: the re-check after it has said what it could.
                break
            events = later or wait_for_events(selector, interval) or [Event("interval")]
    except KeyboardInterrupt:
        pass
    finally:
        selector.close()
    return 1 if printer.serious_seen else 0
