"""``drgn-hotplug lsmem`` against the real lsmem, byte for byte.

Each case boots one bed guest with the userland disk of vmcores/userland.py
(bookworm's util-linux 2.38.1), plays a bed scenario, runs the guest's own
``lsmem`` with every option set, takes a QMP dump at that moment (lsmem is
run again after it: nothing changed) and renders ``drgn-hotplug lsmem`` with
the same options from the dump, read in-process once (and once through the
command line). The hotplug guests then get a DIMM with one block onlined to
ZONE_NORMAL and the others left offline, and the comparison is made again.
The x86_64 6.1 orphan guest also answers from the inside (``drgn-hotplug
lsmem`` on its /proc/kcore) and over QMP (``--qemu``).

Every other cell of the bed (each series, both arches) is held to its
guest's own sysfs (truth.json): the blocks lsmem would list, their state,
node link and valid_zones.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from test_live_guest import CHECKOUT, InGuest, wheel  # noqa: F401 (wheel is a fixture)
import vmcores
from vmcores import packages, userland
from vmcores.cells import matrix
from vmcores.scenarios import DIMM_MIB, SCENARIOS, LiveGuest

pytest.importorskip("drgn")
pytestmark = [pytest.mark.bed, pytest.mark.slow, pytest.mark.live]

from drgn_hotplug import cli, lsmem  # noqa: E402 (after the drgn check)

# The option sets the issue names, then a few more of lsmem's.
OPTION_SETS = ("", "-a", "-b", "-n", "-o RANGE,SIZE,STATE,NODE,ZONES", "-J", "-J -a", "--split=STATE",
               "--summary=only", "-P", "-r -o +NODE,ZONES", "--output-all -a", "-b -J -o SIZE,NODE,REMOVABLE")
CLI_OPTIONS = "-o RANGE,SIZE,STATE,NODE,ZONES"

# Every scenario on x86_64 6.1 and arm64 6.1; x86_64 5.10 for the kernels
# before v5.18, whose online blocks' zone comes from their pages.
CASES = ([("x86_64", "6.1", s) for s in SCENARIOS] + [("arm64", "6.1", s) for s in SCENARIOS
                                                     if "arm64" in SCENARIOS[s].arches]
         + [("x86_64", "5.10", "hotplug")])
# The cells whose guests' sysfs the model's sysfs view must equal: the
# classic scenarios and the offline flavour (offline blocks).
CELLS = [c for c in matrix() if c[2] in SCENARIOS or c[2] == "offline"]


def guest_lsmem(in_guest: InGuest) -> Dict[str, str]:
    """The guest's lsmem output for each option set, from one shell round trip."""
    script = "".join(f"echo '@@{i}'; {userland.in_userland('lsmem ' + options)}; echo \"@@rc=$?\"\n"
                     for i, options in enumerate(OPTION_SETS))
    out = in_guest.guest.run(script, 300)
    runs = re.findall(r"^@@(\d+)\n(.*?)@@rc=(\d+)\n", out, re.M | re.S)
    assert [int(i) for i, _, _ in runs] == list(range(len(OPTION_SETS))), out
    assert {rc for _, _, rc in runs} == {"0"}, out
    return {OPTION_SETS[int(i)]: text for i, text, _ in runs}


def tool_lsmem(dump: Path, vmlinux: Path) -> Dict[str, str]:
    """drgn-hotplug lsmem on the dump for each option set (one read of the model)."""
    logging.getLogger("drgn").setLevel(logging.ERROR)
    prog, _ = cli.open_target(core=str(dump), symbols=[str(vmlinux)])
    model = cli.read_model_checked(prog)
    return {options: lsmem.render_model(model, lsmem.parse_options(options.split()))
            for options in OPTION_SETS}


def run_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "drgn_hotplug.cli", *args], capture_output=True,
                          text=True, cwd=CHECKOUT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def compare_at_one_moment(in_guest: InGuest, dump: Path, label: str) -> Dict[str, str]:
    """Guest lsmem and drgn-hotplug lsmem on a dump of the same moment: equal for every option set."""
    real = guest_lsmem(in_guest)
    in_guest.guest.dump(dump)
    assert guest_lsmem(in_guest)[""] == real[""], "the guest's memory changed during the dump"
    ours = tool_lsmem(dump, in_guest.kernel.vmlinux)
    for options in OPTION_SETS:  # the README's transcripts (pytest -rP)
        print(f"--- {label}: lsmem {options}\n{real[options]}")
    assert {o: ours[o] for o in OPTION_SETS if ours[o] != real[o]} == {}
    command = ("-c", str(dump), "-s", str(in_guest.kernel.vmlinux), "lsmem", *CLI_OPTIONS.split())
    printed = run_cli(*command)
    print(f"--- {label}: drgn-hotplug {' '.join(command)}\n{printed}")
    assert printed == real[CLI_OPTIONS]
    return real


@pytest.fixture(scope="module")
def disks(wheel):  # noqa: F811 (the imported fixture)
    """The userland disk of each kernel, made (or found) once: finding it
    asks apt about every package."""
    made: Dict[str, Path] = {}

    def disk(k: packages.Kernel) -> Path:
        if k.abi not in made:
            made[k.abi] = userland.build_userland(k, wheel)
        return made[k.abi]
    return disk


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def case_guest(request, disks, tmp_path_factory):
    arch, series, scenario = request.param
    k = packages.fetch_kernel(arch, series)
    spec = userland.live_guest_spec(k, scenario, disks(k), tmp_path_factory.mktemp("initrd"))
    with LiveGuest(spec, k.meta, scenario) as guest:
        SCENARIOS[scenario].play(guest)
        yield InGuest(guest, k), scenario


def test_lsmem_equals_the_guests_lsmem(case_guest, tmp_path):
    in_guest, scenario = case_guest
    real = compare_at_one_moment(in_guest, tmp_path / "vmcore.elf", scenario)
    if scenario == "hotplug":
        # Offline blocks, and a block in ZONE_NORMAL: a DIMM on node 1 with
        # its first block onlined to the kernel zone and the rest left offline.
        added = in_guest.guest.hot_add(1, DIMM_MIB[in_guest.kernel.arch])
        in_guest.guest.online(added["blocks"][0], "online_kernel")
        after = compare_at_one_moment(in_guest, tmp_path / "vmcore-offline.elf", "hotplug+offline")
        assert " offline " in after[""]
        assert "Normal" not in real[CLI_OPTIONS] and "Normal" in after[CLI_OPTIONS]
    if (in_guest.kernel.arch, in_guest.kernel.series, scenario) == ("x86_64", "6.1", "orphan"):
        # The running kernel (inside the guest, /proc/kcore) and the QEMU
        # guest (--qemu on the host) give the guest's lsmem output too.
        inside, rc = in_guest.run(f"drgn-hotplug lsmem {CLI_OPTIONS}")
        assert (rc, inside) == (0, real[CLI_OPTIONS])
        assert run_cli("--qemu", str(in_guest.guest.drgn_qmp_socket), "-s", str(in_guest.kernel.vmlinux),
                       "lsmem", "-a") == real["-a"]


@pytest.mark.parametrize("arch, kernel, scenario", CELLS, ids=["-".join(c) for c in CELLS])
def test_sysfs_view_equals_the_guests_sysfs(arch, kernel, scenario):
    cell = vmcores.build_cell(arch, kernel, scenario)
    prog, _ = cli.open_target(core=str(cell.dir / "vmcore.kdump"), symbols=[str(cell.vmlinux)])
    memory = lsmem.sysfs_memory(cli.read_model_checked(prog))
    seen = [(b.index, b.state, None if b.node == -1 else b.node, b.zones) for b in memory.blocks]
    assert seen == [(b["block"], b["state"], b["node"], lsmem.lsmem_zone_names(b["valid_zones"] or ""))
                    for b in cell.truth["memory_blocks"]]
    assert memory.block_size == cell.truth["block_size_bytes"]
