"""What a real base (koupleless 2.1.6 on sofa-ark 3.1.4, tests/e2e/java) does with installBiz ``args`` and ``envs``,
and with ``bizModelVersion`` (arklet 1.4.3's fence, which 2.1.6 predates), sent through vkprovider's own HTTP tunnel
and wire bodies (vkprovider/core/wire.py). No Kubernetes: the tunnel calls the base's arklet directly.

biz1 serves ``GET /biz1/config?names=...``: the arguments its ``main`` got, and for each name what the biz sees as
an environment variable, a system property and a Spring property. The findings are docs/protocol.md §B.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.test_java_base import BaseJvm, jar_url, java_jars  # noqa: F401 - java_jars is a fixture
from tests.helpers import figure
from tests.integration.harness import free_port
from vkprovider.config import Settings
from vkprovider.core.model import BaseHeartbeat, BaseMetadata, BizSpec, CommandOutcome
from vkprovider.tunnels.http_tunnel import HttpTunnel

pytestmark = pytest.mark.e2e

NAMES = "VKP_COLOR,vkp.shape,vkp.greeting,BIZ_VERSION"


@pytest.fixture(scope="module")
async def base(java_jars: Path) -> AsyncIterator[BaseJvm]:  # noqa: F811 - the fixture imported above
    # nobody listens on the heartbeat endpoint: the base logs its failed heartbeats and serves arklet anyway
    jvm = BaseJvm("cfg-base", "cluster-cfg", f"http://127.0.0.1:{free_port()}")
    jvm.spawn()
    try:
        await jvm.wait_ready()
        yield jvm
    finally:
        jvm.kill()


def _heartbeat(jvm: BaseJvm) -> BaseHeartbeat:
    return BaseHeartbeat(BaseMetadata(jvm.identity, "base", "1.1.1", jvm.cluster), jvm.identity, "127.0.0.1",
                         jvm.arklet_port)


def _tunnel() -> HttpTunnel:
    return HttpTunnel(Settings(arklet_install_timeout_s=60.0, arklet_query_timeout_s=10.0))


async def _config(jvm: BaseJvm) -> dict[str, Any]:
    status, text = await jvm.get(f"/biz1/config?names={NAMES}")
    assert status == 200, text
    return dict(orjson.loads(text))


async def test_args_reach_main_and_envs_reach_nothing(base: BaseJvm) -> None:
    """2.1.6: ``args`` are biz1's main(String[]) arguments, verbatim and in order (Spring Boot reads ``--k=v`` as a
    property); ``envs`` are accepted and dropped (sofa-ark's MainMethodRunner: "TODO: add envs into the tenant of
    jdk"): no environment variable, system property or Spring property carries them."""
    tunnel, hb = _tunnel(), _heartbeat(base)
    spec = BizSpec("biz1", "0.0.1", jar_url("biz1-0.0.1-ark-biz.jar")).with_config(
        ["--vkp.greeting=hello world", "plain", "--dollar=$(NOT_EXPANDED)", ""],
        {"VKP_COLOR": "blue", "vkp.shape": "round", "BIZ_VERSION": "0.0.1"})
    result = await tunnel.install_biz(hb, spec, biz_model_version="uid-1")
    assert result.outcome is CommandOutcome.SUCCESS, result.message
    try:
        seen = await _config(base)
        assert seen["args"] == ["--vkp.greeting=hello world", "plain", "--dollar=$(NOT_EXPANDED)", ""]
        names = NAMES.split(",")
        assert seen["env"] == dict.fromkeys(names)  # System.getenv: none of the envs
        assert seen["systemProperties"] == dict.fromkeys(names)  # System.getProperty: none
        assert seen["spring"] == {**dict.fromkeys(names), "vkp.greeting": "hello world"}  # only the argument
    finally:
        assert (await tunnel.uninstall_biz(hb, "biz1", "0.0.1")).ok
    figure("e2e 2.1.6: installBiz args -> main(String[]) verbatim; envs -> dropped (not in getenv, system "
           "properties or the Spring Environment)")


async def test_without_args_main_gets_an_empty_array(base: BaseJvm) -> None:
    tunnel, hb = _tunnel(), _heartbeat(base)
    spec = BizSpec("biz1", "0.0.1", jar_url("biz1-0.0.1-ark-biz.jar"))
    assert (await tunnel.install_biz(hb, spec)).ok
    try:
        assert (await _config(base))["args"] == []
    finally:
        assert (await tunnel.uninstall_biz(hb, "biz1", "0.0.1")).ok


async def test_biz_model_version_is_ignored_by_2_1_6(base: BaseJvm) -> None:
    """arklet 2.1.6 predates the fence (1.4.3): a bizModelVersion is accepted on installBiz and uninstallBiz and
    changes nothing - an uninstall carrying another value still uninstalls (1.4.3 would answer EXPIRED)."""
    tunnel, hb = _tunnel(), _heartbeat(base)
    spec = BizSpec("biz1", "0.0.2", jar_url("biz1-0.0.2-ark-biz.jar"))
    installed = await tunnel.install_biz(hb, spec, biz_model_version="pod-uid-1")
    assert installed.outcome is CommandOutcome.SUCCESS, installed.message
    assert await base.bizs() == [("biz1", "0.0.2", "activated")]
    other = await tunnel.uninstall_biz(hb, "biz1", "0.0.2", biz_model_version="pod-uid-2")
    assert other.outcome is CommandOutcome.SUCCESS, other.message
    assert await base.bizs() == []
    # the batch form: 2.1.6 has no batchInstallBiz at all (CMD_NOT_FOUND), with or without bizModelVersion, and the
    # tunnel installs one by one instead
    batch = await tunnel.batch_install_biz(hb, [spec], biz_model_versions={spec.key: "pod-uid-3"})
    assert batch[spec.url].outcome is CommandOutcome.SUCCESS, batch[spec.url].message
    assert (await tunnel.uninstall_biz(hb, "biz1", "0.0.2", biz_model_version="pod-uid-4")).ok
    assert await base.bizs() == []
