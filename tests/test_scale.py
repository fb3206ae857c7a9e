"""Grown dumps (vmcores/grow.py): the real x86_64 6.1 boot dump rewritten to
describe 1K and 16K sections, read through the normal drgn path.

The checker must report exactly the findings the generator planted and
recorded in manifest.json, and the kernel's own walkers (drgn's helpers) must
see the same sections and blocks: the grown structures are the kernel's,
not a test-only format. Timings are in benchmarks/scale.py, not here.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vmcores
from vmcores import grow

drgn = pytest.importorskip("drgn")
pytestmark = pytest.mark.slow

SIZES = (1024, 16384)


@functools.lru_cache(maxsize=None)
def grown(n_sections: int) -> Path:
    return grow.grow(vmcores.build_cell("x86_64", "6.1", "boot").dir, n_sections, seed=1)


@functools.lru_cache(maxsize=None)
def manifest(n_sections: int) -> dict:
    return json.loads((grown(n_sections) / "manifest.json").read_text())


@functools.lru_cache(maxsize=None)
def program(n_sections: int):
    prog = drgn.Program()
    prog.set_core_dump(str(grown(n_sections) / "grown.kdump"))
    prog.load_debug_info([manifest(n_sections)["vmlinux"]])
    return prog


def check_json(n_sections: int) -> tuple[int, dict]:
    """``drgn-hotplug check --json`` on the grown kdump: the command users run."""
    result = subprocess.run(
        [sys.executable, "-m", "drgn_hotplug.cli", "check", "--json",
         "-c", str(grown(n_sections) / "grown.kdump"), "-s", manifest(n_sections)["vmlinux"]],
        capture_output=True, text=True, timeout=600)
    return result.returncode, json.loads(result.stdout)


def finding_key(finding: dict) -> tuple:
    return (finding["kind"], finding["severity"], finding.get("start_pfn"), finding.get("end_pfn"),
            finding.get("node"), finding.get("block"))


@pytest.mark.parametrize("n_sections", SIZES)
def test_findings_are_exactly_the_planted_ones(n_sections):
    status, document = check_json(n_sections)
    expected = manifest(n_sections)["expected_findings"]
    assert sorted(map(finding_key, document["findings"])) == sorted(map(finding_key, expected))
    assert document["unreadable"] == []
    assert status == 1                     # planted link errors


@pytest.mark.parametrize("n_sections", SIZES)
def test_missing_links_name_the_planted_directions(n_sections):
    _, document = check_json(n_sections)
    found = {(f["node"], f["block"]): f["facts"]["missing"]
             for f in document["findings"] if f["kind"] == "missing-link"}
    planted = {(n, b): m for n, b, m in manifest(n_sections)["planted"]["missing"]}
    assert found == planted


@pytest.mark.parametrize("n_sections", SIZES)
def test_counts_as_generated(n_sections):
    from drgn_hotplug.drgn_reader import read_model
    model = read_model(program(n_sections))
    m = manifest(n_sections)
    assert len(model.sections) == m["present_sections"]
    assert sum(s.valid for s in model.sections) == m["valid_sections"]
    assert len(model.blocks) == m["blocks"]
    assert all(b.in_bus and b.in_xarray for b in model.blocks)
    assert model.kernel.memory_block_size == m["block_size"]
    assert len(model.nodes) == m["nodes"] and all(n.online for n in model.nodes)
    assert len(model.memblock_memory.regions) == m["memblock_regions"]


@pytest.mark.parametrize("n_sections", SIZES)
def test_drgn_helpers_walk_the_same_machine(n_sections):
    """drgn's own walkers (mem_section roots, bus klist, xarray, kernfs rbtrees)."""
    from drgn.helpers.linux.kernfs import kernfs_children
    from drgn.helpers.linux.mm import for_each_memory_block
    from drgn.helpers.linux.mmzone import for_each_present_section
    from drgn.helpers.linux.xarray import xa_for_each
    prog, m = program(n_sections), manifest(n_sections)
    assert sum(1 for _ in for_each_present_section(prog)) == m["present_sections"]
    blocks = list(for_each_memory_block(prog))
    assert len(blocks) == m["blocks"]
    assert sorted(i for i, _ in xa_for_each(prog["memory_blocks"].address_of_())) \
        == sorted(b.dev.id.value_() for b in blocks)
    memory_dir = blocks[0].dev.kobj.sd.parent
    names = {c.name.string_() for c in kernfs_children(memory_dir)}
    assert {f"memory{b.dev.id.value_()}".encode() for b in blocks} <= names


def test_gdb_front_end_finds_the_planted_ones():
    """gdb reads the grown kernel-virtual ELF: same findings; only the shared
    struct pages of generated sections, which that ELF leaves out, are unreadable."""
    if not shutil.which("gdb"):
        pytest.skip("gdb is not installed")
    m = manifest(1024)
    cell = json.loads((Path(m["source_cell"]) / "cell.json").read_text())
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", f"symbol-file -o {cell['kaslr_offset']:#x} {m['vmlinux']}",
         "-ex", f"core-file {grown(1024) / m['files']['kvaddr_elf']}",
         "-ex", f"source {root / 'gdb' / 'memhp.py'}", "-ex", "memhp check --json"],
        capture_output=True, text=True, timeout=600).stdout
    document = json.loads(out[out.index("\n{") + 1:])
    unread = [f for f in document["findings"] if f["kind"] == "unreadable"]
    assert sorted(map(finding_key, [f for f in document["findings"] if f not in unread])) \
        == sorted(map(finding_key, m["expected_findings"]))
    assert document["unreadable"]
    assert all(u["what"].startswith("struct page of pfn ") for u in document["unreadable"])
    # Each is a warning finding of its own: a partial analysis is not clean.
    assert [f["facts"] for f in unread] == document["unreadable"]
    assert all(f["severity"] == "warning" for f in unread)


def test_kernfs_name_hash_matches_the_kernel(get_cell):
    """Every child of the real guest's /sys/devices/system/memory carries the
    hash the generator computes for its name (kernfs rbtrees are ordered by it)."""
    from drgn.helpers.linux.kernfs import kernfs_children
    from drgn.helpers.linux.mm import for_each_memory_block
    cell = get_cell("x86_64", "6.1", "boot")
    prog = drgn.Program()
    prog.set_core_dump(str(cell.kdump))
    prog.load_debug_info([str(cell.vmlinux)])
    memory_dir = next(iter(for_each_memory_block(prog))).dev.kobj.sd.parent
    children = list(kernfs_children(memory_dir))
    assert len(children) > 8
    for kn in children:
        assert grow.kernfs_name_hash(kn.name.string_()) == kn.hash.value_()


@pytest.mark.parametrize("n_sections", SIZES)
def test_grown_rbtrees_are_red_black_and_ordered(n_sections):
    """The memory directory's rbtree: in kernfs order, parent links right,
    no red node with a red child, one black height (what rb_next() and
    kernfs_find_ns() rely on)."""
    from drgn.helpers.linux.mm import for_each_memory_block
    prog = program(n_sections)
    root = next(iter(for_each_memory_block(prog))).dev.kobj.sd.parent.dir.children.rb_node
    heights = set()
    keys = []

    def walk(node, parent, blacks):
        if not node:
            heights.add(blacks)
            return
        parent_color = node.__rb_parent_color.value_()
        assert parent_color & ~3 == parent
        black = parent_color & 1
        if not black:
            assert parent_color & ~3 and prog.read_u64(parent_color & ~3) & 1
        kn = drgn.container_of(node, "struct kernfs_node", "rb")
        walk(node.rb_left, node.value_(), blacks + black)
        keys.append((kn.hash.value_(), kn.name.string_()))
        walk(node.rb_right, node.value_(), blacks + black)

    walk(root, 0, 0)
    assert len(heights) == 1
    assert keys == sorted(keys) and len(keys) > manifest(n_sections)["blocks"]


def test_plan_is_reproducible_from_its_seed():
    first, again, other = grow.make_plan(16384, 7), grow.make_plan(16384, 7), grow.make_plan(16384, 8)
    assert grow.expected_findings(first) == grow.expected_findings(again)
    assert (first.orphans, first.missing) != (other.orphans, other.missing)


def test_bad_size_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "vmcores", "grow", "--sections", "1000"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "multiple of 1024" in result.stderr


def test_docstring_examples():
    import doctest
    from benchmarks import scale
    for module in (grow, scale):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
