"""A /proc/vmcore as a kdump kernel writes it: the bed's guest booted with
``crashkernel=`` plays its scenario, loads its capture kernel, records its
truth and is crashed (sysrq c); the capture kernel copies its /proc/vmcore
to a raw virtio disk.

The capture kernel is the guest's own Debian kernel with the cell's
initramfs (its command server comes up again after the crash), plus the
virtio disk modules (vmcores.userland.disk_modules_cpio). Busybox has no
kexec and the initramfs no other userland, so the loader rides in an extra
cpio appended to the first kernel's initrd, with the kernel image and the
capture initrd. On x86_64 it is a small static C program compiled on the
host that calls kexec_file_load. Debian's arm64 cloud kernels have no
CONFIG_KEXEC_FILE, only kexec_load, whose segments (the image, the
purgatory, the device tree with linux,elfcorehdr and the ELF core header)
user space builds: there it is bookworm's kexec-tools for arm64, run by its
own dynamic loader with the shared libraries of its packages.

The result is cached under ``<cache>/kdump/<arch>-<kernel>-<scenario>-<package
version>-<hash>`` (the hash covers this file and the cell's bed hash), with the
truth the crashed kernel gave just before the crash:

    >>> kd = build_proc_vmcore("x86_64", "6.1", "orphan")    # doctest: +SKIP
    >>> kd.vmcore.name, kd.truth["dangling_links"]           # doctest: +SKIP
    ('vmcore', [{'node': 1, 'block': 32}, {'node': 1, 'block': 33}])
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .cells import ALL_SCENARIOS, Cell, bed_hash, build_cell, keep_sparse
from .guest import GuestSpec
from .initramfs import READY, CpioWriter
from .packages import cache_root, fetch_kernel, link_addresses
from .scenarios import LiveGuest
from .userland import deb_closure, disk_modules_cpio

# Memory kept for the capture kernel: a Debian cloud kernel and the bed's
# small initramfs.
CRASHKERNEL = "crashkernel=256M"
# The usual kdump capture options: one CPU, reset devices the crashed kernel
# left busy, no reboot loop, and acpi_no_memhotplug (as RHEL's kdump): without
# it the capture kernel adds the still-plugged DIMMs as its own memory, and
# reading the crashed kernel's RAM there (ioremap refuses RAM) made
# /proc/vmcore fail ("dd: /proc/vmcore: Bad address", 6.1 and 7.3).
CAPTURE_OPTIONS = "irqpoll nr_cpus=1 reset_devices panic=-1 memhp_default_state=offline acpi_no_memhotplug"
# The serial port the command server answers on.
CONSOLE = {"x86_64": "ttyS0", "arm64": "ttyAMA0"}
DYNAMIC_LOADER = {"arm64": "ld-linux-aarch64.so.1"}
# The raw disk the capture kernel copies /proc/vmcore to: sparse, larger than
# any guest's RAM (1G plus the scenarios' DIMMs).
OUT_DISK_BYTES = 12 << 30
CAPTURE_BOOT_TIMEOUT_S = 240
COPY_TIMEOUT_S = 1800

KEXEC_CRASH_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#define KEXEC_FILE_ON_CRASH 0x2
int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: kexec-crash KERNEL INITRD CMDLINE\n"); return 2; }
    int kernel = open(argv[1], O_RDONLY), initrd = open(argv[2], O_RDONLY);
    if (kernel < 0 || initrd < 0) { perror("open"); return 1; }
    if (syscall(SYS_kexec_file_load, kernel, initrd, strlen(argv[3]) + 1, argv[3], KEXEC_FILE_ON_CRASH)) {
        perror("kexec_file_load"); return 1;
    }
    return 0;
}
"""


def kdump_dir() -> Path:
    return cache_root() / "kdump"


@functools.lru_cache(maxsize=None)
def kdump_hash(arch: str, scenario: str) -> str:
    """This file's hash with the cell's bed hash: what the guest ran."""
    h = hashlib.sha256(Path(__file__).read_bytes() + bed_hash(arch, scenario).encode())
    return h.hexdigest()[:10]


@dataclass
class ProcVmcore:
    """A cached /proc/vmcore and what the crashed kernel said before the crash."""

    dir: Path

    @property
    def vmcore(self) -> Path:
        return self.dir / "vmcore"

    @functools.cached_property
    def meta(self) -> dict:
        return json.loads((self.dir / "kdump.json").read_text())

    @functools.cached_property
    def truth(self) -> dict:
        return json.loads((self.dir / "truth.json").read_text())

    @property
    def vmlinux(self) -> Path:
        return Path(self.meta["vmlinux"])


def capture_cmdline(arch: str) -> str:
    """The capture kernel's command line.

    >>> capture_cmdline("arm64").split()[:2]
    ['console=ttyAMA0', 'irqpoll']
    """
    return f"console={CONSOLE[arch]} {CAPTURE_OPTIONS}"


def load_script(arch: str, text: int) -> str:
    """The guest shell script that loads /kdump/vmlinuz and /kdump/initrd as
    the capture kernel; ``text`` is the running kernel's ``_text``.

    >>> load_script("arm64", 0xffff800008000000).splitlines()[-1].split()[:4]
    ['/kdump/lib/ld-linux-aarch64.so.1', '--library-path', '/kdump/lib', '/kdump/kexec']
    """
    if arch == "x86_64":
        return f"/kdump/kexec-crash /kdump/vmlinuz /kdump/initrd '{capture_cmdline(arch)}'"
    # kexec-tools takes PAGE_OFFSET and the core header's kernel text segment
    # from _text in /proc/kallsyms (kexec/arch/arm64/kexec-arm64.c
    # get_page_offset(), crashdump-arm64.c). Without CONFIG_KALLSYMS_ALL
    # (Debian's arm64 cloud 5.10 and 6.1) kallsyms lists text from _stext on
    # (scripts/kallsyms.c text_ranges) and has no _text: kexec-tools 2.0.25
    # then wrote linear-map segments at their physical addresses and a text
    # segment at 0x34e6f7400000, and reading /proc/vmcore there aborted the
    # capture kernel. It is given a kallsyms with _text for that run.
    return (f"set -e\n"
            f"if ! grep -q ' _text$' /proc/kallsyms; then\n"
            f"  {{ echo '{text:016x} T _text'; cat /proc/kallsyms; }} > /kdump/kallsyms\n"
            f"  mount --bind /kdump/kallsyms /proc/kallsyms\n"
            f"fi\n"
            f"/kdump/lib/{DYNAMIC_LOADER[arch]} --library-path /kdump/lib /kdump/kexec -p /kdump/vmlinuz "
            f"--initrd=/kdump/initrd --append='{capture_cmdline(arch)}'")


def loader_files(arch: str, work: Path) -> dict[str, bytes]:
    """The files under /kdump/ that load the capture kernel: name -> bytes."""
    if arch == "x86_64":
        return {"kexec-crash": kexec_crash_binary(work)}
    return kexec_tools_files(arch, work)


def kexec_tools_files(arch: str, work: Path) -> dict[str, bytes]:
    """bookworm's kexec and every shared library of its packages' dependency
    closure, flattened into lib/ (symlinks followed)."""
    tree = work / "kexec-tools"
    for deb in deb_closure(arch, ("kexec-tools",)):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    files = {"kexec": (tree / "sbin/kexec").read_bytes()}
    for path in sorted(tree.glob("**/lib/*-linux-gnu/*.so*")):
        real = followed_in_tree(tree, path)
        if real is not None:
            files[f"lib/{path.name}"] = real.read_bytes()
    shutil.rmtree(tree)
    return files


def followed_in_tree(tree: Path, path: Path) -> Path | None:
    """``path`` with its symlinks followed inside the extracted ``tree``
    (an absolute target is the tree's); None if it ends nowhere."""
    for _ in range(40):
        if not path.is_symlink():
            return path if path.is_file() else None
        target = os.readlink(path)
        path = tree / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


def kexec_crash_binary(work: Path) -> bytes:
    """The static kexec_file_load(KEXEC_FILE_ON_CRASH) program."""
    (work / "kexec-crash.c").write_text(KEXEC_CRASH_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(work / "kexec-crash"), str(work / "kexec-crash.c")],
                   check=True, capture_output=True)
    return (work / "kexec-crash").read_bytes()


def initrds(cell: Cell, work: Path) -> tuple[bytes, bytes]:
    """(the first kernel's initrd, the capture kernel's): the cell's initrd
    with the virtio disk modules; the first also carries /kdump/ (the
    capture kernel, its initrd and the loader_files)."""
    k = fetch_kernel(cell.meta["arch"], cell.meta["kernel"])
    cell_modules = [m.name for m in k.modules_in_load_order(
        ["qemu_fw_cfg", *ALL_SCENARIOS[cell.meta["scenario"]].modules])]
    capture = (cell.dir / "initrd").read_bytes() + disk_modules_cpio(k, cell_modules)
    loader = loader_files(cell.meta["arch"], work)
    w = CpioWriter()
    # The kernel's cpio unpacker makes no parent directories.
    for directory in ["kdump", *sorted({f"kdump/{Path(n).parent}" for n in loader if "/" in n})]:
        w.directory(directory)
    w.file("kdump/vmlinuz", Path(cell.meta["image"]).read_bytes(), 0o644)
    w.file("kdump/initrd", capture, 0o644)
    for name, data in loader.items():
        w.file(f"kdump/{name}", data, 0o755)
    return capture + w.finish(), capture


def capture(cell: Cell, work: Path) -> dict:
    """Boot, load the capture kernel, play the scenario, record the truth,
    crash, and have the capture kernel copy /proc/vmcore to ``work``/vmcore.
    Returns facts for kdump.json."""
    first, _ = initrds(cell, work)
    (work / "initrd").write_bytes(first)
    out = work / "vmcore"
    with open(out, "wb") as f:
        f.truncate(OUT_DISK_BYTES)
    meta = cell.meta
    spec = GuestSpec(meta["arch"], Path(meta["image"]), work / "initrd", f"{meta['cmdline']} {CRASHKERNEL}",
                     ["-drive", f"file={out},if=none,id=vmcore,format=raw",
                      "-device", "virtio-blk-pci,drive=vmcore"])
    kernel_meta = json.loads((Path(meta["kernel_dir"]) / "kernel.json").read_text())
    started = time.monotonic()
    with LiveGuest(spec, kernel_meta, meta["scenario"]) as g, console_kept_on_failure(g, work):
        formats = g.qmp.execute("query-dump-guest-memory-capability")["formats"]
        ALL_SCENARIOS[meta["scenario"]].play(g)
        # Loaded after the scenario, as kdump-tools reloads after a hotplug:
        # the ELF header kexec_file_load builds lists the RAM of its moment
        # (6.1 has no CONFIG_CRASH_HOTPLUG, which has the kernel update it).
        reserved = g.run("cat /sys/kernel/kexec_crash_size").strip()
        g.run(load_script(meta["arch"], link_addresses(cell.vmlinux, ("_text",))["_text"] + g.kaslr_offset))
        loaded = g.run("cat /sys/kernel/kexec_crash_loaded").strip()
        if loaded != "1":
            raise RuntimeError(f"capture kernel not loaded (kexec_crash_loaded={loaded})")
        truth = g.truth()
        crash_at = len(g.shell.text)
        # Backgrounded, so the command server answers before the panic.
        g.run("(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &")
        g.shell.wait_for(rf"^{READY}$", CAPTURE_BOOT_TIMEOUT_S, crash_at)
        crashed = time.monotonic()
        size = int(g.run("stat -c %s /proc/vmcore"))
        g.run("dd if=/proc/vmcore of=/dev/vda bs=1M 2>&1 && sync", timeout=COPY_TIMEOUT_S)
        copied = time.monotonic()
        release = g.run("uname -r").strip()
        console = g.console_text
    with open(out, "r+b") as f:
        f.truncate(size)
    keep_sparse(out)
    (work / "console.log").write_text(console)
    (work / "truth.json").write_text(json.dumps(truth, indent=1))
    (work / "initrd").unlink()
    return {"qemu_dump_formats": formats, "crashkernel_bytes": int(reserved), "capture_release": release,
            "vmcore_bytes": size, "seconds": {"to_crash": round(crashed - started, 1),
                                              "copy": round(copied - crashed, 1)}}


@contextlib.contextmanager
def console_kept_on_failure(g: LiveGuest, work: Path) -> Iterator[None]:
    """On a failure, the guest's console goes to ``<cache>/kdump/failed-console.log``
    (the work directory is removed)."""
    try:
        yield
    except BaseException:
        (kdump_dir() / "failed-console.log").write_text(g.shell.text)
        raise


def build_proc_vmcore(arch: str, kernel: str, scenario: str) -> ProcVmcore:
    """Build (or reuse from the cache) the /proc/vmcore of a cell's guest."""
    cell = build_cell(arch, kernel, scenario)
    name = f"{arch}-{kernel}-{scenario}-{cell.meta['package_version']}-{kdump_hash(arch, scenario)}"
    final = kdump_dir() / name
    kdump_dir().mkdir(parents=True, exist_ok=True)
    with open(kdump_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "kdump.json").exists():
            work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=kdump_dir()))
            try:
                facts = capture(cell, work)
                (work / "kdump.json").write_text(json.dumps(
                    {"arch": arch, "kernel": kernel, "scenario": scenario, "vmlinux": str(cell.vmlinux),
                     "cell": str(cell.dir), "capture_cmdline": capture_cmdline(arch),
                     "cmdline": f"{cell.meta['cmdline']} {CRASHKERNEL}", **facts}, indent=1))
                for leftover in ("kexec-crash", "kexec-crash.c"):
                    (work / leftover).unlink(missing_ok=True)
                shutil.rmtree(final, ignore_errors=True)
                work.rename(final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            for older in kdump_dir().glob(f"{arch}-{kernel}-{scenario}-*"):
                if older != final and older.is_dir():
                    shutil.rmtree(older, ignore_errors=True)
    return ProcVmcore(final)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmcores.kdump", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="x86_64", choices=sorted(CONSOLE))
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--scenario", default="orphan")
    args = parser.parse_args(argv)
    kd = build_proc_vmcore(args.arch, args.kernel, args.scenario)
    print(json.dumps(kd.meta, indent=1), file=sys.stderr)
    print(kd.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
