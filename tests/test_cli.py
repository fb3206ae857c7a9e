"""The drgn front ends: the ``drgn-hotplug`` command, the ``memhp`` drgn
command and the helper API, on the x86_64 6.1 orphan cell (two dangling
links, node1/memory32 and node1/memory33) and on bad input.
"""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import threading

import pytest

import vmcores
from drgn_hotplug import cli

pytest.importorskip("drgn")


@functools.lru_cache(maxsize=None)
def orphan() -> vmcores.Cell:
    return vmcores.build_cell("x86_64", "6.1", "orphan")


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["drgn-hotplug", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def dump_args() -> list:
    return ["-c", str(orphan().kdump), "-s", str(orphan().vmlinux)]


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("drgn-hotplug: "), result.stderr
    for word in words:
        assert word in lines[0]


# ---------------------------------------------------------------- bad input: exit 2

def test_help_needs_no_kernel():
    result = run("--help")
    assert result.returncode == 0 and "explain" in result.stdout


def test_missing_core(tmp_path):
    assert_one_line_error(run("-c", str(tmp_path / "absent"), "check"), "cannot open",
                          "No such file")


def test_core_that_is_not_a_dump(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a vmcore\n")
    assert_one_line_error(run("-c", str(text), "check"), "cannot open")


@pytest.mark.slow
def test_truncated_kdump(tmp_path):
    truncated = tmp_path / "truncated.kdump"
    truncated.write_bytes(orphan().kdump.read_bytes()[:100_000])
    assert_one_line_error(run("-c", str(truncated), "-s", str(orphan().vmlinux), "check"),
                          "cannot open")


@pytest.mark.slow
def test_vmlinux_of_another_kernel():
    other = vmcores.build_cell("x86_64", "5.10", "orphan").vmlinux
    assert_one_line_error(run("-c", str(orphan().kdump), "-s", str(other), "check"),
                          "wrong vmlinux", str(other), orphan().truth["release"])


@pytest.mark.slow
def test_vmlinux_that_is_not_elf(tmp_path):
    junk = tmp_path / "vmlinux"
    junk.write_bytes(b"\x7fELF" + bytes(60))
    assert_one_line_error(run("-c", str(orphan().kdump), "-s", str(junk), "check"))


@pytest.mark.slow
def test_bad_explain_argument():
    assert_one_line_error(run(*dump_args(), "explain", "0xzz"), "not a pfn or 0x address")


# ---------------------------------------------------------------- the command

@pytest.mark.slow
def test_check_lists_the_orphans_and_exits_1():
    result = run(*dump_args(), "check")
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    for link in ("node1/memory32", "node1/memory33"):
        assert link in result.stdout


@pytest.mark.slow
def test_target_options_after_the_sub_command():
    before = run(*dump_args(), "--json", "check")
    after = run("check", *dump_args(), "--json")
    assert after.returncode == before.returncode == 1
    assert json.loads(after.stdout) == json.loads(before.stdout)


@pytest.mark.slow
def test_json_document_follows_the_contract():
    doc = json.loads(run(*dump_args(), "--json", "check").stdout)
    assert doc["tool"] == "drgn-hotplug" and doc["command"] == "check"
    assert doc["kernel"]["release"] == orphan().truth["release"]
    assert doc["kernel"]["kaslr_offset"] == orphan().truth["kaslr_offset"]
    orphans = [f for f in doc["findings"] if f["kind"] == "orphaned-link"]
    assert {(f["node"], f["block"]) for f in orphans} == {(1, 32), (1, 33)}
    assert all(f["severity"] == "error" and isinstance(f["node"], int) for f in orphans)
    ranged = [f for f in doc["findings"] if "start_pfn" in f]
    assert all(isinstance(f["start_pfn"], int) and f["start_pfn"] < f["end_pfn"] for f in ranged)
    assert doc["summary"]["error"] == 2 and doc["unreadable"] == []


@pytest.mark.slow
@pytest.mark.parametrize("command,key", [("sections", "sections"), ("memblock", "memblock"),
                                         ("blocks", "blocks"), ("links", "links")])
def test_listings_exit_0_with_their_rows(command, key):
    result = run(*dump_args(), "--json", command)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc[key]
    table = run(*dump_args(), command)
    assert table.returncode == 0 and table.stdout.startswith("kernel 6.1.0-")


@pytest.mark.slow
def test_explain_takes_a_pfn_or_a_physical_address():
    by_address = run(*dump_args(), "--json", "explain", "0x100000000")
    by_pfn = run(*dump_args(), "--json", "explain", str(0x100000000 >> 12))
    assert by_address.returncode == by_pfn.returncode == 1  # covered by an orphaned link
    explained = json.loads(by_address.stdout)["explain"]
    assert explained == json.loads(by_pfn.stdout)["explain"]
    assert explained["memory_block"]["id"] == 32 and not explained["memory_block"]["exists"]
    assert [f["kind"] for f in explained["findings"]] == ["orphaned-link"]
    clean = run(*dump_args(), "explain", "0x8000000")
    assert clean.returncode == 0 and "nr: 1" in clean.stdout


# ---------------------------------------------------------------- drgn plugin and API

@pytest.mark.slow
def test_memhp_from_a_drgn_script():
    script = ("from drgn.commands import run_command\n"
              "status = run_command(prog, 'memhp check')\n"
              "print('STATUS', status)\n")
    result = subprocess.run(["drgn", "-q", *dump_args(), "-e", script], capture_output=True,
                            text=True, timeout=300)
    assert "node1/memory32" in result.stdout and "STATUS 1" in result.stdout, result.stderr


@pytest.mark.slow
def test_memhp_at_the_drgn_prompt():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn("drgn", ["-q", *dump_args()], encoding="utf-8", timeout=120)
    child.expect(">>> ")
    child.sendline("%memhp links")
    child.expect("DEAD \\(deactivated, removing, unlinked\\)")
    child.expect(">>> ")
    child.sendline("%memhp explain")
    child.expect("needs a PFN or 0xADDR")
    child.expect(">>> ")
    # %memhp lsmem prints what drgn-hotplug lsmem prints (the first lines:
    # the header and node 0's range).
    lines = run(*dump_args(), "lsmem", "-o", "+NODE,ZONES").stdout.splitlines()
    child.sendline("%memhp lsmem -o +NODE,ZONES")
    for line in lines[:2]:
        child.expect_exact(line)
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_api_for_drgn_scripts():
    from drgn_hotplug import api

    prog = cli.open_program(core=str(orphan().kdump), symbols=[str(orphan().vmlinux)])
    errors = [(f.node, f.block) for f in api.check(prog) if f.severity == "error"]
    assert errors == [(1, 32), (1, 33)]
    assert api.explain(prog, 0x100000)["section"]["present"] is False
    assert len(api.read_model(prog).blocks) == len(orphan().truth["memory_blocks"])


@pytest.mark.slow
def test_a_partial_analysis_exits_1_in_every_front_end():
    """The x86_64 6.12 orphan cell's filtered dump (makedumpfile -d 31 drops
    the slab pages holding kernfs nodes) hides its orphans: what it could not
    read is a warning per object, in the table, the JSON, explain and %memhp."""
    filtered = vmcores.build_cell("x86_64", "6.12", "orphan")
    args = ["-c", str(filtered.filtered_kdump), "-s", str(filtered.vmlinux)]
    table = run(*args, "check")
    assert table.returncode == 1, table.stderr
    doc = json.loads(run(*args, "--json", "check").stdout)
    assert doc["unreadable"] and doc["summary"]["warning"] == len(doc["unreadable"])
    rows = [line for line in table.stdout.splitlines() if line.split()[1:2] == ["unreadable"]]
    assert len(rows) == len(doc["unreadable"])
    assert all(f"{u['address']:#x}" in row and u["what"] in row
               for u, row in zip(doc["unreadable"], rows))
    explained = run(*args, "--json", "explain", "0x8000000")
    assert explained.returncode == 1
    assert {f["kind"] for f in json.loads(explained.stdout)["explain"]["findings"]} == {"unreadable"}
    script = ("from drgn.commands import run_command\n"
              "print('STATUS', run_command(prog, 'memhp check'))\n")
    memhp = subprocess.run(["drgn", "-q", *args, "-e", script], capture_output=True, text=True,
                           timeout=300)
    assert "STATUS 1" in memhp.stdout and "unreadable" in memhp.stdout, memhp.stderr


def test_parse_location():
    assert cli.parse_location("4096", 12) == 4096
    assert cli.parse_location("0X1000", 12) == 1
    for bad in ("-", "-5", "0x", "1" * 30, "0x" + "f" * 17):
        with pytest.raises(cli.Unanalysable):
            cli.parse_location(bad, 12)



def serve_once(path, greeting: bytes) -> threading.Thread:
    """A unix socket that accepts one client and sends ``greeting`` (or
    nothing), like a QMP socket whose single slot is taken."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.sendall(greeting)
        conn.recv(1)
        conn.close()
        server.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("greeting,message", [(b"", "no QMP greeting within 0.5 s"),
                                              (b"login: ", "is not a QMP socket")])
def test_a_silent_or_foreign_qmp_socket_is_refused(tmp_path, greeting, message):
    path = tmp_path / "qmp.sock"
    serve_once(path, greeting)
    with pytest.raises(cli.Unanalysable, match=message):
        cli.wait_for_qmp_greeting(str(path), timeout=0.5)


def test_a_missing_qmp_socket_is_exit_2(tmp_path):
    assert_one_line_error(run("--qemu", str(tmp_path / "absent.sock"), "check"),
                          "cannot open", "absent.sock")
