"""vkprovider benchmarks (``make bench``): real control plane, simulator and vkprovider as separate processes.

Kept outside the package: nothing in vkprovider imports it, and it never runs in ``make test``.
"""
