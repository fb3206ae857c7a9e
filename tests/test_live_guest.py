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

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmcores import packages, userland
from vmcores.scenarios import SCENARIOS, LiveGuest

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


@pytest.fixture(scope="module", params=[("x86_64", "6.1"), ("x86_64", "7.x")], ids="-".join)
def in_guest(request, wheel, tmp_path_factory):
    arch, series = request.param
    k = packages.fetch_kernel(arch, series)
    disk = userland.build_userland(k, wheel)
    spec = userland.live_guest_spec(k, "orphan", disk, tmp_path_factory.mktemp("initrd"))
    with LiveGuest(spec, k.meta, "orphan") as guest:
        SCENARIOS["orphan"].play(guest)
        yield InGuest(guest, k)


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


def test_check_inside_the_guest_equals_a_dump_and_the_guest_truth(in_guest, tmp_path):
    print(in_guest.run("drgn-hotplug check")[0])  # the README's transcript (pytest -rP)
    live_text, live_rc = in_guest.run("drgn-hotplug check --json")
    live = json.loads(live_text)
    dump_text, dump_rc = dump_document(in_guest, tmp_path, "check --json")
    assert (live_rc, dump_rc) == (1, 1)
    assert live["findings"] == json.loads(dump_text)["findings"]
    orphans = {f"node{f['node']}/memory{f['block']}" for f in live["findings"] if f["kind"] == "orphaned-link"}
    assert orphans == dangling_links(in_guest)
    assert len(orphans) == 2


def test_memhp_at_the_drgn_prompt_and_from_a_drgn_script(in_guest, tmp_path):
    in_guest.write("/tmp/prompt.py", AT_THE_PROMPT)
    in_guest.write("/tmp/check.py", RUN_COMMAND)
    typed, rc = in_guest.run("/usr/bin/python3 /tmp/prompt.py '%memhp check'")
    assert rc == 0, typed
    scripted, rc = in_guest.run("/usr/local/bin/drgn -q /tmp/check.py")
    assert rc == 0, scripted
    table, _ = dump_document(in_guest, tmp_path)
    # The first line names the target (the dump's format), the rest is the report.
    findings = table[table.index("SEVERITY"):].strip()
    assert "orphaned-link" in findings
    assert findings in typed
    assert findings in scripted
    print(typed, scripted, sep="\n----\n")  # the README's transcripts (pytest -rP)


def test_a_non_root_user_is_told_root_is_needed(in_guest):
    out, rc = in_guest.run("/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups "
                           "/usr/local/bin/drgn-hotplug check")
    assert rc == 2
    assert re.fullmatch(r"drgn-hotplug: [^\n]*root \(CAP_SYS_RAWIO\)[^\n]*\n", out)
