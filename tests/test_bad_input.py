"""Broken, hostile and partial inputs (issue 5): drgn-hotplug ends with exit 2
and one line on stderr when it cannot analyse, lists what it could not read
when it can analyse part, never loops on corrupt kernel data, never lets a
kernel string drive the terminal, and never writes to the target.

The fast tests use hand-made memory (a dict of words) and hand-made models;
the slow ones run the command on the real test-bed dumps and a live guest.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import pytest

from drgn_hotplug import kernels, report
from drgn_hotplug.reader.list import walk_list
from drgn_hotplug.reader.rbtree import walk_rbtree
from drgn_hotplug.reader.target import ReadError
from drgn_hotplug.reader.xarray import walk_xarray

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT / "tests" / "unit"))
import handmade  # noqa: E402  (the hand-made test-bed models of tests/unit)
HOSTILE = "memory32\x1b[2J\x1b]0;owned\x07\x9b31m\x7f"


# ---------------------------------------------------------------- hand-made memory

class WordMemory:
    """A reader Target over a dict of 8-byte words; anything else is unreadable."""

    def __init__(self, words: Dict[int, int]):
        self.words = words

    def read(self, address: int, size: int) -> bytes:
        out = b""
        for at in range(address, address + size, 8):
            if at not in self.words:
                raise ReadError(at, size, "not in the hand-made memory")
            out += self.words[at].to_bytes(8, "little")
        return out[:size]


def test_a_list_looping_back_before_its_head_is_an_error_not_a_hang():
    # head -> a -> b -> a: a bus list whose n_node.next was rewritten.
    memory = WordMemory({0x100: 0x200, 0x200: 0x300, 0x300: 0x200})
    with pytest.raises(ReadError, match="loops back to 0x200"):
        list(walk_list(memory, 0x100))


def test_a_list_longer_than_the_kernel_allows_stops_at_the_limit():
    memory = WordMemory({0x100: 0x1000, **{0x1000 * i: 0x1000 * (i + 1) for i in range(1, 50)}})
    with pytest.raises(ReadError, match="longer than 8 nodes"):
        list(walk_list(memory, 0x100, limit=8))


def test_an_rbtree_whose_left_link_points_back_to_the_root_is_an_error():
    # root -> node 0x200 (right 0x300 at +8, left at +16); node 0x300's left child is 0x200.
    memory = WordMemory({0x100: 0x200, 0x208: 0x300, 0x210: 0, 0x308: 0, 0x310: 0x200})
    with pytest.raises(ReadError, match="reaches 0x200 twice"):
        walk_rbtree(memory, 0x100)


def test_an_xa_node_slot_pointing_at_its_own_node_is_an_error():
    node, slots = 0x1000, 0x28
    words = {node: 6, **{node + slots + 8 * i: 0 for i in range(64)}}
    words[node + slots] = node | 2          # slot 0 holds the node itself
    with pytest.raises(ReadError, match="twice|corrupt shift"):
        walk_xarray(WordMemory(words), node | 2, slots)


def test_an_xa_node_with_an_impossible_shift_is_an_error():
    node, slots = 0x1000, 0x28
    words = {node: 7, **{node + slots + 8 * i: 0 for i in range(64)}}
    with pytest.raises(ReadError, match="corrupt shift 7"):
        walk_xarray(WordMemory(words), node | 2, slots)


def test_a_corrupt_memblock_count_makes_memblock_unavailable():
    init = 0xffffffff82a00000
    reason = kernels.memblock_trust(False, init, init, 1 << 31, 128)
    assert reason and "cnt 2147483648 exceeds max 128" in reason
    assert kernels.memblock_trust(False, init + 0x1000, init, 3, 128).endswith("(discarded)")


# ---------------------------------------------------------------- hostile strings

def hostile_model():
    model = handmade.x86_orphan()
    model.kernel = replace(model.kernel, release="6.1.0\x1b[2J-evil")
    model.links = [replace(link, target_name=HOSTILE) for link in model.links]
    return model


def raw_controls(text: str) -> List[str]:
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) < 0xa0]


@pytest.mark.parametrize("render", [report.render_table, report.render_links,
                                    lambda m: report.render_kernel(m.kernel)])
def test_kernel_strings_cannot_drive_the_terminal_in_tables(render):
    text = render(hostile_model())
    assert raw_controls(text) == []
    assert "\\x1b[2J" in text


def test_kernel_strings_are_escaped_in_json():
    text = report.json_text(report.document(hostile_model()))
    assert raw_controls(text) == [] and text.isascii()
    doc = json.loads(text)
    assert doc["kernel"]["release"] == "6.1.0\x1b[2J-evil"   # escaped, not lost
    assert HOSTILE in text.encode().decode("unicode_escape")


# ---------------------------------------------------------------- the command on real dumps

def drgn_hotplug(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", *args], cwd=CHECKOUT,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit 2, exactly one stderr line matching ``pattern``, nothing on stdout."""
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert re.search(pattern, proc.stderr), proc.stderr


@pytest.fixture(scope="module")
def x86_61(get_cell):
    pytest.importorskip("drgn")
    return get_cell("x86_64", "6.1", "orphan")


@pytest.mark.slow
def test_a_file_that_is_not_a_vmcore(x86_61, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a dump\n")
    assert_refused(drgn_hotplug("-c", str(text), "-s", str(x86_61.vmlinux), "check"),
                   r"cannot open .*notes\.txt")


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.99])
def test_a_truncated_dump(x86_61, tmp_path, fraction):
    cut = tmp_path / "cut.kdump"
    data = x86_61.kdump.read_bytes()
    cut.write_bytes(data[:int(len(data) * fraction)])
    proc = drgn_hotplug("-c", str(cut), "-s", str(x86_61.vmlinux), "check", "--json")
    if proc.returncode == 2:
        assert_refused(proc, r"^drgn-hotplug: ")
    else:
        # Cut near the end, only the highest pages are gone: a partial report.
        doc = json.loads(proc.stdout)
        assert doc["unreadable"], "a cut dump that lost pages must say so"


@pytest.mark.slow
def test_an_elf_core_without_vmcoreinfo(x86_61, tmp_path):
    core = tmp_path / "header-only.core"
    core.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + (4).to_bytes(2, "little")
                     + (62).to_bytes(2, "little") + (1).to_bytes(4, "little") + bytes(40))
    assert_refused(drgn_hotplug("-c", str(core), "-s", str(x86_61.vmlinux), "check"),
                   r"has no VMCOREINFO")


@pytest.mark.slow
def test_no_debug_info(x86_61, tmp_path):
    assert_refused(drgn_hotplug("-c", str(x86_61.kdump), "-s", "/etc/passwd", "check"),
                   r"cannot use /etc/passwd as debug info: .*not a 64-bit")
    assert_refused(drgn_hotplug("-c", str(x86_61.kdump), "-s", str(tmp_path / "absent"), "check"),
                   r"No such file")


@pytest.mark.slow
@pytest.mark.parametrize("arch, series, pattern", [
    ("x86_64", "6.12", r"wrong vmlinux: .* is 6\.12\.\S+ \(build id [0-9a-f]{40}\), "
                       r"the dump is 6\.1\.0-\S+ \(build id [0-9a-f]{40}\)"),
    ("arm64", "6.1", r"wrong vmlinux: .* is an aarch64 kernel, the dump is x86_64"),
])
def test_a_vmlinux_of_another_kernel_is_refused_before_reading(x86_61, arch, series, pattern):
    from vmcores.packages import fetch_kernel

    other = fetch_kernel(arch, series).vmlinux
    assert_refused(drgn_hotplug("-c", str(x86_61.kdump), "-s", str(other), "check"), pattern)


@pytest.mark.slow
def test_a_filtered_dump_gives_partial_results_naming_what_was_excluded(get_cell):
    """makedumpfile -d 31 on 6.12 drops slab pages, where kernfs nodes live
    (testbed-notes): the links it cannot read are listed, the rest is checked,
    and the run is not clean: each object it could not read is a warning."""
    cell = get_cell("x86_64", "6.12", "orphan")
    proc = drgn_hotplug("-c", str(cell.filtered_kdump), "-s", str(cell.vmlinux), "check", "--json")
    assert proc.returncode == 1 and proc.stderr == ""
    doc = json.loads(proc.stdout)
    excluded = [u for u in doc["unreadable"] if "Excluded page" in u["reason"]]
    assert excluded and all(isinstance(u["address"], int) for u in excluded)
    assert any(u["what"].startswith("kernfs") for u in excluded)
    assert_each_unreadable_is_a_warning(doc)
    # Sections and memblock are in unfiltered pages: their checks still ran.
    assert any(f["kind"] == "memmap-without-memblock" for f in doc["findings"])


def assert_each_unreadable_is_a_warning(doc: dict) -> None:
    """One ``unreadable`` warning finding per unreadable object, naming it."""
    findings = [f for f in doc["findings"] if f["kind"] == "unreadable"]
    assert [f["facts"] for f in findings] == doc["unreadable"]
    assert all(f["severity"] == "warning" and f["facts"]["what"] in f["reason"] for f in findings)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["5.10", "6.1", "7.x"])
def test_filtered_dumps_exit_1_exactly_when_something_is_unreadable(get_cell, kernel):
    """A partial analysis is not a clean bill of health: the orphan cell's
    filtered dump exits 1 with its orphans or its unreadable objects, and
    with neither only when everything was read."""
    cell = get_cell("x86_64", kernel, "orphan")
    proc = drgn_hotplug("-c", str(cell.filtered_kdump), "-s", str(cell.vmlinux), "check", "--json")
    doc = json.loads(proc.stdout)
    assert_each_unreadable_is_a_warning(doc)
    orphans = {(f["node"], f["block"]) for f in doc["findings"] if f["kind"] == "orphaned-link"}
    dangling = {(d["node"], d["block"]) for d in cell.truth["dangling_links"]}
    assert orphans == dangling or doc["unreadable"], "orphans lost without saying why"
    assert proc.returncode == 1


@pytest.mark.slow
def test_memblock_discarded_after_boot_is_reported_unavailable(get_cell):
    """x86 has no ARCH_KEEP_MEMBLOCK: the discard cell's memblock.memory was
    resized at boot, so its regions array was freed by memblock_discard()."""
    cell = get_cell("x86_64", "6.1", "discard")
    proc = drgn_hotplug("-c", str(cell.kdump), "-s", str(cell.vmlinux), "memblock", "--json")
    assert proc.returncode in (0, 1), proc.stderr
    memory = json.loads(proc.stdout)["memblock"]["memory"]
    assert memory["available"] is False and memory["regions"] == []
    assert "not the static init array" in memory["reason"]
    assert memory["cnt"] > 128       # the guest really outgrew INIT_MEMBLOCK_REGIONS
    table = drgn_hotplug("-c", str(cell.kdump), "-s", str(cell.vmlinux), "memblock").stdout
    assert re.search(r"memblock\.memory at 0x[0-9a-f]+: cnt \d+, max \d+: memblock unavailable", table)


# ---------------------------------------------------------------- read-only, live

def guest_ram_digest(guest, ranges, work: Path) -> str:
    """SHA-256 of the guest's RAM, saved by QEMU (pmemsave) while the VM is stopped."""
    digest = hashlib.sha256()
    for i, (start, end) in enumerate(ranges):
        out = work / f"ram{i}.bin"
        guest.qmp.execute("pmemsave", val=start, size=end - start, filename=str(out))
        with open(out, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        out.unlink()
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.live
def test_the_gdb_front_end_never_writes_guest_memory(x86_61, tmp_path):
    import vmcores
    from test_gdb import MEMHP, Gdb, gdb_attach

    with vmcores.start_live(x86_61) as guest:
        ram = [(r["start"], r["end"] + 1) for r in guest.truth()["iomem"]
               if r["name"] == "System RAM" and r["depth"] == 0]
        gdb = Gdb("x86_64", x86_61.vmlinux)
        gdb.run(f"source {MEMHP}")
        gdb_attach(gdb, guest.gdb_port)             # the gdbstub stops the VM
        assert guest.qmp.execute("query-status")["running"] is False
        gdb.run(f"symbol-file -o {guest.kaslr_offset:#x} {x86_61.vmlinux}")
        before = guest_ram_digest(guest, ram, tmp_path)
        outputs = [gdb.run(f"memhp {command}") for command in
                   ("check", "sections", "memblock", "blocks", "links", "explain 0x100000000")]
        after = guest_ram_digest(guest, ram, tmp_path)
        assert "orphaned-link" in outputs[0]       # memhp really read the kernel
        assert before == after
        # The digest does see a one-byte write (then undone) through the same stub.
        last = "init_uts_ns.name.domainname[64]"
        gdb.run(f"set var {last} = 1")
        assert guest_ram_digest(guest, ram, tmp_path) != before
        gdb.run(f"set var {last} = 0")
        assert guest_ram_digest(guest, ram, tmp_path) == before
        gdb.run("detach")
        gdb.close()
