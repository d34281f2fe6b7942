"""Probes and preStop hooks of module pods, run as kubelet runs them (``core.probe`` holds the rules).

- ``check.Prober``: one check (HTTP GET, TCP connect, gRPC health) against the pod IP;
- ``manager.ProbeManager``: the schedule of every probed container, bounded concurrency, ``on_change``;
- ``lifecycle.run_pre_stop``: a container's preStop hook before its biz is uninstalled.

This package may use asyncio, aiohttp and ``vkprovider.core``; it knows nothing of the Kubernetes API or the
controllers (an import-linter contract keeps it so): the module controller feeds it and writes what it says.
"""

from vkprovider.probes.check import Prober
from vkprovider.probes.lifecycle import PreStopResult, run_pre_stop
from vkprovider.probes.manager import ContainerInput, ProbeManager

__all__ = ["ContainerInput", "PreStopResult", "ProbeManager", "Prober", "run_pre_stop"]
