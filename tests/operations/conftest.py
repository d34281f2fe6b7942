"""Fixtures of the operations tests: Prometheus and promtool (Debian's package), helm, a real Prometheus server.

``prometheus_bins`` installs Debian's ``prometheus`` package when ``prometheus`` or ``promtool`` is missing (as
``make observe-deps`` does; the package's systemd service does not start here, the tests start their own) and
fails loudly when it cannot: a rules test is never skipped silently. ``prometheus`` is a factory of real
Prometheus servers on 127.0.0.1, each in a temp dir that is removed, with the process, when the test ends,
failed or not. The integration fixtures (``provider_factory``, ``sim_factory``, ``admin`` ...) are the
integration tier's own, imported from tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.conftest import (  # noqa: F401 - fixtures, registered by being imported here
    admin,
    broker,
    env_name,
    provider_factory,
    sim_factory,
    tunnel,
)
from tests.integration.harness import LOGS, free_port
from tests.operations.common import REPO


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next((str(p) for p in (Path("/usr/bin") / binary,) if p.exists()), None)


@pytest.fixture(scope="session")
def prometheus_bins() -> dict[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installing Debian's prometheus package when one is missing."""
    found = {name: _find(name) for name in ("prometheus", "promtool")}
    if not all(found.values()):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                pytest.fail(f"cannot install prometheus ({' '.join(command)}): {done.stderr[-2000:]}", pytrace=False)
        if Path("/run/systemd/system").is_dir():  # the package's own service would take :9090 (make run's metrics)
            subprocess.run(["systemctl", "disable", "--now", "prometheus"], capture_output=True, timeout=60,
                           check=False)
        found = {name: _find(name) for name in ("prometheus", "promtool")}
        if not all(found.values()):
            pytest.fail(f"the prometheus package is installed but binaries are missing: {found}", pytrace=False)
    return {name: str(path) for name, path in found.items()}


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """helm from hack/chart/tools.sh (`make chart-tools`; it may `go install` it first)."""
    proc = subprocess.run([str(REPO / "hack" / "chart" / "tools.sh")], capture_output=True, text=True,
                          timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"installing helm failed (hack/chart/tools.sh):\n{proc.stderr[-3000:]}", pytrace=False)
    tools = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    return tools["helm"]


class PrometheusServer:
    """One `prometheus` process on 127.0.0.1 with its own config, rules and TSDB in a temp dir."""

    def __init__(self, binary: str, scrape: list[dict[str, Any]], rules: dict[str, Any] | None,
                 interval: str = "1s") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vkp-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {"global": {"scrape_interval": interval, "evaluation_interval": interval,
                                             "scrape_timeout": interval},
                                  "scrape_configs": scrape}
        if rules is not None:
            (self.dir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
            config["rule_files"] = [str(self.dir / "rules.yaml")]
        self.config = self.dir / "prometheus.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.binary = binary
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"prometheus-{os.getpid()}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError):
                import urllib.request

                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready within {timeout_s}s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s), then remove the temp dir: nothing is left behind."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def api(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body.get("status") == "success", body
        return body["data"]


@pytest.fixture
def prometheus(prometheus_bins: dict[str, str]) -> Iterator[Any]:
    """A factory: ``prometheus(scrape_configs, rules)`` starts a server; every one is stopped and removed after."""
    started: list[PrometheusServer] = []

    def start(scrape: list[dict[str, Any]], rules: dict[str, Any] | None = None) -> PrometheusServer:
        server = PrometheusServer(prometheus_bins["prometheus"], scrape, rules)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
