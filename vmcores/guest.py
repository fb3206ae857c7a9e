"""Launch a QEMU guest of a test-bed kernel and drive it.

A guest has three control channels: the serial console (boot log, plus the
initramfs command server), a QMP socket for the harness, a second QMP socket
left free for ``drgn --qemu``, and a gdbstub on 127.0.0.1.

Example:
    >>> with Guest(GuestSpec("x86_64", image, initrd, cmdline)) as g:   # doctest: +SKIP
    ...     g.shell.run("uname -r")
    '6.1.0-56-cloud-amd64\\n'
"""

from __future__ import annotations

import ctypes
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .initramfs import READY
from .qmp import QMP, ChannelError, SerialShell

BOOT_TIMEOUT_S = {"x86_64": 60, "arm64": 180}
# QMP dump-guest-memory's kdump formats (qapi/dump.json), each kept by a cell
# when QEMU offers it.
QEMU_KDUMP_FORMATS = ("kdump-zlib", "kdump-lzo", "kdump-snappy")

X86_CMDLINE = "console=ttyS0 memhp_default_state=offline memblock=debug log_buf_len=16M panic=-1"


@dataclass
class GuestSpec:
    """What to boot: everything a cell records to start the same guest again."""

    arch: str
    image: Path
    initrd: Path
    cmdline: str
    extra_args: list[str] = field(default_factory=list)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def x86_64_machine_args() -> list[str]:
    """q35 with two 512M NUMA nodes and room for DIMMs.

    ``thread=single``: multi-threaded TCG once hit an "Oops: int3" race while
    6.12 patched its own text (testbed-notes). ``sockets=2``: plain ``-smp 2``
    taints the kernel.
    """
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=single", "-M", "q35", "-cpu", "qemu64",
        "-smp", "2,sockets=2,cores=1,threads=1", "-m", "1G,slots=8,maxmem=8G",
        "-object", "memory-backend-ram,id=m0,size=512M", "-numa", "node,nodeid=0,memdev=m0",
        "-object", "memory-backend-ram,id=m1,size=512M", "-numa", "node,nodeid=1,memdev=m1",
    ]


# QEMU's send buffer on the console connection. QEMU sends the console one
# byte at a time and a unix socket charges each send a whole skb (~1 KiB) to
# the sender's buffer: with the default (net.core.wmem_default, 208 KiB) the
# socket is full after ~200 characters whenever the harness is not scheduled,
# and then characters are lost (QEMU retries a blocked write only a few times;
# the guest's 8250 driver waits at most 10 ms for its transmitter). Seen on a
# loaded 2-core machine: 5-9 broken memblock lines in each boot of the
# discard cmdline; none in 4 boots with 4 MiB (the usual net.core.wmem_max;
# Linux doubles it).
CONSOLE_SNDBUF = 4 << 20


def console_socketpair() -> tuple[socket.socket, socket.socket]:
    """The console connection: (the harness's end, QEMU's end with a large send buffer).

    >>> ours, qemus = console_socketpair(); qemus.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 1 << 20
    True
    """
    ours, qemus = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    qemus.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CONSOLE_SNDBUF)
    return ours, qemus


def qemu_argv(spec: GuestSpec, run: Path, gdb_port: int, console_fd: int) -> list[str]:
    """The full QEMU command line of a guest whose sockets live in ``run``;
    ``console_fd`` is QEMU's end of the console connection."""
    if spec.arch == "x86_64":
        machine = x86_64_machine_args()
    else:
        from . import aarch64

        machine = ["qemu-system-aarch64", *aarch64.machine_args(), *aarch64.firmware_args(run)]
    return [
        *machine, *spec.extra_args,
        "-nodefaults", "-display", "none", "-no-reboot",
        "-device", "vmcoreinfo",
        "-kernel", str(spec.image), "-initrd", str(spec.initrd), "-append", spec.cmdline,
        # The console is connected before QEMU starts, so no early byte is
        # lost. No logfile=: QEMU 7.2 logs characters twice when a socket
        # write is retried; the harness keeps the console text itself.
        "-chardev", f"socket,id=ser0,fd={console_fd}",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
        "-qmp", f"unix:{run / 'drgn-qmp.sock'},server=on,wait=off",
        "-gdb", f"tcp:127.0.0.1:{gdb_port}",
    ]


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in the QEMU child before exec: SIGKILL it when the harness dies, so no
    guest outlives a killed build or test run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Guest:
    """A running guest; a context manager that always kills QEMU on exit."""

    def __init__(self, spec: GuestSpec):
        self.spec = spec
        self.run_dir = Path(tempfile.mkdtemp(prefix="vmcores-"))
        self.proc: subprocess.Popen | None = None
        self.argv: list[str] = []
        self.gdb_port = 0

    @property
    def drgn_qmp_socket(self) -> Path:
        return self.run_dir / "drgn-qmp.sock"

    @property
    def console_text(self) -> str:
        """Everything the guest wrote to its serial console since power-on, each
        command reply shortened to its frame line."""
        return re.sub(r"^(@@BEGIN [^\n]*)\n.*?^@@END \d+\n", r"\1 (payload omitted)\n",
                      self.shell.text, flags=re.M | re.S)

    def __enter__(self) -> "Guest":
        try:
            try:
                self.boot()
            except ChannelError:
                # One retry: a TCG race can kill a boot (testbed-notes).
                self.stop()
                self.boot()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def boot(self) -> None:
        """Start QEMU and wait for the initramfs command server."""
        start = time.monotonic()
        self.gdb_port = free_tcp_port()
        ours, qemus = console_socketpair()
        self.argv = qemu_argv(self.spec, self.run_dir, self.gdb_port, qemus.fileno())
        with open(self.run_dir / "qemu.stderr", "wb") as stderr, qemus:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr, preexec_fn=die_with_parent, pass_fds=[qemus.fileno()])
        try:
            self.shell = SerialShell(ours)
            self.qmp = QMP(self.run_dir / "qmp.sock")
            self.shell.wait_for(rf"^{READY}$", BOOT_TIMEOUT_S[self.spec.arch])
        except ChannelError as err:
            raise ChannelError(f"{self.spec.arch} guest did not boot: {err}; {self.last_words()}") from None
        if "@@INSMOD-FAILED" in self.shell.text:
            raise ChannelError(f"a module failed to load; {self.last_words()}")
        self.boot_seconds = time.monotonic() - start

    def last_words(self) -> str:
        """The end of QEMU's stderr and of the console, for a failure message."""
        stderr = (self.run_dir / "qemu.stderr").read_text(errors="replace").strip()[-300:]
        console = self.shell.text.strip()[-300:] if hasattr(self, "shell") else ""
        return f"qemu stderr: {stderr or '-'}; console ends: {console or '-'}"

    def stop(self) -> None:
        """Kill QEMU (only ours, by its process handle)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for chan in ("shell", "qmp"):
            if hasattr(self, chan):
                getattr(self, chan).close()
                delattr(self, chan)

    def kallsyms_address(self, symbol: str) -> int:
        """Run-time address of a kernel symbol from the guest's /proc/kallsyms."""
        for line in self.shell.run(f"grep ' {symbol}$' /proc/kallsyms").splitlines():
            addr, _, name = line.split()[:3]
            if name == symbol:
                return int(addr, 16)
        raise ChannelError(f"{symbol} not in /proc/kallsyms")

    def dump(self, path: Path) -> None:
        """QEMU's physical (paging=false) ELF dump of the whole guest."""
        start = time.monotonic()
        self.qmp.execute("dump-guest-memory", timeout=600, paging=False, protocol=f"file:{path}")
        self.dump_seconds = time.monotonic() - start

    def dump_all(self, raw: Path, out: Path) -> dict[str, Path]:
        """QEMU's dumps of one paused moment: the physical ELF into ``raw``
        (see dump), and into ``out`` the paging ELF and each kdump format this
        QEMU offers, as QEMU writes them (flattened streams; what ``virsh dump
        --memory-only --format=kdump-*`` gives a user). Returns {format: path}.

        Debian's QEMU 7.2 offers kdump-zlib only (no lzo, no snappy built in).
        """
        offered = set(self.qmp.execute("query-dump-guest-memory-capability")["formats"])
        self.qmp.execute("stop")
        try:
            self.dump(raw)
            start = time.monotonic()
            written = {"qemu-elf-paging": out / "vmcore-qemu-paging.elf"}
            self.qmp.execute("dump-guest-memory", timeout=600, paging=True,
                             protocol=f"file:{written['qemu-elf-paging']}")
            for fmt in QEMU_KDUMP_FORMATS:
                if fmt in offered:
                    written[f"qemu-{fmt}"] = out / f"vmcore-qemu-{fmt}.flat"
                    self.qmp.execute("dump-guest-memory", timeout=600, paging=False, format=fmt,
                                     protocol=f"file:{written[f'qemu-{fmt}']}")
            self.extra_dump_seconds = time.monotonic() - start
        finally:
            self.qmp.execute("cont")
        return written
