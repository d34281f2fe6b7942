"""The benchmark's scenarios, one module each, and the order they run in.

Why it exists: the scenarios build on each other (register starts what density, burst, rollout, steady and churn
use; churn updates the rollout's Deployments), so asking for one brings in what it needs, and they always run in
one order: limit first (its floors are read by burst and rollout), replicas last (it clears the others away). Each
module's ``run(bench)`` returns its ``Result``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.context import Bench
from bench.report import Result
from bench.scenarios import burst, churn, density, limit, register, replicas, rollout, steady

SCENARIOS: dict[str, Callable[[Bench], Awaitable[Result]]] = {
    "limit": limit.run, "register": register.run, "density": density.run, "burst": burst.run,
    "rollout": rollout.run, "steady": steady.run, "churn": churn.run, "replicas": replicas.run,
}  # in the order they run
NEEDS = {"density": ["register"], "burst": ["register"], "rollout": ["register"], "steady": ["register"],
         "churn": ["register", "rollout"]}


def plan(wanted: list[str]) -> list[str]:
    """The scenarios to run for ``wanted``, with what they need, in their order."""
    return [s for s in SCENARIOS if s in wanted or any(s in NEEDS.get(w, []) for w in wanted)]
