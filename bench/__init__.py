"""vkprovider benchmarks (``make bench``): real control plane, simulator and vkprovider as separate processes.

Kept outside the package: nothing in vkprovider imports it, and it never runs in ``make test``.

Layout: ``run`` is the command line (``python -m bench.run``) and the order of a run; ``scenarios/`` holds one module
per scenario, each a ``run(bench)`` returning its result; ``context`` is a run's shared state (the cluster,
vkprovider and the simulator as processes, what one scenario leaves for the next). What the scenarios share:
``watch`` (clocks over the cluster's watch events, waits), ``objects`` (the Deployments and nodes they create),
``metrics`` (percentiles and what /metrics counted, read with prometheus-client's parser via tests/promtext.py),
``cores`` and ``procstat`` (every process's CPU, RSS and run-queue wait, --split-cores pinning), ``profile``
(--profile), ``report`` (results/<scenario>.json, the table) and ``charts`` (results/<scenario>.png). ``micro`` is
``make bench-micro``.
"""
