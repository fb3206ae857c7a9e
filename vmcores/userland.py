"""A userland for live guests: Python, drgn, drgn-hotplug, util-linux and the
kernel's debug vmlinux on a read-only virtio disk, so the tool runs inside the
guest, as root, on the guest's own /proc/kcore.

The disk is an ext4 image (ext4 is built into the Debian cloud kernels; they
have no 9p) made with ``mke2fs -d`` from Debian bookworm packages of the
guest's arch (extracted with ``dpkg-deb -x``, no maintainer scripts), drgn's
wheel and the checkout's built wheel (installed with ``pip install --target``
on the host: the guest has no network and no pip, and TCG makes pip slow),
plus the kernel's vmlinux at /usr/lib/debug/lib/modules/ABI/vmlinux,
where drgn looks for it. The guest mounts it at /u and runs the tools with
``chroot /u``; cells never attach it, so their bed hash is unaffected.

Example:
    >>> disk = build_userland(k, wheel)                      # doctest: +SKIP
    >>> spec = live_guest_spec(k, "orphan", disk, workdir)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from . import packages
from .guest import GuestSpec
from .initramfs import CpioWriter
from .packages import DEBIAN, DEB_ARCH, SECURITY, AptRoot, Kernel, cache_root, run

# Bookworm's Python (3.11, as drgn's cp311 wheel), util-linux (lsmem, setpriv)
# with the libraries it pre-depends on, readline for drgn's prompt and
# libstdc++ (drgn's wheel links it); their
# dependency closure is apt's (pre-dependencies left out: they pull in debconf
# and its tools for maintainer scripts that never run here).
ROOTS = ("python3.11-minimal", "libpython3.11-stdlib", "python3-minimal", "util-linux", "libreadline8",
         "libblkid1", "libmount1", "libselinux1", "libpcre2-8-0", "libudev1", "libsmartcols1",
         "libstdc++6")
# Dependencies only maintainer scripts or documentation tools use.
LEFT_OUT = ("perl", "perl-base", "perl-modules-5.36", "libperl5.36", "dpkg", "tar", "install-info",
            "mailcap", "mime-support", "libgdbm-compat4", "libgdbm6", "libdb5.3", "debconf")
DRGN_VERSION = "0.3.0"
DRGN = f"drgn=={DRGN_VERSION}"
# The wheel platforms the guest's Python accepts: manylinux, and plain linux
# for a wheel built here (cross_built_drgn).
PLATFORMS = {"x86_64": ("manylinux_2_28_x86_64",), "arm64": ("manylinux_2_28_aarch64", "linux_aarch64")}
# PyPI has no aarch64 wheel of drgn 0.3.0 (only x86_64 ones) and Debian's
# python3-drgn is 0.0.31 at most (trixie), older than drgn.commands (0.0.32),
# which %memhp needs: on arm64 drgn is cross-built from its sdist against
# bookworm's arm64 elfutils, and the userland gets the libraries it links
# (a manylinux wheel bundles them).
RUNTIME_ROOTS = {"x86_64": (), "arm64": ("libelf1", "libdw1", "libgomp1")}
# The arm64 packages drgn's configure and compiler need from bookworm (headers,
# pkg-config files, the libraries to link): a sysroot for aarch64-linux-gnu-gcc.
CROSS_SYSROOT_DEBS = ("libelf-dev", "libdw-dev", "libelf1", "libdw1", "zlib1g-dev", "zlib1g", "liblzma-dev",
                      "liblzma5", "libbz2-dev", "libbz2-1.0", "libzstd-dev", "libzstd1", "libpython3.11-dev")
CROSS_TRIPLET = {"arm64": "aarch64-linux-gnu"}
# Modules for the disk: the cloud kernels build virtio-blk (and up to 6.1
# virtio-pci) as modules.
DISK_MODULES = ("virtio_pci", "virtio_blk")
GUEST_ROOT = "/u"


def userland_debs(arch: str) -> list[Path]:
    """The bookworm packages of the userland, downloaded once.

    >>> sorted(p.name.split("_")[0] for p in userland_debs("x86_64"))[:2]   # doctest: +SKIP
    ['gcc-12-base', 'libaudit-common']
    """
    return deb_closure(arch, (*ROOTS, *RUNTIME_ROOTS[arch]))


def deb_closure(arch: str, roots: tuple[str, ...]) -> list[Path]:
    """The bookworm packages of ``roots`` and their dependencies (LEFT_OUT
    aside), downloaded once."""
    apt = bookworm(arch)
    with packages.package_lock():
        apt.ensure_lists()
        out = run(["apt-cache", *apt.options(), "depends", "--recurse", "--no-recommends", "--no-suggests",
                   "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", "--no-pre-depends",
                   *roots])
        names = sorted({n for n in out.splitlines() if not n.startswith((" ", "<"))} - set(LEFT_OUT))
        return [apt.download(n, apt.version(n)) for n in names]


def bookworm(arch: str) -> AptRoot:
    return AptRoot([(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")], DEB_ARCH[arch])


def pip_wheels(arch: str, dest: Path) -> list[Path]:
    """drgn's wheel for the arch (PyPI's manylinux one, else cross-built) and
    tabulate, once."""
    dest.mkdir(parents=True, exist_ok=True)
    if not any(dest.glob(f"drgn-{DRGN_VERSION}-*.whl")):
        try:
            pip(["download", "--only-binary=:all:", *platform_options(arch), "-d", str(dest), DRGN])
        except subprocess.CalledProcessError:
            if arch not in CROSS_TRIPLET:
                raise
            cross_built_drgn(arch, dest)
    if not any(dest.glob("tabulate-*.whl")):
        pip(["download", "--only-binary=:all:", "-d", str(dest), "tabulate>=0.9"])
    return sorted(dest.glob("*.whl"))


def pip(args: list[str], env: dict[str, str] | None = None) -> None:
    """The host's pip, quiet, without dependencies; a failure raises
    CalledProcessError with pip's output."""
    subprocess.run([sys.executable, "-m", "pip", args[0], "-q", "--no-deps", *args[1:]], check=True,
                   capture_output=True, env=env)


def platform_options(arch: str) -> list[str]:
    """pip's options for wheels of the guest's Python (bookworm's CPython 3.11).

    >>> platform_options("arm64")[:4]
    ['--platform', 'manylinux_2_28_aarch64', '--platform', 'linux_aarch64']
    """
    return [*(o for p in PLATFORMS[arch] for o in ("--platform", p)), "--python-version", "3.11",
            "--implementation", "cp"]


def cross_built_drgn(arch: str, dest: Path) -> Path:
    """drgn's wheel for ``arch`` built from its sdist (PyPI) with the host's
    cross compiler against a sysroot of bookworm's packages of that arch
    (CROSS_SYSROOT_DEBS); cached in ``dest`` by drgn's version (~2 min).

    The extension links bookworm's libelf, libdw and libgomp (RUNTIME_ROOTS
    puts them in the userland); libkdumpfile, debuginfod, pcre2 and json-c are
    left out (a live kernel needs none of them).
    """
    triplet = CROSS_TRIPLET[arch]
    apt = bookworm(arch)
    with packages.package_lock():
        apt.ensure_lists()
        debs = [apt.download(n, apt.version(n)) for n in CROSS_SYSROOT_DEBS]
    work = dest / f".cross-{DRGN_VERSION}"
    shutil.rmtree(work, ignore_errors=True)
    sysroot = work / "sysroot"
    sysroot.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(sysroot)], check=True)
    pip(["download", "--no-binary=:all:", "-d", str(work), DRGN])
    (sdist,) = work.glob("drgn-*.tar.gz")
    libdir = sysroot / "usr/lib" / triplet
    env = {**os.environ,
           "CONFIGURE_FLAGS": f"--host={triplet} --without-debuginfod --without-libkdumpfile --without-pcre2 "
                              "--without-json-c",
           "PKG_CONFIG_LIBDIR": f"{libdir}/pkgconfig:{sysroot}/usr/share/pkgconfig",
           "PKG_CONFIG_SYSROOT_DIR": str(sysroot),
           # The .pc files name /usr/include and the libdir, which pkg-config
           # would drop as the build machine's own.
           "PKG_CONFIG_ALLOW_SYSTEM_CFLAGS": "1", "PKG_CONFIG_ALLOW_SYSTEM_LIBS": "1",
           "PYTHON_CPPFLAGS": f"-I{sysroot}/usr/include/python3.11 -I{sysroot}/usr/include",
           "LDFLAGS": f"-L{libdir} -Wl,-rpath-link,{libdir}",
           # The wheel's platform tag and the extension's file name for the guest's Python.
           "_PYTHON_HOST_PLATFORM": f"linux-{triplet.split('-')[0]}",
           "SETUPTOOLS_EXT_SUFFIX": f".cpython-311-{triplet}.so"}
    try:
        pip(["wheel", "--no-binary=:all:", "-w", str(work), str(sdist)], env)
    except subprocess.CalledProcessError as error:
        raise packages.PackageError(f"cross-building {DRGN} for {arch} failed (gcc-{triplet} installed? "
                                    f"scripts/setup.sh): {error.stderr.decode()[-2000:]}") from error
    (wheel,) = work.glob(f"drgn-{DRGN_VERSION}-*.whl")
    built = dest / wheel.name
    wheel.rename(built)
    shutil.rmtree(work)
    return built


def build_userland(k: Kernel, wheel: Path) -> Path:
    """The userland disk image for kernel ``k`` with the drgn-hotplug ``wheel``,
    cached under the cache root keyed by every package's version and the wheel."""
    debs = userland_debs(k.arch)
    wheels = pip_wheels(k.arch, cache_root() / "wheels" / k.arch)
    key = hashlib.sha256("\n".join([k.abi, k.version, *(d.name for d in debs), *(w.name for w in wheels),
                                    wheel_content_hash(wheel)]).encode()).hexdigest()[:12]
    image = cache_root() / "userland" / f"{k.abi}-{k.arch}-{key}.ext4"
    if image.exists():
        return image
    tree = image.with_suffix(".tree")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    install_wheels(k.arch, [*wheels, wheel], tree)
    for d in ("proc", "sys", "dev", "tmp"):
        (tree / d).mkdir(exist_ok=True)
    debug = tree / "usr/lib/debug/lib/modules" / k.abi
    debug.mkdir(parents=True)
    shutil.copyfile(k.vmlinux, debug / "vmlinux")
    size_mib = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink()) // (1 << 20)
    tmp = image.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(tmp), f"{size_mib * 5 // 4 + 64}M"],
                   check=True)
    shutil.rmtree(tree)
    tmp.rename(image)
    # An image is ~1 GB (the vmlinux) and each new wheel makes one: keep the newest.
    for older in image.parent.glob(f"{k.abi}-{k.arch}-*.ext4"):
        if older != image:
            older.unlink()
    return image


def wheel_content_hash(wheel: Path) -> str:
    """A hash of a wheel's member names and bytes: two builds of one tree agree
    (the zip itself differs by the build's timestamps)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            digest.update(name.encode() + b"\0" + z.read(name))
    return digest.hexdigest()


def install_wheels(arch: str, wheels: list[Path], tree: Path) -> None:
    """``pip install --target`` into the userland's dist-packages for the guest's
    Python; console scripts go to /usr/local/bin with the guest's interpreter."""
    site = tree / "usr/lib/python3/dist-packages"
    pip(["install", "--no-index", "--target", str(site), *platform_options(arch), "--only-binary=:all:",
         *map(str, wheels)])
    bindir = tree / "usr/local/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for script in (site / "bin").iterdir():
        body = script.read_text().split("\n", 1)[1]
        (bindir / script.name).write_text("#!/usr/bin/python3\n" + body)
        (bindir / script.name).chmod(0o755)
    shutil.rmtree(site / "bin")


def disk_modules_cpio(k: Kernel, cell_modules: list[str]) -> bytes:
    """A cpio to append to a cell's initrd: the virtio disk modules, and an
    /etc/modules that loads them after the cell's own (a later cpio member
    replaces an earlier one of the same name)."""
    extra = [m for m in modules_with_deps(k, DISK_MODULES) if m.name not in cell_modules]
    w = CpioWriter()
    w.file("etc/modules", "".join(f"{n}\n" for n in [*cell_modules, *(m.name for m in extra)]).encode(), 0o644)
    for m in extra:
        w.file(f"lib/modules/{m.name}", m.read_bytes(), 0o644)
    return w.finish()


def modules_with_deps(k: Kernel, roots: tuple[str, ...]) -> list[Path]:
    """The .ko files of ``roots`` that the kernel builds as modules, dependencies
    first, extracted (once) from the kernel's modules package."""
    out = k.dir / "userland-modules"
    if not (out / "deps.json").exists():
        deb = next((cache_root() / "packages").glob(
            f"{packages.series(k.series).layout.modules.format(abi=k.abi)}_*_{DEB_ARCH[k.arch]}.deb"))
        blobs = packages.extract_members(deb, {}, k.dir, True)
        tmp = out.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        deps = {}
        for root in roots:
            if packages.module_blob(blobs, root) is not None:
                deps.update(packages.extract_modules(blobs, deb.name, tmp, roots=(root,)))
        (tmp / "deps.json").write_text(json.dumps(deps))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    deps = json.loads((out / "deps.json").read_text())
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for dep in deps[name]:
                visit(dep)
            order.append(name)

    for name in deps:
        visit(name)
    return [out / f"{n}.ko" for n in order]


def live_guest_spec(k: Kernel, scenario: str, disk: Path, workdir: Path) -> GuestSpec:
    """A cell's guest spec (cells.guest_spec) with the userland disk attached
    read-only and its modules appended to the initrd."""
    from .cells import ALL_SCENARIOS, guest_spec

    spec = guest_spec(k, scenario, workdir)
    cell_modules = [m.name for m in k.modules_in_load_order(["qemu_fw_cfg", *ALL_SCENARIOS[scenario].modules])]
    spec.initrd.write_bytes(spec.initrd.read_bytes() + disk_modules_cpio(k, cell_modules))
    spec.extra_args += ["-drive", f"file={disk},if=none,id=userland,format=raw,readonly=on",
                        "-device", "virtio-blk-pci,drive=userland"]
    return spec


# Mounts the disk at /u with what the tools need under it (devpts: drgn's
# interactive mode needs a terminal).
MOUNT = f"""set -e
mkdir -p {GUEST_ROOT}
dev=$(for d in /sys/block/vd*; do echo /dev/${{d##*/}}; done | head -n 1)
mount -t ext4 -o ro,noload $dev {GUEST_ROOT}
mount -t proc proc {GUEST_ROOT}/proc
mount -t sysfs sysfs {GUEST_ROOT}/sys
mount -t devtmpfs dev {GUEST_ROOT}/dev
mount -t tmpfs tmp {GUEST_ROOT}/tmp
mkdir -p {GUEST_ROOT}/dev/pts
mount -t devpts devpts {GUEST_ROOT}/dev/pts
"""


def in_userland(command: str) -> str:
    """A guest shell line that runs ``command`` (a program and its arguments,
    no shell syntax) in the userland, with a clean environment.

    >>> in_userland("drgn-hotplug check")
    'env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/tmp LANG=C.UTF-8 chroot /u drgn-hotplug check'
    """
    return f"env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/tmp LANG=C.UTF-8 chroot {GUEST_ROOT} {command}"
