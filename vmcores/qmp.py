"""Minimal clients for the guest's control channels: QMP, the serial command
server of the initramfs, and QEMU's gdbstub (GDB remote protocol).

Example:
    >>> q = QMP(Path("run/qmp.sock"))                          # doctest: +SKIP
    >>> q.execute("query-status")["status"]                    # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable


class ChannelError(RuntimeError):
    """A guest control channel failed (timeout, error reply, corrupt frame)."""


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """Connect to a unix socket QEMU is about to create."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise ChannelError(f"no socket at {path}")
            time.sleep(0.05)


class QMP:
    """One QMP client: synchronous commands, events kept for ``wait_event``."""

    def __init__(self, path: Path, timeout: float = 10):
        self.sock = connect_unix(path, timeout)
        self.file = self.sock.makefile("rb")
        self.events: list[dict] = []
        self.sock.settimeout(timeout)
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        try:
            line = self.file.readline()
        except socket.timeout:
            raise
        except OSError as err:
            raise ChannelError(f"QMP connection lost: {err}") from None
        if not line:
            raise ChannelError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, timeout: float = 60, **arguments) -> object:
        """Run a command and return its ``return`` value; an ``error`` raises ChannelError."""
        self.sock.settimeout(timeout)
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as err:
            raise ChannelError(f"QMP {command}: connection lost: {err}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise ChannelError(f"QMP {command}: {reply['error'].get('desc')}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, name: str, timeout: float, **data) -> dict:
        """Wait for an event whose data holds the given items (events seen before count)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and all(event.get("data", {}).get(k) == v for k, v in data.items()):
                    self.events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelError(f"no QMP event {name} {data} within {timeout} s")
            self.sock.settimeout(left)
            try:
                self.events.append(self._read())
            except socket.timeout:
                continue

    def close(self) -> None:
        self.sock.close()


class SerialShell:
    """Client of the initramfs command server (see vmcores.initramfs) on the guest console.

    Everything read is also kept in ``self.text`` so boot messages can be searched.
    """

    # The guest tty reads one canonical line of at most 4095 bytes.
    MAX_LINE = 4000

    def __init__(self, path: Path | socket.socket, timeout: float = 10):
        """Connect to the console's unix socket at ``path``, or use ``path`` if it
        is already a connected socket."""
        self.sock = path if isinstance(path, socket.socket) else connect_unix(path, timeout)
        self.text = ""
        self.lock = threading.Condition()
        self.next_id = 1
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                if not data:
                    self.closed = True
                    self.lock.notify_all()
                    return
                self.text += data.decode("utf-8", "replace").replace("\r", "")
                self.lock.notify_all()

    closed = False

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Wait until the console text from ``start`` on matches a regex."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.M | re.S)
        with self.lock:
            while True:
                match = regex.search(self.text, start)
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise ChannelError(f"console: no {pattern!r} within {timeout} s"
                                       f"{' (guest gone)' if self.closed else ''}")
                self.lock.wait(left)

    def run(self, script: str, timeout: float = 60, check: bool = True) -> str:
        """Run a shell script in the guest and return its output (stdout+stderr).

        A corrupt reply is asked for again (``-``) without re-running the script.

        >>> shell.run("uname -r")                                # doctest: +SKIP
        '6.1.0-56-cloud-amd64\\n'
        """
        cid = self.next_id
        self.next_id += 1
        line = f"{cid} {base64.b64encode(script.encode()).decode()}\n"
        if len(line) > self.MAX_LINE:
            raise ChannelError(f"command of {len(line)} bytes exceeds the guest's line limit")
        for attempt in range(4):
            start = len(self.text)
            self.sock.sendall(line.encode() if attempt == 0 else f"{cid} -\n".encode())
            match = self.wait_for(rf"^@@BEGIN {cid} (\d+) (\d+) ([0-9a-f]+)\n(.*?)^@@END {cid}\n",
                                  timeout, start)
            rc, length, md5, body = int(match[1]), int(match[2]), match[3], match[4]
            payload = "".join(body.split())
            if len(payload) == length and hashlib.md5(payload.encode()).hexdigest() == md5:
                out = gzip.decompress(base64.b64decode(payload)).decode("utf-8", "replace")
                if check and rc:
                    raise ChannelError(f"guest command failed ({rc}): {script[:80]!r}: {out[-300:]}")
                return out
        raise ChannelError(f"reply to {script[:80]!r} corrupt 4 times")

    def close(self) -> None:
        self.sock.close()


class GdbRemote:
    """A tiny GDB remote protocol client for QEMU's gdbstub: read and write guest memory.

    Connecting stops the guest; ``close`` detaches, which resumes it.

    >>> with GdbRemote(port) as gdb: old = gdb.read(addr, 1); gdb.write(addr, b"\\xc3")  # doctest: +SKIP
    """

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buf = b""

    def __enter__(self) -> "GdbRemote":
        self.request("?")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.request("D")
        finally:
            self.sock.close()

    def request(self, payload: str) -> str:
        """Send a packet and return the reply. QEMU may send a second stop reply
        (``T05...``) when it stops the VM for the new connection: skip those,
        unless a stop reply was asked for."""
        checksum = sum(payload.encode()) % 256
        self.sock.sendall(f"${payload}#{checksum:02x}".encode())
        while True:
            match = re.search(rb"\$([^#]*)#([0-9a-fA-F]{2})", self.buf)
            if match:
                self.buf = self.buf[match.end():]
                self.sock.sendall(b"+")
                reply = match[1].decode()
                if payload == "?" or not re.match(r"[ST][0-9a-f]{2}", reply):
                    return reply
                continue
            data = self.sock.recv(4096)
            if not data:
                raise ChannelError("gdbstub closed the connection")
            self.buf += data

    def read(self, address: int, size: int) -> bytes:
        reply = self.on_any_cpu(f"m{address:x},{size:x}",
                                lambda r: not r.startswith("E") and len(r) == 2 * size)
        if reply.startswith("E") or len(reply) != 2 * size:
            raise ChannelError(f"gdbstub cannot read {size} bytes at {address:#x}: {reply}")
        return bytes.fromhex(reply)

    def write(self, address: int, data: bytes) -> None:
        reply = self.on_any_cpu(f"M{address:x},{len(data):x}:{data.hex()}", lambda r: r == "OK")
        if reply != "OK":
            raise ChannelError(f"gdbstub cannot write at {address:#x}: {reply}")

    def on_any_cpu(self, packet: str, ok: Callable[[str], bool]) -> str:
        """The reply to a memory packet through the first vCPU that maps the
        address: QEMU translates through the selected vCPU's page tables, and
        an arm64 vCPU stopped in user space under KPTI (forced with KASLR,
        arch/arm64/kernel/cpufeature.c) maps no kernel text; another vCPU,
        idle in the kernel, does. The last vCPU's reply if none does."""
        reply = self.request(packet)
        for thread in self.threads() if not ok(reply) else ():
            if self.request(f"Hg{thread}") == "OK":
                reply = self.request(packet)
                if ok(reply):
                    break
        return reply

    def threads(self) -> list[str]:
        """The gdbstub's thread ids (one per vCPU), from qfThreadInfo/qsThreadInfo.

        The reply lists ids after ``m``, comma-separated, until ``l``.
        """
        ids, reply = [], self.request("qfThreadInfo")
        while reply.startswith("m"):
            ids += reply[1:].split(",")
            reply = self.request("qsThreadInfo")
        return ids
