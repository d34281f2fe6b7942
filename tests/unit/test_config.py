"""Wrong settings end vkprovider with one line naming the variable, the value and what is accepted (exit 2).

Each case is checked twice: ``load_settings`` gives the exact line, and ``vkprovider run`` as a process prints
only that line (no traceback) and exits with 2.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vkprovider.config import ConfigError, load_settings, module_settings
from vkprovider.core.staticbizs import BizPattern

CASES = [
    ({"HTTP_TUNNEL_LISTEN_PORT": "abc"}, "invalid HTTP_TUNNEL_LISTEN_PORT='abc': not an integer"),
    ({"HTTP_TUNNEL_LISTEN_PORT": "70000"}, "invalid HTTP_TUNNEL_LISTEN_PORT='70000': must be a port number"),
    ({"VKP_METRICS_PORT": "-1"}, "invalid VKP_METRICS_PORT='-1': must be a port number"),
    ({"MQTT_PORT": "1883.5"}, "invalid MQTT_PORT='1883.5': not an integer"),
    ({"VKP_ENV_TAINT": "maybe"}, "invalid VKP_ENV_TAINT='maybe': not a boolean"),
    ({"ENABLE_MQTT_TUNNEL": "sometimes"}, "invalid ENABLE_MQTT_TUNNEL='sometimes': not a boolean"),
    ({"VNODE_WORKER_NUM": "0"}, "invalid VNODE_WORKER_NUM='0': must be at least 1"),
    ({"VKP_BASE_METRICS_MAX_AGE": "0"}, "invalid VKP_BASE_METRICS_MAX_AGE='0': Input should be greater than 0"),
    ({"ENV": "Dev_1"}, "invalid ENV='Dev_1': must be a DNS label"),
    ({"ENV": "a.b"}, "invalid ENV='a.b': must be a DNS label"),
    ({"VKP_LOG_FORMAT": "xml"}, "invalid VKP_LOG_FORMAT='xml': not one of the accepted values ('text' or 'json')"),
    ({"VKP_LOG_LEVEL": "LOUD"}, "invalid VKP_LOG_LEVEL='LOUD': not one of the accepted values"),
    ({"VKP_BIZ_URL_SCHEMES": "ftp"}, "invalid VKP_BIZ_URL_SCHEMES='ftp': unknown scheme(s) ftp"),
    ({"VKP_BASE_NETWORKS": "10.0.0.0/33"}, "invalid VKP_BASE_NETWORKS='10.0.0.0/33': '10.0.0.0/33' is not a CIDR"),
    ({"VKP_BIZ_NAMESPACE_POLICY": "team-a"}, "invalid VKP_BIZ_NAMESPACE_POLICY='team-a': rule 'team-a'"),
    ({"VKP_STATIC_BIZS": "a,:1"}, "invalid VKP_STATIC_BIZS='a,:1': static biz ':1'"),
    ({"VKP_LEASE_DURATION": "10", "VKP_LEASE_RENEW_INTERVAL": "10"},
     "VKP_LEASE_RENEW_INTERVAL < VKP_LEASE_RENEW_DEADLINE < VKP_LEASE_DURATION must hold"),
    ({"VKP_NODE_MAX_PODS_BY_BASE": "small"},
     "invalid VKP_NODE_MAX_PODS_BY_BASE='small': rule 'small' is not name=N or name:version=N"),
    ({"VKP_NODE_MAX_PODS_BY_BASE": "small:1.0.0=0"},
     "invalid VKP_NODE_MAX_PODS_BY_BASE='small:1.0.0=0': rule 'small:1.0.0=0': '0' is not a whole number 1..65535"),
    ({"VKP_NODE_MAX_PODS_BY_BASE": "*=5"}, "invalid VKP_NODE_MAX_PODS_BY_BASE='*=5': rule '*=5': '*' is not a base"),
    ({"VKP_NODE_MAX_PODS": "70000"}, "invalid VKP_NODE_MAX_PODS='70000': Input should be less than or equal to 65535"),
    ({"VKP_METASPACE_PRESSURE_HIGH": "1.5"},
     "invalid VKP_METASPACE_PRESSURE_HIGH='1.5': Input should be less than or equal to 1"),
    ({"VKP_METASPACE_PRESSURE_LOW": "0"}, "invalid VKP_METASPACE_PRESSURE_LOW='0': Input should be greater than 0"),
    ({"VKP_METASPACE_PRESSURE_HIGH": "0.7"},
     "VKP_METASPACE_PRESSURE_LOW < VKP_METASPACE_PRESSURE_HIGH must hold (got 0.8 / 0.7)"),
    ({"VKP_METASPACE_PRESSURE_HIGH": "0.85", "VKP_METASPACE_PRESSURE_LOW": "0.85"},
     "VKP_METASPACE_PRESSURE_LOW < VKP_METASPACE_PRESSURE_HIGH must hold (got 0.85 / 0.85)"),
    ({"ENABLE_HTTP_TUNNEL": "false"}, "no tunnel enabled"),
    ({"ENABLE_MQTT_TUNNEL": "true", "MQTT_PASSWORD": "x"}, "MQTT_PASSWORD would be sent without TLS"),
]


@pytest.mark.parametrize(("environ", "line"), CASES)
def test_each_bad_setting_is_one_clear_line(environ: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ)
    assert line in str(err.value) and "\n" not in str(err.value)


def test_defaults_are_accepted_and_nothing_is_clamped() -> None:
    settings = load_settings({})
    assert (settings.env, settings.http_tunnel_port, settings.workers) == ("dev", 7777, 32)
    assert settings.url_schemes == frozenset({"https", "http"})  # file: only when enabled
    assert settings.node_lease_renew_deadline_s == 15.0
    assert load_settings({"VNODE_WORKER_NUM": "1"}).workers == 1
    assert module_settings(load_settings({})).static_bizs == ()
    assert module_settings(load_settings({"VKP_STATIC_BIZS": "a, b:1.0"})).static_bizs == (
        BizPattern("a"), BizPattern("b", "1.0"))
    assert (settings.node_max_pods, settings.max_pods_by_base) == (200, {})
    assert load_settings({"VKP_NODE_MAX_PODS_BY_BASE": "small:1.0.0=2; big=400"}).max_pods_by_base == {
        ("small", "1.0.0"): 2, ("big", None): 400}
    assert (settings.metaspace_pressure_high, settings.metaspace_pressure_low) == (0.9, 0.8)


def _run(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    return subprocess.run([sys.executable, "-m", "vkprovider", "run"], env={**clean, **env}, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("environ", "line"), [CASES[0], CASES[4], CASES[6], CASES[9]])
def test_the_process_prints_the_line_and_exits_2(environ: dict[str, str], line: str) -> None:
    proc = _run(environ)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"vkprovider: {proc.stderr.strip().split(': ', 1)[1]}"]
    assert line in proc.stderr and "Traceback" not in proc.stderr


def test_no_kubeconfig_outside_a_cluster(tmp_path: Path) -> None:
    proc = _run({})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no KUBECONFIG set and not running in a cluster" in proc.stderr


def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    proc = _run({"KUBECONFIG": str(tmp_path / "missing.kubeconfig")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid KUBECONFIG=" in proc.stderr and "cannot read it" in proc.stderr


def test_a_port_already_in_use(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _run({"KUBECONFIG": str(kubeconfig), "VKP_PROBE_HOST": "127.0.0.1", "VKP_PROBE_PORT": str(port)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port} (VKP_PROBE_PORT)" in proc.stderr
