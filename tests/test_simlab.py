"""The simulated lab is built from racks of machines and served, also from its command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from rackwatch.simlab import Behaviour, Lab, SimMachine, SimRack, uniform_lab


def test_uniform_lab_names_racks_and_machines_for_benchmarks() -> None:
    """uniform_lab builds racks rack-00.. of machines rack-00-m000.., every agent alike."""
    lab = uniform_lab(3, 4, Behaviour.FAIL)
    assert lab.rack_names == ["rack-00", "rack-01", "rack-02"]
    assert list(lab.agents)[:2] == ["rack-00-m000", "rack-00-m001"]
    assert {agent.behaviour for agent in lab.agents.values()} == {Behaviour.FAIL}


def test_a_lab_refuses_duplicate_hostnames() -> None:
    """Two machines with one hostname would make the lab ambiguous."""
    with pytest.raises(ValueError, match="appears twice"):
        Lab([SimRack("a", [SimMachine("m")]), SimRack("b", [SimMachine("m")])])


def test_the_command_line_serves_a_lab_until_sigterm() -> None:
    """python -m rackwatch.simlab prints its URLs as one JSON line and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "rackwatch.simlab", "--racks", "2", "--per-rack", "3"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert line["maas_url"] == f"http://127.0.0.1:{line['port']}/MAAS/"
    assert line["racks"] == ["rack-00", "rack-01"]
