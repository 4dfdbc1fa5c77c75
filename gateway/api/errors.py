"""The merchant API's error type and its JSON envelope (SPEC section 3).

``{"error": {"type", "code", "message", "param"?}}`` with types invalid_request,
authentication_failed, not_found, invalid_state, idempotency_conflict,
provider_unavailable, internal. Messages never echo secrets or card data.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type: str,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers,
                                 dumps=json.dumps)


def not_found() -> ApiError:
    return ApiError(404, "not_found", "resource_missing", "no such payment")
