"""Debian packages for the test bed: cloud kernels (image, debug vmlinux,
a handful of modules) and busybox-static, fetched with ``apt-get download``.

Each (suites, architecture) pair gets a private apt state inside the cache,
so the machine's own apt configuration is never read for sources nor edited.

Example:
    >>> k = fetch_kernel("x86_64", "6.1")            # doctest: +SKIP
    >>> k.abi, k.image.name, k.vmlinux.name          # doctest: +SKIP
    ('6.1.0-56-cloud-amd64', 'vmlinuz', 'vmlinux')
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import lzma
import mmap
import os
import re
import shutil
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DEBIAN = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE_S = 12 * 3600

DEB_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


@dataclass(frozen=True)
class Layout:
    """How Debian packages a cloud kernel: for each package (a name template of
    ``{abi}``), the members the bed extracts and the name each gets in the
    kernel directory; ``modules`` names the package holding the ``.ko`` files.

    >>> UNSIGNED.package_names("6.1.0-9-cloud-amd64")
    ['linux-image-6.1.0-9-cloud-amd64-unsigned', 'linux-image-6.1.0-9-cloud-amd64-dbg']
    >>> SPLIT.members("linux-base-{abi}", "7.3.4+deb13-cloud-amd64")
    {'./usr/lib/modules/7.3.4+deb13-cloud-amd64/config': 'config'}
    """

    files: dict[str, dict[str, str]]
    modules: str

    def package_names(self, abi: str) -> list[str]:
        return [template.format(abi=abi) for template in self.files]

    def members(self, template: str, abi: str) -> dict[str, str]:
        return {member.format(abi=abi): name for member, name in self.files[template].items()}


# Up to 6.12: one image package with vmlinuz, config and modules, plus -dbg.
UNSIGNED = Layout({
    "linux-image-{abi}-unsigned": {"./boot/vmlinuz-{abi}": "vmlinuz", "./boot/config-{abi}": "config"},
    "linux-image-{abi}-dbg": {"./usr/lib/debug/boot/vmlinux-{abi}": "vmlinux"},
}, modules="linux-image-{abi}-unsigned")

# Debian's packaging since its 6.19 packages (trixie-backports 6.19.x, 7.x; in
# the lists, linux-image-6.19.x is the first to depend on linux-binary and
# linux-modules): linux-image-ABI is an empty signed metapackage over
# linux-binary (vmlinuz), linux-modules and linux-base (config; its System.map
# is a stub); in -dbg, boot/vmlinux-ABI became a symlink to
# lib/modules/ABI/vmlinux, which a streamed tar cannot follow.
SPLIT = Layout({
    "linux-binary-{abi}": {"./usr/lib/modules/{abi}/vmlinuz": "vmlinuz"},
    "linux-base-{abi}": {"./usr/lib/modules/{abi}/config": "config"},
    "linux-modules-{abi}": {},
    "linux-image-{abi}-dbg": {"./usr/lib/debug/lib/modules/{abi}/vmlinux": "vmlinux"},
}, modules="linux-modules-{abi}")

BOTH = ("x86_64", "arm64")


@dataclass(frozen=True)
class Series:
    """One kernel series the bed boots: its id (in cell names, ``--kernel`` and
    tests; never a "-", which separates the fields of a cell name), the Debian
    suites it is fetched from, the ABI part of its package names, its package
    layout and its arches; ``suites_of`` overrides the suites for one arch.

    >>> series("6.12+deb13").sources("arm64")
    [('http://deb.debian.org/debian', 'trixie'), ('http://deb.debian.org/debian-security', 'trixie-security')]
    >>> series("5.10").sources("arm64")
    [('http://deb.debian.org/debian', 'bullseye')]
    """

    id: str
    suites: tuple[str, ...]
    abi_re: str
    layout: Layout
    arches: tuple[str, ...] = BOTH
    suites_of: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        if "-" in self.id:
            raise ValueError(f"series id {self.id!r} contains '-', which separates cell name fields")

    @property
    def suite(self) -> str:
        """The Debian suite the series belongs to (its first one)."""
        return self.suites[0]

    def sources(self, arch: str) -> list[tuple[str, str]]:
        suites = dict(self.suites_of).get(arch, self.suites)
        return [(SECURITY if s.endswith("-security") else DEBIAN, s) for s in suites]


# The kernel series table: adding a series is one line. Newest ABI of each
# at build time. arm64 5.10 uses bullseye main only: bullseye-security's newer
# arm64 5.10 packages are missing from the mirror (testbed-notes). Bookworm's
# 6.12 (+deb12) runs on x86_64 only: arm64 has one 6.12, trixie's (stable).
SERIES = (
    Series("5.10", ("bullseye", "bullseye-security"), r"5\.10\.0-\d+", UNSIGNED,
           suites_of=(("arm64", ("bullseye",)),)),
    Series("6.1", ("bookworm", "bookworm-security"), r"6\.1\.0-\d+", UNSIGNED),
    Series("6.12", ("bookworm", "bookworm-security"), r"6\.12\.\d+\+deb12[^-]*", UNSIGNED, ("x86_64",)),
    Series("6.12+deb13", ("trixie", "trixie-security"), r"6\.12\.\d+\+deb13[^-]*", UNSIGNED),
    Series("7.x", ("trixie-backports",), r"7\.\d+\.\d+\+deb13[^-]*", SPLIT),
)


def series(series_id: str) -> Series:
    """The row of SERIES with this id.

    >>> series("7.x").suite, series("7.x").layout is SPLIT
    ('trixie-backports', True)
    """
    for s in SERIES:
        if s.id == series_id:
            return s
    raise PackageError(f"no kernel series {series_id}: choose among {', '.join(s.id for s in SERIES)}")


def kernels() -> dict[str, tuple[str, ...]]:
    """The series ids per arch, in table order.

    >>> kernels()["arm64"]
    ('5.10', '6.1', '6.12+deb13', '7.x')
    """
    return {arch: tuple(s.id for s in SERIES if arch in s.arches) for arch in DEB_ARCH}


# Kernel symbols whose link-time address the bed needs (KASLR offset, orphan patch).
SYMBOLS = ("_stext", "unregister_memory_block_under_nodes")


def cache_root() -> Path:
    """Root of every cached artefact: ``$DRGN_HOTPLUG_CACHE`` or ``~/.cache/drgn-hotplug``.

    >>> str(cache_root()).endswith("drgn-hotplug") or "DRGN_HOTPLUG_CACHE" in os.environ
    True
    """
    env = os.environ.get("DRGN_HOTPLUG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "drgn-hotplug"


class PackageError(RuntimeError):
    """A package could not be resolved, downloaded or unpacked."""


class AptRoot:
    """A private apt state (sources, lists, pkgcache) for some suites of one architecture.

    >>> AptRoot([(DEBIAN, "bookworm")], "arm64").dir.name      # doctest: +SKIP
    'bookworm-arm64'
    """

    def __init__(self, sources: list[tuple[str, str]], deb_arch: str):
        self.sources = sources
        self.deb_arch = deb_arch
        self.dir = cache_root() / "apt" / ("+".join(s for _, s in sources) + "-" + deb_arch)

    def options(self) -> list[str]:
        d = self.dir
        return [
            "-o", f"Dir::Etc::sourcelist={d / 'sources.list'}",
            "-o", "Dir::Etc::sourceparts=/dev/null",
            "-o", f"Dir::State::Lists={d / 'lists'}",
            "-o", f"Dir::Cache={d / 'cache'}",
            "-o", f"APT::Architectures::={self.deb_arch}",
            "-o", f"APT::Architecture={self.deb_arch}",
            # The private state is ours alone: apt's system-wide lock is not needed.
            "-o", "Debug::NoLocking=1",
            # apt's _apt sandbox user cannot run the signature check in every
            # cache location (seen: "gpgv ... required" under a 0755 directory).
            "-o", "APT::Sandbox::User=root",
        ]

    def ensure_lists(self) -> None:
        """Run ``apt-get update`` unless this root's lists are recent enough."""
        stamp = self.dir / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S:
            return
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"deb [signed-by={KEYRING}] {url} {suite} main" for url, suite in self.sources]
        (self.dir / "sources.list").write_text("\n".join(lines) + "\n")
        run(["apt-get", *self.options(), "-q", "update"])
        (self.dir / "unavailable").unlink(missing_ok=True)
        (self.dir / "resolved.json").unlink(missing_ok=True)
        stamp.touch()

    def remembered(self, key: str, resolve) -> list:
        """``resolve()``, computed once per ``update`` of the lists (a cached build stays fast)."""
        path = self.dir / "resolved.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        if key not in known:
            known[key] = resolve()
            path.write_text(json.dumps(known))
        return known[key]

    def pkgnames(self, prefix: str) -> list[str]:
        return run(["apt-cache", *self.options(), "pkgnames", prefix]).split()

    def version(self, package: str) -> str:
        out = run(["apt-cache", *self.options(), "show", "--no-all-versions", package])
        match = re.search(r"^Version: (\S+)", out, re.M)
        if not match:
            raise PackageError(f"apt-cache knows no version of {package}")
        return match.group(1)

    def download(self, package: str, version: str) -> Path:
        """Download ``package=version`` into the shared package cache (once).

        A package the mirror lacks is remembered until the next ``update``, so
        later builds do not ask for it again.
        """
        dest = cache_root() / "packages"
        dest.mkdir(parents=True, exist_ok=True)
        deb = dest / f"{package}_{version.split(':')[-1]}_{self.deb_arch}.deb"
        unavailable = self.dir / "unavailable"
        wanted = f"{package}={version}"
        if deb.exists():
            return deb
        if unavailable.exists() and wanted in unavailable.read_text().split():
            raise PackageError(f"{wanted} is not on the mirror")
        tmp = dest / f".dl-{package}-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        try:
            run(["apt-get", *self.options(), "-q", "download", wanted], cwd=tmp)
            (got,) = tmp.glob("*.deb")
            got.rename(deb)
        except PackageError:
            with open(unavailable, "a") as f:
                f.write(wanted + "\n")
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return deb


def run(argv: list[str], cwd: Path | None = None) -> str:
    """Run a command, returning stdout; a failure raises PackageError with its last stderr line."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackageError(f"{' '.join(argv[:1] + argv[-2:])}: {last}")
    return proc.stdout


@dataclass
class Kernel:
    """An unpacked kernel: image, config, debug vmlinux and the modules the bed loads."""

    arch: str
    series: str
    abi: str
    version: str
    dir: Path

    @property
    def image(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def vmlinux(self) -> Path:
        return self.dir / "vmlinux"

    @property
    def modules_dir(self) -> Path:
        return self.dir / "modules"

    @property
    def meta(self) -> dict:
        return json.loads((self.dir / "kernel.json").read_text())

    def modules_in_load_order(self, roots: list[str]) -> list[Path]:
        """The ``.ko`` files to insmod, dependencies first, for the given root modules.

        >>> [p.name for p in k.modules_in_load_order(["nd_pmem"])]   # doctest: +SKIP
        ['libnvdimm.ko', 'nd_btt.ko', 'nd_pmem.ko']
        """
        deps = self.meta["module_deps"]
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            if name not in deps:
                raise PackageError(f"module {name} is not in {self.abi}'s extracted subset")
            for dep in deps[name]:
                visit(dep)
            order.append(name)

        for root in roots:
            visit(root)
        return [self.modules_dir / f"{name}.ko" for name in order]


# Root modules the bed may load: qemu_fw_cfg hands VMCOREINFO to QEMU; the
# others make a memmap= pmem range into an fsdax namespace (pmem scenario).
MODULE_ROOTS = ("qemu_fw_cfg", "nd_e820", "nd_pmem", "dax_pmem")


def newest_kernel(arch: str, series_id: str) -> tuple[AptRoot, list[str]]:
    """Candidate ABIs of a series, newest first.

    >>> newest_kernel("x86_64", "6.1")[1][0]          # doctest: +SKIP
    '6.1.0-56-cloud-amd64'
    """
    row = series(series_id)
    if arch not in row.arches:
        raise PackageError(f"no kernel series {series_id} for {arch}")
    apt = AptRoot(row.sources(arch), DEB_ARCH[arch])
    apt.ensure_lists()
    return apt, apt.remembered(f"abis-{arch}-{series_id}", lambda: kernel_abis(apt, arch, row))


def kernel_abis(apt: AptRoot, arch: str, row: Series) -> list[str]:
    """The ABIs of a series whose every package of its layout the lists name."""
    names = set(apt.pkgnames("linux-"))
    pattern = re.compile(rf"linux-[a-z]+-({row.abi_re}-cloud-{DEB_ARCH[arch]})")
    abis = {m.group(1) for name in names if (m := pattern.fullmatch(name))}
    complete = [abi for abi in abis if names.issuperset(row.layout.package_names(abi))]
    return sorted(complete, key=abi_sort_key, reverse=True)


def abi_sort_key(abi: str) -> tuple[int, ...]:
    """Order ABIs numerically: ``6.1.0-9`` < ``6.1.0-56``.

    >>> abi_sort_key("6.12.117+deb12-cloud-amd64") > abi_sort_key("6.12.13+deb12-cloud-amd64")
    True
    """
    return tuple(int(n) for n in re.findall(r"\d+", abi))


def resolved_kernel(arch: str, series_id: str) -> tuple[str, str]:
    """The (abi, package version) the bed uses now: the newest one already
    unpacked if the lists are unchanged, else the newest one that downloads.

    Bullseye-security's newest 5.10 ABIs may 404 on the mirror (testbed-notes),
    hence the fall back to older candidates.
    """
    apt, candidates = newest_kernel(arch, series_id)
    layout = series(series_id).layout

    def first_that_unpacks() -> list[str]:
        errors = []
        for abi in candidates:
            version = apt.version(layout.package_names(abi)[0])
            kdir = cache_root() / "kernels" / f"{abi}-{version}-{arch}"
            if (kdir / "kernel.json").exists():
                return [abi, version]
            try:
                unpack_kernel(apt, arch, series_id, abi, version, kdir)
                return [abi, version]
            except PackageError as err:
                errors.append(str(err))
        raise PackageError(f"no {arch} {series_id} kernel could be fetched: {'; '.join(errors) or 'no candidate'}")

    abi, version = apt.remembered(f"kernel-{arch}-{series_id}", first_that_unpacks)
    return abi, version


@contextlib.contextmanager
def package_lock() -> Iterator[None]:
    """Serialize apt updates, downloads and unpacking between processes (parallel
    test sessions, helpers) sharing one cache."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".packages.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_kernel(arch: str, series_id: str) -> Kernel:
    """Resolve, download (once) and unpack (once) a cloud kernel of a series."""
    with package_lock():
        abi, version = resolved_kernel(arch, series_id)
    return Kernel(arch, series_id, abi, version, cache_root() / "kernels" / f"{abi}-{version}-{arch}")


def unpack_kernel(apt: AptRoot, arch: str, series_id: str, abi: str, version: str, kdir: Path) -> None:
    """Download the packages of a kernel and extract only what the bed uses into kdir."""
    layout = series(series_id).layout
    debs = {t: apt.download(t.format(abi=abi), apt.version(t.format(abi=abi))) for t in layout.files}
    tmp = kdir.with_name(kdir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "modules").mkdir(parents=True)
    deps: dict[str, list[str]] = {}
    for template, deb in debs.items():
        modules = extract_members(deb, layout.members(template, abi), tmp, template == layout.modules)
        if template == layout.modules:
            deps = extract_modules(modules, deb.name, tmp / "modules")
    meta = {"arch": arch, "series": series_id, "abi": abi, "version": version,
            "module_deps": deps, "symbols": link_addresses(tmp / "vmlinux", SYMBOLS)}
    (tmp / "kernel.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(kdir, ignore_errors=True)
    tmp.rename(kdir)
    # The -dbg package (~280 MB) is mostly module debug info the bed never reads.
    debs["linux-image-{abi}-dbg"].unlink()


def extract_members(deb: Path, wanted: dict[str, str], out: Path, with_modules: bool) -> dict[str, bytes]:
    """Write the ``wanted`` members of a .deb (member path -> file name in ``out``);
    returns its ``.ko``/``.ko.xz`` files by name if ``with_modules``. Stops
    reading once all is found (a -dbg package is ~1 GB unpacked)."""
    modules: dict[str, bytes] = {}
    missing = dict(wanted)
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.name in missing:
                    write_member(tar, member, out / missing.pop(member.name))
                elif with_modules and member.isfile() and re.search(r"\.ko(\.xz)?$", member.name):
                    modules[Path(member.name).name] = tar.extractfile(member).read()
                if not missing and not with_modules:
                    break
        proc.kill()
    if missing:
        raise PackageError(f"{deb.name} holds no {', '.join(missing)}")
    return modules


def extract_modules(modules: dict[str, bytes], source: str, out: Path,
                    roots: tuple[str, ...] = MODULE_ROOTS) -> dict[str, list[str]]:
    """Write the closure of ``roots`` (decompressed) into ``out``; returns its dependency map.

    Debian's packages ship no modules.dep (depmod runs at install time), so the
    dependencies come from each module's ``.modinfo`` ``depends=``.
    """
    deps: dict[str, list[str]] = {}
    pending = [m for m in roots if module_blob(modules, m) is not None]
    while pending:
        name = pending.pop()
        if name in deps:
            continue
        code = module_blob(modules, name)
        if code is None:
            raise PackageError(f"{source}: module {name} missing")
        (out / f"{name}.ko").write_bytes(code)
        deps[name] = module_depends(code)
        pending.extend(deps[name])
    return deps


def module_blob(modules: dict[str, bytes], name: str) -> bytes | None:
    """The uncompressed ``.ko`` of a module (6.12 ships ``.ko.xz``; the kernel's
    insmod of busybox cannot decompress), or None if the package lacks it."""
    for fname in (f"{name}.ko", f"{name.replace('_', '-')}.ko"):
        if fname in modules:
            return modules[fname]
        if fname + ".xz" in modules:
            return lzma.decompress(modules[fname + ".xz"])
    return None


def module_depends(code: bytes) -> list[str]:
    r"""The ``depends=`` list of a module's .modinfo.

    >>> module_depends(b"\0license=GPL\0depends=libnvdimm,nd_btt\0")
    ['libnvdimm', 'nd_btt']
    >>> module_depends(b"\0depends=\0")
    []
    """
    match = re.search(rb"\0depends=([^\0]*)\0", code)
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    with tar.extractfile(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)


def link_addresses(vmlinux: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Link-time addresses of some symbols of a (little-endian ELF64) vmlinux, from
    its .symtab; absent ones are left out.

    >>> link_addresses(k.vmlinux, ("_stext",))       # doctest: +SKIP
    {'_stext': 18446744071578845184}
    """
    with open(vmlinux, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as elf:
        shoff, shentsize, shnum = struct.unpack_from("<40xQ10xHH", elf)
        sections = [struct.unpack_from("<4xI8x8xQQI4x8xQ", elf, shoff + i * shentsize) for i in range(shnum)]
        # (sh_type, sh_offset, sh_size, sh_link, sh_entsize); SHT_SYMTAB is 2.
        (_, sym_off, sym_size, strtab, _), = [s for s in sections if s[0] == 2]
        str_off = sections[strtab][1]
        wanted = {name.encode() for name in names}
        found: dict[str, int] = {}
        for st_name, st_value in struct.iter_unpack("<I4xQ8x", elf[sym_off:sym_off + sym_size]):
            start = str_off + st_name
            name = elf[start:elf.find(b"\0", start)]
            if name in wanted and name.decode() not in found:
                found[name.decode()] = st_value
    return found


def fetch_busybox(arch: str) -> Path:
    """The static busybox binary for the guest architecture (from bookworm's busybox-static).

    >>> fetch_busybox("x86_64").name                  # doctest: +SKIP
    'busybox'
    """
    with package_lock():
        return unpacked_busybox(arch)


def unpacked_busybox(arch: str) -> Path:
    apt = AptRoot([(DEBIAN, "bookworm")], DEB_ARCH[arch])
    apt.ensure_lists()
    version = apt.remembered("busybox-static", lambda: apt.version("busybox-static"))
    dest = cache_root() / "busybox" / f"{version.split(':')[-1]}-{arch}" / "busybox"
    if not dest.exists():
        deb = apt.download("busybox-static", version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.name == "./bin/busybox":
                        write_member(tar, member, dest.with_suffix(".tmp"))
        dest.with_suffix(".tmp").chmod(0o755)
        dest.with_suffix(".tmp").rename(dest)
    return dest
