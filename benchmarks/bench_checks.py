"""Time run_checks() on a synthetic 64 TiB x86_64 machine.

512 K sections of 128 MiB, 2 GiB memory blocks (32 K blocks, 64 K links),
16 nodes, one memblock region per node, every 8th section hot-added with a
partially active subsection map, a few removed blocks with dangling links.
Run: python3 benchmarks/bench_checks.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import handmade as h  # noqa: E402
from drgn_hotplug import checks, report  # noqa: E402
from drgn_hotplug.model import Model  # noqa: E402

TiB = 1 << 40
NODES = 16


def synthetic_64tb() -> Model:
    kernel = h.x86_kernel(memory_block_size=2 * h.GiB)
    nr_sections = (64 * TiB) >> 27
    per_node = nr_sections // NODES
    sections = [h.section(nr) if nr % 8 else h.section(nr, h.HOTPLUGGED, (1 << 48) - 1)
                for nr in range(nr_sections)]
    regions = [(n * per_node << 27, (n + 1) * per_node << 27, 0, n) for n in range(NODES)]
    sections_per_block = 16
    blocks = [h.block(b, b * sections_per_block // per_node, sections_per_block=16)
              for b in range(nr_sections // sections_per_block) if b % 1000 != 7]
    links = h.links_for(blocks) + [h.dead_link(0, b) for b in range(7, 2000, 1000)]
    return Model(kernel=kernel, sections=sections,
                 memblock_memory=h.memblock("memory", regions),
                 memblock_reserved=h.memblock("reserved", []),
                 blocks=blocks, nodes=h.nodes(*range(NODES)), links=links)


def main() -> None:
    start = time.perf_counter()
    model = synthetic_64tb()
    built = time.perf_counter()
    findings = checks.run_checks(model)
    checked = time.perf_counter()
    report.json_text(report.document(model, findings))
    done = time.perf_counter()
    print(f"{len(model.sections)} sections, {len(model.blocks)} blocks, "
          f"{len(model.links)} links -> {len(findings)} findings {report.summary(findings)}")
    print(f"build {built - start:.2f} s, run_checks {checked - built:.2f} s, "
          f"json {done - checked:.2f} s")


if __name__ == "__main__":
    main()
