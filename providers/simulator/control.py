"""The control API of a :class:`SimulatorHost` (SPEC section 15), on its own port.

    GET  /_sim                              providers and their ports
    GET  /_sim/{provider}/faults            current fault settings
    POST /_sim/{provider}/faults            merge settings (omitted keys keep their value)
    GET  /_sim/{provider}/charges?reference=<gateway payment id>
    GET  /_sim/{provider}/requests          {"total": n, "by_operation": {...}}
    GET  /_sim/{provider}/webhooks          webhook delivery settings
    POST /_sim/{provider}/webhooks          {"duplicate_rate", "reorder_window_ms"} (merged)
    POST /_sim/{provider}/disputes          {"reference", "action": open|win|lose, "amount"?}
                                            (providers/simulator/disputes.py)
    GET  /_sim/{provider}/settlement?date=YYYY-MM-DD
                                            the day's settlement data, the provider's format
    POST /_sim/{provider}/settlement_faults {"kind", "reference"}
                                            (providers/simulator/settlement.py)
    POST /_sim/{provider}/reset             clear one simulator
    POST /_sim/reset                        clear every simulator (state, counters, faults)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from providers.simulator.disputes import DisputeRefused, parse_request
from providers.simulator.faults import FaultValidationError
from providers.simulator.settlement import SettlementRefused, parse_day, parse_fault

if TYPE_CHECKING:
    from providers.simulator.host import SimulatorHost

HOST_KEY: web.AppKey[SimulatorHost] = web.AppKey("simulator_host")


def _error(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    err: dict[str, Any] = {"type": "invalid_request", "code": code, "message": message}
    if param:
        err["param"] = param
    return web.json_response({"error": err}, status=status)


def _provider(request: web.Request) -> str:
    host = request.app[HOST_KEY]
    name = request.match_info["provider"]
    if name not in host.names:
        raise web.HTTPNotFound(
            text=json.dumps({"error": {"type": "not_found", "code": "unknown_provider",
                                       "message": f"no simulator named {name!r}"}}),
            content_type="application/json",
        )
    return name


async def index(request: web.Request) -> web.Response:
    host = request.app[HOST_KEY]
    providers = {n: {"port": host.port(n), "base_url": host.base_url(n),
                     "listening": host.is_listening(n)} for n in host.names}
    return web.json_response({"providers": providers, "control_port": host.control_port})


async def get_faults(request: web.Request) -> web.Response:
    name = _provider(request)
    return web.json_response(request.app[HOST_KEY].simulator(name).faults.to_dict())


async def post_faults(request: web.Request) -> web.Response:
    name = _provider(request)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "invalid_json", "body must be a JSON object")
    try:
        settings = await request.app[HOST_KEY].set_faults(name, body if body is not None else {})
    except FaultValidationError as exc:
        return _error(400, "invalid_fault_settings", str(exc), exc.param)
    except OSError as exc:  # re-listening failed (port taken meanwhile)
        return _error(500, "listen_failed", f"cannot listen again: {exc.strerror or exc}")
    return web.json_response(settings.to_dict())


async def get_charges(request: web.Request) -> web.Response:
    name = _provider(request)
    reference = request.query.get("reference")
    if not reference:
        return _error(400, "missing_reference", "query parameter reference is required",
                      "reference")
    charges = request.app[HOST_KEY].simulator(name).charges(reference)
    return web.json_response({"charges": [c.to_dict() for c in charges]})


async def get_requests(request: web.Request) -> web.Response:
    name = _provider(request)
    return web.json_response(request.app[HOST_KEY].simulator(name).requests.snapshot())


async def reset_one(request: web.Request) -> web.Response:
    name = _provider(request)
    await request.app[HOST_KEY].reset(name)
    return web.json_response({"reset": [name]})


async def reset_all(request: web.Request) -> web.Response:
    host = request.app[HOST_KEY]
    await host.reset()
    return web.json_response({"reset": host.names})


async def get_webhooks(request: web.Request) -> web.Response:
    name = _provider(request)
    return web.json_response(request.app[HOST_KEY].simulator(name).webhooks.settings())


async def post_webhooks(request: web.Request) -> web.Response:
    name = _provider(request)
    try:
        update = await request.json()
        settings = request.app[HOST_KEY].simulator(name).webhooks.configure(update)
    except ValueError as exc:  # includes JSON decode errors
        return _error(400, "invalid_webhook_settings", str(exc))
    return web.json_response(settings)


async def _json_command(request: web.Request, run: Callable[[Any, Any], Any],
                        refused: type[DisputeRefused] | type[SettlementRefused]
                        ) -> web.Response:
    """A control request with a JSON body: ``run(simulator, body)``'s answer, or the
    refusal it raised as ``{"error": ...}``."""
    name = _provider(request)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "invalid_json", "body must be a JSON object")
    try:
        answer = run(request.app[HOST_KEY].simulator(name), body)
    except refused as exc:
        return _error(exc.status, exc.code, exc.message, exc.param)
    return web.json_response(answer)


async def post_disputes(request: web.Request) -> web.Response:
    return await _json_command(request, lambda sim, body: sim.dispute(parse_request(body)),
                               DisputeRefused)


async def get_settlement(request: web.Request) -> web.Response:
    name = _provider(request)
    try:
        day = parse_day(request.query.get("date"))
        body, content_type = request.app[HOST_KEY].simulator(name).settlement_report(day)
    except SettlementRefused as exc:
        return _error(exc.status, exc.code, exc.message, exc.param)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def post_settlement_faults(request: web.Request) -> web.Response:
    return await _json_command(
        request, lambda sim, body: sim.settlement_fault(parse_fault(body)), SettlementRefused)


def build_control_app(host: SimulatorHost) -> web.Application:
    app = web.Application()
    app[HOST_KEY] = host
    app.router.add_get("/_sim", index)
    app.router.add_post("/_sim/reset", reset_all)
    app.router.add_get("/_sim/{provider}/faults", get_faults)
    app.router.add_post("/_sim/{provider}/faults", post_faults)
    app.router.add_get("/_sim/{provider}/charges", get_charges)
    app.router.add_get("/_sim/{provider}/requests", get_requests)
    app.router.add_get("/_sim/{provider}/webhooks", get_webhooks)
    app.router.add_post("/_sim/{provider}/webhooks", post_webhooks)
    app.router.add_post("/_sim/{provider}/disputes", post_disputes)
    app.router.add_get("/_sim/{provider}/settlement", get_settlement)
    app.router.add_post("/_sim/{provider}/settlement_faults", post_settlement_faults)
    app.router.add_post("/_sim/{provider}/reset", reset_one)
    return app
