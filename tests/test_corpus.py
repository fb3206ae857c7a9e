"""The mutation corpus (vmcores/corpus.py): its machinery, and a fixed slice of
it run in CI (the full corpus: ``python -m vmcores corpus --seed 1 --cases 1000``).

Every case must end within 10 s with exit 0/1 and a consistent JSON report
(or clean tables), or with exit 2 and exactly one line on stderr.
"""

from __future__ import annotations

import shutil

import pytest

from vmcores import corpus

SEED, TOTAL, SLICE_STEP = 1, 1000, 25


# ---------------------------------------------------------------- the judge

def test_the_judge_refuses_tracebacks_extra_lines_and_internal_errors():
    case = corpus.Case(1, "g", "d", "core", "vmlinux")
    assert corpus.judge(case, 2, b"", b"drgn-hotplug: cannot open x: bad\n") [0] == "ok"
    assert corpus.judge(case, 1, b"", b"Traceback (most recent call last):\n")[0] == "traceback"
    assert corpus.judge(case, 2, b"", b"drgn-hotplug: a\nsecond line\n")[0] == "not one line"
    assert corpus.judge(case, 2, b"", b"drgn-hotplug: internal error: boom\n")[0] == "internal error"
    assert corpus.judge(case, -11, b"", b"")[0] == "bad exit"


def test_the_judge_checks_the_json_document_against_the_exit_status():
    case = corpus.Case(1, "g", "d", "core", "vmlinux", command=("check", "--json"))
    doc = (b'{"kernel": {}, "unreadable": [], "summary": {"error": 1, "warning": 0, "info": 0},'
           b' "findings": [{"kind": "orphaned-link", "severity": "error", "node": 1, "block": 32}]}')
    assert corpus.judge(case, 1, doc, b"")[0] == "ok"
    assert corpus.judge(case, 0, doc, b"")[0] == "exit status"
    assert corpus.judge(case, 1, doc.replace(b'"block": 32', b'"block": "32"'), b"")[0] == "schema"
    assert corpus.judge(case, 1, b"{not json", b"")[0] == "invalid JSON"


def test_the_judge_refuses_raw_control_characters_in_tables():
    case = corpus.Case(1, "g", "d", "core", "vmlinux", command=("links",))
    assert corpus.judge(case, 0, b"memory32\\x1b[2J\n", b"")[0] == "ok"
    assert corpus.judge(case, 0, b"memory32\x1b[2J\n", b"")[0] == "raw control characters"


# ---------------------------------------------------------------- on the bed's dumps

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    pytest.importorskip("drgn")
    if not corpus.available_sources():
        pytest.skip("no test-bed dumps (python -m vmcores build-all)")
    path = tmp_path_factory.mktemp("corpus")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_a_patched_kdump_reads_back_the_patch(scratch):
    import drgn

    source = corpus.pin_source(corpus.available_sources()[0], scratch)
    copy = scratch / "patched.kdump"
    shutil.copyfile(source.kdump, copy)
    address = 0x1000 * 123 + 40
    corpus.patch_kdump(copy, corpus.kdump_layout(copy), [(address, b"corpus!!")])
    prog = drgn.Program()
    prog.set_core_dump(str(copy))
    assert prog.read(address, 8, True) == b"corpus!!"
    assert prog.read(address + 8, 8, True) == _original(source.kdump, address + 8)


def _original(kdump: str, address: int) -> bytes:
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(kdump)
    return prog.read(address, 8, True)


@pytest.mark.slow
def test_the_corpus_is_reproducible_from_its_seed(scratch):
    # The whole corpus: its fixed cases (a wrong vmlinux per source and
    # cached kernel) grow with the bed, and would crowd a shorter prefix.
    first = corpus.generate(SEED, TOTAL, scratch / "a")
    second = corpus.generate(SEED, TOTAL, scratch / "b")
    assert [(c.group, c.description, c.patches) for c in first] == \
        [(c.group, c.description, c.patches) for c in second]
    assert len({c.group for c in first}) >= 15


@pytest.mark.slow
def test_a_fixed_slice_of_the_corpus_never_hangs_nor_tracebacks(scratch):
    cases = corpus.generate(SEED, TOTAL, scratch)[::SLICE_STEP]
    results = corpus.run_corpus(cases, scratch / "run")
    failures = [f"case {r.case.id} [{r.case.group}] {r.case.description}: {r.verdict}: {r.detail}"
                for r in results if r.verdict != "ok"]
    assert failures == [], "\n".join(failures)
    assert {r.status for r in results} >= {1, 2}
