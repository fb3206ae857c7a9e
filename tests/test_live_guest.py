"""drgn-hotplug inside a running bed guest, on the guest's own /proc/kcore.

The guest boots a cell's kernel and initrd with the userland disk of
vmcores/userland.py (bookworm Python, drgn's wheel and this checkout's built
wheel, util-linux, the debug vmlinux), plays the orphan scenario, then runs
the tool as a user of that machine would: ``drgn-hotplug check`` with no
target option, ``%memhp check`` typed at drgn's prompt, ``run_command`` from a
script run by ``drgn``, and as a non-root user. The findings are compared with
a QMP dump of the same quiet moment, read on the host, and with the orphaned
links the guest's own sysfs shows.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmcores import packages, userland
from vmcores.scenarios import DIMM_MIB, UNLINK_FUNCTION, LiveGuest, add_two_dimms

pytest.importorskip("drgn")
pytestmark = [pytest.mark.bed, pytest.mark.slow, pytest.mark.live]

CHECKOUT = Path(__file__).resolve().parent.parent

# A stdlib-only stand-in for pexpect run by the guest's Python: drgn's
# interactive mode wants a terminal (drgn 0.3.0 reads a script from a
# non-tty stdin), so it gets a pty, and each line is typed at its prompt.
AT_THE_PROMPT = r'''
import os, pty, select, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv("/usr/local/bin/drgn", ["drgn", "-q"])
seen = b""
def until_prompt():
    # A prompt with nothing after it for 2 s: drgn's banner echoes lines
    # that begin with ">>> ".
    global seen
    while not (seen.endswith(b">>> ") and not select.select([fd], [], [], 2)[0]):
        seen += os.read(fd, 65536)
for line in sys.argv[1:]:
    until_prompt()
    os.write(fd, line.encode() + b"\n")
    seen += os.read(fd, 65536)  # at least the echo: the old prompt is no longer last
until_prompt()
os.write(fd, b"exit()\n")
os.waitpid(pid, 0)
sys.stdout.write(seen.decode().replace("\r\n", "\n"))
'''


RUN_COMMAND = 'from drgn.commands import run_command\nrun_command(prog, "memhp check")\n'

# ``%memhp watch`` typed at drgn's prompt, its output copied to a file as it
# comes, Ctrl-C typed once a stop file appears, then exit(). The command
# server starts this job with SIGINT ignored, which drgn would inherit.
WATCH_AT_THE_PROMPT = r'''
import os, pty, select, signal, sys
out_path, stop_path = sys.argv[1:3]
pid, fd = pty.fork()
if pid == 0:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv("/usr/local/bin/drgn", ["drgn", "-q"])
seen = b""
def pump(timeout):
    global seen
    if select.select([fd], [], [], timeout)[0]:
        data = os.read(fd, 65536)
        seen += data
        with open(out_path, "ab") as out:
            out.write(data.replace(b"\r\n", b"\n"))
def until_prompt():
    while not (seen.endswith(b">>> ") and not select.select([fd], [], [], 2)[0]):
        pump(2)
until_prompt()
os.write(fd, b"%memhp watch --json --interval 3600\n")
while not os.path.exists(stop_path):
    pump(0.5)
os.write(fd, b"\x03")
until_prompt()
os.write(fd, b"exit()\n")
os.waitpid(pid, 0)
'''

# Starts a program with Ctrl-C's default action: the guest's command server
# runs ``cmd &`` in a non-interactive shell, which starts it with SIGINT
# ignored (so Python would never raise KeyboardInterrupt); its pid (the same
# after exec) goes to a file for ``kill -INT``.
WITH_SIGINT = """import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
open(sys.argv[1], "w").write(str(os.getpid()))
os.execvp(sys.argv[2], sys.argv[2:])"""

# The uevent watch: re-check on uevents only (an interval longer than the
# test), and the orphaned links within this many seconds of the hot-remove:
# watch reads the kernel twice (1 s apart) with drgn inside the TCG guest;
# under 5 s on x86_64 6.1, 7.2 s measured on 7.3.
WATCH_INTERVAL_S = 3600
ORPHAN_WITHIN_S = 10


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """This checkout's wheel, built as a user would."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(CHECKOUT), "-w", str(out)],
                   check=True, capture_output=True)
    (built,) = out.glob("drgn_hotplug-*.whl")
    return built


class InGuest:
    """A live guest after the orphan scenario, with the userland mounted."""

    watched: dict | None = None
    _check_text: str | None = None

    def __init__(self, guest: LiveGuest, kernel: packages.Kernel):
        self.guest = guest
        self.kernel = kernel
        guest.run(userland.MOUNT, 120)

    def run(self, command: str, timeout: float = 900) -> tuple[str, int]:
        """(output, exit status) of a program run in the userland."""
        out = self.guest.run(f"{userland.in_userland(command)}; echo @@rc=$?", timeout)
        body, rc = out.rsplit("@@rc=", 1)
        return body, int(rc)

    def write(self, path: str, text: str) -> None:
        self.guest.run(f"cat > {userland.GUEST_ROOT}{path} <<'@@EOF'\n{text}\n@@EOF")

    def check_text(self) -> str:
        """``drgn-hotplug check``'s output in the guest (run once)."""
        if self._check_text is None:
            self._check_text = self.run("drgn-hotplug check")[0]
        return self._check_text

    def clock(self) -> float:
        """The guest's wall clock (the time watch stamps its lines with);
        busybox's date has whole seconds only."""
        return float(self.run("/usr/bin/python3 -c 'import time; print(time.time())'")[0])

    def watch_lines(self, name: str = "watch") -> list[dict]:
        """The JSON Lines a background watch has written so far to /tmp/NAME.jsonl."""
        text = self.guest.run(f"cat {userland.GUEST_ROOT}/tmp/{name}.jsonl 2>/dev/null || true")
        # The last piece may be a line still being written.
        return [json.loads(line) for line in text.split("\n")[:-1] if line.startswith("{")]

    def wait_for_watch(self, wanted, timeout: float, count: int = 1, name: str = "watch") -> list[dict]:
        """Poll a watch's lines until ``count`` of them satisfy ``wanted``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.watch_lines(name)
            if sum(map(wanted, lines)) >= count:
                return lines
            time.sleep(0.5)
        raise AssertionError(f"no such watch line within {timeout} s: {self.watch_lines(name)}\n"
                             + self.guest.run(f"cat {userland.GUEST_ROOT}/tmp/{name}.err"))

    def play_orphan_under_watch(self) -> dict:
        """``drgn-hotplug watch --json`` started in the guest (on its uevents),
        then the orphan scenario's steps played from the host; returns the
        watch's lines, its exit status after Ctrl-C and the guest times
        around the hot-remove."""
        g, root = self.guest, userland.GUEST_ROOT
        self.write("/tmp/with_sigint.py", WITH_SIGINT)
        command = userland.in_userland(f"/usr/bin/python3 /tmp/with_sigint.py /tmp/watch.pid drgn-hotplug watch "
                                       f"--json --interval {WATCH_INTERVAL_S}")
        g.run(f"( {command} > {root}/tmp/watch.jsonl 2> {root}/tmp/watch.err; echo $? > {root}/tmp/watch.rc ) "
              "</dev/null >/dev/null 2>&1 &")
        self.wait_for_watch(lambda line: line["event"]["source"] == "start", 600)
        first = add_two_dimms(g)
        for block in first["blocks"]:
            g.offline(block)
        before_remove = self.clock()
        g.patch_return(UNLINK_FUNCTION)
        try:
            g.hot_remove(first)
        finally:
            g.unpatch(UNLINK_FUNCTION)
        removed = self.clock()
        self.wait_for_watch(is_orphan_line, 120, count=len(first["blocks"]))
        g.run(f"kill -INT $(cat {root}/tmp/watch.pid)")
        g.wait_guest(f"test -s {root}/tmp/watch.rc", 60)
        return {"lines": self.watch_lines(), "status": int(g.run(f"cat {root}/tmp/watch.rc")),
                "first": first, "before_remove": before_remove, "removed": removed,
                "dimm_blocks": [e["blocks"] for e in g.events if e["op"] == "hot-add"]}


def is_orphan_line(line: dict) -> bool:
    return line["change"] == "appeared" and line["finding"]["kind"] == "orphaned-link"


def line_time(line: dict) -> float:
    """A watch line's time (UTC, ISO 8601 with milliseconds) in seconds since the epoch.

    >>> line_time({"time": "1970-01-01T00:00:01.500Z"})
    1.5
    """
    return datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


# One live guest per arch in the suite (each costs minutes of TCG); the
# other two series when DRGN_HOTPLUG_LIVE=all.
LIVE_GUESTS = [("x86_64", "6.1"), ("arm64", "7.x")]
if os.environ.get("DRGN_HOTPLUG_LIVE") == "all":
    LIVE_GUESTS += [("x86_64", "7.x"), ("arm64", "6.1")]


@pytest.fixture(scope="module", params=LIVE_GUESTS, ids="-".join)
def in_guest(request, wheel, tmp_path_factory):
    arch, series = request.param
    k = packages.fetch_kernel(arch, series)
    disk = userland.build_userland(k, wheel)
    spec = userland.live_guest_spec(k, "orphan", disk, tmp_path_factory.mktemp("initrd"))
    with LiveGuest(spec, k.meta, "orphan") as guest:
        inside = InGuest(guest, k)
        inside.watched = inside.play_orphan_under_watch()
        yield inside


def dump_document(in_guest: InGuest, tmp_path: Path, command: str = "check") -> tuple[str, int]:
    """``drgn-hotplug COMMAND`` on the host, on a QMP dump of the guest now."""
    dump = tmp_path / "vmcore.elf"
    in_guest.guest.dump(dump)
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(dump), "-s",
                           str(in_guest.kernel.vmlinux), *command.split()],
                          capture_output=True, text=True, cwd=CHECKOUT)
    return proc.stdout, proc.returncode


def dangling_links(in_guest: InGuest) -> set[str]:
    """The guest's truth: node links whose target memory block is gone, as its sysfs shows."""
    out = in_guest.guest.run("for l in /sys/devices/system/node/node*/memory*; do "
                             "[ -e $l ] || echo ${l#/sys/devices/system/node/}; done")
    return set(out.split())


def in_nomap_pages(unreadable: list[dict], findings: list[dict]) -> list[dict]:
    """The ``unreadable`` objects of a live run that lie in a page holding a
    memblock NOMAP region (the not-linear-mapped ``findings``). /proc/kcore exposes
    System RAM pages only; on the arm64 guests the ACPI tables the bed
    upgrades from the initrd (arm64 marks them NOMAP, 0xf4 bytes of SRAT)
    share their page with early memblock allocations (mem_section_usage,
    resources), which a live read cannot see and a QEMU dump can."""
    nomap = [(f["start_pfn"], f["end_pfn"]) for f in findings
             if f.get("facts", {}).get("reason_code") == "memblock-nomap"]
    blind = []
    for u in unreadable:
        phys = re.search(r"physical memory segment: (0x[0-9a-f]+)", u["reason"])
        pfn = int(phys[1], 16) >> 12 if phys else None  # the bed's kernels use 4 KiB pages
        if pfn is not None and any(start <= pfn < end for start, end in nomap):
            blind.append(u)
    return blind


def without_facts(findings: list[dict]) -> list[dict]:
    return [{k: v for k, v in f.items() if k != "facts"} for f in findings]


def test_check_inside_the_guest_equals_a_dump_and_the_guest_truth(in_guest, tmp_path):
    print(in_guest.check_text())  # the README's transcript (pytest -rP)
    live_text, live_rc = in_guest.run("drgn-hotplug check --json")
    live = json.loads(live_text)
    dump_text, dump_rc = dump_document(in_guest, tmp_path, "check --json")
    dump = json.loads(dump_text)
    assert (live_rc, dump_rc) == (1, 1)
    assert dump["unreadable"] == []
    # Everything a live read could not see lies in pages /proc/kcore leaves out.
    blind = in_nomap_pages(live["unreadable"], dump["findings"])
    assert live["unreadable"] == blind
    found = [f for f in live["findings"] if f["kind"] != "unreadable"]
    if blind:
        # Facts read from the unseen page (a section's subsection_map) differ.
        assert without_facts(found) == without_facts(dump["findings"])
    else:
        assert found == dump["findings"]
    orphans = {f"node{f['node']}/memory{f['block']}" for f in found if f["kind"] == "orphaned-link"}
    assert orphans == dangling_links(in_guest)
    removed = next(e for e in in_guest.guest.events if e["op"] == "hot-remove")
    assert orphans == {f"node{removed['node']}/memory{b}" for b in removed["blocks"]}


def report_rows(text: str) -> str:
    """A check report from its table header on (the first line names the target)."""
    return text[text.index("SEVERITY"):].strip()


def test_memhp_at_the_drgn_prompt_and_from_a_drgn_script(in_guest, tmp_path):
    in_guest.write("/tmp/prompt.py", AT_THE_PROMPT)
    in_guest.write("/tmp/check.py", RUN_COMMAND)
    typed, rc = in_guest.run("/usr/bin/python3 /tmp/prompt.py '%memhp check'")
    assert rc == 0, typed
    scripted, rc = in_guest.run("/usr/local/bin/drgn -q /tmp/check.py")
    assert rc == 0, scripted
    print(typed, scripted, sep="\n----\n")  # the README's transcripts (pytest -rP)
    # The command line's report, which the first test ties to the dump's findings.
    report = report_rows(in_guest.check_text())
    assert "orphaned-link" in report
    assert report in typed
    assert report in scripted
    table, _ = dump_document(in_guest, tmp_path)
    if "unreadable" not in report:
        assert report_rows(table) == report


def test_a_non_root_user_is_told_root_is_needed(in_guest):
    out, rc = in_guest.run("/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups "
                           "/usr/local/bin/drgn-hotplug check")
    print(out, f"exit status {rc}")  # the README's transcript (pytest -rP)
    assert rc == 2
    assert re.fullmatch(r"drgn-hotplug: [^\n]*root \(CAP_SYS_RAWIO\)[^\n]*\n", out)


def test_watch_on_uevents_inside_the_guest_catches_the_orphans(in_guest):
    """``drgn-hotplug watch`` on the running kernel (no target option)
    re-checks on its memory uevents: the hot-added blocks are reported after
    a memory uevent, the orphaned links within seconds of the hot-remove,
    nothing serious before it (the objects /proc/kcore cannot show aside,
    as in the check above), and Ctrl-C ends it with status 1."""
    w = in_guest.watched
    lines = w["lines"]
    print("\n".join(json.dumps(line) for line in lines))  # the README's transcript (pytest -rP)
    print(f"hot-remove returned at {w['removed']:.3f}, orphans "
          f"{max(line_time(line) for line in lines if is_orphan_line(line)) - w['removed']:.1f} s later")
    added = [line for line in lines if line["change"] == "blocks-added" and line["event"]["source"] != "start"]
    assert sorted(b for line in added for b in line["blocks"]) == sorted(b for d in w["dimm_blocks"] for b in d)
    assert all(line["event"]["source"] == "uevent" and
               line["event"]["detail"]["devpath"].startswith("/devices/system/memory/memory") for line in added)
    orphans = [line for line in lines if is_orphan_line(line)]
    assert {(line["finding"]["node"], line["finding"]["block"]) for line in orphans} == \
        {(w["first"]["node"], block) for block in w["first"]["blocks"]}
    assert all(line["event"]["source"] == "uevent" for line in orphans)
    assert max(line_time(line) for line in orphans) - w["removed"] < ORPHAN_WITHIN_S
    serious = [line["finding"] for line in lines if line["severity"] in ("error", "warning")
               and line_time(line) < w["before_remove"]]
    findings = [line["finding"] for line in lines if line["change"] == "appeared"]
    assert [f for f in serious if f not in in_nomap_pages(serious, findings)] == []
    assert w["status"] == 1


def test_memhp_watch_at_the_drgn_prompt_reports_a_hot_add(in_guest):
    """``%memhp watch`` typed at drgn's prompt on the running kernel listens
    to its uevents: a DIMM hot-added from the host is reported after a
    memory uevent, nothing serious appears, and Ctrl-C gives the prompt back."""
    g, root = in_guest.guest, userland.GUEST_ROOT
    in_guest.write("/tmp/watch_prompt.py", WATCH_AT_THE_PROMPT)
    command = userland.in_userland("/usr/bin/python3 /tmp/watch_prompt.py /tmp/prompt.jsonl /tmp/prompt.stop")
    g.run(f"( {command} 2> {root}/tmp/prompt.err; echo $? > {root}/tmp/prompt.rc ) "
          "</dev/null >/dev/null 2>&1 &")
    in_guest.wait_for_watch(lambda line: line["event"]["source"] == "start", 600, name="prompt")
    added = g.hot_add(0, DIMM_MIB[in_guest.kernel.arch])
    in_guest.wait_for_watch(lambda line: line["change"] == "blocks-added" and added["blocks"][-1]
                            in line["blocks"], 120, name="prompt")
    g.run(f"touch {root}/tmp/prompt.stop")
    g.wait_guest(f"test -s {root}/tmp/prompt.rc", 120)
    typed = g.run(f"cat {root}/tmp/prompt.jsonl")
    print(typed)  # the README's transcript (pytest -rP)
    assert int(g.run(f"cat {root}/tmp/prompt.rc")) == 0
    lines = in_guest.watch_lines("prompt")
    added_lines = [line for line in lines if line["change"] == "blocks-added"
                   and line["event"]["source"] != "start"]
    assert sorted(b for line in added_lines for b in line["blocks"]) == added["blocks"]
    assert all(line["event"]["source"] == "uevent" for line in added_lines)
    assert [line for line in lines if line["change"] == "appeared" and line["severity"] in ("error", "warning")
            and line["finding"]["kind"] not in ("unreadable", "orphaned-link")] == []
    # Ctrl-C ended the watch, not drgn: its prompt came back.
    assert typed.rstrip().endswith(">>>")
