"""Settlement import and reconciliation in the running gateway (admin token; SPEC 16).

* ``POST /admin/settlements/import`` ``{"provider": <name>, "date": "YYYY-MM-DD"}`` --
  fetch that day's report through the provider's API (for ``sandbox: true`` providers,
  from this gateway's own in-process simulators) and import it (idempotent): 200 with the
  counts.
* ``POST /admin/settlements/reconcile`` ``{"date": "YYYY-MM-DD", "providers"?: [...]}`` --
  the report of :func:`gateway.settlements.reconcile_day` (200 whether or not it found
  drift: ``"drift"`` says), and ``gateway_settlement_drift_minor_units`` of this process
  set from it (Prometheus scrapes it here).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from aiohttp import web

from gateway.api.admin import require_admin
from gateway.api.errors import ApiError
from gateway.api.validation import only_params, parse_json_body
from gateway.appkeys import CONFIG, SANDBOX_PORTS, STORE
from gateway.settlements import SettlementError, fetch_report, import_report, reconcile_day

routes = web.RouteTableDef()


def _date(body: dict[str, Any]) -> dt.date:
    raw = body.get("date")
    try:
        if not isinstance(raw, str) or len(raw) != 10:
            raise ValueError
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", "parameter_invalid",
                       "date must be YYYY-MM-DD", param="date") from None


@routes.post("/admin/settlements/import")
async def import_settlement(request: web.Request) -> web.Response:
    require_admin(request)
    body = parse_json_body(await request.read())
    only_params(body, {"provider", "date"})
    day = _date(body)
    name = body.get("provider")
    config = request.app[CONFIG]
    if not isinstance(name, str) or name not in config.providers:
        raise ApiError(400, "invalid_request", "parameter_invalid",
                       f"provider must be one of {', '.join(sorted(config.providers))}",
                       param="provider")
    try:
        raw = await fetch_report(config, name, day, request.app[SANDBOX_PORTS])
        result = await import_report(request.app[STORE], config, name, raw)
    except SettlementError as exc:
        raise ApiError(422, "invalid_request", "settlement_unavailable", str(exc)) from None
    return web.json_response({"date": day.isoformat(), **dataclasses.asdict(result)})


@routes.post("/admin/settlements/reconcile")
async def reconcile_settlement(request: web.Request) -> web.Response:
    require_admin(request)
    body = parse_json_body(await request.read())
    only_params(body, {"date", "providers"})
    day = _date(body)
    config = request.app[CONFIG]
    names = body.get("providers")
    if names is not None and (not isinstance(names, list) or not all(
            isinstance(n, str) and n in config.providers for n in names)):
        raise ApiError(400, "invalid_request", "parameter_invalid",
                       "providers must be a list of configured provider names",
                       param="providers")
    report = await reconcile_day(request.app[STORE], config, day, names)
    return web.json_response(report.as_dict())


__all__ = ["routes"]
