"""A simulator of Koupleless bases (arklet) so vkprovider can be tested and benchmarked without JVMs.

Layout: ``arklet`` is the per-base biz state machine (transport-free), ``http_transport`` serves it the way
Netty arklet does and sends heartbeats, ``simulator`` runs many bases in one process, ``control`` is the HTTP
control API, ``cli`` the ``vkprovider sim`` command line. Only the CLI imports this package.

The modules are layers, each importing only those below it (an import-linter contract in pyproject.toml keeps it):
``cli`` > ``control`` > ``simulator`` > ``http_transport`` | ``mqtt_transport`` > ``arklet``. The control API is
the program's, not the simulator's: ``run_sim`` serves it over the ``Simulator`` it runs (a test that wants it
calls ``control.start_control_api`` itself), so the simulator never imports the API that drives it.
"""

from vkprovider.sim.arklet import ArkletBehaviour, MultiVersionMode, SimArklet
from vkprovider.sim.cli import add_arguments, run_sim
from vkprovider.sim.simulator import SimBase, SimConfig, Simulator

__all__ = [
    "ArkletBehaviour",
    "MultiVersionMode",
    "SimArklet",
    "SimBase",
    "SimConfig",
    "Simulator",
    "add_arguments",
    "run_sim",
]
