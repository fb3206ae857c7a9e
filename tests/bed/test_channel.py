"""The console command channel: a reply that a kernel message broke into is
detected, asked for again, and never parsed."""

from __future__ import annotations

import base64
import gzip
import hashlib
import socket
import threading

import pytest

from vmcores.qmp import ChannelError, SerialShell


def frame(cid: int, output: bytes, rc: int = 0, inject: str = "") -> bytes:
    """What the initramfs server prints for one reply, optionally with a kernel line inside."""
    payload = base64.b64encode(gzip.compress(output)).decode()
    lines = [payload[i:i + 76] for i in range(0, len(payload), 76)]
    if inject:
        lines[0] = lines[0][:10] + inject + lines[0][10:]
    md5 = hashlib.md5(payload.encode()).hexdigest()
    return (f"@@BEGIN {cid} {rc} {len(payload)} {md5}\r\n" + "\r\n".join(lines) + f"\r\n@@END {cid}\r\n").encode()


def fake_guest(path, replies: list[bytes]) -> list[str]:
    """Serve one canned reply per request line on a unix socket; return the requests seen."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    seen: list[str] = []

    def serve():
        conn, _ = server.accept()
        buf = b""
        for reply in replies:
            while b"\n" not in buf:
                buf += conn.recv(4096)
            line, buf = buf.split(b"\n", 1)
            seen.append(line.decode())
            conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return seen


def test_corrupt_reply_is_asked_again_without_rerunning(tmp_path):
    out = b"memory32\nmemory33\n" * 20
    seen = fake_guest(tmp_path / "s", [frame(1, out, inject="[   12.3] Oops"), frame(1, out)])
    shell = SerialShell(tmp_path / "s")
    assert shell.run("ls /sys/devices/system/memory", timeout=5) == out.decode()
    assert seen[1] == "1 -"
    assert base64.b64decode(seen[0].split()[1]) == b"ls /sys/devices/system/memory"


def test_always_corrupt_reply_raises(tmp_path):
    fake_guest(tmp_path / "s", [frame(1, b"x" * 200, inject="noise")] * 4)
    with pytest.raises(ChannelError, match="corrupt"):
        SerialShell(tmp_path / "s").run("true", timeout=5)


def test_failed_command_raises_with_its_output(tmp_path):
    fake_guest(tmp_path / "s", [frame(1, b"sh: write error: Invalid argument\n", rc=1)])
    with pytest.raises(ChannelError, match="Invalid argument"):
        SerialShell(tmp_path / "s").run("echo bad > /sys/x", timeout=5)
