"""The simulator's control API: lets tests and benchmarks in other processes inspect and disturb the bases.

Routes: ``GET /bases``, ``GET /stats``, ``POST /bases?count=N``, ``POST /bases/{identity}/stop`` (the JVM dies;
``?partition=true``: the network to it is cut, it keeps its bizs), ``POST /bases/{identity}/start``,
``POST /bases/{identity}/bizs`` (install an orphan biz directly),
``POST /bases/{identity}/deactivate`` and ``.../activate`` (graceful shutdown and back),
``POST /bases/{identity}/usage?cpu=F&heapMiB=N&metaspaceMiB=N`` (what its health says it uses from now on, each
optional: the busy fraction 0..1 of its CPUs, its used heap, its used Metaspace: memory pressure once vkprovider
next reads its health; a restart of the base keeps them),
``POST /bases/{identity}/hold-biz-lists`` and ``.../release-biz-lists?count=N`` (MQTT bases: queryAllBiz answers
are held back, then published late with their original publishTimestamp, the N oldest, the rest dropped),
``POST /bases/{identity}/bizs/{name}/health`` with ``{"status": 500, "delaySeconds": 0}`` (what the base's web
server answers on ``/<name>/health`` from now on; ``{"status": 200}`` makes it healthy again; ``GET`` reads it),
``POST /reset-stats``.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from vkprovider.sim.mqtt_transport import MqttBaseTransport
from vkprovider.sim.simulator import SimBase, Simulator
from vkprovider.sim.web import BizHealth

_SIM_KEY = web.AppKey("simulator", Simulator)
MAX_ADD_PER_CALL = 5000


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def _sim(request: web.Request) -> Simulator:
    return request.app[_SIM_KEY]


def _base_or_404(request: web.Request) -> SimBase:
    identity = request.match_info["identity"]
    base = _sim(request).bases.get(identity)
    if base is None:
        raise web.HTTPNotFound(
            text=orjson.dumps({"error": f"no base {identity}"}).decode(), content_type="application/json"
        )
    return base


async def _list_bases(request: web.Request) -> web.Response:
    return _json([base.describe() for base in _sim(request).bases.values()])


async def _stats(request: web.Request) -> web.Response:
    return _json(_sim(request).stats())


async def _add_bases(request: web.Request) -> web.Response:
    try:
        count = int(request.query.get("count", "1"))
    except ValueError:
        return _json({"error": "count must be an integer"}, status=400)
    if not 1 <= count <= MAX_ADD_PER_CALL:
        return _json({"error": f"count must be 1..{MAX_ADD_PER_CALL}"}, status=400)
    try:
        added = await _sim(request).add_bases(count)
    except ValueError as exc:  # past the end of --base-ips' range
        return _json({"error": str(exc)}, status=400)
    return _json([{"identity": b.identity, "port": b.port, "address": b.address, "webPort": b.web_port}
                  for b in added])


async def _stop_base(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    await base.stop(partition=request.query.get("partition") == "true")
    return _json({"identity": base.identity, "running": base.running})


async def _start_base(request: web.Request) -> web.Response:
    """Start the base's JVM; an optional body ``{"staticBizs": ["name:version", ...]}`` names the bizs it ships
    from this start on (without: those it shipped before)."""
    base = _base_or_404(request)
    raw = await request.read()
    static: tuple[tuple[str, str], ...] | None = None
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _json({"error": "body is not JSON"}, status=400)
        entries = body.get("staticBizs") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, str) and e.count(":") == 1
                                                    and all(e.split(":")) for e in entries):
            return _json({"error": "staticBizs must be a list of 'name:version'"}, status=400)
        static = tuple((e.split(":")[0], e.split(":")[1]) for e in entries)
    await base.start(static)
    return _json({"identity": base.identity, "running": base.running, "port": base.port})


async def _deactivate(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    await base.set_state("deactivated")
    return _json({"identity": base.identity, "state": "deactivated"})


async def _activate(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    await base.set_state("activated")
    return _json({"identity": base.identity, "state": "activated"})


async def _install_orphan(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    if not base.running:
        return _json({"error": f"base {base.identity} is stopped"}, status=409)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json({"error": "body is not JSON"}, status=400)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("bizName"), str)
        or not isinstance(body.get("bizVersion"), str)
    ):
        return _json({"error": "need bizName and bizVersion"}, status=400)
    url = body.get("bizUrl") or f"file:///tmp/{body['bizName']}-{body['bizVersion']}.jar"
    answer = await base.arklet.install_direct(body["bizName"], body["bizVersion"], str(url))
    return _json(answer)


async def _set_usage(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    try:
        cpu, heap_mib, metaspace_mib = (float(request.query[k]) if k in request.query else None
                                        for k in ("cpu", "heapMiB", "metaspaceMiB"))
    except ValueError:
        return _json({"error": "cpu, heapMiB and metaspaceMiB must be numbers"}, status=400)
    if cpu is not None and not 0.0 <= cpu <= 1.0:  # NaN fails every comparison
        return _json({"error": "cpu is the busy fraction of the base's CPUs: 0..1"}, status=400)
    for name, mib in (("heapMiB", heap_mib), ("metaspaceMiB", metaspace_mib)):
        if mib is not None and not 0.0 <= mib <= 1024 * 1024:
            return _json({"error": f"{name} must be 0..1048576"}, status=400)
    usage = base.arklet.set_usage(cpu, None if heap_mib is None else round(heap_mib * 1024 * 1024),
                                  None if metaspace_mib is None else round(metaspace_mib * 1024 * 1024))
    return _json({"identity": base.identity, "cpu": usage.cpu, "heapUsedBytes": usage.heap_used_bytes,
                  "metaspaceUsedBytes": base.arklet.metaspace_used(),
                  "metaspaceMaxBytes": base.arklet.behaviour.metaspace_max_bytes})


def _mqtt_or_409(base: SimBase) -> MqttBaseTransport:
    if base.mqtt is None:
        raise web.HTTPConflict(text=orjson.dumps({"error": f"base {base.identity} is not an MQTT base"}).decode(),
                               content_type="application/json")
    return base.mqtt


async def _hold_biz_lists(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    _mqtt_or_409(base).holding_biz_lists = True
    return _json({"identity": base.identity, "holding": True})


async def _release_biz_lists(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    transport = _mqtt_or_409(base)
    raw = request.query.get("count")
    try:
        count = int(raw) if raw is not None else None
    except ValueError:
        return _json({"error": "count must be an integer"}, status=400)
    released = await transport.release_biz_lists(count)
    return _json({"identity": base.identity, "released": released})


MAX_HEALTH_DELAY_S = 60.0


async def _set_biz_health(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    name = request.match_info["name"]
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return _json({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict):
        return _json({"error": "body must be an object"}, status=400)
    status, delay = body.get("status", 200), body.get("delaySeconds", 0)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return _json({"error": "status must be an HTTP status (100..599)"}, status=400)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= MAX_HEALTH_DELAY_S:
        return _json({"error": f"delaySeconds must be 0..{MAX_HEALTH_DELAY_S:g}"}, status=400)
    if status == 200 and not delay:
        base.biz_health.pop(name, None)
    else:
        base.biz_health[name] = BizHealth(status, float(delay))
    return _json({"identity": base.identity, "biz": name, "status": status, "delaySeconds": delay})


async def _get_biz_health(request: web.Request) -> web.Response:
    base = _base_or_404(request)
    name = request.match_info["name"]
    health = base.biz_health.get(name) or BizHealth()
    return _json({"identity": base.identity, "biz": name, "status": health.status, "delaySeconds": health.delay_s})


async def _reset_stats(request: web.Request) -> web.Response:
    _sim(request).reset_stats()
    return _json({"reset": True})


async def start_control_api(sim: Simulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the control API; returns the runner (to clean up) and the bound port (``port`` may be 0)."""
    app = web.Application()
    app[_SIM_KEY] = sim
    app.router.add_get("/bases", _list_bases)
    app.router.add_post("/bases", _add_bases)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/bases/{identity}/stop", _stop_base)
    app.router.add_post("/bases/{identity}/start", _start_base)
    app.router.add_post("/bases/{identity}/bizs", _install_orphan)
    app.router.add_post("/bases/{identity}/bizs/{name}/health", _set_biz_health)
    app.router.add_get("/bases/{identity}/bizs/{name}/health", _get_biz_health)
    app.router.add_post("/bases/{identity}/deactivate", _deactivate)
    app.router.add_post("/bases/{identity}/activate", _activate)
    app.router.add_post("/bases/{identity}/usage", _set_usage)
    app.router.add_post("/bases/{identity}/hold-biz-lists", _hold_biz_lists)
    app.router.add_post("/bases/{identity}/release-biz-lists", _release_biz_lists)
    app.router.add_post("/reset-stats", _reset_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)
