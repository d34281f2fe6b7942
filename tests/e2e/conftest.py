"""Fixtures for the real-base end-to-end tests: the integration tier's fixtures, re-exported.

`kube_cluster` and `namespace` come from tests/conftest.py; the real bases (JVMs) are in test_java_base.py.
"""

from tests.integration.conftest import admin, env_name, provider_factory, sim_factory  # noqa: F401
