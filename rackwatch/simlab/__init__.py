"""A simulated lab: a MAAS region and a Testflinger server with agents, on 127.0.0.1.

Tests, `rackwatch demo` and the benchmarks run rackwatch against it. A `Lab` is described as racks
of machines, each with a `Behaviour` for its Testflinger agent; `lab.serve()` serves both APIs on
one port. Run `python -m rackwatch.simlab --help` to serve one in its own process.
"""

from rackwatch.simlab.faults import Fault, FaultKind
from rackwatch.simlab.lab import (
    DEFAULT_MAAS_API_KEY,
    Behaviour,
    Lab,
    LabUrls,
    SimMachine,
    SimRack,
    demo_lab,
    uniform_lab,
)

__all__ = [
    "Lab",
    "SimRack",
    "SimMachine",
    "Behaviour",
    "Fault",
    "FaultKind",
    "LabUrls",
    "demo_lab",
    "uniform_lab",
    "DEFAULT_MAAS_API_KEY",
]
