"""The gdb front end (drgn_hotplug/gdb_memhp.py, sourced through gdb/memhp.py), driven through real gdb with pexpect.

On the test bed's kernel-virtual ELF dumps gdb must build the very model
the drgn front end builds from the same guest's kdump, and print the same
JSON documents; live, over a guest's gdbstub, it must find the orphan
scenario's dangling links and see a hot-add made between two checks.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
import re
import subprocess
from pathlib import Path

import pytest

import vmcores
from vmcores import dumpfmt
from drgn_hotplug import checks, cli, lsmem

pexpect = pytest.importorskip("pexpect")
drgn = pytest.importorskip("drgn")
from drgn.helpers.linux.mm import pfn_to_page  # noqa: E402

from drgn_hotplug import drgn_reader  # noqa: E402

pytestmark = [pytest.mark.bed, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parent.parent
# The checkout's entry point (it sources the packaged drgn_hotplug/gdb_memhp.py).
MEMHP = CHECKOUT / "gdb" / "memhp.py"
GDB = {"x86_64": "gdb", "arm64": "gdb-multiarch"}
PROMPT = "(memhp-test) "
VERSION = version("drgn-hotplug")


class Gdb:
    """One interactive gdb, as a user types into it."""

    def __init__(self, arch: str, vmlinux: Path):
        settings = [f"set prompt {PROMPT}", "set pagination off", "set confirm off",
                    "set width 0", "set height 0"]
        argv = ["-nx", "-q", *(arg for s in settings for arg in ("-iex", s)), str(vmlinux)]
        self.child = pexpect.spawn(GDB[arch], argv, encoding="utf-8", timeout=180,
                                   env={**os.environ, "TERM": "dumb"}, dimensions=(50, 1000))
        self.child.expect_exact(PROMPT)

    def run(self, command: str) -> str:
        """The output of one command (its echo removed)."""
        self.child.sendline(command)
        self.child.expect_exact(PROMPT)
        out = self.child.before.replace("\r\n", "\n")
        return out.split("\n", 1)[1] if "\n" in out else ""

    def json(self, command: str):
        return json.loads(self.run(command))

    def model(self) -> dict:
        return self.json("python import json; from drgn_hotplug import gdb_reader; "
                         "print(json.dumps(gdb_reader.read_model().to_dict()))")

    def close(self) -> None:
        self.child.sendline("quit")
        self.child.expect(pexpect.EOF)


def plain(value):
    """JSON round trip: tuples become lists, int keys strings, as in gdb's output."""
    return json.loads(json.dumps(value))


def drgn_model(cell: vmcores.Cell):
    prog = drgn.Program()
    prog.set_core_dump(str(cell.kdump))
    prog.load_debug_info([str(cell.vmlinux)])
    return drgn_reader.read_model(prog)


def explain_pfns(model) -> list:
    """A pfn inside each range finding and in the last memory block: where explain has facts."""
    findings = [f for f in plain_findings(model) if "start_pfn" in f]
    last_block = max(model.blocks, key=lambda b: b.id)
    return sorted({f["start_pfn"] for f in findings}
                  | {last_block.start_section_nr << model.kernel.pfn_section_shift})


def plain_findings(model):
    return [f.to_dict() for f in checks.run_checks(model)]


@pytest.fixture
def dump_gdb(cell):
    """gdb on the cell's kernel-virtual ELF, KASLR offset from the cell, memhp loaded."""
    gdb = Gdb(cell.meta["arch"], cell.vmlinux)
    gdb.run(f"symbol-file -o {cell.meta['kaslr_offset']:#x} {cell.vmlinux}")
    gdb.run(f"core-file {cell.kvaddr_elf}")
    assert gdb.run(f"source {MEMHP}").strip() == ""
    yield gdb
    gdb.close()


@pytest.mark.parametrize("cell", [("x86_64", "5.10", "hotplug"), ("x86_64", "6.1", "orphan"),
                                  ("x86_64", "6.1", "pmem"), ("x86_64", "6.12", "orphan"),
                                  ("arm64", "5.10", "boot"), ("arm64", "6.1", "hotplug")],
                         indirect=True, ids=lambda c: "-".join(c))
def test_gdb_reports_equal_drgn_on_the_same_dump(cell, dump_gdb):
    expected = drgn_model(cell)
    assert dump_gdb.model() == plain(expected.to_dict())
    assert dump_gdb.run("memhp check") == cli.render_command(expected, "check")[0] + "\n"
    for command in ("check", "sections", "memblock", "blocks", "links"):
        text, _ = cli.render_command(expected, command, as_json=True, version=VERSION)
        assert dump_gdb.json(f"memhp {command} --json") == json.loads(text), command
    for pfn in explain_pfns(expected):
        text, _ = cli.render_command(expected, "explain", str(pfn), as_json=True, version=VERSION)
        assert dump_gdb.json(f"memhp explain {pfn} --json") == json.loads(text), pfn
    for options in ("-o +NODE,ZONES", "-J -a"):
        assert dump_gdb.run(f"memhp lsmem {options}") == lsmem.render_model(
            expected, lsmem.parse_options(options.split())), options


@pytest.mark.parametrize("cell", [("x86_64", "6.1", "orphan")], indirect=True, ids="-".join)
def test_gdb_finds_the_orphan_links_in_a_dump(cell, dump_gdb):
    doc = dump_gdb.json("memhp check --json")
    orphans = sorted((f["node"], f["block"]) for f in doc["findings"] if f["kind"] == "orphaned-link")
    assert orphans == sorted((d["node"], d["block"]) for d in cell.truth["dangling_links"])
    assert "orphaned-link" in dump_gdb.run("memhp check")


@pytest.mark.parametrize("cell", [("arm64", "6.1", "hotplug")], indirect=True, ids="-".join)
def test_memhp_kaslr_finds_the_offset_of_an_arm64_dump(cell):
    """arm64 KASLR moves the kernel by 64 KiB multiples anywhere in a huge range:
    only the stopped pc narrows it. Unrelocated symbols must be refused even though
    gdb reads their static data from the vmlinux file where the core lacks it."""
    gdb = Gdb("arm64", cell.vmlinux)
    gdb.run(f"core-file {cell.kvaddr_elf}")
    gdb.run(f"source {MEMHP}")
    assert "symbols do not match" in gdb.run("memhp check")
    found = re.search(r"KASLR offset (0x[0-9a-f]+)", gdb.run("memhp kaslr"))
    assert found and int(found.group(1), 16) == cell.meta["kaslr_offset"]
    gdb.close()


def elf_without(src: Path, dst: Path, start: int, end: int) -> list:
    """A sparse copy of a core whose PT_LOADs touching [start, end) become PT_NULL:
    that memory is absent from the copy. Returns the removed (vaddr, size)."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    removed = []
    with open(dst, "r+b") as f:
        header = dumpfmt.ELF_HEADER.unpack(f.read(dumpfmt.ELF_HEADER.size))
        phoff, phnum = header[5], header[10]
        for i in range(phnum):
            at = phoff + i * dumpfmt.PROGRAM_HEADER.size
            f.seek(at)
            p_type, _, _, vaddr, _, _, memsz, _ = dumpfmt.PROGRAM_HEADER.unpack(
                f.read(dumpfmt.PROGRAM_HEADER.size))
            if p_type == dumpfmt.PT_LOAD and vaddr < end and vaddr + memsz > start:
                f.seek(at)
                f.write((0).to_bytes(4, "little"))
                removed.append((vaddr, memsz))
    return removed


@pytest.mark.parametrize("cell", [("x86_64", "6.1", "orphan")], indirect=True, ids="-".join)
def test_gdb_lists_struct_pages_missing_from_the_dump_as_unreadable(cell, tmp_path):
    prog = drgn.Program()
    prog.set_core_dump(str(cell.kdump))
    prog.load_debug_info([str(cell.vmlinux)])
    model = drgn_reader.read_model(prog)
    hot = [s for s in model.sections if s.valid and not s.early]
    assert hot, "the orphan scenario keeps a hot-added DIMM"
    first, last = hot[0].nr << model.kernel.pfn_section_shift, (hot[-1].nr + 1) << model.kernel.pfn_section_shift
    removed = elf_without(cell.kvaddr_elf, tmp_path / "core", pfn_to_page(prog, first).value_(),
                          pfn_to_page(prog, last).value_())
    absent = {pfn for pfn in model.page_nids
              if any(v <= pfn_to_page(prog, pfn).value_() < v + n for v, n in removed)}
    assert absent

    gdb = Gdb("x86_64", cell.vmlinux)
    gdb.run(f"symbol-file -o {cell.meta['kaslr_offset']:#x} {cell.vmlinux}")
    gdb.run(f"core-file {tmp_path / 'core'}")
    gdb.run(f"source {MEMHP}")
    doc = gdb.json("memhp check --json")
    # Each removed struct page read alone (page nids), and the removed
    # sections read whole for PageOffline runs (the ACPI DIMMs' blocks are
    # in static memory groups since v5.15).
    sections = {f"struct pages of section {s.nr}" for s in hot}
    whats = {u["what"] for u in doc["unreadable"]}
    assert {w for w in whats if w not in sections} == {f"struct page of pfn {p:#x}" for p in absent}
    assert whats & sections
    table = gdb.run("memhp check")
    assert all(f"struct page of pfn {p:#x}" in table for p in absent)
    gdb.close()


def kinds_covering(doc: dict, pfn: int) -> list:
    """Kinds of the range findings of a JSON document that contain ``pfn``."""
    return [f["kind"] for f in doc["findings"] if "start_pfn" in f
            and f["start_pfn"] <= pfn < f["end_pfn"]]


def gdb_attach(gdb: Gdb, port: int) -> None:
    assert "Remote debugging" in gdb.run(f"target remote 127.0.0.1:{port}")


@pytest.mark.live
@pytest.mark.parametrize("cell", [("x86_64", "6.1", "orphan")], indirect=True, ids="-".join)
def test_gdb_live_orphans_kaslr_and_hot_add(cell):
    with vmcores.start_live(cell) as guest:
        dangling = sorted((d["node"], d["block"]) for d in guest.truth()["dangling_links"])
        assert dangling
        gdb = Gdb("x86_64", cell.vmlinux)
        gdb.run(f"source {MEMHP}")
        gdb_attach(gdb, guest.gdb_port)
        # The guest runs with KASLR: without the offset, memhp refuses and finds it
        # (unless KASLR drew the unrelocated slot, one boot in about 470, as a CI run did).
        if guest.kaslr_offset:
            assert "symbols do not match" in gdb.run("memhp check")
        found = re.search(r"KASLR offset (0x[0-9a-f]+)", gdb.run("memhp kaslr"))
        assert found and int(found.group(1), 16) == guest.kaslr_offset
        gdb.run(f"symbol-file -o {found.group(1)} {cell.vmlinux}")

        before = gdb.json("memhp check --json")
        orphans = sorted((f["node"], f["block"]) for f in before["findings"]
                         if f["kind"] == "orphaned-link")
        assert orphans == dangling
        blocks_before = {b["id"] for b in gdb.json("memhp blocks --json")["blocks"]}

        # Let the guest run (detach resumes it), hot-add, attach again.
        gdb.run("detach")
        added = guest.hot_add(1, 128)
        gdb_attach(gdb, guest.gdb_port)
        blocks_after = {b["id"]: b for b in gdb.json("memhp blocks --json")["blocks"]}
        assert set(blocks_after) - blocks_before == set(added["blocks"])
        assert all(blocks_after[b]["state"] == "offline" for b in added["blocks"])
        # x86 hot-added memory never enters memblock: the second check says so for the DIMM.
        pfn = added["addr"] >> 12
        assert kinds_covering(before, pfn) == []
        assert kinds_covering(gdb.json("memhp check --json"), pfn) == ["memmap-without-memblock"]
        # While gdb holds the guest stopped, drgn over QMP reads the same kernel.
        drgn_live = drgn_reader.read_model(cli.open_program(qemu=str(guest.drgn_qmp_socket),
                                                            symbols=[str(cell.vmlinux)]))
        assert gdb.model() == plain(drgn_live.to_dict())
        assert gdb.run(f"print $memhp_section_valid({pfn})").strip().endswith("= 1")
        assert gdb.run(f"print $memhp_pfn_valid({pfn})").strip().endswith("= 1")
        gdb.run("detach")
        gdb.close()
        # Left running as found: the guest's shell still answers.
        assert guest.run("echo alive").strip() == "alive"
