"""The guest's initramfs: busybox, a few modules and a command server on the console.

The init mounts proc, sys, dev and debugfs, insmods the modules it is given
(dependencies first), then serves shell commands read from the console. A
command arrives as one line ``<id> <base64 of the script>`` (or ``<id> -`` to
resend the last reply); each reply is framed as

    @@BEGIN <id> <exit status> <length> <md5>
    <gzip of the output, base64, wrapped>
    @@END <id>

where length and md5 are those of the base64 text with newlines removed, so a
line that a kernel message broke into is detected by the host and never parsed.

Example:
    >>> cpio = build_initramfs(busybox, [k.modules_dir / "qemu_fw_cfg.ko"])   # doctest: +SKIP
    >>> cpio[:6]                                                             # doctest: +SKIP
    b'070701'
"""

from __future__ import annotations

from pathlib import Path

READY = "@@READY"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev || mount -t tmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug
for m in $(cat /etc/modules); do insmod /lib/modules/$m || echo "@@INSMOD-FAILED $m"; done
# Quiet the console (warnings and worse only) so that kernel messages rarely
# break into replies; the framing catches those that still do.
echo 4 > /proc/sys/kernel/printk
exec /bin/serve </dev/console >/dev/console 2>&1
"""

SERVE = """#!/bin/sh
stty -echo
echo @@READY
while read -r id cmd; do
  if [ "$cmd" != "-" ]; then
    echo "$cmd" | base64 -d > /tmp/cmd.sh
    sh /tmp/cmd.sh > /tmp/out 2>&1
    rc=$?
    gzip -c /tmp/out | base64 > /tmp/out.b64
    len=$(tr -d '\\n' < /tmp/out.b64 | wc -c)
    set -- $(tr -d '\\n' < /tmp/out.b64 | md5sum)
    sum=$1
  fi
  echo "@@BEGIN $id $rc $len $sum"
  cat /tmp/out.b64
  echo "@@END $id"
done
"""


def build_initramfs(busybox: Path, modules: list[Path]) -> bytes:
    """An uncompressed newc cpio: /init, /bin/serve, busybox and ``modules`` in load order."""
    entries = CpioWriter()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        entries.directory(d)
    # The kernel opens /dev/console for init before any devtmpfs is mounted.
    entries.char_device("dev/console", 5, 1)
    entries.file("init", INIT.encode(), 0o755)
    entries.file("bin/serve", SERVE.encode(), 0o755)
    entries.file("bin/busybox", busybox.read_bytes(), 0o755)
    entries.file("bin/sh", b"", 0o777, symlink_to="busybox")
    entries.file("etc/modules", "".join(f"{m.name}\n" for m in modules).encode(), 0o644)
    for module in modules:
        entries.file(f"lib/modules/{module.name}", module.read_bytes(), 0o644)
    return entries.finish()


class CpioWriter:
    """Writes a newc ("070701") cpio archive in memory.

    >>> w = CpioWriter(); w.file("a", b"hi", 0o644); w.finish()[:6]
    b'070701'
    """

    def __init__(self):
        self.parts: list[bytes] = []
        self.ino = 1

    def entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.parts.append(pad4(header + name.encode() + b"\0"))
        self.parts.append(pad4(data))
        self.ino += 1

    def directory(self, name: str) -> None:
        self.entry(name, 0o040755, b"")

    def char_device(self, name: str, major: int, minor: int) -> None:
        self.entry(name, 0o020600, b"", (major, minor))

    def file(self, name: str, data: bytes, perm: int, symlink_to: str | None = None) -> None:
        if symlink_to is not None:
            self.entry(name, 0o120000 | perm, symlink_to.encode())
        else:
            self.entry(name, 0o100000 | perm, data)

    def finish(self) -> bytes:
        self.entry("TRAILER!!!", 0, b"")
        return b"".join(self.parts)


def pad4(data: bytes) -> bytes:
    """Pad to a multiple of 4 bytes, as newc aligns headers and data.

    >>> pad4(b"abcde")
    b'abcde\\x00\\x00\\x00'
    """
    return data + b"\0" * (-len(data) % 4)
