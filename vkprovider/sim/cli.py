"""``vkprovider sim``: the command line of the base simulator.

``add_arguments`` fills the sub-command's parser; ``run_sim`` runs until SIGINT/SIGTERM. Once every arklet
port listens (over MQTT: once the broker connection is up and every base has subscribed) it prints exactly one
line, ``SIM READY control=<port> bases=<n>``, so scripts can wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys

from vkprovider.sim.arklet import ArkletBehaviour, MultiVersionMode
from vkprovider.sim.control import start_control_api
from vkprovider.sim.simulator import SimConfig, Simulator, base_address

log = logging.getLogger(__name__)
_MB = 1024 * 1024


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _ipv4(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    if address.version != 4:
        raise argparse.ArgumentTypeError(f"{text} is not an IPv4 address")
    return text


def _name_version(text: str) -> tuple[str, str]:
    name, _, version = text.partition(":")
    if not name.strip() or not version.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:VERSION")
    return name.strip(), version.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser`` (the ``vkprovider sim`` sub-command)."""
    add = parser.add_argument
    add("--bases", type=int, default=1, help="number of simulated bases (default 1)")
    add("--endpoint", default="http://127.0.0.1:7777", help="heartbeat endpoint (vkprovider's HTTP tunnel)")
    add("--heartbeat-interval", type=_non_negative, default=12.0, help="seconds between heartbeats (12)")
    add(
        "--heartbeat-spread",
        type=_non_negative,
        default=1.0,
        help="first heartbeats are spread over this many seconds (1)",
    )
    add("--host", default="127.0.0.1", help="address the arklet servers and the control API bind to")
    add("--base-ips", "--loopback-ips", dest="base_ips", type=_ipv4, default=None, metavar="A.B.C.D",
        help="give each base its own address: base i is this address plus i (its arklet and web server listen "
             "there, its heartbeats come from there); 127.0.0.0/8 needs no set-up, a private or benchmarking "
             "range (198.18.0.0/15) must be on an interface; default: every base is --host")
    add("--web-port", type=int, default=None,
        help="each base serves its ACTIVATED bizs' HTTP paths (/<biz>/version, /<biz>/health) on this port "
             "(8080 with --base-ips; without it base i uses port+i; 0: ephemeral); default: no web server")
    add(
        "--port-start",
        type=int,
        default=None,
        help="first arklet port (base i gets port-start+i); ephemeral ports when unset",
    )
    add("--base-name", default="base")
    add("--base-version", default="1.0.0")
    add("--cluster-name", default="default")
    add("--identity-prefix", default="sim", help="identities are <prefix>-0000, <prefix>-0001, ...")
    add("--zone", default="", help="comma list of zones, assigned round-robin (topology.kubernetes.io/zone)")
    add("--stack", default=None, help="value of the base.koupleless.io/stack label the bases ask for")
    add("--max-pods", default=None,
        help="value of the base.koupleless.io/max-pods label the bases send (their own pod capacity)")
    add("--token", default=None, help="Bearer token sent with heartbeats (a token shared by every base)")
    add("--token-secret", default=None,
        help="each base sends its own token, derived from this secret (vkprovider's VKP_HEARTBEAT_SECRET)")
    add("--env", default="default", help="the bases' runtime env (used by the MQTT transport's topics)")
    add("--tunnel", choices=["http", "mqtt"], default="http", help="how bases talk to vkprovider")
    add("--mqtt-broker", default="127.0.0.1", help="MQTT broker host (--tunnel mqtt)")
    add("--mqtt-port", type=int, default=1883, help="MQTT broker port (1883)")
    add("--mqtt-username", default=None, help="MQTT user name")
    add("--mqtt-password", default=None, help="MQTT password")
    add("--mqtt-ca", default=None, help="CA file: connect with TLS and verify the broker's certificate")
    add("--mqtt-client-prefix", default="koupleless", help="MQTT client id prefix (koupleless)")
    add("--control-port", type=int, default=7780, help="control API port (0 = ephemeral; printed)")
    add("--install-latency", type=_non_negative, default=0.05, help="seconds an install takes (0.05)")
    add("--download-latency", type=_non_negative, default=0.0,
        help="seconds an install fetches its jar before the biz shows in queryAllBiz (0)")
    add("--uninstall-latency", type=_non_negative, default=0.01, help="seconds an uninstall takes (0.01)")
    add("--failure-rate", type=_fraction, default=0.0, help="fraction of installs that fail (0..1)")
    add(
        "--fail-biz",
        action="append",
        default=[],
        metavar="NAME[:VERSION]",
        help="installs of this biz (or of this version of it) always fail (repeatable)",
    )
    add(
        "--multi-version-mode",
        choices=[m.value for m in MultiVersionMode],
        default="activate-new",
        help="same name, new version: activate-new (old one DEACTIVATED), keep-old, "
        "multi (both ACTIVATED), or exclusive (a second version fails to start, like a web biz)",
    )
    add("--query-latency", type=_non_negative, default=0.0, help="seconds a queryAllBiz answer takes (0)")
    add(
        "--fail-uninstall",
        action="append",
        default=[],
        metavar="NAME",
        help="uninstalls of this biz always fail (repeatable)",
    )
    add("--malformed-biz-list", action="store_true",
        help="queryAllBiz lists one more entry, without a bizVersion (an unparseable list)")
    add("--no-batch-install", action="store_true",
        help="no batch installs, like arklet < 2.1.7 over HTTP (batchInstallBiz: CMD_NOT_FOUND) and < 1.4.1 over "
             "MQTT (a baseline is installed one by one and answered with the biz list)")
    add("--no-model-version-fence", action="store_true",
        help="ignore bizModelVersion like arklet < 1.4.3 (by default an uninstall carrying another pod's "
             "bizModelVersion is refused as expired, like arklet 1.4.3)")
    add("--cpu-count", type=int, default=4, help="cpu count health reports")
    add("--metaspace-max-mb", type=int, default=512, help="'java max metaspace' health reports, in MiB")
    add("--metaspace-committed-mb", type=int, default=96)
    add("--metaspace-used-mb", type=int, default=90)
    add("--seed", type=int, default=None, help="random seed (jitter, failure rate)")
    add("--static-biz", type=_name_version, action="append", default=[], metavar="NAME:VERSION",
        help="a biz each base starts with (static merge deployment: installed at each JVM start, before the first "
             "heartbeat, not by vkprovider); repeatable")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    behaviour = ArkletBehaviour(
        install_latency_s=args.install_latency,
        download_latency_s=args.download_latency,
        uninstall_latency_s=args.uninstall_latency,
        failure_rate=args.failure_rate,
        fail_bizs=frozenset(args.fail_biz),
        multi_version_mode=MultiVersionMode(args.multi_version_mode),
        cpu_count=args.cpu_count,
        metaspace_max_bytes=args.metaspace_max_mb * _MB,
        metaspace_committed_bytes=args.metaspace_committed_mb * _MB,
        metaspace_used_bytes=args.metaspace_used_mb * _MB,
        master_biz_name=args.base_name,
        master_biz_version=args.base_version,
        query_latency_s=args.query_latency,
        fail_uninstall_bizs=frozenset(args.fail_uninstall),
        malformed_biz_list=args.malformed_biz_list,
        model_version_fence=not args.no_model_version_fence,
        batch_install=not args.no_batch_install,
    )
    return SimConfig(
        bases=args.bases,
        endpoint=args.endpoint,
        heartbeat_interval_s=args.heartbeat_interval,
        heartbeat_first_spread_s=args.heartbeat_spread,
        host=args.host,
        port_start=args.port_start,
        base_name=args.base_name,
        base_version=args.base_version,
        cluster_name=args.cluster_name,
        identity_prefix=args.identity_prefix,
        zones=tuple(z.strip() for z in args.zone.split(",") if z.strip()),
        stack=args.stack,
        max_pods=args.max_pods,
        token=args.token,
        token_secret=args.token_secret,
        env=args.env,
        tunnel=args.tunnel,
        mqtt_broker=args.mqtt_broker,
        mqtt_port=args.mqtt_port,
        mqtt_username=args.mqtt_username,
        mqtt_password=args.mqtt_password,
        mqtt_ca_path=args.mqtt_ca,
        mqtt_client_prefix=args.mqtt_client_prefix,
        base_ips=args.base_ips,
        web_port=args.web_port if args.web_port is not None else (8080 if args.base_ips else None),
        seed=args.seed,
        behaviour=behaviour,
        static_bizs=tuple(args.static_biz),
    )


def _raise_open_file_limit(bases: int) -> None:
    """Each base holds a listening socket plus connections: lift the soft fd limit to the hard one."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < bases * 4 + 64:
        log.warning("open file limit %d is low for %d bases", soft, bases)


async def run_sim(args: argparse.Namespace) -> None:
    """Run the simulator until SIGINT/SIGTERM."""
    config = config_from_args(args)
    _raise_open_file_limit(config.bases)
    try:
        sim = Simulator(config)
        if config.base_ips:
            base_address(config, config.bases - 1)
    except ValueError as exc:
        sys.stderr.write(f"vkprovider sim: {exc}\n")
        raise SystemExit(2) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        control, control_port = await start_control_api(sim, config.host, args.control_port)
        try:
            sys.stdout.write(f"SIM READY control={control_port} bases={len(sim.bases)}\n")
            sys.stdout.flush()
            await stop.wait()
        finally:
            await control.cleanup()
    finally:
        await sim.stop()
