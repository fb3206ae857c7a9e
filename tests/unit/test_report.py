"""The JSON document, the tables and the exit status."""

import json
from dataclasses import replace

import handmade as h
from drgn_hotplug import checks, report
from drgn_hotplug.model import Unreadable


def test_json_document_schema_on_the_orphan_model():
    model = h.x86_orphan()
    doc = json.loads(report.json_text(report.document(model, version="0.1.0")))
    assert set(doc) == {"tool", "version", "schema", "command", "kernel", "findings",
                        "skipped", "unreadable", "summary"}
    assert (doc["tool"], doc["command"], doc["schema"]) == ("drgn-hotplug", "check", 1)
    assert doc["kernel"]["arch"] == "x86_64" and doc["kernel"]["version"] == [6, 1, 115]
    assert doc["kernel"]["pfn_valid_rule"] == "generic-subsection"
    links = [f for f in doc["findings"] if f["kind"] == "orphaned-link"]
    assert [(f["node"], f["block"], f["severity"]) for f in links] == [(1, 32, "error"),
                                                                       (1, 33, "error")]
    assert all(type(f["node"]) is int and type(f["block"]) is int for f in links)
    assert "start_pfn" not in links[0]
    ranges = [f for f in doc["findings"] if "start_pfn" in f]
    assert all(type(f["start_pfn"]) is int and f["end_pfn"] > f["start_pfn"] for f in ranges)
    assert doc["summary"] == {"error": 2, "warning": 0, "info": 3}


def test_exit_status_follows_the_worst_severity():
    assert report.exit_status(checks.run_checks(h.x86_hotplug())) == report.EXIT_CLEAN
    assert report.exit_status(checks.run_checks(h.x86_orphan())) == report.EXIT_FINDINGS
    assert report.exit_status(checks.run_checks(h.arm64_510())) == report.EXIT_FINDINGS
    assert report.exit_status(checks.run_checks(h.arm64_61())) == report.EXIT_CLEAN


def hostile_model():
    """Kernel strings carrying terminal escapes, DEL, C1 and an undecodable byte."""
    model = h.x86_orphan()
    model.kernel = replace(model.kernel, release="6.1\x1b]0;owned\x07")
    evil = "memory32\x1b[2J\x7f\x9b\udcff"
    model.links = [replace(l, target_name=evil) if l.block == 32 else l for l in model.links]
    return model


def test_tables_escape_kernel_strings():
    model = hostile_model()
    text = report.render_table(model) + report.render_links(model)
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) < 0xa0 for c in text)
    assert "memory32\\x1b[2J\\x7f\\x9b\\xff" in text
    assert "6.1\\x1b]0;owned\\x07" in text


def test_json_escapes_everything_outside_printable_ascii():
    text = report.json_text(report.document(hostile_model()))
    assert all(0x20 <= ord(c) < 0x7f or c == "\n" for c in text)
    doc = json.loads(text)
    assert doc["kernel"]["release"] == "6.1\x1b]0;owned\x07"


def test_findings_table_has_hex_ranges_sizes_and_reasons():
    text = report.render_findings(checks.run_checks(h.x86_pmem()), h.x86_kernel())
    line = next(l for l in text.splitlines() if "pfn-valid-mismatch" in l)
    assert "pfn 0x3fe00-0x3ffff" in line and "2 MiB" in line and "ZONE_DEVICE" in line
    assert report.render_findings([], h.x86_kernel()) == "no findings"


def test_sub_command_tables():
    model = h.arm64_510()
    sections = report.render_sections(model)
    # crash kmem -n state letters; a 1 GiB section has 512 subsections.
    assert sections.splitlines()[2].split()[3:] == ["PMOE", "0x0-0x3ffff", "all", "512"]
    memblock = report.render_memblock(model)
    assert "NOMAP" in memblock and "0x4000000-0x7ffffff" in memblock
    assert "memory0" in report.render_blocks(model)
    unavailable = replace(model.memblock_memory, available=False, regions=(),
                          reason="memblock unavailable after boot: cnt 200 exceeds max 128")
    assert "cnt 200 exceeds max 128" in report.render_memblock(
        replace(model, memblock_memory=unavailable))
    explained = report.render_explain(checks.explain(model, 0x4000))
    assert "pfn: 0x4000" in explained and "rule: arm64-memblock-map" in explained


def test_human_sizes():
    assert report.human_size(0) == "0 B"
    assert report.human_size(1 << 30) == "1 GiB"
    assert report.human_size(64 << 40) == "64 TiB"


def test_large_tables_are_laid_out_exactly_like_tabulate():
    # Same rows through tabulate and through the fast path used above
    # TABULATE_MAX_ROWS rows (empty and escaped cells included).
    rows = [[f"memory{i}", "" if i % 3 else "x" * (i % 7), f"{i:#x}", "node\x1b1"]
            for i in range(50)]
    headers = ("NAME", "EMPTYISH", "HEX", "TARGET")
    cells = [[report.escape(c) for c in row] for row in rows]
    assert report._plain_table(cells, headers) == report.tabulate(
        cells, headers=list(headers), tablefmt="simple", disable_numparse=True)


def test_a_64_tib_sections_table_uses_the_fast_layout():
    model = h.x86_boot()
    model.sections = [h.section(nr) for nr in range(report.TABULATE_MAX_ROWS + 1)]
    lines = report.render_sections(model).splitlines()
    assert len(lines) == report.TABULATE_MAX_ROWS + 3
    assert lines[-1].split() == ["2000", "0xffff888003e27d00", "0xffffea00fa00000b", "PMOE",
                                 "0x3e80000-0x3e87fff", "all", "64"]


def test_check_table_says_when_the_analysis_is_partial():
    model = h.x86_orphan()
    assert report.render_table(model).splitlines()[-1] == "2 error, 0 warning, 3 info"
    model.unreadable.append(Unreadable("kernfs children of node1", "Excluded page",
                                       0xffff8c562015e908))
    text = report.render_table(model)
    row = next(l for l in text.splitlines() if l.startswith("warning"))
    assert row.split(None, 3) == ["warning", "unreadable", "0xffff8c562015e908",
                                  "kernfs children of node1: Excluded page"]
    assert text.splitlines()[-1] == ("2 error, 1 warning, 3 info; 1 kernel objects unreadable, "
                                     "so findings about them may be missing")


def test_a_partial_analysis_without_other_findings_exits_1():
    model = h.x86_hotplug()
    assert report.exit_status(checks.run_checks(model)) == report.EXIT_CLEAN
    model.unreadable.append(Unreadable("struct page of pfn 0x100000", "Excluded page",
                                       0xffffea0004000000))
    findings = checks.run_checks(model)
    assert report.exit_status(findings) == report.EXIT_FINDINGS
    doc = json.loads(report.json_text(report.document(model, findings)))
    (unread,) = [f for f in doc["findings"] if f["kind"] == "unreadable"]
    assert unread == {"kind": "unreadable", "severity": "warning",
                      "reason": "struct page of pfn 0x100000: Excluded page",
                      "facts": {"what": "struct page of pfn 0x100000",
                                "address": 0xffffea0004000000, "reason": "Excluded page"}}
    assert doc["unreadable"] == [unread["facts"]]
    assert doc["summary"] == {"error": 0, "warning": 1, "info": 4}
    # explain: what could not be read may bear on any pfn.
    explained = checks.explain(model, 0x8000)
    assert [f["kind"] for f in explained["findings"]] == ["unreadable"]
