"""``drgn-hotplug map`` in a real browser: headless Chromium renders the page
of real dumps (the x86_64 6.1 orphan and pmem cells, the arm64 5.10 boot
cell with its NOMAP ranges, the grown 16K-section machine).

The DOM Chromium built must carry one ``rect.finding`` per finding of
``drgn-hotplug check --json`` on the same dump, with its kind, severity and
pfn range (a link finding: its node, block and the block's pfns), at the x
``physmap.plan`` computes; its screenshot must show the finding's colour
there. The 512K-section page is timed in benchmarks/map.py.
"""

from __future__ import annotations

import functools
import json
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

import vmcores
from drgn_hotplug import checks, cli, physmap
from vmcores import grow

pytest.importorskip("drgn")
pytestmark = [pytest.mark.bed, pytest.mark.slow]

TARGETS = {
    "x86_64-6.1-orphan": ("x86_64", "6.1", "orphan"),
    "x86_64-6.1-pmem": ("x86_64", "6.1", "pmem"),
    "arm64-5.10-boot": ("arm64", "5.10", "boot"),
    "grown-16k": 16384,
}
# The grown 16K machine's page (tests/test_scale.py builds the same dump);
# 512K sections give 1 MB (benchmarks/RESULTS.md).
MAX_GROWN_PAGE_BYTES = 2 << 20


@functools.lru_cache(maxsize=None)
def dump(name: str) -> tuple[Path, Path]:
    """(dump, vmlinux) of a target."""
    target = TARGETS[name]
    if isinstance(target, int):
        grown = grow.grow(vmcores.build_cell("x86_64", "6.1", "boot").dir, target, seed=1)
        manifest = json.loads((grown / "manifest.json").read_text())
        return grown / "grown.kdump", Path(manifest["vmlinux"])
    cell = vmcores.build_cell(*target)
    return cell.kdump, cell.vmlinux


def run_cli(name: str, *args: str) -> subprocess.CompletedProcess:
    core, vmlinux = dump(name)
    return subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", "-c", str(core), "-s",
                           str(vmlinux), *args], capture_output=True, text=True, timeout=600)


@functools.lru_cache(maxsize=None)
def checked(name: str) -> tuple[int, dict]:
    result = run_cli(name, "check", "--json")
    return result.returncode, json.loads(result.stdout)


@functools.lru_cache(maxsize=None)
def picture(name: str) -> physmap.PhysMap:
    """The layout physmap plans for the dump, read in this process."""
    core, vmlinux = dump(name)
    prog, _ = cli.open_target(core=str(core), symbols=[str(vmlinux)])
    return physmap.plan(*checks.checked(cli.read_model_checked(prog)))


@functools.lru_cache(maxsize=None)
def rendered(name: str, scratch: Path) -> tuple[subprocess.CompletedProcess, Path, list, Path]:
    """(the map command's run, its page, the rect.finding attributes of
    Chromium's DOM, its screenshot)."""
    page = scratch / f"{name}.html"
    result = run_cli(name, "map", "-o", str(page))
    parser = DomFindings()
    parser.feed(chromium("--dump-dom", page))
    shot = scratch / f"{name}.png"
    chromium(f"--screenshot={shot}", page,
             f"--window-size={parser.svg_size[0]},{parser.svg_size[1]}")
    return result, page, parser.findings, shot


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("map")


def chromium(action: str, page: Path, *options: str, fragment: str = "") -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed (scripts/setup.sh installs it)")
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--force-device-scale-factor=1", *options,
                           action, page.resolve().as_uri() + fragment],
                          capture_output=True, text=True, timeout=120, check=True).stdout


class DomFindings(HTMLParser):
    """The attributes of every ``rect.finding`` and the svg's size."""

    def __init__(self):
        super().__init__()
        self.findings: list[dict] = []
        self.svg_size = (0, 0)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self.svg_size = (int(attrs["width"]), int(attrs["height"]))
        if tag == "rect" and "finding" in attrs.get("class", "").split():
            self.findings.append(attrs)


def expected_drawn(document: dict) -> list[tuple]:
    """check --json's findings as the map must draw them: kind, severity,
    pfn range (a link finding's block's pfns), node, block."""
    kernel = document["kernel"]
    per_block = kernel["memory_block_size"] // kernel["page_size"]
    out = []
    for f in document["findings"]:
        start, end = f.get("start_pfn"), f.get("end_pfn")
        if start is None and "block" in f:
            start, end = f["block"] * per_block, (f["block"] + 1) * per_block
        out.append((f["kind"], f["severity"], start, end, f.get("node"), f.get("block")))
    return out


def dom_drawn(rect: dict) -> tuple:
    number = lambda key: int(rect[key]) if key in rect else None
    return (rect["data-kind"], rect["data-severity"], number("data-start-pfn"),
            number("data-end-pfn"), number("data-node"), number("data-block"))


def read_png(path: Path) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, rows of RGB or RGBA bytes) of an
    8-bit PNG, no library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    pixel = 4 if colour == 6 else 3
    raw = zlib.decompress(b"".join(idat))
    stride = width * pixel
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        unfilter(kind, line, previous, pixel)
        rows.append(bytes(line))
        previous = line
    return width, height, pixel, rows


def unfilter(kind: int, line: bytearray, up: bytearray, pixel: int) -> None:
    """Undo one PNG row filter in place (None, Sub, Up, Average, Paeth)."""
    if kind == 2:
        line[:] = bytes((a + b) & 0xff for a, b in zip(line, up))
        return
    for i in range(len(line)):
        left = line[i - pixel] if i >= pixel else 0
        above = up[i]
        corner = up[i - pixel] if i >= pixel else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xff
        elif kind == 3:
            line[i] = (line[i] + (left + above) // 2) & 0xff
        elif kind == 4:
            p = left + above - corner
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - corner)
            guess = left if pa <= pb and pa <= pc else above if pb <= pc else corner
            line[i] = (line[i] + guess) & 0xff
        elif kind != 0:
            raise ValueError(f"PNG filter {kind}")


def colour_at(rows: list[bytes], pixel: int, x: float, y: float) -> str:
    i = int(x) * pixel
    r, g, b = rows[int(y)][i:i + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


@pytest.mark.parametrize("name", list(TARGETS))
def test_dom_has_one_element_per_finding_of_check(name, scratch):
    status, document = checked(name)
    result, page, dom, _ = rendered(name, scratch)
    assert result.returncode == status, result.stderr
    assert result.stdout.startswith(f"{page}: {len(document['findings'])} findings drawn")
    assert sorted(map(dom_drawn, dom), key=repr) == sorted(expected_drawn(document), key=repr)
    assert document["findings"]                      # every target has findings to draw


@pytest.mark.parametrize("name", list(TARGETS))
def test_screenshot_shows_each_finding_where_the_layout_puts_it(name, scratch):
    _, _, dom, shot = rendered(name, scratch)
    layout = picture(name)
    boxes = {box.mark.finding: box for box in layout.finding_boxes()}
    width, height, pixel, rows = read_png(shot)
    assert (width, height) == (layout.width, round(layout.height))
    right = physmap.LEFT + physmap.PLOT_WIDTH
    for rect in dom:
        box = boxes[int(rect["data-finding"])]
        # The x of the finding's first pfn (a finding widened to stay
        # visible moves left only at the plot's right edge).
        expected_x = min(layout.layout.x(int(rect["data-start-pfn"])), right - box.width)
        assert float(rect["x"]) == pytest.approx(expected_x, abs=0.01) == box.x
        centre = (box.x + box.width / 2, box.y + box.height / 2)
        assert colour_at(rows, pixel, *centre) == \
            physmap.SEVERITY_COLOURS[rect["data-severity"]], (rect, centre)


def test_arm64_510_nomap_regions_are_marked(scratch):
    """The four NOMAP regions of memblock.memory (flash, two UEFI runtime
    ranges, the SRAT table) are drawn as NOMAP, in node bands."""
    _, page, _, _ = rendered("arm64-5.10-boot", scratch)
    nomap = [box.mark for box in picture("arm64-5.10-boot").boxes if box.mark.css == "mb-nomap"]
    assert [(m.start, m.end) for m in nomap] == [(0x4000, 0x8000), (0x7c440, 0x7c730),
                                                 (0x7fc00, 0x7ffe0), (0xbfbfc, 0xbfbfd)]
    assert page.read_text().count('class="mark mb-nomap"') == 4


def test_pmem_inactive_subsection_is_drawn(scratch):
    """Section 7's last subsection (the tail of the pmem range) is inactive."""
    marks = [box.mark for box in picture("x86_64-6.1-pmem").boxes if box.mark.lane == "subsections"]
    assert [(m.css, m.start, m.end) for m in marks] == [
        ("sub-active", 0x38000, 0x3fe00), ("sub-inactive", 0x3fe00, 0x40000)]


def test_grown_page_is_small_and_self_contained(scratch):
    _, page, _, _ = rendered("grown-16k", scratch)
    text = page.read_text()
    assert page.stat().st_size < MAX_GROWN_PAGE_BYTES
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script src" not in text and "@import" not in text and "<link" not in text


def test_svg_output_renders_the_same_findings(scratch):
    svg = scratch / "orphan.svg"
    result = run_cli("x86_64-6.1-orphan", "map", "-o", str(svg), "--json")
    document = json.loads(result.stdout)
    assert result.returncode == checked("x86_64-6.1-orphan")[0]
    assert document["map"] == {"file": str(svg), "findings_drawn": len(document["findings"])}
    parser = DomFindings()
    parser.feed(chromium("--dump-dom", svg))
    assert sorted(map(dom_drawn, parser.findings), key=repr) == \
        sorted(expected_drawn(document), key=repr)


def test_the_page_script_pins_a_finding_named_in_the_url(scratch):
    """The page's script runs in Chromium: PAGE#finding=N fills the facts
    panel with finding N's facts and those of the pfns it is drawn over."""
    _, document = checked("x86_64-6.1-orphan")
    _, page, _, _ = rendered("x86_64-6.1-orphan", scratch)
    n = next(i for i, f in enumerate(document["findings"])
             if (f["kind"], f.get("node"), f.get("block")) == ("orphaned-link", 1, 32))
    dom = chromium("--dump-dom", page, fragment=f"#finding={n}")
    panel = dom[dom.index('<pre id="panel">'):dom.index("</pre>")]
    assert "error orphaned-link node1/memory32" in panel
    assert "pfns: 0x100000-0x107fff" in panel and "present: 0" in panel
